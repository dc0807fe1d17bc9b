//! Log set-up: `tracing` with a level or filter directive, plain text or JSON lines.
//!
//! What is logged where: a start-up line with the effective settings (password masked),
//! warnings with counts when a request, a Redis call or an element fails, a debug line per
//! delivered batch, and nothing per event at `info`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr. `RUST_LOG`, when set, overrides
/// `log.level`.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
