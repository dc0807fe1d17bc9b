//! systemd integration (`Type=notify`): `READY=1` once the relay registered in Redis,
//! `STATUS=` lines with what it is doing, `STOPPING=1` when draining starts, and
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` while its loops turn (a wedged relay stops
//! pinging and systemd restarts it).
//!
//! It follows [`Health`] from a task of its own, so no relay code waits on systemd.
//! Without `NOTIFY_SOCKET` (not run by systemd) nothing is started.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::ops::health::Health;

/// How often the status is looked at when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Starts the notifier if systemd is listening; the task ends after `STOPPING=1`.
pub fn spawn(health: Arc<Health>) -> Option<tokio::task::JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let watchdog = sd_notify::watchdog_enabled().map(|usec| usec / 2);
    Some(tokio::spawn(notify_loop(health, watchdog)))
}

async fn notify_loop(health: Arc<Health>, watchdog: Option<Duration>) {
    let period = watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY));
    let mut ready_sent = false;
    let mut status_sent = String::new();
    loop {
        let status = health.status();
        if status != status_sent {
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            status_sent = status;
        }
        if health.is_stopping() {
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
            return;
        }
        if !ready_sent && health.registered() {
            let _ = sd_notify::notify(&[NotifyState::Ready]);
            ready_sent = true;
        }
        if watchdog.is_some() && health.alive().is_ok() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
        tokio::time::sleep(period).await;
    }
}
