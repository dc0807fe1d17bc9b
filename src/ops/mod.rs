//! What operators see and touch around the relay: its metrics ([`metrics`]), its own
//! health ([`health`]), the admin listener serving both ([`admin`]), systemd's
//! notifications ([`notify`]), the log set-up ([`telemetry`]), the one place each
//! happening is logged and counted ([`events`]), and the bounded HTTP accept loop the
//! admin listener and the local collector share ([`listener`]).
//!
//! This room reads the relay's state and shows it; it changes nothing in Redis or at the
//! collector. The relay reports into it (events, and `Health`'s stage tracking); nothing here calls back.

pub mod admin;
pub mod events;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod process_metrics;
pub mod telemetry;
