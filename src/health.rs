//! What the relay knows about its own health, for `/healthz`, `/readyz` and systemd's
//! watchdog: is it alive (its loops turn), and is it ready (registered in Redis, its
//! lease renewed, the collector not failing).
//!
//! The worker writes these flags at the moments they change; readers only load them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The relay's health, shared by the worker, the admin listener and the notifier.
#[derive(Debug)]
pub struct Health {
    /// How long a heartbeat may be missed before the relay counts as stuck.
    lease_ttl: Duration,
    /// Unix milliseconds when the heartbeat loop last turned (whatever Redis said).
    loop_turned_at: AtomicU64,
    /// Unix milliseconds of the last successful registration or lease renewal.
    lease_renewed_at: AtomicU64,
    registered: AtomicBool,
    collector_failing: AtomicBool,
    stopping: AtomicBool,
    /// What the relay is doing, in a few words (systemd's STATUS=).
    status: Mutex<String>,
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    /// Health of a relay whose lease lives `lease_ttl`; it starts alive and not ready.
    pub fn new(lease_ttl: Duration) -> Health {
        Health {
            lease_ttl,
            loop_turned_at: AtomicU64::new(now_millis()),
            lease_renewed_at: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            collector_failing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            status: Mutex::new("starting".into()),
        }
    }

    /// The relay registered in Redis (or renewed its lease).
    pub fn lease_renewed(&self) {
        self.registered.store(true, Ordering::Relaxed);
        self.lease_renewed_at.store(now_millis(), Ordering::Relaxed);
    }

    /// The relay is no longer registered (lease lost, stopping).
    pub fn unregistered(&self) {
        self.registered.store(false, Ordering::Relaxed);
    }

    /// A loop that must keep turning did (the heartbeat loop, the Redis connect loop).
    pub fn loop_turned(&self) {
        self.loop_turned_at.store(now_millis(), Ordering::Relaxed);
    }

    /// The collector started or stopped failing.
    pub fn set_collector_failing(&self, failing: bool) {
        self.collector_failing.store(failing, Ordering::Relaxed);
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the relay is registered in Redis.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Whether shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Sets the one-line status.
    pub fn set_status(&self, status: impl Into<String>) {
        if let Ok(mut current) = self.status.lock() {
            *current = status.into();
        }
    }

    /// The one-line status.
    pub fn status(&self) -> String {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Alive: the loops turned within [`Health::stuck_after`]. `Err` says what is wrong.
    pub fn alive(&self) -> Result<(), String> {
        let since = now_millis().saturating_sub(self.loop_turned_at.load(Ordering::Relaxed));
        if since > self.stuck_after().as_millis() as u64 {
            return Err(format!("the heartbeat loop has not turned for {since} ms"));
        }
        Ok(())
    }

    /// How long the loops may stand still before the relay counts as stuck: a lease TTL
    /// (the heartbeat loop turns every third of it), but at least 40 s (the Redis connect
    /// loop waits up to 30 s between attempts). Set systemd's `WatchdogSec=` above it.
    pub fn stuck_after(&self) -> Duration {
        self.lease_ttl.max(Duration::from_secs(40))
    }

    /// Ready: alive, registered, lease renewed within its TTL, collector not failing,
    /// not stopping. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        self.alive()?;
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if !self.registered.load(Ordering::Relaxed) {
            return Err("not registered in Redis (is Redis reachable?)".into());
        }
        let since = now_millis().saturating_sub(self.lease_renewed_at.load(Ordering::Relaxed));
        if since > self.lease_ttl.as_millis() as u64 {
            return Err(format!("lease not renewed for {since} ms (Redis failing?)"));
        }
        if self.collector_failing.load(Ordering::Relaxed) {
            return Err("collector requests are failing".into());
        }
        Ok(())
    }
}
