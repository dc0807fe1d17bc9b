//! Typed, documented settings, loaded in layers and validated once at start-up.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config FILE`, or the file
//! `SNOWPLOW_RELAY_CONFIG` names) < environment (`SNOWPLOW_RELAY_<SECTION>__<KEY>`, e.g.
//! `SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE=100`; lists comma-separated) < command-line
//! flags ([`layers`]). Unknown keys are errors, so a typo never silently falls back to a
//! default. `config/snowplow-relay.toml` documents every key with its default; keep it in
//! step with the doc comments here.
//!
//! [`Config::load`] returns a [`Valid`] configuration whose method-dependent defaults
//! (`buffer_size`, `byte_limit`, `dead_letter_key`) are filled in and whose values were
//! all checked, so the rest of the program never re-validates.

pub mod layers;

pub use layers::{Overrides, Source};

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

pub use snowplow_relay_tracker::protocol::{MAX_POST_BYTES, Method};
use snowplow_relay_tracker::protocol::{POST_BODY_OVERHEAD, STM_ITEM_BYTES};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events come from.
    pub redis: RedisConfig,
    /// Where events go.
    pub collector: CollectorConfig,
    /// What counts as a relayable event.
    pub events: EventsConfig,
    /// How much the relay holds at once and how it stops.
    pub worker: WorkerConfig,
    /// Log output.
    pub log: LogConfig,
    /// The admin listener: metrics and health.
    pub admin: AdminConfig,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `127.0.0.1:9187` (loopback: only this host can scrape)
    /// or `0.0.0.0:9187` (in a container). Off when unset.
    pub listen: Option<std::net::SocketAddr>,
}

/// The Redis side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL, `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS.
    /// Credentials are masked in logs and `check`.
    pub url: String,
    /// The list producers RPUSH events onto.
    pub key: String,
    /// The dead-letter list. Default: `{<key>}:dead`, in the list's Redis Cluster slot.
    pub dead_letter_key: Option<String>,
    /// Events claimed per Redis round trip (at most 8000, a Lua stack limit).
    pub claim_batch_size: NonZeroUsize,
    /// Most bytes of events one claim takes, enforced inside the claim script: it bounds
    /// what one reply makes Redis build and send, however large the elements are. At
    /// least `events.max_element_bytes`, so every relayable element can be claimed.
    pub claim_max_bytes: NonZeroUsize,
    /// How long one Redis command may take before it counts as failed, in milliseconds.
    pub command_timeout_ms: u64,
    /// Lifetime of this relay's lease, renewed every third of it. When a relay dies, its
    /// claimed events return to the list once its lease runs out, so this bounds how long
    /// a crash delays them. 30 s outlasts a Redis failover or a long pause without
    /// mistaking a live relay for a dead one.
    pub lease_ttl_ms: u64,
    /// `url` is a node of a Redis Cluster (the others are discovered from it). The
    /// relay's keys share the list's hash slot, so every script runs on one node.
    pub cluster: bool,
    /// ACL user name (Redis 6+). Also possible in the URL: `redis://user:pass@host`.
    pub username: Option<String>,
    /// Password. Prefer `password_file` or `SNOWPLOW_RELAY_REDIS__PASSWORD`; a password
    /// in a file the relay reads is never shown (`check` prints `****`).
    pub password: Option<String>,
    /// File holding the password (read at start-up, trailing newline dropped; a warning
    /// if others can read it).
    pub password_file: Option<std::path::PathBuf>,
    /// `rediss://` only: PEM bundle of the CA(s) to trust instead of the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// `rediss://` only: PEM client certificate for mutual TLS (with `tls_client_key_file`).
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// `rediss://` only: PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<std::path::PathBuf>,
    /// `rediss://` only: do not verify Redis's certificate. Dangerous (anyone on the path
    /// can read and change the traffic); logged loudly. Also required for a URL ending in
    /// `#insecure`.
    pub tls_insecure_skip_verify: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key: "snowplow".into(),
            dead_letter_key: None,
            claim_batch_size: NonZeroUsize::new(500).unwrap(),
            claim_max_bytes: NonZeroUsize::new(4 * 1024 * 1024).unwrap(),
            command_timeout_ms: 5_000,
            lease_ttl_ms: 30_000,
            cluster: false,
            username: None,
            password: None,
            password_file: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            tls_insecure_skip_verify: false,
        }
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Protocol {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS, verified against the system's trust store.
    Https,
}

