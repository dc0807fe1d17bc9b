//! The whole daemon around one relay run: what outlives an instance (metrics, health,
//! the admin listener, the systemd notifier, the collector client, reloads), connecting
//! and registering with retry, and registering again after a lost lease. The caller
//! passes shutdown and force as futures and gets the run's [`Summary`] back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use snowplow_relay_tracker::retry::{Backoff, Retry};
use tokio_util::sync::CancellationToken;

use super::pipeline::Services;
use super::sender::Sender;
use crate::config::keys::Reload;
use crate::config::{self, Config, RedisSettings, Settings};
use crate::error::Error;
use crate::ops::events::Observer;
use crate::ops::events::lifecycle::{
    AdminListening, Connected, FileLimitLow, RegisteringAgain, Reloaded,
    ReloadedCredentialsRefused, Starting, Stopping,
};
use crate::ops::events::redis::RedisChecked;
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
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        config.redis.lease_ttl,
        config.redis.command_timeout,
        stuck_after(&config),
    ));
    let events = Arc::new(Observer::new(metrics.clone(), health.clone()));
    events.emit(Starting {
        settings: &config.to_masked_toml(),
        warnings: config.warnings(),
        redis_tls_unverified: config.redis.tls.insecure_skip_verify,
    });
    let admin = match config.admin_listen {
        Some(addr) => {
            let admin = admin::spawn(
                addr,
                admin::Admin {
                    metrics: metrics.clone(),
                    health: health.clone(),
                },
            )
            .map_err(|source| Error::AdminListen { addr, source })?;
            events.emit(AdminListening { addr: admin.addr });
            Some(admin)
        }
        None => None,
    };
    // One connection per request in flight, plus Redis, the admin listener and files.
    let wanted = config.collector.max_requests_in_flight + 256;
    if let Some(limit) = crate::ops::process_metrics::raise_open_file_limit(wanted)
        && limit < wanted as u64
    {
        events.emit(FileLimitLow { limit, wanted });
    }
    let notifier = notify::spawn(health.clone());
    let emitter = Sender::new(&config.collector, events.clone())?;
    let redis = Arc::new(LiveRedis {
        settings: std::sync::RwLock::new(config.redis.clone()),
        queue: std::sync::Mutex::new(None),
    });
    let reloader = tokio::spawn(apply_reloads(
        config.clone(),
        controls.reload.subscribe(),
        emitter.clone(),
        events.clone(),
        redis.clone(),
    ));
    // The caller's futures become tokens, which every attempt below can wait on.
    let stop = CancellationToken::new();
    let hurry = CancellationToken::new();
    let services = Services {
        emitter,
        events,
        metrics: metrics.clone(),
        health: health.clone(),
        flush: controls.flush.clone(),
    };
    let relaying = relay_until_stopped(&config, &redis, services, stop.clone(), hurry.clone());
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
    drop(admin);
    reloader.abort();
    result
}

/// How long a stage may stand still before the relay counts as stuck, with `config`.
fn stuck_after(config: &Settings) -> Duration {
    Health::stuck_after_for(
        config.redis.lease_ttl,
        config.collector.retry.backoff.max,
        config
            .collector
            .client
            .request_timeout
            .unwrap_or(Duration::from_secs(5)),
    )
}

/// The Redis side of the daemon that a reload can change: the settings the next
/// connection is made with (credentials and TLS files reload), and the queue of the
/// instance running now, whose connections a reload moves to new credentials.
struct LiveRedis {
    settings: std::sync::RwLock<RedisSettings>,
    queue: std::sync::Mutex<Option<Arc<Queue>>>,
}

