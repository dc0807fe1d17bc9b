//! Every setting, declared once: its section and name, its Rust type and default, its
//! TOML type and range, whether its value is shown, masked or secret, whether a reload
//! applies it, and the text that documents it. From this one declaration come the serde
//! structures ([`Config`] and its sections), the layers' key table ([`KEYS`]) with the
//! range each value is checked against, the key names ([`key`]), the documented example
//! file (`check --print-default-config`, which a test compares with
//! `config/snowplow-relay.toml`), the configuration reference in `docs/operations.md`
//! (also compared by a test) and the reload set. Adding a setting is one entry here.
//!
//! Each entry reads:
//! ```text
//! /// Documentation (becomes the example file's comment and the reference's text)
//! name: RustType = default;
//!     KEY_CONST, toml kind, shown, reload[, example "value as TOML" | derived "value"];
//! ```
//! `example` is a value to show for a setting that is unset by default (`endpoint`);
//! `derived` the default the relay derives when it is unset (`buffer_size`: 50 for POST).

use serde::{Deserialize, Serialize};

use super::{LogFormat, Protocol};
use snowplow_relay_tracker::protocol::Method;
use std::num::NonZeroUsize;
use std::path::PathBuf;

/// The TOML type of a setting, and the range of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text, kept exactly as given.
    Text,
    /// A whole number from `min` to `max`.
    Number {
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// `true` or `false`.
    Bool,
    /// Whole numbers (comma-separated in the environment and flags).
    Numbers,
    /// One of these words (any case).
    Word(&'static [&'static str]),
    /// A socket address, `host:port` with an IP address.
    Address,
    /// Network endpoints, `host:port` each (a host name or an IP address); a list in
    /// TOML, comma-separated in the environment and flags.
    Endpoints,
}

/// How a value may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// As it is.
    Plain,
    /// A URL: user name and password masked, query dropped.
    Url,
    /// Never: `****`.
    Secret,
}

/// What a reload (SIGHUP) does with a changed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applied at once: what runs reads it from where reloads publish it.
    Now,
    /// Redis credentials: tried on a new connection first, then every connection moves
    /// to them; refused, the old ones stay.
    Credentials,
    /// Takes effect only after a restart (the reload says so).
    Restart,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `section.key`.
    pub path: &'static str,
    /// Its TOML type.
    pub kind: Kind,
    /// Shown as `****` (a password) or masked (a URL with credentials).
    pub shown: Shown,
    /// What a reload does with it.
    pub reload: Reload,
    /// What it means, one `///` line per line.
    pub doc: &'static str,
    /// What it is when unset, as TOML: the default, or what the relay derives.
    pub default: Option<&'static str>,
    /// A value to show for a setting that is unset by default, as TOML.
    pub example: Option<&'static str>,
}

impl Key {
    /// The section and the name.
    pub fn parts(&self) -> (&'static str, &'static str) {
        self.path.split_once('.').expect("section.key")
    }

    /// The documentation, a line per line.
    pub fn doc_lines(&self) -> impl Iterator<Item = &'static str> {
        self.doc
            .lines()
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
    }
}

/// The `example` of an entry's optional `example "…"` or `derived "…"`.
macro_rules! example {
    () => {
        None
    };
    (example $value:literal) => {
        Some($value)
    };
    (derived $value:literal) => {
        None
    };
}