/// The collector side, named as the trackers' `Emitter` names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// The collector as one URL, e.g. `https://collector.example.com` or
    /// `http://127.0.0.1:8080/prefix`. Use this or `endpoint`, not both.
    pub url: Option<String>,
    /// Collector host name, without scheme (the trackers' `endpoint`).
    pub endpoint: Option<String>,
    /// `http` or `https`, used with `endpoint` (default `https`).
    pub protocol: Option<Protocol>,
    /// Port, used with `endpoint`. Default: the protocol's.
    pub port: Option<u16>,
    /// `get` or `post`.
    pub method: Method,
    /// Path of POST requests.
    pub post_path: String,
    /// Events per POST request. Default: 50 for POST (`DEFAULT_POST_BUFFER_SIZE`); GET
    /// always sends one per request. A partial batch is sent as soon as the list runs dry
    /// or after `flush_interval_ms`, so a larger value costs no latency.
    pub buffer_size: Option<NonZeroUsize>,
    /// Upper bound in bytes for one POST body, or for one GET request's URL.
    /// Default: 1,000,000 for POST (the collector turns bodies above 1 MiB into bad rows,
    /// so at most 1,048,576), 16,000 for GET (collectors refuse request lines of ~20 KB).
    pub byte_limit: Option<NonZeroUsize>,
    /// Requests on the wire at once (at most 1024).
    pub max_requests_in_flight: NonZeroUsize,
    /// A partial batch waits at most this long for more events before it is sent, in
    /// milliseconds. (It is also sent as soon as the list runs dry.)
    pub flush_interval_ms: u64,
    /// A batch that failed this many times, while other requests to the collector
    /// succeeded since its first attempt, is parked: it leaves the relay's window for
    /// this relay's retry list in Redis, so that it holds back no other event, and each of
    /// its events is retried on its own. A collector failing every request is an outage:
    /// nothing is parked or dead-lettered, everything is retried.
    pub park_after_failures: u32,
    /// A parked event that failed this many more times, each while other requests
    /// succeeded, is dead-lettered with the status and the attempt count. Failures during
    /// an outage do not count. (A 413 splits a batch at once, and dead-letters a single
    /// event.)
    pub isolated_failure_limit: u32,
    /// Time allowed for one request, connect to last byte, in milliseconds.
    pub request_timeout_ms: u64,
    /// HTTP statuses that are never retried: the batch goes to the dead-letter list.
    /// Every other non-2xx status, a timeout or a connection error is retried.
    pub no_retry_statuses: Vec<u16>,
    /// First retry delay in milliseconds; doubled per attempt, each delay jittered between
    /// half and all of it.
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    pub retry_max_backoff_ms: u64,
    /// Send `SP-Anonymous: *`, so the collector neither reads nor sets its cookie and
    /// drops the IP address.
    pub anonymous: bool,
    /// PEM bundle of extra CA(s) to trust for an `https` collector, added to the system's
    /// roots (or used alone with `tls_ca_only`).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Trust only `tls_ca_file`, not the system's roots.
    pub tls_ca_only: bool,
    /// PEM client certificate for mutual TLS with the collector (with
    /// `tls_client_key_file`).
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<std::path::PathBuf>,
    /// Proxy for collector requests, e.g. `http://user:pass@proxy:3128` (credentials
    /// masked in logs). Unset: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment
    /// apply, as curl reads them.
    pub proxy: Option<String>,
    /// With `proxy`: comma-separated hosts reached directly (as `NO_PROXY`).
    pub no_proxy: Option<String>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            url: None,
            endpoint: None,
            protocol: None,
            port: None,
            method: Method::Post,
            post_path: "/com.snowplowanalytics.snowplow/tp2".into(),
            buffer_size: None,
            byte_limit: None,
            max_requests_in_flight: NonZeroUsize::new(16).unwrap(),
            flush_interval_ms: 500,
            park_after_failures: 3,
            isolated_failure_limit: 5,
            request_timeout_ms: 5_000,
            no_retry_statuses: vec![400, 401, 403, 410, 422],
            retry_initial_backoff_ms: 500,
            retry_max_backoff_ms: 30_000,
            anonymous: false,
            tls_ca_file: None,
            tls_ca_only: false,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            proxy: None,
            no_proxy: None,
        }
    }
}

/// Which elements are relayed; everything else goes to the dead-letter list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// POST: relay field names that `payload_data` 1-0-4 does not list. Off by default:
    /// one unknown name makes the collector's enrichment reject the whole POST batch.
    /// GET always passes unknown names through (query strings are not validated
    /// against `payload_data`).
    pub allow_unknown_fields: bool,
    /// Elements larger than this many bytes go to the dead-letter list, straight from
    /// Redis. Default (and maximum): the largest element a request can carry, i.e.
    /// `collector.byte_limit` less the POST envelope and `stm` for POST, the URL limit
    /// for GET.
    pub max_element_bytes: Option<NonZeroUsize>,
}

/// The relay's own bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Most events claimed from Redis and not yet acknowledged. This bounds memory: with
    /// the collector down the relay holds at most this many events and the backlog stays
    /// in Redis.
    pub max_claimed_events: NonZeroUsize,
    /// Most bytes of events claimed and not yet acknowledged: the memory bound in bytes,
    /// whatever the elements' sizes. At least `redis.claim_max_bytes`.
    pub max_claimed_bytes: NonZeroUsize,
    /// On SIGINT/SIGTERM/SIGQUIT, how long in-flight requests may finish before the
    /// undelivered events go back to the head of the list, in milliseconds. Returning
    /// them takes at most [`crate::worker::RELEASE_BUDGET`] (2 s) more, so keep this at
    /// least that much below Docker's 10 s stop grace and systemd's stop timeout.
    pub drain_timeout_ms: u64,
    /// Threads that run the relay (at most 64). 1, the default, runs every task on one
    /// thread: the least CPU per event (no wake-ups across threads); it relays well over
    /// 100,000 events/s. More threads add throughput for many collector requests in
    /// flight (GET, TLS) at some CPU cost per event.
    pub threads: NonZeroUsize,
}

