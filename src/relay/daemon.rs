//! The whole daemon around one relay run: what outlives an instance (metrics, health,
//! the admin listener, the systemd notifier, the collector client, reloads), connecting
//! and registering with retry, and registering again after a lost lease. The caller
//! passes shutdown and force as futures and gets the run's [`Summary`] back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use snowplow_relay_tracker::retry::{Backoff, Retry};
use tokio_util::sync::CancellationToken;

use super::{Sender, Services};
use crate::config::{self, Config, Settings};
use crate::error::Error;
use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, RedisOperation, Summary};
use crate::ops::{admin, notify};
use crate::queue::{self, Queue, QueueError};

/// Asks a running relay to act now: flush partial batches (the tracker's `flush()`;
/// SIGUSR1) or apply new settings where that is safe (SIGHUP). Clone it freely.
#[derive(Debug, Clone)]
pub struct Controls {
    flush: Arc<tokio::sync::Notify>,
    reload: Arc<tokio::sync::watch::Sender<Option<Settings>>>,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            flush: Arc::default(),
            reload: Arc::new(tokio::sync::watch::channel(None).0),
        }
    }
}

/// Settings [`Controls::reload`] applies to a running relay; every other change needs a
/// restart (and is logged as such).
pub const RELOADABLE: &[&str] = &[
    config::key::LOG_LEVEL,
    config::key::COLLECTOR_RETRY_INITIAL_BACKOFF_MS,
    config::key::COLLECTOR_RETRY_MAX_BACKOFF_MS,
    config::key::COLLECTOR_PARK_AFTER_FAILURES,
    config::key::COLLECTOR_ISOLATED_FAILURE_LIMIT,
];

impl Controls {
    /// Sends every partial batch now.
    pub fn flush(&self) {
        self.flush.notify_one();
    }

    /// Applies the reloadable settings of `config` (the caller applies `log.level`, which
    /// belongs to the process's log set-up) and logs what else changed and needs a
    /// restart.
    pub fn reload(&self, config: Settings) {
        self.reload.send_replace(Some(config));
    }
}