/// The derived default of an entry's optional `example "…"` or `derived "…"`.
macro_rules! derived {
    () => {
        None
    };
    (example $value:literal) => {
        None
    };
    (derived $value:literal) => {
        Some($value)
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $section_doc:literal])+
        [$section:ident] $Section:ident {
            $(
                $(#[doc = $doc:literal])+
                $name:ident: $ty:ty = $default:expr;
                    $KEY:ident, $kind:expr, $shown:ident, $reload:ident $(, $which:ident $value:literal)?;
            )+
        }
    )+) => {
        /// The whole configuration, as the layers give it (every value of its key's type
        /// and range); [`super::Settings`] is what the relay runs with.
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            $(
                $(#[doc = $section_doc])+
                pub $section: $Section,
            )+
        }

        $(
            $(#[doc = $section_doc])+
            #[derive(Debug, Clone, Serialize, Deserialize)]
            #[serde(deny_unknown_fields, default)]
            pub struct $Section {
                $(
                    $(#[doc = $doc])+
                    pub $name: $ty,
                )+
            }

            impl Default for $Section {
                fn default() -> Self {
                    $Section {
                        $($name: $default,)+
                    }
                }
            }
        )+

        /// Every setting, in the order the example file and the reference show them.
        pub const KEYS: &[Key] = &[
            $($(
                Key {
                    path: concat!(stringify!($section), ".", stringify!($name)),
                    kind: $kind,
                    shown: Shown::$shown,
                    reload: Reload::$reload,
                    doc: concat!($($doc, "\n"),+),
                    default: derived!($($which $value)?),
                    example: example!($($which $value)?),
                },
            )+)+
        ];

        impl Config {
            /// Every number within its key's range. The layers check each value as they
            /// read it; this checks a `Config` built in code (the tracker's builders,
            /// tests) the same way.
            pub fn check_ranges(&self) -> Result<(), super::ConfigError> {
                let mut keys = KEYS.iter();
                $($(
                    let key = keys.next().expect("a key per field");
                    if let Kind::Number { min, max } = key.kind
                        && let Some(n) = AsNumber::as_number(&self.$section.$name)
                        && !(min..=max).contains(&n)
                    {
                        return Err(out_of_range(key, n, None));
                    }
                )+)+
                Ok(())
            }
        }

        /// Each setting's dotted name, once: `key::REDIS_URL` is `"redis.url"`.
        pub mod key {
            $($(
                #[doc = concat!("`", stringify!($section), ".", stringify!($name), "`")]
                pub const $KEY: &str = concat!(stringify!($section), ".", stringify!($name));
            )+)+
        }
    };
}

/// A setting's value as a whole number, for the range check: numbers (set) are, other
/// values are not.
trait AsNumber {
    fn as_number(&self) -> Option<u64> {
        None
    }
}

impl AsNumber for u64 {
    fn as_number(&self) -> Option<u64> {
        Some(*self)
    }
}
impl AsNumber for u32 {
    fn as_number(&self) -> Option<u64> {
        Some(u64::from(*self))
    }
}
impl AsNumber for u16 {
    fn as_number(&self) -> Option<u64> {
        Some(u64::from(*self))
    }
}
impl AsNumber for NonZeroUsize {
    fn as_number(&self) -> Option<u64> {
        Some(self.get() as u64)
    }
}
impl<T: AsNumber> AsNumber for Option<T> {
    fn as_number(&self) -> Option<u64> {
        self.as_ref().and_then(AsNumber::as_number)
    }
}
impl AsNumber for String {}
impl AsNumber for bool {}
impl AsNumber for PathBuf {}
impl AsNumber for Vec<u16> {}
impl AsNumber for Vec<String> {}
impl AsNumber for Method {}
impl AsNumber for Protocol {}
impl AsNumber for LogFormat {}
impl AsNumber for std::net::SocketAddr {}

use Kind::{Address, Bool, Endpoints, Numbers, Text, Word};
const fn n(min: u64, max: u64) -> Kind {
    Kind::Number { min, max }
}
const U16: u64 = u16::MAX as u64;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("a default above zero")
}