/// Events per POST request unless `collector.buffer_size` says otherwise. Measured with
/// `cargo bench --bench relay` (README, Performance): 10 costs twice the CPU per event
/// of 50, and 200 gains nothing over 50.
pub const DEFAULT_POST_BUFFER_SIZE: usize = 50;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_claimed_events: NonZeroUsize::new(10_000).unwrap(),
            max_claimed_bytes: NonZeroUsize::new(32 * 1024 * 1024).unwrap(),
            drain_timeout_ms: 5_000,
            threads: NonZeroUsize::MIN,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a `tracing` filter directive such as
    /// `snowplow_relay=debug,warn`. `RUST_LOG`, when set, takes precedence.
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the configuration was refused. Start-up stops with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the right type but is out of range or inconsistent.
    #[error("configuration: invalid `{key}`: {expected}")]
    Invalid {
        /// Dotted key path, e.g. `collector.byte_limit`.
        key: &'static str,
        /// What is expected instead.
        expected: String,
    },
}

fn invalid(key: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        expected: expected.into(),
    }
}

impl Config {
    /// Loads defaults < `file` < environment < `overrides`, then validates and fills in
    /// derived defaults.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Valid, ConfigError> {
        Self::load_with_env(file, overrides, None)
    }

    /// As [`Config::load`], reading the environment from `env` instead of the process when
    /// given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Valid, ConfigError> {
        let env: Option<std::collections::BTreeMap<String, String>> =
            env.map(|env| env.into_iter().collect());
        let layers = layers::Layers::load(file, overrides, env.as_ref())?;
        let mut valid = Self::from_layers(&layers)?.validate()?;
        valid.set_sources(layers.sources);
        Ok(valid)
    }

    /// As [`Config::load`], with the file's text and the environment given (the fuzz
    /// target and tests load settings without touching the disk or the process).
    pub fn load_text(
        file_text: Option<&str>,
        overrides: &Overrides,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Valid, ConfigError> {
        let file = file_text.map(|text| (Path::new("config.toml"), text));
        let layers = layers::Layers::load_text(file, overrides, env)?;
        let mut valid = Self::from_layers(&layers)?.validate()?;
        valid.set_sources(layers.sources);
        Ok(valid)
    }

    /// For commands that only talk to Redis (`dead-letter …`): as [`Config::load`], but a
    /// missing collector is not an error.
    pub fn load_for_redis_tools(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Valid, ConfigError> {
        let (mut config, layers) = Self::load_unvalidated(file, overrides, None)?;
        if config.collector.url.is_none() && config.collector.endpoint.is_none() {
            // Validation needs a collector; the tools never use it.
            config.collector.endpoint = Some("unused.invalid".into());
        }
        let mut valid = config.validate()?;
        valid.set_sources(layers.sources);
        Ok(valid)
    }

    fn load_unvalidated(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<(Config, layers::Layers), ConfigError> {
        let env: Option<std::collections::BTreeMap<String, String>> =
            env.map(|env| env.into_iter().collect());
        let layers = layers::Layers::load(file, overrides, env.as_ref())?;
        Ok((Self::from_layers(&layers)?, layers))
    }

    /// The settings the layers give (every value already of its key's type).
    fn from_layers(layers: &layers::Layers) -> Result<Config, ConfigError> {
        toml::Value::Table(layers.table.clone())
            .try_into::<Config>()
            .map_err(|e| ConfigError::Invalid {
                key: "file",
                expected: crate::telemetry::one_line(e.message(), 300),
            })
    }

    /// Checks ranges and consistency, fills in the method-dependent defaults and returns
    /// the only kind of configuration the relay runs with.
    pub fn validate(mut self) -> Result<Valid, ConfigError> {
        layers::check_ranges(&self)?;
        let redis = &mut self.redis;
        let redis_url = Url::parse(&redis.url)
            .map_err(|e| invalid("redis.url", format!("a redis:// URL ({e})")))?;
        if !matches!(redis_url.scheme(), "redis" | "rediss") {
            return Err(invalid(
                "redis.url",
                "a URL starting with redis:// or rediss:// (TLS)",
            ));
        }
        {
            use redis::IntoConnectionInfo;
            // The client's own parser: what it refuses here, it would refuse at every
            // connection attempt (a database that is not a number, an unknown protocol,
            // a wildcard address, a password that is not UTF-8, an unknown #fragment).
            if let Err(error) = redis.url.as_str().into_connection_info() {
                return Err(invalid(
                    "redis.url",
                    format!(
                        "a URL the Redis client accepts, redis://[[user]:password@]host[:port][/db] \
                         ({})",
                        crate::telemetry::one_line(&error.to_string(), 200)
                    ),
                ));
            }
        }
        let tls = redis_url.scheme() == "rediss";
        for (key, set) in [
            ("redis.tls_ca_file", redis.tls_ca_file.is_some()),
            (
                "redis.tls_client_cert_file",
                redis.tls_client_cert_file.is_some(),
            ),
            (
                "redis.tls_client_key_file",
                redis.tls_client_key_file.is_some(),
            ),
            (
                "redis.tls_insecure_skip_verify",
                redis.tls_insecure_skip_verify,
            ),
        ] {
            if set && !tls {
                return Err(invalid(
                    key,
                    "a rediss:// redis.url (TLS); it does nothing for redis://",
                ));
            }
        }
        if redis_url.fragment() == Some("insecure") && !redis.tls_insecure_skip_verify {
            return Err(invalid(
                "redis.url",
                "no #insecure (certificate checks off) unless redis.tls_insecure_skip_verify = true",
            ));
        }
        if redis.tls_client_cert_file.is_some() != redis.tls_client_key_file.is_some() {
            return Err(invalid(
                "redis.tls_client_cert_file",
                "both redis.tls_client_cert_file and redis.tls_client_key_file, or neither",
            ));
        }
        for (key, file) in [
            ("redis.tls_ca_file", &redis.tls_ca_file),
            ("redis.tls_client_cert_file", &redis.tls_client_cert_file),
            ("redis.tls_client_key_file", &redis.tls_client_key_file),
        ] {
            if let Some(file) = file {
                read_file(key, file)?;
            }
        }
        let sources = [
            redis_url.password().is_some(),
            redis.password.is_some(),
            redis.password_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "redis.password",
                "one password source: the URL, redis.password (or SNOWPLOW_RELAY_REDIS__PASSWORD) \
                 or redis.password_file",
            ));
        }
        if !redis_url.username().is_empty() && redis.username.is_some() {
            return Err(invalid(
                "redis.username",
                "one user name: in redis.url or redis.username, not both",
            ));
        }
        let mut warnings = Vec::new();
        let password_file_secret = match &redis.password_file {
            Some(file) => {
                let text = read_file("redis.password_file", file)?;
                let text = String::from_utf8(text).map_err(|_| {
                    invalid(
                        "redis.password_file",
                        "a file holding the password as UTF-8 text",
                    )
                })?;
                if world_readable(file) {
                    warnings.push(format!(
                        "redis.password_file {} can be read by every user; chmod 600 it",
                        file.display()
                    ));
                }
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            None => None,
        };
        if redis.key.is_empty() {
            return Err(invalid("redis.key", "a non-empty list name"));
        }
        if redis.key.contains(['{', '}']) {
            return Err(invalid(
                "redis.key",
                "a list name without `{` or `}` (the relay wraps it in a Redis Cluster hash tag)",
            ));
        }
        let dead = redis
            .dead_letter_key
            .get_or_insert_with(|| format!("{{{}}}:dead", redis.key))
            .clone();
        check_dead_letter_key(&redis.key, &dead, redis.cluster)?;

        let collector = &mut self.collector;
        match (&collector.url, &collector.endpoint) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "collector.url",
                    "either collector.url or collector.endpoint, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "collector.url",
                    "a collector, as collector.url (e.g. https://collector.example.com) or \
                     collector.endpoint (a host name); --collector URL on the command line",
                ));
            }
            _ => {}
        }
        collector.base_url()?;
        if !collector.post_path.starts_with('/') {
            return Err(invalid("collector.post_path", "a path starting with `/`"));
        }
        match collector.method {
            Method::Get => {
                if collector.buffer_size.is_some_and(|n| n.get() != 1) {
                    return Err(invalid(
                        "collector.buffer_size",
                        "1 or unset: GET sends one event per request (use method = \"post\" \
                         to batch)",
                    ));
                }
                collector.buffer_size = NonZeroUsize::new(1);
                collector
                    .byte_limit
                    .get_or_insert(NonZeroUsize::new(16_000).unwrap());
            }
            Method::Post => {
                collector
                    .buffer_size
                    .get_or_insert(NonZeroUsize::new(DEFAULT_POST_BUFFER_SIZE).unwrap());
                let limit = *collector
                    .byte_limit
                    .get_or_insert(NonZeroUsize::new(1_000_000).unwrap());
                if limit.get() > MAX_POST_BYTES {
                    return Err(invalid(
                        "collector.byte_limit",
                        format!(
                            "at most {MAX_POST_BYTES} bytes for POST: the collector turns \
                             larger bodies into bad rows"
                        ),
                    ));
                }
                if limit.get() < 1024 {
                    return Err(invalid("collector.byte_limit", "at least 1024 bytes"));
                }
            }
        }
        if let Some(bad) = collector
            .no_retry_statuses
            .iter()
            .find(|s| !(300..=599).contains(*s))
        {
            return Err(invalid(
                "collector.no_retry_statuses",
                format!("HTTP statuses from 300 to 599 (found {bad})"),
            ));
        }
        if collector.retry_max_backoff_ms < collector.retry_initial_backoff_ms {
            return Err(invalid(
                "collector.retry_max_backoff_ms",
                "at least collector.retry_initial_backoff_ms",
            ));
        }

        let buffer_size = collector.buffer_size.unwrap_or(NonZeroUsize::MIN);
        let byte_limit = collector.byte_limit.unwrap_or(NonZeroUsize::MIN);
        // The largest element one request can carry: the POST item adds `stm` and the
        // envelope; the GET URL is at least as long as the pairs.
        let sendable = match collector.method {
            Method::Post => byte_limit
                .get()
                .saturating_sub(POST_BODY_OVERHEAD + STM_ITEM_BYTES + 1),
            Method::Get => byte_limit.get(),
        };
        let max_element_bytes = match self.events.max_element_bytes {
            Some(limit) if limit.get() > sendable => {
                return Err(invalid(
                    "events.max_element_bytes",
                    format!(
                        "at most {sendable} bytes: with collector.byte_limit = {byte_limit} no larger element can be sent"
                    ),
                ));
            }
            Some(limit) => limit,
            None => NonZeroUsize::new(sendable)
                .ok_or_else(|| invalid("collector.byte_limit", "room for one event"))?,
        };
        self.events.max_element_bytes = Some(max_element_bytes);
        let worker = &self.worker;
        if worker.max_claimed_events.get() < self.redis.claim_batch_size.get() {
            return Err(invalid(
                "worker.max_claimed_events",
                format!(
                    "at least redis.claim_batch_size ({})",
                    self.redis.claim_batch_size
                ),
            ));
        }
        if worker.max_claimed_events < buffer_size {
            return Err(invalid(
                "collector.buffer_size",
                format!(
                    "at most worker.max_claimed_events ({}): a batch of {buffer_size} events \
                     could never fill",
                    worker.max_claimed_events
                ),
            ));
        }
        if self.redis.claim_max_bytes < max_element_bytes {
            return Err(invalid(
                "redis.claim_max_bytes",
                format!(
                    "at least events.max_element_bytes ({max_element_bytes}), so that every \
                     relayable element can be claimed"
                ),
            ));
        }
        if worker.max_claimed_bytes < self.redis.claim_max_bytes {
            return Err(invalid(
                "worker.max_claimed_bytes",
                format!(
                    "at least redis.claim_max_bytes ({})",
                    self.redis.claim_max_bytes
                ),
            ));
        }
        let level = self.log.level.trim();
        let is_level_word = matches!(
            level.to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info" | "debug" | "trace"
        );
        let is_directive = level.contains('=') || level.contains(',');
        let is_valid_directive =
            is_directive && tracing_subscriber::EnvFilter::try_new(level).is_ok();
        if !is_level_word && !is_valid_directive {
            return Err(invalid(
                "log.level",
                format!(
                    "error, warn, info, debug, trace, or a filter directive such as \
                     snowplow_relay=debug,warn (found `{level}`)"
                ),
            ));
        }
        let dead_letter_key = self.redis.dead_letter_key.clone().unwrap_or_default();
        let collector = &self.collector;
        for (key, file) in [
            ("collector.tls_ca_file", &collector.tls_ca_file),
            (
                "collector.tls_client_cert_file",
                &collector.tls_client_cert_file,
            ),
            (
                "collector.tls_client_key_file",
                &collector.tls_client_key_file,
            ),
        ] {
            if let Some(file) = file {
                read_file(key, file)?;
            }
        }
        for (key, file) in [
            ("redis.tls_client_key_file", &self.redis.tls_client_key_file),
            (
                "collector.tls_client_key_file",
                &collector.tls_client_key_file,
            ),
        ] {
            if let Some(file) = file
                && world_readable(file)
            {
                warnings.push(format!(
                    "{key} {} (a private key) can be read by every user; chmod 600 it",
                    file.display()
                ));
            }
        }
        if collector.tls_ca_only && collector.tls_ca_file.is_none() {
            return Err(invalid(
                "collector.tls_ca_only",
                "collector.tls_ca_file as well (the CA to trust alone)",
            ));
        }
        if collector.tls_client_cert_file.is_some() != collector.tls_client_key_file.is_some() {
            return Err(invalid(
                "collector.tls_client_cert_file",
                "both collector.tls_client_cert_file and collector.tls_client_key_file, or neither",
            ));
        }
        if let Some(proxy) = &collector.proxy {
            let parsed = Url::parse(proxy).map_err(|_| {
                invalid(
                    "collector.proxy",
                    "a proxy URL such as http://proxy.example.com:3128",
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https" | "socks5" | "socks5h") {
                return Err(invalid("collector.proxy", "an http://, https:// proxy URL"));
            }
        }
        if collector.no_proxy.is_some() && collector.proxy.is_none() {
            return Err(invalid("collector.no_proxy", "collector.proxy as well"));
        }
        let redis_password = self.redis.password.clone().or(password_file_secret);
        Ok(Valid {
            sources: Default::default(),
            redis_password,
            warnings,
            buffer_size,
            byte_limit,
            max_element_bytes,
            dead_letter_key,
            config: self,
        })
    }

    /// The configuration as TOML, with credentials in URLs masked: what `check` prints and
    /// what the start-up log line shows.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.redis.url = mask_url(&shown.redis.url);
        shown.redis.password = shown.redis.password.as_ref().map(|_| "****".into());
        shown.collector.url = shown.collector.url.as_deref().map(mask_url);
        shown.collector.proxy = shown.collector.proxy.as_deref().map(mask_url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
    }
}

