//! Log set-up: `tracing` with a level or filter directive, plain text or JSON lines, and
//! a handle to change the level while running (SIGHUP).
//!
//! What is logged where: a start-up line with the effective settings (credentials
//! masked), warnings with counts when a request, a Redis call or an element fails, a
//! debug line per delivered batch, and nothing per event at `info`.
//!
//! Every record is one line: in text format each field's value has its control
//! characters escaped and is cut at 16 KiB (JSON escapes them by itself), so an error
//! quoting a multi-line reply or a key holding escape sequences cannot forge or split
//! lines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Changes the log filter of the running process.
pub struct LogLevel {
    reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl LogLevel {
    /// Applies `log.level` = `level` (already validated).
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        (self.reload)(filter)
    }
}

/// Installs the global subscriber, writing to stderr, filtered by `log.level` (which
/// `RUST_LOG` sets when it is the value's highest layer: see `config::layers`).
pub fn init(config: &LogConfig) -> LogLevel {
    let filter = EnvFilter::new(&config.level);
    // Colours only on a terminal: journald, Docker and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // One line per record, whatever a value holds.
    let one_line_fields = tracing_subscriber::field::MakeExt::delimited(
        tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
            let text = crate::text::one_line(&format!("{value:?}"), 16 * 1024);
            if field.name() == "message" {
                write!(writer, "{text}")
            } else {
                write!(writer, "{field}={text}")
            }
        }),
        " ",
    );
    let reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync> = match config.format {
        LogFormat::Text => {
            let builder = builder.fmt_fields(one_line_fields).with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = builder.try_init();
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = builder.try_init();
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
    };
    LogLevel { reload }
}

/// Makes panic messages safe to print: every string of `secrets` in a panic's message is
/// replaced by `****` before the message reaches stderr. (No panic is reachable from
/// input or settings; this guards the ones that are bugs.)
pub fn mask_secrets_in_panics(secrets: Vec<String>) {
    let secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 3).collect();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let mut masked = message;
        for secret in &secrets {
            masked = masked.replace(secret.as_str(), "****");
        }
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("snowplow-relay panicked{location}: {masked}");
    }));
}
