//! The settings the relay runs with: built once from a [`Config`] by validation, typed
//! (durations, parsed URLs, sizes that are always set, PEM and password files already
//! read), and the only thing the rest of the program reads. Each section is checked on
//! its own, then the checks that tie sections together; every error names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use snowplow_relay_tracker::http::ClientSettings;
use snowplow_relay_tracker::protocol::{
    MAX_POST_BYTES, Method, POST_BODY_OVERHEAD, STM_ITEM_BYTES,
};
use snowplow_relay_tracker::retry::Backoff;
use url::Url;

use super::layers::{Layers, Source, key};
use super::{
    CollectorConfig, Config, ConfigError, DEFAULT_POST_BUFFER_SIZE, EventsConfig, LogConfig,
    RedisConfig, WorkerConfig, invalid, mask_url, read_file, world_readable,
};

/// Everything the relay runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events come from.
    pub redis: RedisSettings,
    /// Where events go.
    pub collector: CollectorSettings,
    /// What counts as a relayable event.
    pub events: EventsSettings,
    /// How much the relay holds at once and how it stops.
    pub worker: WorkerSettings,
    /// `[log]`.
    pub log: LogConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// The effective configuration (derived defaults filled in), for `check` and for
    /// telling what a reload changed.
    effective: Config,
    sources: BTreeMap<&'static str, Source>,
    warnings: Vec<String>,
}

/// The settings of the tools that only talk to Redis or the admin listener
/// (`dead-letter`, `healthcheck`, `track` into Redis): no collector needed.
#[derive(Debug, Clone)]
pub struct ToolSettings {
    /// `[redis]`.
    pub redis: RedisSettings,
    /// `[log]`.
    pub log: LogConfig,
    /// The admin listener a `healthcheck` probes.
    pub admin_listen: Option<SocketAddr>,
    warnings: Vec<String>,
}

/// `[redis]`, checked: each field means what its key says (see [`super::RedisConfig`]).
#[derive(Clone)]
pub struct RedisSettings {
    /// The URL, checked by the Redis client's own parser (it may hold credentials).
    pub url: String,
    /// `redis.key`.
    pub key: String,
    /// `redis.dead_letter_key`, its default filled in.
    pub dead_letter_key: String,
    /// `redis.claim_batch_size`.
    pub claim_batch_size: usize,
    /// `redis.claim_max_bytes`.
    pub claim_max_bytes: usize,
    /// `redis.command_timeout_ms`.
    pub command_timeout: Duration,
    /// `redis.lease_ttl_ms`.
    pub lease_ttl: Duration,
    /// `redis.cluster`.
    pub cluster: bool,
    /// The ACL user, from `redis.username` or the URL.
    pub username: Option<String>,
    /// The password from `redis.password` or `redis.password_file` (a URL's stays in
    /// the URL).
    pub password: Option<String>,
    /// Where the password came from, for messages (never the password).
    pub password_from: &'static str,
    /// TLS material, read once (`rediss://` only).
    pub tls: RedisTls,
    /// With a cluster: more seed nodes, `host:port`, besides the URL's.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinel: where to ask for the master.
    pub sentinel: Option<SentinelSettings>,
}

/// `redis.sentinels` and their settings, checked.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The sentinels, `(host, port)`.
    pub endpoints: Vec<(String, u16)>,
    /// The master's name.
    pub master: String,
    /// The sentinels' ACL user.
    pub username: Option<String>,
    /// The sentinels' password (from `sentinel_password` or its file).
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &mask_url(&self.url))
            .field("key", &self.key)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .finish_non_exhaustive()
    }
}

/// Redis TLS material, read from its files once at start-up.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CA bundle that replaces the system's roots, and its file (for messages).
    pub ca: Option<(Vec<u8>, PathBuf)>,
    /// Client certificate and key (PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// `redis.tls_insecure_skip_verify` (or the URL's `#insecure`).
    pub insecure_skip_verify: bool,
}

/// `[collector]`, checked: each field means what its key says (see
/// [`super::CollectorConfig`]).
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// `collector.url`, or `endpoint`/`protocol`/`port` put together: scheme, host, port
    /// and path prefix.
    pub base_url: Url,
    /// `collector.method`.
    pub method: Method,
    /// `collector.buffer_size`, its default for the method filled in (1 for GET).
    pub buffer_size: NonZeroUsize,
    /// `collector.byte_limit`, its default for the method filled in.
    pub byte_limit: NonZeroUsize,
    /// `collector.max_requests_in_flight`.
    pub max_requests_in_flight: usize,
    /// `collector.adaptive_concurrency`.
    pub adaptive_concurrency: bool,
    /// `collector.flush_interval_ms`.
    pub flush_interval: Duration,
    /// What a reload changes at once: the backoff, parking and dead-lettering limits.
    pub retry: RetryPolicy,
    /// The client's settings: request URL, limits, timeout, TLS material read once, proxy.
    pub client: ClientSettings,
}