/// The dead-letter list must be a list the relay never reads from: not the list, not one
/// of its companion keys; and in a Redis Cluster it must share the list's hash slot (the
/// scripts touch both), i.e. carry the `{list}` hash tag.
fn check_dead_letter_key(list: &str, dead: &str, cluster: bool) -> Result<(), ConfigError> {
    const KEY: &str = "redis.dead_letter_key";
    if dead.is_empty() {
        return Err(invalid(KEY, "a non-empty list name"));
    }
    if dead == list {
        return Err(invalid(
            KEY,
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
            KEY,
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
            KEY,
            format!(
                "a name with the list's hash tag {{{list}}} (e.g. {prefix}dead): in a Redis \
                 Cluster every key a script touches must be in one slot"
            ),
        ));
    }
    Ok(())
}

/// A configuration that passed [`Config::validate`], with every derived value filled
/// in. Only validation builds one, so [`crate::run`] can never see an unchecked setting.
/// It reads as a [`Config`] (`Deref`).
#[derive(Debug, Clone)]
pub struct Valid {
    config: Config,
    /// Where each value that is not a default came from.
    sources: std::collections::BTreeMap<&'static str, Source>,
    /// The Redis password from `redis.password` or `redis.password_file` (the URL's own
    /// stays in the URL).
    redis_password: Option<String>,
    /// What validation found worth a warning (logged at start-up).
    warnings: Vec<String>,
    buffer_size: NonZeroUsize,
    byte_limit: NonZeroUsize,
    max_element_bytes: NonZeroUsize,
    dead_letter_key: String,
}

