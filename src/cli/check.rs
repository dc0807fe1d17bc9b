//! `snowplow-relay check`: validates the configuration, prints its warnings (stderr) and,
//! unless `--quiet`, the settings with secrets masked and where each value came from
//! (stdout). Exit 2 with the reason when it is invalid. `--print-default-config` prints
//! the documented example file instead.

use std::process::ExitCode;

use super::RelayFlags;

pub(super) fn check(flags: RelayFlags, quiet: bool) -> ExitCode {
    let settings = match flags.settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    for warning in settings.warnings() {
        eprintln!("snowplow-relay: warning: {warning}");
    }
    if !quiet {
        print!("{}", settings.to_shown_toml());
    }
    ExitCode::SUCCESS
}

/// The documented example configuration, generated from the declaration of every key.
pub(super) fn print_default_config() -> ExitCode {
    print!("{}", snowplow_relay::config::keys::example_file());
    ExitCode::SUCCESS
}