impl LiveRedis {
    fn settings(&self) -> RedisSettings {
        match self.settings.read() {
            Ok(settings) => settings.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_queue(&self, queue: Option<Arc<Queue>>) {
        if let Ok(mut current) = self.queue.lock() {
            *current = queue;
        }
    }

    fn queue(&self) -> Option<Arc<Queue>> {
        self.queue.lock().ok().and_then(|queue| queue.clone())
    }
}

/// The keys naming a file whose content differs between two loads while the key's
/// value (the path) stayed the same: a password or certificate rewritten in place.
fn file_contents_changed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (old_redis, new_redis) = (&old.redis, &new.redis);
    if old_redis.password != new_redis.password {
        changed.push(
            if new_redis.password_from == config::key::REDIS_PASSWORD_FILE {
                config::key::REDIS_PASSWORD_FILE
            } else {
                config::key::REDIS_PASSWORD
            },
        );
    }
    if old_redis.tls.ca.as_ref().map(|(pem, _)| pem)
        != new_redis.tls.ca.as_ref().map(|(pem, _)| pem)
    {
        changed.push(config::key::REDIS_TLS_CA_FILE);
    }
    if old_redis.tls.client != new_redis.tls.client {
        changed.push(config::key::REDIS_TLS_CLIENT_CERT_FILE);
    }
    let (old_client, new_client) = (&old.collector.client, &new.collector.client);
    if old_client.tls_ca_pem != new_client.tls_ca_pem {
        changed.push(config::key::COLLECTOR_TLS_CA_FILE);
    }
    if old_client.tls_identity_pem != new_client.tls_identity_pem {
        changed.push(config::key::COLLECTOR_TLS_CLIENT_CERT_FILE);
    }
    changed
}

/// Applies reloaded settings and logs what changed: the collector's retry settings at
/// once, Redis credentials once a connection made with them answers (else the old ones
/// stay, and an error says so), everything else named as needing a restart. A file a
/// setting names counts as changed when its content changed.
async fn apply_reloads(
    mut current: Settings,
    mut reloads: tokio::sync::watch::Receiver<Option<Settings>>,
    emitter: Arc<Sender>,
    events: Arc<Observer>,
    redis: Arc<LiveRedis>,
) {
    while reloads.changed().await.is_ok() {
        let Some(mut new) = reloads.borrow_and_update().clone() else {
            continue;
        };
        let mut changed = changed_keys(current.effective(), new.effective());
        for key in file_contents_changed(&current, &new) {
            if !changed.iter().any(|c| c == key) {
                changed.push(key.to_owned());
            }
        }
        let (mut applied, mut credentials, mut need_restart) = (vec![], vec![], vec![]);
        for key in changed {
            match config::keys::reload_of(&key) {
                Reload::Now => applied.push(key),
                Reload::Credentials => credentials.push(key),
                Reload::Restart => need_restart.push(key),
            }
        }
        // The published retry policy; `log.level` the caller applied to the log.
        emitter.set_retry(new.collector.retry);
        events.health.set_stuck_after(stuck_after(&new));
        if !credentials.is_empty() {
            let mut moved = new.redis.clone();
            // Only the credentials change: the server (its URL, with any credentials in
            // it: a change there needs a restart) stays the one in use.
            let old = redis.settings();
            moved.url = old.url.clone();
            let result = match redis.queue() {
                Some(queue) => queue.reconfigure(&moved).await,
                None => Ok(()),
            };
            match result {
                Ok(()) => {
                    if let Ok(mut settings) = redis.settings.write() {
                        *settings = moved;
                    }
                    applied.extend(credentials);
                }
                Err(error) => {
                    events.emit(ReloadedCredentialsRefused {
                        error: &error,
                        keys: &credentials,
                    });
                    // Kept as they were: a later reload with the same new values
                    // (once Redis takes them) counts them as changed again.
                    new.keep_redis_credentials_of(&current);
                }
            }
        }
        events.emit(Reloaded {
            applied: &applied,
            need_restart: &need_restart,
        });
        current = new;
    }
}

async fn relay_until_stopped(
    config: &Settings,
    redis: &LiveRedis,
    services: Services,
    stop: CancellationToken,
    hurry: CancellationToken,
) -> Result<Summary, Error> {
    let Services {
        emitter, health, ..
    } = &services;
    let mut first = true;
    loop {
        let settings = redis.settings();
        health.set_status(format!("waiting for Redis at {}", settings.shown_target()));
        let queue = tokio::select! {
            queue = connect(&settings, &services, first) => Arc::new(queue?),
            () = stop.cancelled() => {
                services.events.emit(Stopping::BeforeRedis);
                return Ok(services.metrics.summary());
            }
        };
        first = false;
        services.events.emit(Connected {
            instance: queue.instance(),
            list: &queue::shown_key(&queue.keys().list),
            dead_letter_list: &queue::shown_key(&queue.keys().dead),
            collector: &emitter.shown_url(),
            method: &config.collector.method,
            master: queue.master_address().as_deref(),
        });
        redis.set_queue(Some(queue.clone()));
        let result =
            super::instance::run_instance(config, queue, &services, stop.clone(), hurry.clone())
                .await;
        redis.set_queue(None);
        match result {
            Err(Error::Queue(error)) if error.needs_new_instance() && !stop.is_cancelled() => {
                // What this instance held is back in the list already (or goes back when
                // its lease expires; or Redis lost it).
                services.events.emit(RegisteringAgain { error: &error });
            }
            other => return other,
        }
    }
}

/// Connects to Redis, checks the permissions the relay needs, recovers the events of
/// relays whose lease expired and registers this instance, retrying with capped backoff
/// for as long as it takes. Missing permissions stop start-up (exit 2), and so do
/// refused credentials at the first start (`first`); later (a new instance after a lost
/// lease, a promoted replica without the user) they are retried, and `/readyz` says why.
async fn connect(
    settings: &RedisSettings,
    services: &Services,
    first: bool,
) -> Result<Queue, Error> {
    let health = &services.health;
    // The connect loop turns at least twice within the liveness bound.
    let mut retry = Retry::new(Backoff {
        initial: Duration::from_millis(200),
        max: (health.stuck_after() / 2).min(Duration::from_secs(30)),
    });
    let url = settings.shown_target();
    loop {
        health.loop_turned();
        let call = services.events.redis_call(RedisOperation::Connect);
        let error = match try_connect(settings, &services.events).await {
            Ok(queue) => {
                call.succeeded();
                return Ok(queue);
            }
            Err(Error::Queue(QueueError::Permission(why))) => {
                return Err(Error::Permissions(format!(
                    "Redis refused a command the relay needs ({}); grant this Redis user the \
                     relay's permissions (docs/operations.md#redis-permissions)",
                    queue::one_line(&why)
                )));
            }
            Err(Error::Queue(error @ QueueError::Auth { .. })) if first => {
                return Err(Error::Credentials(error));
            }
            Err(Error::Queue(error)) => error,
            Err(other) => return Err(other),
        };
        let delay = retry.failed();
        health.set_status(format!(
            "waiting for Redis at {url}: attempt {}, {}",
            retry.failures(),
            queue::one_line(&error.to_string())
        ));
        let hint = match error {
            QueueError::OutOfMemory(_) => "Redis is out of memory; retrying",
            QueueError::Auth { .. } => "cannot log in to Redis; retrying",
            QueueError::Tls(_) => "cannot set up TLS with Redis; retrying",
            QueueError::NoSentinel(_) => "no sentinel says where the master is; retrying",
            _ => "cannot reach Redis; is it running and is redis.url right? Retrying",
        };
        call.failed(&error, &format!("{hint} ({url})"));
        tokio::time::sleep(delay).await;
    }
}

async fn try_connect(settings: &RedisSettings, events: &Observer) -> Result<Queue, Error> {
    let queue = Queue::connect(settings).await?;
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
        events.emit(RedisChecked::Before7);
    }
    match queue.eviction_policy().await {
        Ok(policy) if policy == "noeviction" => {}
        Ok(policy) => events.emit(RedisChecked::Evicting { policy: &policy }),
        Err(why) => events.emit(RedisChecked::NotMade {
            check: "the eviction policy (one that evicts can drop events)",
            command: "CONFIG GET maxmemory-policy",
            why,
        }),
    }
    if let Some(why) = &probe.reply_limit_unread {
        events.emit(RedisChecked::NotMade {
            check: "the reply size limit against events.max_element_bytes",
            command: "CONFIG GET client-output-buffer-limit",
            why: why.clone(),
        });
    }
    if let Err(error) = queue.memory().await {
        events.emit(RedisChecked::NotMade {
            check: "whether Redis is out of memory",
            command: "INFO memory",
            why: error.to_string(),
        });
    }
    // Before anything is recovered: this build must not half-read a newer layout.
    match queue.check_layout().await {
        Ok(found) if found < queue::LAYOUT_VERSION => events.emit(RedisChecked::LayoutUpgraded {
            from: found,
            to: queue::LAYOUT_VERSION,
        }),
        Ok(_) => {}
        Err(error @ QueueError::NewerLayout { .. }) => return Err(Error::NewerLayout(error)),
        Err(error) => return Err(error.into()),
    }
    super::heartbeat::recover_expired(&queue, events).await?;
    queue.register().await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn settings() -> Settings {
        let mut overrides = Overrides::default();
        overrides.set("redis.url", Some("redis://127.0.0.1:6379"));
        overrides.set("collector.url", Some("http://127.0.0.1:9090"));
        Settings::load(None, &overrides, Some(&Default::default())).unwrap()
    }