impl std::ops::Deref for Valid {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Valid {
    /// Records where each value came from, and warns about secrets given as flags (every
    /// user of the host can read a process's flags through `ps`).
    fn set_sources(&mut self, sources: std::collections::BTreeMap<&'static str, Source>) {
        for (key, url) in [
            ("redis.url", Some(&self.config.redis.url)),
            ("collector.url", self.config.collector.url.as_ref()),
            ("collector.proxy", self.config.collector.proxy.as_ref()),
        ] {
            let from_flag =
                matches!(sources.get(key), Some(Source::Flag(f)) if f.starts_with("--"));
            let has_password = url
                .and_then(|u| Url::parse(u).ok())
                .is_some_and(|u| u.password().is_some());
            if from_flag && has_password {
                self.warnings.push(format!(
                    "{key} was given as a flag with a password: every user of this host can \
                     read it (ps); give the password in redis.password_file or the \
                     environment (SNOWPLOW_RELAY_REDIS__PASSWORD) instead"
                ));
            }
        }
        self.sources = sources;
    }

    /// The effective settings as TOML, secrets masked, each value that is not a default
    /// followed by where it came from: what `check` prints.
    pub fn to_shown_toml(&self) -> String {
        let shown = self.config.to_masked_toml();
        let mut out = String::new();
        let mut section = "";
        for line in shown.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
                out.push_str(line);
                out.push('\n');
                continue;
            }
            out.push_str(line);
            if let Some((name, _)) = line.split_once(" = ")
                && let Some(source) = self.sources.get(format!("{section}.{name}").as_str())
            {
                out.push_str(&format!("  # {source}"));
            }
            out.push('\n');
        }
        out
    }

    /// Where `key`'s value came from, if it was set (not a default).
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }

    /// Events per request (always 1 for GET).
    pub fn buffer_size(&self) -> NonZeroUsize {
        self.buffer_size
    }

    /// Largest POST body or GET URL, in bytes.
    pub fn byte_limit(&self) -> NonZeroUsize {
        self.byte_limit
    }

    /// Largest element relayed, in bytes.
    pub fn max_element_bytes(&self) -> NonZeroUsize {
        self.max_element_bytes
    }

    /// The dead-letter list.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_letter_key
    }

    /// Every secret in the settings (passwords, user names in URLs), for masking.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        let mut from_url = |url: &str| {
            if let Ok(url) = Url::parse(url) {
                if !url.username().is_empty() {
                    secrets.push(url.username().to_owned());
                }
                if let Some(password) = url.password() {
                    secrets.push(password.to_owned());
                }
            }
        };
        from_url(&self.redis.url);
        if let Some(url) = &self.collector.url {
            from_url(url);
        }
        if let Some(url) = &self.collector.proxy {
            from_url(url);
        }
        secrets.extend(self.redis_password.clone());
        secrets
    }

    /// Warnings found while validating (e.g. a world-readable password file).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How the relay logs in to Redis.
    pub fn redis_credentials(&self) -> RedisCredentials {
        let url = Url::parse(&self.redis.url).ok();
        let url_user = url
            .as_ref()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty());
        let source = if url.as_ref().is_some_and(|u| u.password().is_some()) {
            "redis.url"
        } else if self.redis.password_file.is_some() {
            "redis.password_file"
        } else if self.redis.password.is_some() {
            "redis.password (or SNOWPLOW_RELAY_REDIS__PASSWORD)"
        } else {
            "no password"
        };
        RedisCredentials {
            username: self.redis.username.clone().or(url_user),
            password: self.redis_password.clone(),
            source,
        }
    }
}

