//! The relay's life: start, reloads, each instance registered, the stop and its drain.

use super::{InternalEvent, Observer};
use crate::ops::metrics::Summary;

/// The relay starts, with these settings (secrets masked).
#[derive(Debug)]
pub struct Starting<'a> {
    /// The effective settings as TOML, masked.
    pub settings: &'a str,
    /// What validating them found worth a warning.
    pub warnings: &'a [String],
    /// `redis.tls_insecure_skip_verify` is on.
    pub redis_tls_unverified: bool,
}

impl InternalEvent for Starting<'_> {
    fn emit(self, _to: &Observer) {
        tracing::info!(
            version = crate::VERSION_AND_COMMIT,
            settings = %self.settings.replace('\n', " "),
            "snowplow-relay starting"
        );
        for warning in self.warnings {
            tracing::warn!("{warning}");
        }
        if self.redis_tls_unverified {
            tracing::warn!(
                "redis.tls_insecure_skip_verify is on: Redis's certificate is NOT checked; \
                 anyone on the network path can read and change the events"
            );
        }
    }
}

/// The open-file limit is too low for the collector connections the relay may open.
#[derive(Debug)]
pub struct FileLimitLow {
    /// The soft limit on open files.
    pub limit: u64,
    /// What `collector.max_requests_in_flight` connections and the rest may need.
    pub wanted: usize,
}

impl InternalEvent for FileLimitLow {
    fn emit(self, _: &Observer) {
        tracing::warn!(
            limit = self.limit,
            wanted = self.wanted,
            "the open-file limit ({}) is below the {} that collector.max_requests_in_flight \
             connections and the rest may need, and could not be raised: raise it (LimitNOFILE=, \
             ulimit -n) or lower collector.max_requests_in_flight; past it, new connections fail \
             and their batches are retried",
            self.limit,
            self.wanted
        );
    }
}

/// The admin listener serves on `addr`.
#[derive(Debug)]
pub struct AdminListening {
    /// Where.
    pub addr: std::net::SocketAddr,
}

impl InternalEvent for AdminListening {
    fn emit(self, _to: &Observer) {
        tracing::info!(addr = %self.addr, "admin listener: /metrics, /healthz, /readyz");
    }
}

/// A reload (SIGHUP) applied `applied`; `need_restart` changed but waits for a restart.
#[derive(Debug)]
pub struct Reloaded<'a> {
    /// Keys applied.
    pub applied: &'a [String],
    /// Keys that need a restart.
    pub need_restart: &'a [String],
}

impl InternalEvent for Reloaded<'_> {
    fn emit(self, _to: &Observer) {
        tracing::info!(
            applied = ?self.applied,
            need_restart = ?self.need_restart,
            "configuration reloaded"
        );
        if !self.need_restart.is_empty() {
            tracing::warn!(
                keys = ?self.need_restart,
                "these settings changed but take effect only after a restart"
            );
        }
    }
}

/// Redis refused the reloaded credentials: the relay keeps the ones it has.
pub struct ReloadedCredentialsRefused<'a> {
    /// Redis's answer.
    pub error: &'a dyn std::fmt::Display,
    /// The keys that changed.
    pub keys: &'a [String],
}

impl InternalEvent for ReloadedCredentialsRefused<'_> {
    fn emit(self, _to: &Observer) {
        tracing::error!(
            error = %self.error,
            keys = ?self.keys,
            "the reloaded Redis credentials do not work; the relay keeps using the ones it has \
             (fix them and reload again)"
        );
    }
}

/// Registered in Redis as a new instance: relaying.
pub struct Connected<'a> {
    /// The instance id.
    pub instance: &'a str,
    /// The list, as shown.
    pub list: &'a str,
    /// The dead-letter list, as shown.
    pub dead_letter_list: &'a str,
    /// The collector, masked.
    pub collector: &'a str,
    /// GET or POST.
    pub method: &'a dyn std::fmt::Debug,
    /// The master the sentinels named, with Redis Sentinel.
    pub master: Option<&'a str>,
}

impl InternalEvent for Connected<'_> {
    fn emit(self, to: &Observer) {
        to.health.lease_renewed();
        tracing::info!(
            instance = self.instance,
            list = %self.list,
            dead_letter_list = %self.dead_letter_list,
            collector = %self.collector,
            method = ?self.method,
            master = self.master,
            "connected; relaying"
        );
    }
}

/// The instance ended (lost lease, forgotten by Redis): the relay registers again.
pub struct RegisteringAgain<'a> {
    /// Why.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for RegisteringAgain<'_> {
    fn emit(self, _to: &Observer) {
        tracing::warn!(error = %self.error, "registering again as a new instance");
    }
}

/// A stop was asked.
#[derive(Debug)]
pub enum Stopping {
    /// Before Redis answered: nothing was claimed.
    BeforeRedis,
    /// Claiming stopped; what is held is sent for at most the drain's time.
    Draining {
        /// `worker.drain_timeout_ms`.
        drain_timeout_ms: u64,
    },
    /// The drain's time is up: what is left goes back to the list.
    DeadlinePassed,
    /// A second signal: what is left goes back to the list now.
    SecondSignal,
}

impl InternalEvent for Stopping {
    fn emit(self, _to: &Observer) {
        match self {
            Stopping::BeforeRedis => {
                tracing::info!("shutdown requested before Redis was reachable; nothing was claimed")
            }
            Stopping::Draining { drain_timeout_ms } => tracing::info!(
                drain_timeout_ms,
                "shutdown requested: claiming stopped, draining what is held"
            ),
            Stopping::DeadlinePassed => {
                tracing::warn!("drain deadline passed; returning what is left to the list")
            }
            Stopping::SecondSignal => {
                tracing::warn!("second signal: returning what is left to the list now")
            }
        }
    }
}

/// A fatal error: the run stops (what it holds stays safe in Redis).
pub struct Fatal<'a> {
    /// What.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for Fatal<'_> {
    fn emit(self, _to: &Observer) {
        tracing::error!(error = %self.error, "fatal error; stopping");
    }
}

/// A stop could not deregister from Redis, but the relay held nothing.
pub struct NotDeregistered<'a> {
    /// Why.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for NotDeregistered<'_> {
    fn emit(self, _to: &Observer) {
        tracing::warn!(
            error = %self.error,
            "could not deregister from Redis; this relay held no event, so nothing waits for \
             its lease to expire"
        );
    }
}

/// An instance's run ended, with the process's totals so far.
#[derive(Debug)]
pub struct RelayStopped {
    /// The totals.
    pub summary: Summary,
}

impl InternalEvent for RelayStopped {
    fn emit(self, to: &Observer) {
        to.health.unregistered();
        let summary = self.summary;
        tracing::info!(
            claimed = summary.claimed,
            delivered = summary.delivered,
            dead_lettered = summary.dead_lettered,
            requeued = summary.requeued,
            redelivered = summary.redelivered,
            "relay stopped"
        );
    }
}