    #[test]
    fn a_file_rewritten_in_place_counts_as_changed() {
        let old = settings();
        assert!(file_contents_changed(&old, &old.clone()).is_empty());
        let path = std::path::PathBuf::from("/etc/ca.pem");
        let mut new = old.clone();
        new.redis.password = Some("rotated".into());
        new.redis.password_from = config::key::REDIS_PASSWORD_FILE;
        new.redis.tls.ca = Some((b"a renewed CA".to_vec(), path));
        new.redis.tls.client = Some((b"cert".to_vec(), b"key".to_vec()));
        new.collector.client.tls_ca_pem = Some(b"collector CA".to_vec());
        new.collector.client.tls_identity_pem = Some(b"identity".to_vec());
        assert_eq!(
            file_contents_changed(&old, &new),
            [
                config::key::REDIS_PASSWORD_FILE,
                config::key::REDIS_TLS_CA_FILE,
                config::key::REDIS_TLS_CLIENT_CERT_FILE,
                config::key::COLLECTOR_TLS_CA_FILE,
                config::key::COLLECTOR_TLS_CLIENT_CERT_FILE,
            ]
        );
        // Collector TLS files need a restart; Redis credentials are applied.
        for key in &file_contents_changed(&old, &new)[..3] {
            assert_eq!(config::keys::reload_of(key), Reload::Credentials, "{key}");
        }
        for key in &file_contents_changed(&old, &new)[3..] {
            assert_eq!(config::keys::reload_of(key), Reload::Restart, "{key}");
        }
    }
}