settings! {
    /// Where events come from.
    [redis] RedisConfig {
        /// Redis URL, redis://[[user]:password@]host[:port][/db], or rediss:// for TLS,
        /// or unix:///path/to/redis.sock[?db=N] (credentials then from username and
        /// password_file). Credentials are masked in logs.
        url: String = "redis://127.0.0.1:6379".into();
            REDIS_URL, Text, Url, Restart;
        /// The list producers RPUSH events onto (the Python tracker's RedisEmitter default).
        key: String = "snowplow".into();
            REDIS_KEY, Text, Plain, Restart;
        /// The dead-letter list. Default: "{<key>}:dead", in the list's Redis Cluster slot.
        /// Each entry: one line of JSON (reason, detail, status, failed_at, relay), a
        /// newline, then the original element byte for byte.
        dead_letter_key: Option<String> = None;
            REDIS_DEAD_LETTER_KEY, Text, Plain, Restart, derived "\"{snowplow}:dead\"";
        /// Events claimed per Redis round trip (1 to 8000, a Lua stack limit).
        claim_batch_size: NonZeroUsize = nonzero(500);
            REDIS_CLAIM_BATCH_SIZE, n(1, 8_000), Plain, Restart;
        /// Most bytes of events one claim takes, enforced inside the claim script: bounds what a
        /// reply makes Redis build and send, however large the elements. At least
        /// events.max_element_bytes (1024 to 536870912).
        claim_max_bytes: NonZeroUsize = nonzero(4 * 1024 * 1024);
            REDIS_CLAIM_MAX_BYTES, n(KIB, 512 * MIB), Plain, Restart;
        /// How long one Redis command may take before it counts as failed, in milliseconds.
        command_timeout_ms: u64 = 5_000;
            REDIS_COMMAND_TIMEOUT_MS, n(1, 600_000), Plain, Restart;
        /// Lifetime of this relay's lease, renewed every third of it. A crashed relay's claimed
        /// events go back to the list once its lease runs out, so this bounds how long a crash
        /// delays them; 30 s outlasts a Redis failover without mistaking a live relay for dead.
        lease_ttl_ms: u64 = 30_000;
            REDIS_LEASE_TTL_MS, n(1_000, 86_400_000), Plain, Restart;
        /// url is a node of a Redis Cluster; the other nodes are discovered from it (and
        /// remembered: the relay reconnects through any node it has seen). All the relay's
        /// keys carry the list's hash tag, so they live in the list's slot.
        cluster: bool = false;
            REDIS_CLUSTER, Bool, Plain, Restart;
        /// With cluster: more nodes to start from, "host:port" each, besides url's, for
        /// when url's node is down at start-up.
        cluster_nodes: Vec<String> = Vec::new();
            REDIS_CLUSTER_NODES, Endpoints, Plain, Restart;
        /// Redis Sentinel: the sentinels, "host:port" each. Set, the relay asks them where
        /// the master named sentinel_master is, connects there, and asks again after a
        /// failover (a connection dropped, or a server that became a replica). url's host
        /// and port are then not used; its scheme (rediss:// for TLS, to the sentinels
        /// too), user, password and database are.
        sentinels: Vec<String> = Vec::new();
            REDIS_SENTINELS, Endpoints, Plain, Restart;
        /// With sentinels: the master's name in the sentinels' configuration.
        sentinel_master: Option<String> = None;
            REDIS_SENTINEL_MASTER, Text, Plain, Restart, example "\"mymaster\"";
        /// With sentinels: the sentinels' own ACL user, if they require one.
        sentinel_username: Option<String> = None;
            REDIS_SENTINEL_USERNAME, Text, Plain, Restart, example "\"sentinel-user\"";
        /// With sentinels: the sentinels' own password (prefer sentinel_password_file).
        sentinel_password: Option<String> = None;
            REDIS_SENTINEL_PASSWORD, Text, Secret, Restart, example "\"…\"";
        /// With sentinels: a file holding the sentinels' password.
        sentinel_password_file: Option<PathBuf> = None;
            REDIS_SENTINEL_PASSWORD_FILE, Text, Plain, Restart, example "\"/etc/snowplow-relay/sentinel-password\"";
        /// Credentials: an ACL user (Redis 6+) and ONE password source: the URL
        /// (redis://user:pass@host), `password` (or SNOWPLOW_RELAY_REDIS__PASSWORD), or
        /// `password_file` (read at start-up and at each reload, trailing newline dropped;
        /// warns if others can read it). Wrong credentials are reported with the user and
        /// the source, never the password. A reload tries new ones on a new connection
        /// first, then moves every connection to them.
        username: Option<String> = None;
            REDIS_USERNAME, Text, Plain, Credentials, example "\"relay\"";
        /// The password itself (prefer password_file).
        password: Option<String> = None;
            REDIS_PASSWORD, Text, Secret, Credentials, example "\"…\"";
        /// A file holding the password.
        password_file: Option<PathBuf> = None;
            REDIS_PASSWORD_FILE, Text, Plain, Credentials, example "\"/etc/snowplow-relay/redis-password\"";
        /// TLS, for rediss:// URLs only. The CA bundle REPLACES the system's roots for Redis.
        /// A reload re-reads the TLS files and moves to them as to new credentials.
        tls_ca_file: Option<PathBuf> = None;
            REDIS_TLS_CA_FILE, Text, Plain, Credentials, example "\"/etc/snowplow-relay/redis-ca.pem\"";
        /// A client certificate for mutual TLS (with tls_client_key_file).
        tls_client_cert_file: Option<PathBuf> = None;
            REDIS_TLS_CLIENT_CERT_FILE, Text, Plain, Credentials, example "\"/etc/snowplow-relay/redis-client.pem\"";
        /// The client certificate's private key.
        tls_client_key_file: Option<PathBuf> = None;
            REDIS_TLS_CLIENT_KEY_FILE, Text, Plain, Credentials, example "\"/etc/snowplow-relay/redis-client.key\"";
        /// Do not verify Redis's certificate (dangerous; logged loudly). Also required for a URL
        /// ending in #insecure.
        tls_insecure_skip_verify: bool = false;
            REDIS_TLS_INSECURE_SKIP_VERIFY, Bool, Plain, Restart;
    }

    /// Where events go.
    [collector] CollectorConfig {
        /// The collector as one URL (scheme, host, port, optional path prefix) ...
        /// Credentials in it (https://user:pass@...) are masked in logs and `check`. Redirects
        /// are not followed (a 3xx is retried with a warning naming the Location) except a
        /// collector's cookie bounce (same URL plus one parameter, followed once), and an https
        /// collector is never reached over http. The relay adds /i or post_path itself: a URL
        /// ending in either (or in /com.snowplowanalytics.snowplow/tp2) is refused.
        url: Option<String> = None;
            COLLECTOR_URL, Text, Url, Restart, example "\"https://collector.example.com\"";
        /// ... or, as the trackers' Emitter names it, endpoint (host only) + protocol + port.
        /// Set url or endpoint, not both. There is no default: one of them is required.
        endpoint: Option<String> = None;
            COLLECTOR_ENDPOINT, Text, Plain, Restart, example "\"collector.example.com\"";
        /// http or https, with endpoint (default https).
        protocol: Option<Protocol> = None;
            COLLECTOR_PROTOCOL, Word(&["http", "https"]), Plain, Restart, example "\"https\"";
        /// The port, with endpoint (default: the protocol's).
        port: Option<u16> = None;
            COLLECTOR_PORT, n(1, U16), Plain, Restart, example "443";
        /// "get": GET /i?..., one event per request. "post": batches in a payload_data body.
        method: Method = Method::Post;
            COLLECTOR_METHOD, Word(&["get", "post"]), Plain, Restart;
        /// Path of POST requests.
        post_path: String = "/com.snowplowanalytics.snowplow/tp2".into();
            COLLECTOR_POST_PATH, Text, Plain, Restart;
        /// Events per POST request. Default 200 for POST (at most worker.max_claimed_events); GET
        /// always sends 1 per request.
        /// Partial batches go as soon as the list runs dry or after flush_interval_ms.
        buffer_size: Option<NonZeroUsize> = None;
            COLLECTOR_BUFFER_SIZE, n(1, 1_000_000), Plain, Restart, derived "200";
        /// Largest POST body (default 1000000, at most 1048576: the collector turns larger bodies
        /// into bad rows) or GET URL (default 16000: collectors refuse ~20 KB request lines).
        byte_limit: Option<NonZeroUsize> = None;
            COLLECTOR_BYTE_LIMIT, n(1, 16 * MIB), Plain, Restart, derived "1000000";
        /// Most requests on the wire at once (1 to 16384), one connection each: the ceiling of
        /// the adaptive limit, or the fixed number of requests with adaptive_concurrency off.
        max_requests_in_flight: NonZeroUsize = nonzero(1_024);
            COLLECTOR_MAX_REQUESTS_IN_FLIGHT, n(1, 16_384), Plain, Restart;
        /// Adapt the number of requests in flight to the collector: it starts at 16, doubles
        /// while answers come as fast as before, grows by one after the first slowdown, and
        /// falls by a tenth when answers slow down or the collector answers 429, 503 or 504,
        /// times out or refuses connections. false: always max_requests_in_flight.
        adaptive_concurrency: bool = true;
            COLLECTOR_ADAPTIVE_CONCURRENCY, Bool, Plain, Restart;
        /// A partial batch waits at most this long for more events, in milliseconds (it is also
        /// sent as soon as the list runs dry).
        flush_interval_ms: u64 = 500;
            COLLECTOR_FLUSH_INTERVAL_MS, n(1, 600_000), Plain, Restart;
        /// A batch that failed this many times, while other requests succeeded since its first
        /// attempt, is parked: it moves to this relay's retry list in Redis, so that it holds
        /// back no other event, and each of its events is retried on its own. A collector failing
        /// every request is an outage: nothing is parked or dead-lettered, all is retried.
        park_after_failures: u32 = 3;
            COLLECTOR_PARK_AFTER_FAILURES, n(1, 1_000), Plain, Now;
        /// A parked event that failed this many more times, each after other requests were
        /// accepted since the previous one counted (ten at least, at most one in ten failed), is
        /// dead-lettered with the status and attempt count. A 413 splits a batch at once and
        /// dead-letters a single event.
        isolated_failure_limit: u32 = 5;
            COLLECTOR_ISOLATED_FAILURE_LIMIT, n(1, 1_000), Plain, Now;
        /// Time allowed for one request, connect to the answer's head, in milliseconds. It grows
        /// for a slower collector, up to 8 times this: twice the longest recent answer, doubled
        /// after each timeout of the same batch (a timed-out request may have arrived: each
        /// resend may duplicate its events).
        request_timeout_ms: u64 = 5_000;
            COLLECTOR_REQUEST_TIMEOUT_MS, n(1, 600_000), Plain, Restart;
        /// Statuses that are never retried: the batch goes to the dead-letter list. Any other
        /// non-2xx status, a timeout or a connection error is retried with backoff.
        no_retry_statuses: Vec<u16> = vec![400, 401, 403, 410, 422];
            COLLECTOR_NO_RETRY_STATUSES, Numbers, Plain, Restart;
        /// First retry delay, doubled per attempt, each delay jittered between half and all of it.
        retry_initial_backoff_ms: u64 = 500;
            COLLECTOR_RETRY_INITIAL_BACKOFF_MS, n(1, 3_600_000), Plain, Now;
        /// Longest retry delay.
        retry_max_backoff_ms: u64 = 30_000;
            COLLECTOR_RETRY_MAX_BACKOFF_MS, n(1, 3_600_000), Plain, Now;
        /// Send "SP-Anonymous: *": the collector neither reads nor sets its cookie.
        anonymous: bool = false;
            COLLECTOR_ANONYMOUS, Bool, Plain, Restart;
        /// TLS for an https collector (TLS 1.2 at least). An extra CA bundle, added to the
        /// system's roots, or used alone with tls_ca_only = true.
        tls_ca_file: Option<PathBuf> = None;
            COLLECTOR_TLS_CA_FILE, Text, Plain, Restart, example "\"/etc/snowplow-relay/collector-ca.pem\"";
        /// Trust only tls_ca_file, not the system's roots.
        tls_ca_only: bool = false;
            COLLECTOR_TLS_CA_ONLY, Bool, Plain, Restart;
        /// A client certificate for mutual TLS (with tls_client_key_file).
        tls_client_cert_file: Option<PathBuf> = None;
            COLLECTOR_TLS_CLIENT_CERT_FILE, Text, Plain, Restart, example "\"/etc/snowplow-relay/collector-client.pem\"";
        /// The client certificate's private key.
        tls_client_key_file: Option<PathBuf> = None;
            COLLECTOR_TLS_CLIENT_KEY_FILE, Text, Plain, Restart, example "\"/etc/snowplow-relay/collector-client.key\"";
        /// An http:// proxy for collector requests (a CONNECT tunnel for an https collector;
        /// credentials in it are masked in logs). Unset: the HTTPS_PROXY / HTTP_PROXY /
        /// ALL_PROXY / NO_PROXY environment variables apply, as curl reads them.
        proxy: Option<String> = None;
            COLLECTOR_PROXY, Text, Url, Restart, example "\"http://proxy.example.com:3128\"";
        /// With proxy: comma-separated hosts reached directly (as NO_PROXY).
        no_proxy: Option<String> = None;
            COLLECTOR_NO_PROXY, Text, Plain, Restart, example "\"localhost,127.0.0.1\"";
    }

    /// What counts as a relayable event.
    [events] EventsConfig {
        /// POST: relay field names that payload_data 1-0-4 does not list. Off: one unknown name
        /// makes the collector's enrichment reject the whole POST batch, so such events are
        /// dead-lettered. GET always passes unknown names through.
        allow_unknown_fields: bool = false;
            EVENTS_ALLOW_UNKNOWN_FIELDS, Bool, Plain, Restart;
        /// Elements larger than this many bytes are dead-lettered, straight from Redis. Default
        /// and maximum: the largest element a request can carry (byte_limit less the POST
        /// envelope and stm: 999890 with the POST defaults; byte_limit for GET).
        max_element_bytes: Option<NonZeroUsize> = None;
            EVENTS_MAX_ELEMENT_BYTES, n(1, 16 * MIB), Plain, Restart, derived "999890";
    }

    /// How much the relay holds at once and how it stops.
    [worker] WorkerConfig {
        /// Most events claimed from Redis and not yet acknowledged: the relay's memory bound.
        /// While the collector is down the backlog stays in Redis.
        max_claimed_events: NonZeroUsize = nonzero(25_000);
            WORKER_MAX_CLAIMED_EVENTS, n(1, 1_000_000), Plain, Restart;
        /// Most bytes of events claimed and not yet acknowledged: the memory bound in bytes (the
        /// relay's peak RSS stays under about twice this, request bodies included, plus 15 MB).
        /// At least redis.claim_max_bytes.
        max_claimed_bytes: NonZeroUsize = nonzero(24 * 1024 * 1024);
            WORKER_MAX_CLAIMED_BYTES, n(KIB, 16 * 1024 * MIB), Plain, Restart;
        /// On SIGINT/SIGTERM/SIGQUIT: how long requests in flight may finish before undelivered
        /// events go back to the head of the list. Returning them takes at most 2 s more (0.5 s
        /// after a second signal), so keep this at least 2 s below Docker's 10 s stop grace.
        drain_timeout_ms: u64 = 5_000;
            WORKER_DRAIN_TIMEOUT_MS, n(0, 600_000), Plain, Restart;
        /// Threads running the relay (1-64). 1 uses the least CPU per event; more help with many
        /// GET or TLS requests in flight.
        threads: NonZeroUsize = NonZeroUsize::MIN;
            WORKER_THREADS, n(1, 64), Plain, Restart;
    }

    /// The admin listener: metrics and health.
    [admin] AdminConfig {
        /// Serve /metrics (Prometheus), /healthz (alive) and /readyz (ready) on this address.
        /// Off when unset. Loopback keeps it to this host; in a container use 0.0.0.0:9187.
        /// Flag: --admin-listen ADDR.
        listen: Option<std::net::SocketAddr> = None;
            ADMIN_LISTEN, Address, Plain, Restart, example "\"127.0.0.1:9187\"";
    }

    /// Log output.
    [log] LogConfig {
        /// error, warn, info, debug, trace, or a filter directive like "snowplow_relay=debug,warn".
        /// RUST_LOG is this setting's environment variable too (SNOWPLOW_RELAY_LOG__LEVEL
        /// wins over it, --log-level over both).
        level: String = "info".into();
            LOG_LEVEL, Text, Plain, Now;
        /// "text" or "json" (one object per line).
        format: LogFormat = LogFormat::Text;
            LOG_FORMAT, Word(&["text", "json"]), Plain, Restart;
    }
}

