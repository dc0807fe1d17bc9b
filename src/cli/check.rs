//! `snowplow-relay check`: validates the configuration, prints its warnings (stderr) and,
//! unless `--quiet`, the settings with secrets masked and where each value came from
//! (stdout). Exit 2 with the reason when it is invalid. `--print-default-config` prints
//! the documented example file instead. `--connect` then reaches Redis and the collector
//! as the relay would and says what it found (stdout), claiming and sending nothing.

use std::process::ExitCode;

use snowplow_relay::config::{CollectorSettings, RedisSettings};
use snowplow_relay::queue::{Queue, QueueError};

use super::{RelayFlags, runtime};

pub(super) fn check(flags: RelayFlags, quiet: bool, connect: bool) -> ExitCode {
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
    if !connect {
        return ExitCode::SUCCESS;
    }
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    let redis = runtime.block_on(connect_redis(&settings.redis));
    let collector = runtime.block_on(connect_collector(&settings.collector));
    // The worse of the two: 2 (connecting proved the configuration wrong) over 1 (not
    // reached) over 0.
    match redis.max(collector) {
        Found::Right => ExitCode::SUCCESS,
        Found::Unreached => ExitCode::FAILURE,
        Found::Wrong => ExitCode::from(2),
    }
}

/// What connecting to one side proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Found {
    Right,
    /// Not reached (down, refused, timed out): the configuration may be right.
    Unreached,
    /// Reached, and the configuration is wrong for it (credentials, permissions, keys,
    /// certificates, the collector's path).
    Wrong,
}

fn say(side: &str, line: impl std::fmt::Display) {
    println!("{side}: {line}");
}

/// Authenticates, runs the relay's start-up probe (permissions and key types) and reads
/// what the relay reads at start-up where it is allowed to.
async fn connect_redis(redis: &RedisSettings) -> Found {
    let target = redis.shown_target();
    let queue = match Queue::connect(redis).await {
        Ok(queue) => queue,
        Err(error) => {
            let found = match error {
                QueueError::Auth { .. } | QueueError::Tls(_) | QueueError::Permission(_) => {
                    Found::Wrong
                }
                _ => Found::Unreached,
            };
            say(
                "redis",
                format_args!("FAILED to connect to {target}: {error}"),
            );
            return found;
        }
    };
    let probe = queue.probe();
    let version = match probe.version {
        0 => "before 7.0".to_owned(),
        v => format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff),
    };
    say(
        "redis",
        format_args!("connected to {target} (Redis {version})"),
    );
    let mut found = Found::Right;
    if !probe.not_lists.is_empty() {
        say(
            "redis",
            format_args!(
                "WRONG: these keys exist but are not lists: {}",
                probe.not_lists.join(", ")
            ),
        );
        found = Found::Wrong;
    }
    if !probe.script_flags() {
        say(
            "redis",
            "permissions: not checked ahead (Redis before 7.0 has no ACL check for scripts)",
        );
    } else if probe.denied.is_empty() {
        say(
            "redis",
            "permissions: every command the relay runs on its keys is allowed",
        );
    } else {
        say(
            "redis",
            format_args!(
                "WRONG: this user may not run: {} (docs/operations.md#redis-permissions)",
                probe.denied.join(", ")
            ),
        );
        found = Found::Wrong;
    }
    match queue.eviction_policy().await {
        Ok(policy) if policy == "noeviction" => say("redis", "maxmemory-policy: noeviction"),
        Ok(policy) => say(
            "redis",
            format_args!("maxmemory-policy: {policy} (WARNING: it can evict the relay's keys)"),
        ),
        Err(why) => say(
            "redis",
            format_args!("maxmemory-policy: not readable ({why})"),
        ),
    }
    match (&probe.reply_limit_bytes, &probe.reply_limit_unread) {
        (Some(limit), _) => say("redis", format_args!("reply limit: {limit} bytes")),
        (None, Some(why)) => say("redis", format_args!("reply limit: not readable ({why})")),
        (None, None) => say("redis", "reply limit: none"),
    }
    match queue.memory().await {
        Ok((used, 0)) => say(
            "redis",
            format_args!("memory: {used} bytes used, no maxmemory"),
        ),
        Ok((used, max)) => say("redis", format_args!("memory: {used} of {max} bytes used")),
        Err(why) => say("redis", format_args!("memory: not readable ({why})")),
    }
    found
}

/// Asks the collector's `/health` (beside collector.url's path) on the relay's own
/// client: TLS, proxy and credentials as the relay uses them. Nothing is posted: a
/// collector keeps whatever reaches its POST path (an empty payload is a bad row).
async fn connect_collector(collector: &CollectorSettings) -> Found {
    let shown = snowplow_relay::config::mask_url(collector.base_url.as_str());
    let client = match snowplow_relay::relay::collector_client(collector) {
        Ok(client) => client,
        Err(error) => {
            say("collector", format_args!("FAILED: {error}"));
            return Found::Wrong;
        }
    };
    let mut health = collector.base_url.clone();
    let path = format!("{}/health", health.path().trim_end_matches('/'));
    health.set_path(&path);
    match client.get_status(&health).await {
        Ok(200..=299) => {
            say(
                "collector",
                format_args!("{shown} answers GET {path}: it is up"),
            );
            Found::Right
        }
        Ok(status) => {
            say(
                "collector",
                format_args!(
                    "{shown} answers GET {path} with {status}: reached (TCP and TLS), but it \
                     has no health check there, so only the connection is checked"
                ),
            );
            Found::Right
        }
        Err(error) => {
            say(
                "collector",
                format_args!("FAILED to reach {shown}: {error}"),
            );
            Found::Unreached
        }
    }
}

/// The documented example configuration, generated from the declaration of every key.
pub(super) fn print_default_config() -> ExitCode {
    print!("{}", snowplow_relay::config::keys::example_file());
    ExitCode::SUCCESS
}
