//! Typed, documented settings, loaded in layers and validated once at start-up.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config FILE`, or the file
//! `SNOWPLOW_RELAY_CONFIG` names) < environment (`SNOWPLOW_RELAY_<SECTION>__<KEY>`, e.g.
//! `SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE=100`; lists comma-separated) < command-line
//! flags ([`layers`]). Unknown keys are errors, so a typo never silently falls back to a
//! default. `config/snowplow-relay.toml` documents every key with its default; keep it in
//! step with the doc comments here.
//!
//! [`Settings::load`] returns the typed [`Settings`] whose method-dependent defaults
//! (`buffer_size`, `byte_limit`, `dead_letter_key`) are filled in and whose values were
//! all checked, so the rest of the program never re-validates.
//!
//! It may touch: files and the environment (nothing else), [`crate::text`] and the
//! tracker's protocol types. Every other room reads [`Settings`]; none writes them.

pub mod layers;
mod settings;

pub use layers::{Overrides, Source, key};
pub use settings::{
    CollectorSettings, EventsSettings, RedisSettings, RedisTls, Settings, ToolSettings,
    WorkerSettings,
};

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

pub use snowplow_relay_tracker::protocol::{MAX_POST_BYTES, Method};

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
    /// them takes at most [`crate::relay::RELEASE_BUDGET`] (2 s) more, so keep this at
    /// least that much below Docker's 10 s stop grace and systemd's stop timeout.
    pub drain_timeout_ms: u64,
    /// Threads that run the relay (at most 64). 1, the default, runs every task on one
    /// thread: the least CPU per event (no wake-ups across threads); it relays well over
    /// 100,000 events/s. More threads add throughput for many collector requests in
    /// flight (GET, TLS) at some CPU cost per event.
    pub threads: NonZeroUsize,
}

/// Events per POST request unless `collector.buffer_size` says otherwise. Measured with
/// `cargo bench --bench relay` (docs/performance.md#the-benchmark): 10 costs twice the CPU per event
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

pub(crate) fn invalid(key: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        expected: expected.into(),
    }
}

impl Config {
    /// The raw settings the layers give (every value already of its key's type).
    pub fn from_layers(layers: &layers::Layers) -> Result<Config, ConfigError> {
        toml::Value::Table(layers.table.clone())
            .try_into::<Config>()
            .map_err(|e| ConfigError::Invalid {
                key: "file",
                expected: crate::text::one_line(e.message(), 300),
            })
    }

    /// Validates: the settings the relay runs with.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        Settings::new(self, Default::default())
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

/// Reads a file named by a setting; the error names the key and the file.
pub fn read_file(key: &'static str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file)
        .map_err(|e| invalid(key, format!("a readable file ({}: {e})", file.display())))
}

pub(crate) fn world_readable(file: &Path) -> bool {
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
    use std::collections::BTreeMap;

    fn load(
        toml: &str,
        env: &[(&str, &str)],
        flags: &[(&'static str, &str)],
    ) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut overrides = Overrides::default();
        for (key, value) in flags {
            overrides.set(key, Some(value));
        }
        Settings::load(Some(&path), &overrides, Some(&env))
    }

    const MINIMAL: &str = "[collector]\nurl = \"http://127.0.0.1:9090\"\n";

    #[test]
    fn defaults_follow_the_method() {
        let post = load(MINIMAL, &[], &[]).unwrap();
        assert_eq!(post.collector.buffer_size.get(), 50);
        assert_eq!(post.collector.byte_limit.get(), 1_000_000);
        assert_eq!(post.redis.dead_letter_key, "{snowplow}:dead");
        assert_eq!(
            post.collector.client.url.as_ref().unwrap().as_str(),
            "http://127.0.0.1:9090/com.snowplowanalytics.snowplow/tp2"
        );
        let get = load(MINIMAL, &[], &[("collector.method", "get")]).unwrap();
        assert_eq!(get.collector.buffer_size.get(), 1);
        assert_eq!(
            get.collector.client.url.as_ref().unwrap().as_str(),
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
        assert_eq!(config.collector.buffer_size.get(), 6);
        assert_eq!(config.collector.client.no_retry_statuses, vec![400, 418]);
        let config = load(
            &toml,
            &env,
            &[("redis.key", "flag"), ("collector.buffer_size", "7")],
        )
        .unwrap();
        assert_eq!(config.redis.key, "flag");
        assert_eq!(config.collector.buffer_size.get(), 7);
    }

    #[test]
    fn endpoint_protocol_and_port_build_the_url() {
        let toml = "[collector]\nendpoint = \"c.example.com\"\nprotocol = \"http\"\nport = 8080\n";
        let config = load(toml, &[], &[]).unwrap();
        assert_eq!(
            config.collector.client.url.as_ref().unwrap().as_str(),
            "http://c.example.com:8080/com.snowplowanalytics.snowplow/tp2"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_expected() {
        /// A file, overrides, the key the error names and what it says is expected.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
        );
        let cases: &[Case] = &[
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
        let loaded = Settings::load(
            Some(&path),
            &Overrides::default(),
            Some(&Default::default()),
        )
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