/// `key`'s value `n` is outside its range: the error names the range, what was found and
/// where (when it came from a layer).
pub(super) fn out_of_range(
    key: &Key,
    n: u64,
    source: Option<&dyn std::fmt::Display>,
) -> super::ConfigError {
    let Kind::Number { min, max } = key.kind else {
        unreachable!("only numbers have a range")
    };
    let range = if max == u64::MAX {
        format!("a whole number of at least {min}")
    } else {
        format!("a number from {min} to {max}")
    };
    let found = if n > i64::MAX as u64 {
        "a larger number".to_owned()
    } else {
        n.to_string()
    };
    let from = source
        .map(|source| format!(", from {source}"))
        .unwrap_or_default();
    super::ConfigError::Invalid {
        key: key.path,
        expected: format!("{range} (found {found}{from})"),
    }
}

/// What a reload does with the key at `path` (one the declaration lacks needs a restart).
pub fn reload_of(path: &str) -> Reload {
    KEYS.iter()
        .find(|key| key.path == path)
        .map_or(Reload::Restart, |key| key.reload)
}

/// The example file's opening comment.
const EXAMPLE_HEADER: &str = "\
# snowplow-relay configuration.
#
# Every key is shown with its default, commented out. Precedence, lowest first:
# defaults < this file (--config FILE) < environment < command-line flags.
# Environment: SNOWPLOW_RELAY_<SECTION>__<KEY>, e.g. SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE=100
# (lists comma-separated: SNOWPLOW_RELAY_COLLECTOR__NO_RETRY_STATUSES=400,401,403,410,422).
# Unknown keys are errors. `snowplow-relay --config FILE check` validates a file and
# prints the effective configuration, password masked; `snowplow-relay check
# --print-default-config` prints this file (it is generated from the declaration in
# src/config/keys.rs).
";