/// The user and password the relay gives Redis, and where the password came from (for
/// error messages, which never show the password itself).
#[derive(Clone)]
pub struct RedisCredentials {
    /// ACL user, if any (else `default`).
    pub username: Option<String>,
    /// Password from `redis.password` / `redis.password_file` (a URL's stays in the URL).
    pub password: Option<String>,
    /// Where the password came from.
    pub source: &'static str,
}

impl std::fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("source", &self.source)
            .finish()
    }
}

/// Reads a file named by a setting; the error names the key and the file.
pub fn read_file(key: &'static str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file)
        .map_err(|e| invalid(key, format!("a readable file ({}: {e})", file.display())))
}

fn world_readable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

impl CollectorConfig {
    /// The collector's base URL (scheme, host, port and any path prefix).
    pub fn base_url(&self) -> Result<Url, ConfigError> {
        let url = match (&self.url, &self.endpoint) {
            (Some(url), _) => {
                let url = Url::parse(url).map_err(|e| {
                    invalid(
                        "collector.url",
                        format!("a URL such as https://collector.example.com ({e})"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(invalid(
                        "collector.url",
                        "an http:// or https:// URL with a host",
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(invalid(
                        "collector.url",
                        "a URL without ?query or #fragment",
                    ));
                }
                url
            }
            (None, Some(endpoint)) => {
                if endpoint.contains("://") || endpoint.contains('/') || endpoint.is_empty() {
                    return Err(invalid(
                        "collector.endpoint",
                        "a host name without scheme or path, e.g. collector.example.com \
                         (or set collector.url instead)",
                    ));
                }
                let scheme = match self.protocol.unwrap_or(Protocol::Https) {
                    Protocol::Http => "http",
                    Protocol::Https => "https",
                };
                let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
                Url::parse(&format!("{scheme}://{endpoint}{port}")).map_err(|e| {
                    invalid("collector.endpoint", format!("a valid host name ({e})"))
                })?
            }
            (None, None) => return Err(invalid("collector.url", "a collector URL")),
        };
        Ok(url)
    }

    /// The URL requests go to: `…/i` for GET, `…<post_path>` for POST.
    pub fn request_url(&self) -> Result<Url, ConfigError> {
        let base = self.base_url()?;
        let path = match self.method {
            Method::Get => "/i",
            Method::Post => self.post_path.as_str(),
        };
        let joined = format!("{}{}", base.as_str().trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| invalid("collector.post_path", format!("a URL path ({e})")))
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

pub use snowplow_relay_tracker::http::mask_url;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(
        toml: &str,
        env: &[(&str, &str)],
        flags: &[(&'static str, &str)],
    ) -> Result<Valid, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut overrides = Overrides::default();
        for (key, value) in flags {
            overrides.set(key, Some(value));
        }
        Config::load_with_env(Some(&path), &overrides, Some(env))
    }

    const MINIMAL: &str = "[collector]\nurl = \"http://127.0.0.1:9090\"\n";

    #[test]
    fn defaults_follow_the_method() {
        let post = load(MINIMAL, &[], &[]).unwrap();
        assert_eq!(post.collector.buffer_size.unwrap().get(), 50);
        assert_eq!(post.collector.byte_limit.unwrap().get(), 1_000_000);
        assert_eq!(post.dead_letter_key(), "{snowplow}:dead");
        assert_eq!(
            post.collector.request_url().unwrap().as_str(),
            "http://127.0.0.1:9090/com.snowplowanalytics.snowplow/tp2"
        );
        let get = load(MINIMAL, &[], &[("collector.method", "get")]).unwrap();
        assert_eq!(get.collector.buffer_size.unwrap().get(), 1);
        assert_eq!(
            get.collector.request_url().unwrap().as_str(),
            "http://127.0.0.1:9090/i"
        );
    }

    #[test]
    fn file_then_environment_then_flags() {
        let toml = format!("{MINIMAL}buffer_size = 5\n[redis]\nkey = \"file\"\n");
        let env = [
            ("SNOWPLOW_RELAY_REDIS__KEY", "env"),
            ("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "6"),
            ("SNOWPLOW_RELAY_COLLECTOR__NO_RETRY_STATUSES", "400,418"),
        ];
        let config = load(&toml, &env, &[]).unwrap();
        assert_eq!(config.redis.key, "env");
        assert_eq!(config.collector.buffer_size.unwrap().get(), 6);
        assert_eq!(config.collector.no_retry_statuses, vec![400, 418]);
        let config = load(
            &toml,
            &env,
            &[("redis.key", "flag"), ("collector.buffer_size", "7")],
        )
        .unwrap();
        assert_eq!(config.redis.key, "flag");
        assert_eq!(config.collector.buffer_size.unwrap().get(), 7);
    }

    #[test]
    fn endpoint_protocol_and_port_build_the_url() {
        let toml = "[collector]\nendpoint = \"c.example.com\"\nprotocol = \"http\"\nport = 8080\n";
        let config = load(toml, &[], &[]).unwrap();
        assert_eq!(
            config.collector.request_url().unwrap().as_str(),
            "http://c.example.com:8080/com.snowplowanalytics.snowplow/tp2"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_expected() {
        let cases: &[(&str, &[(&'static str, &str)], &str, &str)] = &[
            (
                MINIMAL,
                &[("collector.buffer_size", "0")],
                "buffer_size",
                "from 1 to",
            ),
            (
                MINIMAL,
                &[("collector.buffer_size", "ten")],
                "buffer_size",
                "whole number",
            ),
            (
                MINIMAL,
                &[("collector.method", "put")],
                "collector.method",
                "one of `get`, `post`",
            ),
            (
                MINIMAL,
                &[("collector.byte_limit", "2000000")],
                "collector.byte_limit",
                "at most 1048576",
            ),
            (
                MINIMAL,
                &[("collector.url", "ftp://x")],
                "collector.url",
                "http://",
            ),
            (
                MINIMAL,
                &[("redis.url", "nonsense")],
                "redis.url",
                "redis://",
            ),
            (
                MINIMAL,
                &[("redis.url", "redis://127.0.0.1:6379/abc")],
                "redis.url",
                "database",
            ),
            (
                MINIMAL,
                &[("redis.url", "redis://127.0.0.1:6379/?protocol=resp9")],
                "redis.url",
                "protocol",
            ),
            (
                MINIMAL,
                &[("redis.url", "redis://0.0.0.0:6379")],
                "redis.url",
                "wildcard",
            ),
            (
                MINIMAL,
                &[("redis.url", "redis://:%ff@127.0.0.1:6379")],
                "redis.url",
                "UTF-8",
            ),
            (
                MINIMAL,
                &[
                    ("redis.url", "rediss://127.0.0.1:6379#Insecure"),
                    ("redis.tls_insecure_skip_verify", "true"),
                ],
                "redis.url",
                "fragment",
            ),
            (
                MINIMAL,
                &[("redis.dead_letter_key", "snowplow")],
                "redis.dead_letter_key",
                "forever",
            ),
            (
                MINIMAL,
                &[("redis.dead_letter_key", "{snowplow}:inflight:x")],
                "redis.dead_letter_key",
                "not one of the relay's own keys",
            ),
            (
                MINIMAL,
                &[("redis.dead_letter_key", "dead"), ("redis.cluster", "true")],
                "redis.dead_letter_key",
                "hash tag",
            ),
            (
                MINIMAL,
                &[("log.level", "loud!")],
                "log.level",
                "error, warn",
            ),
            (
                MINIMAL,
                &[("log.format", "xml")],
                "log.format",
                "`text`, `json`",
            ),
            (
                "[collector]\nbufer_size = 3\nurl = \"http://x\"\n",
                &[],
                "bufer_size",
                "unknown field",
            ),
            ("[colector]\n", &[], "colector", "unknown field"),
            ("", &[], "collector.url", "a collector"),
            (
                MINIMAL,
                &[("collector.method", "get"), ("collector.buffer_size", "10")],
                "collector.buffer_size",
                "one event per request",
            ),
            (
                "[collector]\nurl = \"http://x\"\nno_retry_statuses = [400, 200]\n",
                &[],
                "no_retry_statuses",
                "300 to 599 (found 200)",
            ),
            (
                MINIMAL,
                &[("redis.claim_batch_size", "9000")],
                "redis.claim_batch_size",
                "1 to 8000",
            ),
            (
                MINIMAL,
                &[
                    ("collector.buffer_size", "2000"),
                    ("worker.max_claimed_events", "1000"),
                ],
                "collector.buffer_size",
                "at most worker.max_claimed_events (1000)",
            ),
            (
                MINIMAL,
                &[("collector.max_requests_in_flight", "18446744073709551615")],
                "collector.max_requests_in_flight",
                "1 to 1024",
            ),
            (
                MINIMAL,
                &[("worker.max_claimed_events", "9999999999")],
                "worker.max_claimed_events",
                "1 to 1000000",
            ),
            (
                MINIMAL,
                &[("events.max_element_bytes", "2000000")],
                "events.max_element_bytes",
                "collector.byte_limit",
            ),
            (
                MINIMAL,
                &[("worker.max_claimed_bytes", "2048")],
                "worker.max_claimed_bytes",
                "at least redis.claim_max_bytes",
            ),
        ];
        for (toml, flags, key, expected) in cases {
            let err = load(toml, &[], flags).expect_err(key).to_string();
            assert!(err.contains(key), "`{err}` should name `{key}`");
            assert!(err.contains(expected), "`{err}` should say `{expected}`");
        }
    }

    #[test]
    fn password_is_masked() {
        let config = load(
            MINIMAL,
            &[],
            &[("redis.url", "redis://:s3cret@10.0.0.1:6379/0")],
        )
        .unwrap();
        let shown = config.to_masked_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://:****@10.0.0.1:6379/0"), "{shown}");
    }
}

/// Implements `TryFrom<String>` for a lowercase-named enum, with an error that lists the
/// accepted words (serde's own message for enums names Rust variants).
macro_rules! words_enum {
    ($name:ident { $($word:literal => $variant:ident),+ }) => {
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(word: String) -> Result<Self, String> {
                match word.to_ascii_lowercase().as_str() {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!(
                        "expected one of {}, found `{word}`",
                        [$(concat!("`", $word, "`")),+].join(", ")
                    )),
                }
            }
        }
    };
}
words_enum!(Protocol { "http" => Http, "https" => Https });
words_enum!(LogFormat { "text" => Text, "json" => Json });

#[cfg(test)]
mod example_file {
    use super::*;

    /// Keys the example shows with an example value although they are unset by default.
    const OPTIONAL_EXAMPLES: &[&str] = &[
        "endpoint",
        "protocol",
        "port",
        "listen",
        "username",
        "password",
        "password_file",
        "tls_ca_file",
        "tls_client_cert_file",
        "tls_client_key_file",
        "proxy",
        "no_proxy",
    ];

    /// `config/snowplow-relay.toml` shows every key with its default: uncommenting every
    /// `# key = value` line (but `endpoint`/`port`, the alternative to `url`) changes
    /// nothing, and no key is missing.
    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let example = include_str!("../../config/snowplow-relay.toml");
        let mut uncommented = String::new();
        let mut keys = 0;
        for line in example.lines() {
            let code = line.strip_prefix("# ").unwrap_or("");
            let name = code.split(" = ").next().unwrap_or("");
            let is_setting =
                code.contains(" = ") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if line.starts_with('[') {
                uncommented.push_str(line);
                uncommented.push('\n');
            } else if is_setting && !OPTIONAL_EXAMPLES.contains(&name) {
                // endpoint/port are the alternative to url, shown for reference; the
                // others are unset by default, their example values are no defaults.
                keys += 1;
                uncommented.push_str(code);
                uncommented.push('\n');
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let loaded =
            Config::load_with_env(Some(&path), &Overrides::default(), Some(Default::default()))
                .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));

        let mut defaults = Config::default();
        defaults.collector.url = Some("https://collector.example.com".into());
        let defaults = defaults.validate().unwrap();
        assert_eq!(loaded.to_masked_toml(), defaults.to_masked_toml());
        // Every key of the effective configuration appears in the example.
        let effective = defaults.to_masked_toml();
        let effective_keys = effective.lines().filter(|l| l.contains(" = ")).count();
        assert_eq!(keys, effective_keys, "{uncommented}");
    }
}