/// The collector settings a reload (SIGHUP) applies at once, the keys declared
/// [`Reload::Now`](super::keys::Reload::Now) but `log.level`. The relay reads them where
/// a reload publishes them (`Sender::retry_policy`), never from a copy taken at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `collector.retry_initial_backoff_ms` and `retry_max_backoff_ms`.
    pub backoff: Backoff,
    /// `collector.park_after_failures`: failed attempts (with others succeeding) before a
    /// batch is parked.
    pub park_after_failures: u32,
    /// `collector.isolated_failure_limit`: failures of a parked event (with the collector
    /// accepting others) before it is dead-lettered.
    pub isolated_failure_limit: u32,
}

/// `[events]`: which elements are relayed.
#[derive(Debug, Clone, Copy)]
pub struct EventsSettings {
    /// POST: relay field names `payload_data` does not list.
    pub allow_unknown_fields: bool,
    /// `events.max_element_bytes`: larger elements are dead-lettered from Redis.
    pub max_element_bytes: usize,
}

/// `[worker]`: the relay's own bounds.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// `worker.max_claimed_events`.
    pub max_claimed_events: usize,
    /// `worker.max_claimed_bytes`, raised to hold one claim.
    pub max_claimed_bytes: usize,
    /// `worker.drain_timeout_ms`.
    pub drain_timeout: Duration,
    /// `worker.threads`: Tokio worker threads.
    pub threads: usize,
}

impl Settings {
    /// Validates `config` (the layers' `sources` say where values came from, and what
    /// reading them found worth a warning).
    pub fn new(
        mut config: Config,
        sources: BTreeMap<&'static str, Source>,
        mut warnings: Vec<String>,
    ) -> Result<Settings, ConfigError> {
        config.check_ranges()?;
        let redis = RedisSettings::new(&mut config.redis, &mut warnings)?;
        if config.collector.method == Method::Post && config.collector.buffer_size.is_none() {
            // The derived batch size fits a lowered bound on claimed events.
            config.collector.buffer_size = Some(
                NonZeroUsize::new(DEFAULT_POST_BUFFER_SIZE)
                    .expect("non-zero")
                    .min(config.worker.max_claimed_events),
            );
        }
        let collector = CollectorSettings::new(&mut config.collector, &mut warnings)?;
        let events = EventsSettings::new(&mut config.events, &collector)?;
        let worker = WorkerSettings::new(&config.worker, &redis, &collector, &events)?;
        check_log_level(&config.log.level, sources.get(key::LOG_LEVEL))?;
        flag_passwords(&config, &sources, &mut warnings);
        Ok(Settings {
            redis,
            collector,
            events,
            worker,
            log: config.log.clone(),
            admin_listen: config.admin.listen,
            effective: config,
            sources,
            warnings,
        })
    }

    /// Loads defaults < `file` < environment < `overrides` and validates.
    pub fn load(
        file: Option<&Path>,
        overrides: &super::Overrides,
        env: Option<&BTreeMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let layers = Layers::load(file, overrides, env)?;
        Settings::new(
            Config::from_layers(&layers)?,
            layers.sources,
            layers.warnings,
        )
    }

    /// As [`Settings::load`], with the file's text and the environment given (the fuzz
    /// target and tests load settings without touching the disk or the process).
    pub fn load_text(
        file_text: Option<&str>,
        overrides: &super::Overrides,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let file = file_text.map(|text| (Path::new("config.toml"), text));
        let layers = Layers::load_text(file, overrides, env)?;
        Settings::new(
            Config::from_layers(&layers)?,
            layers.sources,
            layers.warnings,
        )
    }

    /// The Redis settings of `running` instead of these (a reload whose credentials Redis
    /// refused keeps the running ones, and remembers them as the values in effect).
    pub fn keep_redis_credentials_of(&mut self, running: &Settings) {
        self.redis = running.redis.clone();
        self.effective.redis = running.effective.redis.clone();
        for key in super::keys::KEYS {
            if key.path.starts_with("redis.") {
                match running.sources.get(key.path) {
                    Some(source) => self.sources.insert(key.path, source.clone()),
                    None => self.sources.remove(key.path),
                };
            }
        }
    }