/// Each key's default as TOML (a key whose default is unset has none).
fn defaults() -> toml::Table {
    toml::Value::try_from(Config::default())
        .ok()
        .and_then(|value| value.as_table().cloned())
        .unwrap_or_default()
}

/// What `key` is when unset, as TOML: its declared or derived default; `None` when it
/// is unset by default.
fn default_of(key: &Key, defaults: &toml::Table) -> Option<String> {
    if let Some(derived) = key.default {
        return Some(derived.to_owned());
    }
    let (section, name) = key.parts();
    defaults
        .get(section)
        .and_then(|s| s.get(name))
        .map(ToString::to_string)
}

/// What `key` is when unset, as TOML (`None`: unset by default).
pub fn default_shown(key: &Key) -> Option<String> {
    default_of(key, &defaults())
}

/// The documented example configuration: every key with its documentation and its
/// default (or an example value), commented out. `config/snowplow-relay.toml` is this.
pub fn example_file() -> String {
    let defaults = defaults();
    let mut out = String::from(EXAMPLE_HEADER);
    let mut section = "";
    for key in KEYS {
        let (this, name) = key.parts();
        if this != section {
            out.push_str(&format!("\n[{this}]\n"));
            section = this;
        }
        for line in key.doc_lines() {
            out.push_str(format!("# {line}").trim_end());
            out.push('\n');
        }
        let shown = default_of(key, &defaults)
            .or(key.example.map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!("# {name} = {shown}\n"));
    }
    out
}

/// The configuration reference of `docs/operations.md`: a table of every key, its
/// environment variable, its default, whether a reload applies it, and what it means.
pub fn reference() -> String {
    let defaults = defaults();
    let mut out = String::from(
        "| key | environment | default | reload | what it does |\n|---|---|---|---|---|\n",
    );
    for key in KEYS {
        let (section, name) = key.parts();
        let env = format!(
            "SNOWPLOW_RELAY_{}__{}",
            section.to_ascii_uppercase(),
            name.to_ascii_uppercase()
        );
        let default = default_of(key, &defaults)
            .map_or_else(|| "unset".to_owned(), |value| format!("`{value}`"));
        let reload = match key.reload {
            Reload::Now => "at once",
            Reload::Credentials => "tried, then applied",
            Reload::Restart => "restart",
        };
        let doc: Vec<&str> = key.doc_lines().collect();
        out.push_str(&format!(
            "| `{}` | `{env}` | {default} | {reload} | {} |\n",
            key.path,
            doc.join(" ").replace('|', "\\|")
        ));
    }
    out
}
