//! snowplow-relay moves Snowplow tracker-protocol events from a Redis list to a Snowplow
//! collector, at least once: an event leaves Redis only after the collector accepted it
//! (or it was dead-lettered with a reason), even if the relay is killed with `kill -9`.
//!
//! Rooms, in the order an event travels (each module's header says what it owns and
//! what it may touch; imports point down this list, never back up):
//! - [`config`]: the file/environment/flag layers (every key named once in
//!   [`config::key`]) and the typed [`Settings`] built from them once, at start-up.
//! - [`queue`]: the Redis side: claim, acknowledge, release, recover, dead-letter; the
//!   key layout, connections (single, cluster, TLS) and the Lua scripts.
//! - [`relay`]: the daemon ([`run`]) and one instance's tasks joining queue and
//!   collector (claim, batch, send, acknowledge, retry parked events), the drain.
//! - [`ops`]: what operators see: metrics and the run's [`Summary`], health, the admin
//!   listener (and the one HTTP accept loop), systemd notification, logs.
//! - [`micro`]: the local collector's request handling and bounded store (the
//!   `collector` subcommand serves it).
//! - [`error`] (why [`run`] stopped, and its exit code) and [`text`] (a value fit for a
//!   log line), which every room may use.
//!
//! The wire format (payload_data, the element scanner, GET/POST encoding, retry
//! backoff) lives in the `snowplow-relay-tracker` crate, which producers use without
//! the daemon. `main.rs` and `cli/` (flags, subcommands) belong to the binary; they
//! hand [`run`] the signals as futures, as tests and embedders do.

#![warn(missing_docs)]

pub mod config;
pub mod micro;
pub mod ops;
pub mod queue;
pub mod relay;

pub mod error;
pub mod text;

/// The crate's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this build comes from (see `build.rs`), or "unknown".
pub const COMMIT: &str = env!("SNOWPLOW_RELAY_COMMIT");
/// What `--version` and the start-up line say: `0.1.0 (a1b2c3d)`.
pub const VERSION_AND_COMMIT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SNOWPLOW_RELAY_COMMIT"),
    ")"
);

/// Where the documents of `docs/` are published: the alert rules' `runbook_url`s and the
/// unit's `Documentation=` start with it (tests/prometheus.rs checks each one, and that
/// the section it names exists).
pub const DOCS_URL: &str = "https://github.com/snowplow-relay/snowplow-relay/blob/main/docs/";

pub use config::{Config, Settings};
pub use error::Error;
pub use ops::metrics::Summary;
pub use relay::{Controls, changed_keys, run, run_with_controls};