    /// Where `key`'s value came from, if it was set (not a default).
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }

    /// What validation found worth a warning (logged at start-up, printed by `check`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The effective configuration (derived defaults filled in).
    pub fn effective(&self) -> &Config {
        &self.effective
    }

    /// The configuration as TOML, with credentials in URLs and passwords masked: what the
    /// start-up log line shows.
    pub fn to_masked_toml(&self) -> String {
        self.effective.to_masked_toml()
    }

    /// The effective settings as TOML, secrets masked, each value that is not a default
    /// followed by where it came from: what `check` prints.
    pub fn to_shown_toml(&self) -> String {
        self.effective
            .to_toml_with(|key| self.sources.get(key).map(ToString::to_string))
    }

    /// Every secret in the settings (passwords, user names in URLs), for masking panics.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = url_secrets(&self.redis.url);
        secrets.extend(url_secrets(self.collector.base_url.as_str()));
        if let Some((proxy, _)) = &self.collector.client.proxy {
            secrets.extend(url_secrets(proxy));
        }
        secrets.extend(self.redis.password.clone());
        if let Some(sentinel) = &self.redis.sentinel {
            secrets.extend(sentinel.password.clone());
        }
        secrets
    }
}

impl ToolSettings {
    /// Loads the layers and validates what the tools use; a collector is not needed.
    pub fn load(
        file: Option<&Path>,
        overrides: &super::Overrides,
    ) -> Result<ToolSettings, ConfigError> {
        let layers = Layers::load(file, overrides, None)?;
        let mut config = Config::from_layers(&layers)?;
        config.check_ranges()?;
        let mut warnings = layers.warnings;
        let redis = RedisSettings::new(&mut config.redis, &mut warnings)?;
        check_log_level(&config.log.level, layers.sources.get(key::LOG_LEVEL))?;
        flag_passwords(&config, &layers.sources, &mut warnings);
        Ok(ToolSettings {
            redis,
            log: config.log,
            admin_listen: config.admin.listen,
            warnings,
        })
    }