/// The dotted keys whose values differ between two configurations.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let table = |config: &Config| {
        toml::Value::try_from(config)
            .ok()
            .and_then(|value| value.as_table().cloned())
            .unwrap_or_default()
    };
    let (old, new) = (table(old), table(new));
    let mut changed = Vec::new();
    for (section, new_values) in &new {
        let empty = toml::value::Table::new();
        let old_values = old
            .get(section)
            .and_then(|v| v.as_table())
            .unwrap_or(&empty);
        let new_values = new_values.as_table().unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&String> =
            old_values.keys().chain(new_values.keys()).collect();
        for key in keys {
            if old_values.get(key) != new_values.get(key) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    changed
}

/// Runs the relay until `shutdown` resolves, then stops claiming, drains for up to
/// `worker.drain_timeout_ms` (cut short when `force` resolves) and returns every
/// undelivered event to the head of the list.
///
/// If Redis cannot be reached at start-up, it keeps trying with capped backoff until it
/// can or `shutdown` resolves. If this relay's lease is lost (another relay took its
/// events back after a long stall), it registers again as a new instance and goes on.
pub async fn run(
    config: Settings,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> Result<Summary, Error> {
    run_with_controls(config, shutdown, force, Controls::default()).await
}

/// [`run`], with [`Controls`] to flush or reload while it runs.
pub async fn run_with_controls(
    config: Settings,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
    controls: Controls,
) -> Result<Summary, Error> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        settings = %config.to_masked_toml().replace('\n', " "),
        "snowplow-relay starting"
    );
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if config.redis.tls.insecure_skip_verify {
        tracing::warn!(
            "redis.tls_insecure_skip_verify is on: Redis's certificate is NOT checked; anyone \
             on the network path can read and change the events"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        config.redis.lease_ttl,
        config.redis.command_timeout,
        Health::stuck_after_for(
            config.redis.lease_ttl,
            config.collector.backoff.max,
            config
                .collector
                .client
                .request_timeout
                .unwrap_or(Duration::from_secs(5)),
        ),
    ));
    let admin = match config.admin_listen {
        Some(addr) => {
            let listener = admin::bind(addr)
                .await
                .map_err(|source| Error::AdminListen { addr, source })?;
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz");
            Some(tokio::spawn(admin::serve(
                listener,
                admin::Admin {
                    metrics: metrics.clone(),
                    health: health.clone(),
                },
            )))
        }
        None => None,
    };
    let notifier = notify::spawn(health.clone());
    let emitter = Sender::new(&config.collector, metrics.clone(), health.clone())?;
    let reloader = tokio::spawn(apply_reloads(
        config.clone(),
        controls.reload.subscribe(),
        emitter.clone(),
    ));
    // The caller's futures become tokens, which every attempt below can wait on.
    let stop = CancellationToken::new();
    let hurry = CancellationToken::new();
    let services = Services {
        emitter,
        metrics: metrics.clone(),
        health: health.clone(),
        flush: controls.flush.clone(),
    };
    let relaying = relay_until_stopped(&config, services, stop.clone(), hurry.clone());
    tokio::pin!(relaying, shutdown, force);
    let result = loop {
        tokio::select! {
            result = &mut relaying => break result,
            () = &mut shutdown, if !stop.is_cancelled() => {
                health.stopping();
                stop.cancel();
            }
            () = &mut force, if !hurry.is_cancelled() => hurry.cancel(),
        }
    };
    health.stopping();
    if let Some(notifier) = notifier {
        // Let it send STOPPING=1 (it looks every 500 ms at most).
        let _ = tokio::time::timeout(Duration::from_secs(1), notifier).await;
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    reloader.abort();
    result
}

/// Applies reloaded settings to the emitter and logs what changed.
async fn apply_reloads(
    mut current: Settings,
    mut reloads: tokio::sync::watch::Receiver<Option<Settings>>,
    emitter: Arc<Sender>,
) {
    while reloads.changed().await.is_ok() {
        let Some(new) = reloads.borrow_and_update().clone() else {
            continue;
        };
        let changed = changed_keys(current.effective(), new.effective());
        let (applied, need_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|key| RELOADABLE.contains(&key.as_str()));
        emitter.set_retry(&new.collector);
        tracing::info!(
            applied = ?applied,
            need_restart = ?need_restart,
            "configuration reloaded"
        );
        if !need_restart.is_empty() {
            tracing::warn!(
                keys = ?need_restart,
                "these settings changed but take effect only after a restart"
            );
        }
        current = new;
    }
}

async fn relay_until_stopped(
    config: &Settings,
    services: Services,
    stop: CancellationToken,
    hurry: CancellationToken,
) -> Result<Summary, Error> {
    let Services {
        emitter,
        metrics,
        health,
        ..
    } = &services;
    loop {
        health.set_status(format!(
            "waiting for Redis at {}",
            config::mask_url(&config.redis.url)
        ));
        let queue = tokio::select! {
            queue = connect(config, metrics, health) => Arc::new(queue?),
            () = stop.cancelled() => {
                tracing::info!("shutdown requested before Redis was reachable; nothing was claimed");
                return Ok(metrics.summary());
            }
        };
        health.lease_renewed();
        tracing::info!(
            instance = queue.instance(),
            list = %queue::shown_key(&queue.keys().list),
            dead_letter_list = %queue::shown_key(&queue.keys().dead),
            collector = %emitter.shown_url(),
            method = ?config.collector.method,
            "connected; relaying"
        );
        let result =
            super::run_instance(config, queue, &services, stop.clone(), hurry.clone()).await;
        match result {
            Err(Error::Queue(error)) if error.needs_new_instance() && !stop.is_cancelled() => {
                // What this instance held is back in the list already (or goes back when
                // its lease expires).
                tracing::warn!(%error, "registering again as a new instance");
            }
            other => return other,
        }
    }
}

/// Connects to Redis, checks the permissions the relay needs, recovers the events of
/// relays whose lease expired and registers this instance, retrying with capped backoff
/// for as long as it takes. Missing permissions stop start-up (exit 2).
async fn connect(config: &Settings, metrics: &Metrics, health: &Health) -> Result<Queue, Error> {
    // The connect loop turns at least twice within the liveness bound.
    let mut retry = Retry::new(Backoff {
        initial: Duration::from_millis(200),
        max: (health.stuck_after() / 2).min(Duration::from_secs(30)),
    });
    let url = config::mask_url(&config.redis.url);
    loop {
        health.loop_turned();
        let error = match try_connect(config, metrics).await {
            Ok(queue) => return Ok(queue),
            Err(Error::Queue(QueueError::Permission(why))) => {
                return Err(Error::Permissions(format!(
                    "Redis refused a command the relay needs ({}); grant this Redis user the \
                     relay's permissions (docs/operations.md#redis-permissions)",
                    queue::one_line(&why)
                )));
            }
            Err(Error::Queue(error)) => error,
            Err(other) => return Err(other),
        };
        let delay = retry.failed();
        metrics.redis_error(RedisOperation::Connect);
        health.set_status(format!(
            "waiting for Redis at {url}: attempt {}, {}",
            retry.failures(),
            queue::one_line(&error.to_string())
        ));
        let hint = match error {
            QueueError::OutOfMemory(_) => "Redis is out of memory; retrying",
            QueueError::Auth { .. } => "cannot log in to Redis; retrying",
            QueueError::Tls(_) => "cannot set up TLS with Redis; retrying",
            _ => "cannot reach Redis; is it running and is redis.url right?",
        };
        tracing::warn!(
            redis = %url,
            %error,
            attempt = retry.failures(),
            retry_in_ms = delay.as_millis() as u64,
            "{hint}"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn try_connect(config: &Settings, metrics: &Metrics) -> Result<Queue, Error> {
    let queue = Queue::connect(&config.redis).await?;
    let probe = queue.probe();
    if !probe.not_lists.is_empty() {
        let keys: Vec<String> = probe
            .not_lists
            .iter()
            .map(|k| queue::shown_key(k))
            .collect();
        return Err(Error::Permissions(format!(
            "these keys exist in Redis but are not lists: {}; check redis.key and \
             redis.dead_letter_key",
            keys.join(", ")
        )));
    }
    if !probe.denied.is_empty() {
        let denied: Vec<String> = probe.denied.iter().map(|d| queue::one_line(d)).collect();
        return Err(Error::Permissions(format!(
            "this Redis user may not run: {}; grant it the relay's permissions \
             (docs/operations.md#redis-permissions)",
            denied.join(", ")
        )));
    }
    if !probe.script_flags() {
        tracing::info!(
            "Redis before 7.0: permissions are not checked ahead, and a Redis at maxmemory \
             refuses the relay's scripts until memory is freed"
        );
    }
    match queue.eviction_policy().await.as_deref() {
        Some("noeviction") => {}
        Some(policy) => tracing::warn!(
            maxmemory_policy = policy,
            "Redis may evict keys (maxmemory-policy is not noeviction): under memory \
             pressure it can drop events, and volatile-* policies evict exactly the relay's \
             lease keys, making live relays look dead; set maxmemory-policy noeviction"
        ),
        None => tracing::debug!("cannot read maxmemory-policy (CONFIG disabled?)"),
    }
    super::recover_expired(&queue, metrics).await?;
    queue.register().await?;
    Ok(queue)
}