    /// What validation found worth a warning.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

fn url_secrets(url: &str) -> Vec<String> {
    let Ok(url) = Url::parse(url) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if !url.username().is_empty() {
        secrets.push(url.username().to_owned());
    }
    secrets.extend(url.password().map(str::to_owned));
    secrets
}

/// Warns when a file holding a secret (a password, a private key) can be read by every
/// user of the host.
fn warn_if_world_readable(name: &str, file: &Path, warnings: &mut Vec<String>) {
    if world_readable(file) {
        warnings.push(format!(
            "{name} {} holds a secret and can be read by every user; chmod 600 it",
            file.display()
        ));
    }
}

/// Warns about passwords given as flags: every user of the host can read a process's
/// flags (`ps`).
fn flag_passwords(
    config: &Config,
    sources: &BTreeMap<&'static str, Source>,
    warnings: &mut Vec<String>,
) {
    for (name, url) in [
        (key::REDIS_URL, Some(&config.redis.url)),
        (key::COLLECTOR_URL, config.collector.url.as_ref()),
        (key::COLLECTOR_PROXY, config.collector.proxy.as_ref()),
    ] {
        let from_flag = matches!(sources.get(name), Some(Source::Flag(f)) if f.starts_with("--"));
        let has_password = url
            .and_then(|u| Url::parse(u).ok())
            .is_some_and(|u| u.password().is_some());
        if from_flag && has_password {
            warnings.push(format!(
                "{name} was given as a flag with a password: every user of this host can read \
                 it (ps); give the password in redis.password_file or the environment \
                 (SNOWPLOW_RELAY_REDIS__PASSWORD) instead"
            ));
        }
    }
}

fn check_log_level(level: &str, source: Option<&Source>) -> Result<(), ConfigError> {
    let level = level.trim();
    let is_level_word = matches!(
        level.to_ascii_lowercase().as_str(),
        "off" | "error" | "warn" | "info" | "debug" | "trace"
    );
    let is_directive = level.contains('=') || level.contains(',');
    if is_level_word || is_directive && tracing_subscriber::EnvFilter::try_new(level).is_ok() {
        return Ok(());
    }
    Err(invalid(
        key::LOG_LEVEL,
        format!(
            "error, warn, info, debug, trace, or a filter directive such as \
             snowplow_relay=debug,warn (found `{}`{})",
            crate::text::one_line(level, 64),
            source
                .map(|source| format!(", from {source}"))
                .unwrap_or_default()
        ),
    ))
}

impl RedisSettings {
    fn new(redis: &mut RedisConfig, warnings: &mut Vec<String>) -> Result<Self, ConfigError> {
        let url = Url::parse(&redis.url)
            .map_err(|e| invalid(key::REDIS_URL, format!("a redis:// URL ({e})")))?;
        let unix = matches!(url.scheme(), "unix" | "redis+unix");
        if !unix && !matches!(url.scheme(), "redis" | "rediss") {
            return Err(invalid(
                key::REDIS_URL,
                "a URL starting with redis://, rediss:// (TLS) or unix:// (a socket, \
                 unix:///run/redis/redis-server.sock)",
            ));
        }
        if unix {
            Self::check_unix_url(&url, redis)?;
        }
        {
            use redis::IntoConnectionInfo;
            // The client's own parser: what it refuses here, it would refuse at every
            // connection attempt (a database that is not a number, an unknown protocol,
            // a wildcard address, a password that is not UTF-8, an unknown #fragment).
            if let Err(error) = redis.url.as_str().into_connection_info() {
                return Err(invalid(
                    key::REDIS_URL,
                    format!(
                        "a URL the Redis client accepts, \
                         redis://[[user]:password@]host[:port][/db] ({})",
                        crate::text::one_line(&error.to_string(), 200)
                    ),
                ));
            }
        }
        let tls = Self::tls(redis, url.scheme() == "rediss", warnings)?;
        if url.fragment() == Some("insecure") && !redis.tls_insecure_skip_verify {
            return Err(invalid(
                key::REDIS_URL,
                "no #insecure (certificate checks off) unless redis.tls_insecure_skip_verify = true",
            ));
        }
        let given = [
            url.password().is_some(),
            redis.password.is_some(),
            redis.password_file.is_some(),
        ];
        if given.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                key::REDIS_PASSWORD,
                "one password source: the URL, redis.password (or SNOWPLOW_RELAY_REDIS__PASSWORD) \
                 or redis.password_file",
            ));
        }
        if !url.username().is_empty() && redis.username.is_some() {
            return Err(invalid(
                key::REDIS_USERNAME,
                "one user name: in redis.url or redis.username, not both",
            ));
        }
        let from_file = match &redis.password_file {
            Some(file) => Some(Self::password_file(file, warnings)?),
            None => None,
        };
        let password_from = if url.password().is_some() {
            key::REDIS_URL
        } else if redis.password_file.is_some() {
            key::REDIS_PASSWORD_FILE
        } else if redis.password.is_some() {
            "redis.password (or SNOWPLOW_RELAY_REDIS__PASSWORD)"
        } else {
            "no password"
        };
        if redis.key.is_empty() {
            return Err(invalid(key::REDIS_KEY, "a non-empty list name"));
        }
        if redis.key.contains(['{', '}']) {
            return Err(invalid(
                key::REDIS_KEY,
                "a list name without `{` or `}` (the relay wraps it in a Redis Cluster hash tag)",
            ));
        }
        let dead_letter_key = redis
            .dead_letter_key
            .get_or_insert_with(|| format!("{{{}}}:dead", redis.key))
            .clone();
        check_dead_letter_key(&redis.key, &dead_letter_key, redis.cluster)?;
        let sentinel = Self::sentinel(redis, warnings)?;
        if !redis.cluster_nodes.is_empty() && !redis.cluster {
            return Err(invalid(
                key::REDIS_CLUSTER_NODES,
                "redis.cluster = true (seed nodes are for a Redis Cluster)",
            ));
        }
        Ok(RedisSettings {
            url: redis.url.clone(),
            key: redis.key.clone(),
            dead_letter_key,
            claim_batch_size: redis.claim_batch_size.get(),
            claim_max_bytes: redis.claim_max_bytes.get(),
            command_timeout: Duration::from_millis(redis.command_timeout_ms),
            lease_ttl: Duration::from_millis(redis.lease_ttl_ms),
            cluster: redis.cluster,
            username: redis
                .username
                .clone()
                .or_else(|| Some(url.username().to_owned()).filter(|user| !user.is_empty())),
            password: redis.password.clone().or(from_file),
            password_from,
            tls,
            cluster_nodes: redis.cluster_nodes.clone(),
            sentinel,
        })
    }

    /// A unix socket URL: `unix:///path` with `?db=N` at most. Credentials come from the
    /// other settings (redis-rs would read `?user=` and `?pass=`, which nothing masks), and
    /// a socket is one server: no cluster, no sentinels.
    fn check_unix_url(url: &Url, redis: &RedisConfig) -> Result<(), ConfigError> {
        if url.path().is_empty() || url.path() == "/" {
            return Err(invalid(
                key::REDIS_URL,
                "a socket's path after unix://, e.g. unix:///run/redis/redis-server.sock",
            ));
        }
        if url.host_str().is_some_and(|host| !host.is_empty()) {
            return Err(invalid(
                key::REDIS_URL,
                "unix:// followed by an absolute path (three slashes: \
                 unix:///run/redis/redis-server.sock)",
            ));
        }
        if let Some((name, _)) = url.query_pairs().find(|(name, _)| name != "db") {
            return Err(invalid(
                key::REDIS_URL,
                format!(
                    "a unix:// URL with ?db=N at most (found ?{name}=): give the user as \
                     redis.username and the password as redis.password_file"
                ),
            ));
        }
        if redis.cluster || !redis.sentinels.is_empty() {
            return Err(invalid(
                key::REDIS_URL,
                "a redis:// URL with redis.cluster or redis.sentinels (a unix socket is one \
                 server on this machine)",
            ));
        }
        Ok(())
    }

    /// `redis.sentinels` and their settings, checked; `None` without sentinels.
    fn sentinel(
        redis: &RedisConfig,
        warnings: &mut Vec<String>,
    ) -> Result<Option<SentinelSettings>, ConfigError> {
        if redis.sentinels.is_empty() {
            for (name, set) in [
                (key::REDIS_SENTINEL_MASTER, redis.sentinel_master.is_some()),
                (
                    key::REDIS_SENTINEL_USERNAME,
                    redis.sentinel_username.is_some(),
                ),
                (
                    key::REDIS_SENTINEL_PASSWORD,
                    redis.sentinel_password.is_some(),
                ),
                (
                    key::REDIS_SENTINEL_PASSWORD_FILE,
                    redis.sentinel_password_file.is_some(),
                ),
            ] {
                if set {
                    return Err(invalid(
                        name,
                        "redis.sentinels too (it does nothing without sentinels)",
                    ));
                }
            }
            return Ok(None);
        }
        if redis.cluster {
            return Err(invalid(
                key::REDIS_SENTINELS,
                "no sentinels with redis.cluster = true (a Redis Cluster fails over by itself)",
            ));
        }
        let master = match redis.sentinel_master.as_deref() {
            Some(master) if !master.is_empty() => master.to_owned(),
            _ => {
                return Err(invalid(
                    key::REDIS_SENTINEL_MASTER,
                    "the master's name in the sentinels' configuration (e.g. mymaster), \
                     since redis.sentinels is set",
                ));
            }
        };
        if redis.sentinel_password.is_some() && redis.sentinel_password_file.is_some() {
            return Err(invalid(
                key::REDIS_SENTINEL_PASSWORD,
                "one sentinel password source: redis.sentinel_password or \
                 redis.sentinel_password_file",
            ));
        }
        let from_file = match &redis.sentinel_password_file {
            Some(file) => {
                let text = read_file(key::REDIS_SENTINEL_PASSWORD_FILE, file)?;
                let text = String::from_utf8(text).map_err(|_| {
                    invalid(
                        key::REDIS_SENTINEL_PASSWORD_FILE,
                        "a file holding the password as UTF-8 text",
                    )
                })?;
                warn_if_world_readable(key::REDIS_SENTINEL_PASSWORD_FILE, file, warnings);
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            None => None,
        };
        let endpoints = redis
            .sentinels
            .iter()
            .map(|endpoint| {
                let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, ""));
                let port = port
                    .parse::<u16>()
                    .map_err(|_| invalid(key::REDIS_SENTINELS, "\"host:port\" endpoints"))?;
                Ok((host.trim_matches(['[', ']']).to_owned(), port))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Some(SentinelSettings {
            endpoints,
            master,
            username: redis.sentinel_username.clone(),
            password: redis.sentinel_password.clone().or(from_file),
        }))
    }

    /// The TLS files, read (`rediss://` only; each a readable file).
    fn tls(
        redis: &RedisConfig,
        tls: bool,
        warnings: &mut Vec<String>,
    ) -> Result<RedisTls, ConfigError> {
        for (name, set) in [
            (key::REDIS_TLS_CA_FILE, redis.tls_ca_file.is_some()),
            (
                key::REDIS_TLS_CLIENT_CERT_FILE,
                redis.tls_client_cert_file.is_some(),
            ),
            (
                key::REDIS_TLS_CLIENT_KEY_FILE,
                redis.tls_client_key_file.is_some(),
            ),
            (
                key::REDIS_TLS_INSECURE_SKIP_VERIFY,
                redis.tls_insecure_skip_verify,
            ),
        ] {
            if set && !tls {
                return Err(invalid(
                    name,
                    "a rediss:// redis.url (TLS); it does nothing for redis://",
                ));
            }
        }
        let ca = match &redis.tls_ca_file {
            Some(file) => Some((read_file(key::REDIS_TLS_CA_FILE, file)?, file.clone())),
            None => None,
        };
        let client = match (&redis.tls_client_cert_file, &redis.tls_client_key_file) {
            (Some(cert), Some(private)) => {
                warn_if_world_readable(key::REDIS_TLS_CLIENT_KEY_FILE, private, warnings);
                Some((
                    read_file(key::REDIS_TLS_CLIENT_CERT_FILE, cert)?,
                    read_file(key::REDIS_TLS_CLIENT_KEY_FILE, private)?,
                ))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    key::REDIS_TLS_CLIENT_CERT_FILE,
                    "both redis.tls_client_cert_file and redis.tls_client_key_file, or neither",
                ));
            }
        };
        Ok(RedisTls {
            ca,
            client,
            insecure_skip_verify: redis.tls_insecure_skip_verify,
        })
    }

    fn password_file(file: &Path, warnings: &mut Vec<String>) -> Result<String, ConfigError> {
        let text = read_file(key::REDIS_PASSWORD_FILE, file)?;
        let text = String::from_utf8(text).map_err(|_| {
            invalid(
                key::REDIS_PASSWORD_FILE,
                "a file holding the password as UTF-8 text",
            )
        })?;
        warn_if_world_readable(key::REDIS_PASSWORD_FILE, file, warnings);
        Ok(text.trim_end_matches(['\n', '\r']).to_owned())
    }

    /// Where Redis is, for messages: the URL's host, or the master's name and the
    /// sentinels.
    pub fn shown_target(&self) -> String {
        match &self.sentinel {
            Some(sentinel) => {
                let sentinels: Vec<String> = sentinel
                    .endpoints
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect();
                format!(
                    "master {} via sentinels {}",
                    sentinel.master,
                    sentinels.join(", ")
                )
            }
            None => crate::config::mask_url(&self.url),
        }
    }

    /// The host `url` names, for messages.
    pub fn host(&self) -> String {
        Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The dead-letter list must be a list the relay never reads from: not the list, not one
/// of its companion keys; and in a Redis Cluster it must share the list's hash slot (the
/// scripts touch both), i.e. carry the `{list}` hash tag.
fn check_dead_letter_key(list: &str, dead: &str, cluster: bool) -> Result<(), ConfigError> {
    if dead.is_empty() {
        return Err(invalid(key::REDIS_DEAD_LETTER_KEY, "a non-empty list name"));
    }
    if dead == list {
        return Err(invalid(
            key::REDIS_DEAD_LETTER_KEY,
            "a list other than redis.key: the relay would claim its own dead letters again, \
             forever",
        ));
    }
    let prefix = format!("{{{list}}}:");
    if let Some(rest) = dead.strip_prefix(&prefix)
        && (rest == "instances"
            || ["inflight:", "retry:", "instance:", "lease:"]
                .iter()
                .any(|companion| rest.starts_with(companion)))
    {
        return Err(invalid(
            key::REDIS_DEAD_LETTER_KEY,
            format!(
                "a name that is not one of the relay's own keys ({prefix}inflight:*, \
                 {prefix}retry:*, {prefix}instance:*, {prefix}lease:*, {prefix}instances), \
                 e.g. {prefix}dead"
            ),
        ));
    }
    // Redis Cluster hashes only the first non-empty {…} of a key.
    let tag = dead
        .find('{')
        .and_then(|open| {
            let rest = &dead[open + 1..];
            rest.find('}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    if cluster && tag != Some(list) {
        return Err(invalid(
            key::REDIS_DEAD_LETTER_KEY,
            format!(
                "a name with the list's hash tag {{{list}}} (e.g. {prefix}dead): in a Redis \
                 Cluster every key a script touches must be in one slot"
            ),
        ));
    }
    Ok(())
}

/// A collector URL with the request path pasted on (`…/com.snowplowanalytics.snowplow/tp2`,
/// `…/i`) is refused: the relay adds the path itself, and would post to `…/tp2/…/tp2`,
/// a 404 retried for ever as if the collector were down.
fn check_no_request_path(base_url: &Url, post_path: &str) -> Result<(), ConfigError> {
    let path = base_url.path().trim_end_matches('/');
    let post_path = post_path.trim_end_matches('/');
    let pasted = [post_path, "/com.snowplowanalytics.snowplow/tp2", "/i"]
        .into_iter()
        .find(|request_path| !request_path.is_empty() && path.ends_with(request_path));
    match pasted {
        None => Ok(()),
        Some(request_path) => {
            let mut base = base_url.clone();
            base.set_path(&path[..path.len() - request_path.len()]);
            Err(invalid(
                key::COLLECTOR_URL,
                format!(
                    "the collector's address without the request path, e.g. {}: the relay adds \
                     /i (GET) or collector.post_path (POST) itself, and this URL already ends \
                     with {request_path}",
                    super::mask_url(base.as_str())
                ),
            ))
        }
    }
}

impl CollectorSettings {
    fn new(
        collector: &mut CollectorConfig,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        if collector.url.is_none() && collector.endpoint.is_none() {
            return Err(invalid(
                key::COLLECTOR_URL,
                "a collector, as collector.url (e.g. https://collector.example.com) or \
                 collector.endpoint (a host name); --collector URL on the command line",
            ));
        }
        let base_url = collector.base_url()?;
        if !collector.post_path.starts_with('/') {
            return Err(invalid(
                key::COLLECTOR_POST_PATH,
                "a path starting with `/`",
            ));
        }
        check_no_request_path(&base_url, &collector.post_path)?;
        let (buffer_size, byte_limit) = Self::batching(collector)?;
        if let Some(bad) = collector
            .no_retry_statuses
            .iter()
            .find(|s| !(300..=599).contains(*s))
        {
            return Err(invalid(
                key::COLLECTOR_NO_RETRY_STATUSES,
                format!("HTTP statuses from 300 to 599 (found {bad})"),
            ));
        }
        if collector.retry_max_backoff_ms < collector.retry_initial_backoff_ms {
            return Err(invalid(
                key::COLLECTOR_RETRY_MAX_BACKOFF_MS,
                "at least collector.retry_initial_backoff_ms",
            ));
        }
        let client = Self::client(collector, byte_limit, warnings)?;
        Ok(CollectorSettings {
            base_url,
            method: collector.method,
            buffer_size,
            byte_limit,
            max_requests_in_flight: collector.max_requests_in_flight.get(),
            adaptive_concurrency: collector.adaptive_concurrency,
            flush_interval: Duration::from_millis(collector.flush_interval_ms),
            retry: RetryPolicy {
                backoff: Backoff {
                    initial: Duration::from_millis(collector.retry_initial_backoff_ms),
                    max: Duration::from_millis(collector.retry_max_backoff_ms),
                },
                park_after_failures: collector.park_after_failures,
                isolated_failure_limit: collector.isolated_failure_limit,
            },
            client,
        })
    }

    /// Events per request and the byte limit, with the method's defaults filled in.
    fn batching(
        collector: &mut CollectorConfig,
    ) -> Result<(NonZeroUsize, NonZeroUsize), ConfigError> {
        match collector.method {
            Method::Get => {
                if collector.buffer_size.is_some_and(|n| n.get() != 1) {
                    return Err(invalid(
                        key::COLLECTOR_BUFFER_SIZE,
                        "1 or unset: GET sends one event per request (use method = \"post\" \
                         to batch)",
                    ));
                }
                let limit = *collector
                    .byte_limit
                    .get_or_insert(NonZeroUsize::new(16_000).expect("non-zero"));
                Ok((*collector.buffer_size.insert(NonZeroUsize::MIN), limit))
            }
            Method::Post => {
                let size = *collector
                    .buffer_size
                    .get_or_insert(NonZeroUsize::new(DEFAULT_POST_BUFFER_SIZE).expect("non-zero"));
                let limit = *collector
                    .byte_limit
                    .get_or_insert(NonZeroUsize::new(1_000_000).expect("non-zero"));
                if limit.get() > MAX_POST_BYTES {
                    return Err(invalid(
                        key::COLLECTOR_BYTE_LIMIT,
                        format!(
                            "at most {MAX_POST_BYTES} bytes for POST: the collector turns \
                             larger bodies into bad rows"
                        ),
                    ));
                }
                if limit.get() < 1024 {
                    return Err(invalid(key::COLLECTOR_BYTE_LIMIT, "at least 1024 bytes"));
                }
                Ok((size, limit))
            }
        }
    }

    /// The collector client's settings, with the TLS files read once.
    fn client(
        collector: &CollectorConfig,
        byte_limit: NonZeroUsize,
        warnings: &mut Vec<String>,
    ) -> Result<ClientSettings, ConfigError> {
        let ca = match &collector.tls_ca_file {
            Some(file) => Some(read_file(key::COLLECTOR_TLS_CA_FILE, file)?),
            None => None,
        };
        if collector.tls_ca_only && ca.is_none() {
            return Err(invalid(
                key::COLLECTOR_TLS_CA_ONLY,
                "collector.tls_ca_file as well (the CA to trust alone)",
            ));
        }
        let identity = match (
            &collector.tls_client_cert_file,
            &collector.tls_client_key_file,
        ) {
            (Some(cert), Some(private)) => {
                warn_if_world_readable(key::COLLECTOR_TLS_CLIENT_KEY_FILE, private, warnings);
                let mut pem = read_file(key::COLLECTOR_TLS_CLIENT_CERT_FILE, cert)?;
                pem.push(b'\n');
                pem.extend(read_file(key::COLLECTOR_TLS_CLIENT_KEY_FILE, private)?);
                Some(pem)
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    key::COLLECTOR_TLS_CLIENT_CERT_FILE,
                    "both collector.tls_client_cert_file and collector.tls_client_key_file, \
                     or neither",
                ));
            }
        };
        if let Some(proxy) = &collector.proxy {
            let parsed = Url::parse(proxy).map_err(|_| {
                invalid(
                    key::COLLECTOR_PROXY,
                    "a proxy URL such as http://proxy.example.com:3128",
                )
            })?;
            // The relay speaks HTTP to its proxy (CONNECT for an https collector): a
            // proxy it cannot use is refused here, not met by every request.
            if parsed.scheme() != "http" {
                return Err(invalid(
                    key::COLLECTOR_PROXY,
                    "an http:// proxy URL (https:// and socks5:// proxies are not supported)",
                ));
            }
        }
        if collector.no_proxy.is_some() && collector.proxy.is_none() {
            return Err(invalid(key::COLLECTOR_NO_PROXY, "collector.proxy as well"));
        }
        Ok(ClientSettings {
            url: Some(collector.request_url()?),
            method: Some(collector.method),
            byte_limit: Some(byte_limit),
            no_retry_statuses: collector.no_retry_statuses.clone(),
            request_timeout: Some(collector.request_timeout()),
            anonymous: collector.anonymous,
            max_idle_connections: collector.max_requests_in_flight.get(),
            tls_ca_pem: ca,
            tls_ca_only: collector.tls_ca_only,
            tls_identity_pem: identity,
            proxy: collector
                .proxy
                .clone()
                .map(|proxy| (proxy, collector.no_proxy.clone())),
        })
    }
}

impl EventsSettings {
    /// The largest element one request can carry, the default of `max_element_bytes`.
    fn new(events: &mut EventsConfig, collector: &CollectorSettings) -> Result<Self, ConfigError> {
        let byte_limit = collector.byte_limit.get();
        // The POST item adds `stm` and the envelope; the GET URL is at least as long as
        // the pairs.
        let sendable = match collector.method {
            Method::Post => byte_limit.saturating_sub(POST_BODY_OVERHEAD + STM_ITEM_BYTES + 1),
            Method::Get => byte_limit,
        };
        let max = match events.max_element_bytes {
            Some(limit) if limit.get() > sendable => {
                return Err(invalid(
                    key::EVENTS_MAX_ELEMENT_BYTES,
                    format!(
                        "at most {sendable} bytes: with collector.byte_limit = {byte_limit} no \
                         larger element can be sent"
                    ),
                ));
            }
            Some(limit) => limit,
            None => NonZeroUsize::new(sendable)
                .ok_or_else(|| invalid(key::COLLECTOR_BYTE_LIMIT, "room for one event"))?,
        };
        events.max_element_bytes = Some(max);
        Ok(EventsSettings {
            allow_unknown_fields: events.allow_unknown_fields,
            max_element_bytes: max.get(),
        })
    }
}

impl WorkerSettings {
    /// The bounds, checked against what one claim and one batch need.
    fn new(
        worker: &WorkerConfig,
        redis: &RedisSettings,
        collector: &CollectorSettings,
        events: &EventsSettings,
    ) -> Result<Self, ConfigError> {
        let max_events = worker.max_claimed_events.get();
        if max_events < redis.claim_batch_size {
            return Err(invalid(
                key::WORKER_MAX_CLAIMED_EVENTS,
                format!(
                    "at least redis.claim_batch_size ({})",
                    redis.claim_batch_size
                ),
            ));
        }
        let buffer_size = collector.buffer_size.get();
        if max_events < buffer_size {
            return Err(invalid(
                key::COLLECTOR_BUFFER_SIZE,
                format!(
                    "at most worker.max_claimed_events ({max_events}): a batch of \
                     {buffer_size} events could never fill"
                ),
            ));
        }
        if redis.claim_max_bytes < events.max_element_bytes {
            return Err(invalid(
                key::REDIS_CLAIM_MAX_BYTES,
                format!(
                    "at least events.max_element_bytes ({}), so that every relayable element \
                     can be claimed",
                    events.max_element_bytes
                ),
            ));
        }
        if worker.max_claimed_bytes.get() < redis.claim_max_bytes {
            return Err(invalid(
                key::WORKER_MAX_CLAIMED_BYTES,
                format!("at least redis.claim_max_bytes ({})", redis.claim_max_bytes),
            ));
        }
        Ok(WorkerSettings {
            max_claimed_events: max_events,
            max_claimed_bytes: worker.max_claimed_bytes.get(),
            drain_timeout: Duration::from_millis(worker.drain_timeout_ms),
            threads: worker.threads.get(),
        })
    }
}
