//! Where settings come from: built-in defaults < the TOML file < `SNOWPLOW_RELAY_*`
//! environment variables < flags. Each layer is read into one table of known keys,
//! typed by [`KEYS`] (a string stays exactly the text given: `007` is not 7), and each
//! value remembers its [`Source`], which `check` shows and errors name.
//!
//! - **File**: unknown sections and keys are errors. A syntax error names the line and
//!   column, never the line's text (it may hold a password).
//! - **Environment**: only `SNOWPLOW_RELAY_<SECTION>__<KEY>` names are settings; other
//!   `SNOWPLOW_RELAY_*` names (Kubernetes injects `SNOWPLOW_RELAY_SERVICE_HOST` for a
//!   Service of that name) are ignored, and `SNOWPLOW_RELAY_CONFIG` names the file. An
//!   unknown `<SECTION>__<KEY>` is an error naming the variable.
//! - **Flags**: the command line's, each mapped to one key.
//!
//! `collector.url` and `collector.endpoint` (with `protocol` and `port`) are two ways to
//! name the collector: a layer that sets one replaces the other from lower layers, and
//! one layer setting both is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Environment variable prefix; sections and keys are joined with `__`.
pub const ENV_PREFIX: &str = "SNOWPLOW_RELAY_";

/// The environment variable naming the configuration file (when `--config` is not given).
pub const CONFIG_ENV: &str = "SNOWPLOW_RELAY_CONFIG";

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
}

/// One setting: its dotted name, its type, and whether its value is a secret (never shown,
/// not even in an error) or a URL that may hold credentials (shown masked).
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `section.key`.
    pub path: &'static str,
    /// Its TOML type.
    pub kind: Kind,
    /// Shown as `****` (a password) or masked (a URL with credentials).
    pub shown: Shown,
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

const U16: u64 = u16::MAX as u64;
const ANY: u64 = u64::MAX;

macro_rules! keys {
    ($($name:ident = $path:literal : $kind:expr, $shown:ident;)+) => {
        /// Every setting the relay knows. Validation, flags, reload and `check` name keys
        /// from here; `config/snowplow-relay.toml` documents each (a test keeps them in
        /// step).
        pub const KEYS: &[Key] = &[$(Key { path: $path, kind: $kind, shown: Shown::$shown }),+];

        /// Each setting's dotted name, once: `key::REDIS_URL` is `"redis.url"`.
        pub mod key {
            $(
                #[doc = concat!("`", $path, "`")]
                pub const $name: &str = $path;
            )+
        }
    };
}

use Kind::{Address, Bool, Numbers, Text, Word};
const fn n(min: u64, max: u64) -> Kind {
    Kind::Number { min, max }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

keys! {
    REDIS_URL = "redis.url": Text, Url;
    REDIS_KEY = "redis.key": Text, Plain;
    REDIS_DEAD_LETTER_KEY = "redis.dead_letter_key": Text, Plain;
    // A Lua stack limit.
    REDIS_CLAIM_BATCH_SIZE = "redis.claim_batch_size": n(1, 8_000), Plain;
    REDIS_CLAIM_MAX_BYTES = "redis.claim_max_bytes": n(KIB, 512 * MIB), Plain;
    REDIS_COMMAND_TIMEOUT_MS = "redis.command_timeout_ms": n(1, 600_000), Plain;
    REDIS_LEASE_TTL_MS = "redis.lease_ttl_ms": n(1_000, 86_400_000), Plain;
    REDIS_CLUSTER = "redis.cluster": Bool, Plain;
    REDIS_USERNAME = "redis.username": Text, Plain;
    REDIS_PASSWORD = "redis.password": Text, Secret;
    REDIS_PASSWORD_FILE = "redis.password_file": Text, Plain;
    REDIS_TLS_CA_FILE = "redis.tls_ca_file": Text, Plain;
    REDIS_TLS_CLIENT_CERT_FILE = "redis.tls_client_cert_file": Text, Plain;
    REDIS_TLS_CLIENT_KEY_FILE = "redis.tls_client_key_file": Text, Plain;
    REDIS_TLS_INSECURE_SKIP_VERIFY = "redis.tls_insecure_skip_verify": Bool, Plain;
    COLLECTOR_URL = "collector.url": Text, Url;
    COLLECTOR_ENDPOINT = "collector.endpoint": Text, Plain;
    COLLECTOR_PROTOCOL = "collector.protocol": Word(&["http", "https"]), Plain;
    COLLECTOR_PORT = "collector.port": n(1, U16), Plain;
    COLLECTOR_METHOD = "collector.method": Word(&["get", "post"]), Plain;
    COLLECTOR_POST_PATH = "collector.post_path": Text, Plain;
    COLLECTOR_BUFFER_SIZE = "collector.buffer_size": n(1, 1_000_000), Plain;
    COLLECTOR_BYTE_LIMIT = "collector.byte_limit": n(1, 16 * MIB), Plain;
    COLLECTOR_MAX_REQUESTS_IN_FLIGHT = "collector.max_requests_in_flight": n(1, 1_024), Plain;
    COLLECTOR_FLUSH_INTERVAL_MS = "collector.flush_interval_ms": n(1, 600_000), Plain;
    COLLECTOR_PARK_AFTER_FAILURES = "collector.park_after_failures": n(1, 1_000), Plain;
    COLLECTOR_ISOLATED_FAILURE_LIMIT = "collector.isolated_failure_limit": n(1, 1_000), Plain;
    COLLECTOR_REQUEST_TIMEOUT_MS = "collector.request_timeout_ms": n(1, 600_000), Plain;
    COLLECTOR_NO_RETRY_STATUSES = "collector.no_retry_statuses": Numbers, Plain;
    COLLECTOR_RETRY_INITIAL_BACKOFF_MS = "collector.retry_initial_backoff_ms": n(1, 3_600_000), Plain;
    COLLECTOR_RETRY_MAX_BACKOFF_MS = "collector.retry_max_backoff_ms": n(1, 3_600_000), Plain;
    COLLECTOR_ANONYMOUS = "collector.anonymous": Bool, Plain;
    COLLECTOR_TLS_CA_FILE = "collector.tls_ca_file": Text, Plain;
    COLLECTOR_TLS_CA_ONLY = "collector.tls_ca_only": Bool, Plain;
    COLLECTOR_TLS_CLIENT_CERT_FILE = "collector.tls_client_cert_file": Text, Plain;
    COLLECTOR_TLS_CLIENT_KEY_FILE = "collector.tls_client_key_file": Text, Plain;
    COLLECTOR_PROXY = "collector.proxy": Text, Url;
    COLLECTOR_NO_PROXY = "collector.no_proxy": Text, Plain;
    EVENTS_ALLOW_UNKNOWN_FIELDS = "events.allow_unknown_fields": Bool, Plain;
    EVENTS_MAX_ELEMENT_BYTES = "events.max_element_bytes": n(1, 16 * MIB), Plain;
    WORKER_MAX_CLAIMED_EVENTS = "worker.max_claimed_events": n(1, 1_000_000), Plain;
    WORKER_MAX_CLAIMED_BYTES = "worker.max_claimed_bytes": n(KIB, 16 * 1024 * MIB), Plain;
    WORKER_DRAIN_TIMEOUT_MS = "worker.drain_timeout_ms": n(0, 600_000), Plain;
    WORKER_THREADS = "worker.threads": n(1, 64), Plain;
    LOG_LEVEL = "log.level": Text, Plain;
    LOG_FORMAT = "log.format": Word(&["text", "json"]), Plain;
    ADMIN_LISTEN = "admin.listen": Address, Plain;
}

/// The key named `path`, if the relay knows it.
pub fn find_key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The TOML file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Values given on the command line; each overrides the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `(key path, flag, value)`, e.g. `("redis.url", "--redis-url", "redis://…")`.
    pub values: Vec<(&'static str, &'static str, String)>,
}

impl Overrides {
    /// Adds `key = value` when the flag `flag` was given.
    pub fn set_flag(
        &mut self,
        key: &'static str,
        flag: &'static str,
        value: Option<impl ToString>,
    ) {
        if let Some(value) = value {
            self.values.push((key, flag, value.to_string()));
        }
    }

    /// Adds `key = value` (an embedder's or a test's override, shown as `override`).
    pub fn set(&mut self, key: &'static str, value: Option<impl ToString>) {
        self.set_flag(key, "override", value);
    }
}

/// The layers merged: one TOML table of known keys, and where each value came from.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// `section → key → value`.
    pub table: toml::Table,
    /// Where each set key's value came from.
    pub sources: BTreeMap<&'static str, Source>,
}

/// Settings that are two ways of naming one thing: a layer that sets one replaces the
/// others from lower layers.
const ALTERNATIVES: &[&[&str]] = &[&[
    "collector.url",
    "collector.endpoint",
    "collector.protocol",
    "collector.port",
]];

impl Layers {
    /// Reads `file` (or the file `SNOWPLOW_RELAY_CONFIG` names), then the environment
    /// (`env`, or the process's), then `overrides`.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Option<&BTreeMap<String, String>>,
    ) -> Result<Layers, ConfigError> {
        let process_env;
        let env = match env {
            Some(env) => env,
            None => {
                process_env = std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                    .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                    .collect();
                &process_env
            }
        };
        let from_env = env.get(CONFIG_ENV).map(PathBuf::from);
        let file = match file.map(Path::to_path_buf).or(from_env) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    key: "file",
                    expected: format!("a readable UTF-8 TOML file ({}: {e})", path.display()),
                })?;
                Some((path, text))
            }
            None => None,
        };
        Self::load_text(
            file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
            overrides,
            env,
        )
    }

    /// As [`Layers::load`], with the file's text given (`(name, text)`): what `load` does
    /// once it has read the file.
    pub fn load_text(
        file: Option<(&Path, &str)>,
        overrides: &Overrides,
        env: &BTreeMap<String, String>,
    ) -> Result<Layers, ConfigError> {
        let mut layers = Layers::default();
        if let Some((path, text)) = file {
            layers.merge(parse_file(path, text)?, Source::File(path.to_path_buf()))?;
        }
        let mut from_env = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue; // not a setting (CONFIG, or a Kubernetes service variable)
            };
            let path = format!(
                "{}.{}",
                section.to_ascii_lowercase(),
                key.to_ascii_lowercase()
            );
            let Some(key) = find_key(&path) else {
                return Err(ConfigError::Invalid {
                    key: "environment",
                    expected: format!(
                        "{name} names no setting (`{path}` is unknown); settings are \
                         SNOWPLOW_RELAY_<SECTION>__<KEY>, e.g. SNOWPLOW_RELAY_REDIS__URL"
                    ),
                });
            };
            from_env.push((
                key,
                parse_text(key, value, &Source::Env(name.clone()))?,
                name,
            ));
        }
        layers.set_all(
            from_env
                .into_iter()
                .map(|(key, value, name)| (key, value, Source::Env(name.clone()))),
        )?;
        let mut from_flags = Vec::new();
        for (path, flag, value) in &overrides.values {
            let key = find_key(path).ok_or(ConfigError::Invalid {
                key: path,
                expected: "a known setting".into(),
            })?;
            from_flags.push((key, parse_text(key, value, &Source::Flag(flag))?, *flag));
        }
        layers.set_all(
            from_flags
                .into_iter()
                .map(|(key, value, flag)| (key, value, Source::Flag(flag))),
        )?;
        Ok(layers)
    }

    /// Adds one layer's values (from a parsed file): known keys of the right type only.
    fn merge(&mut self, table: toml::Table, source: Source) -> Result<(), ConfigError> {
        let mut values = Vec::new();
        for (section, keys) in table {
            let known = KEYS
                .iter()
                .any(|k| k.path.split('.').next() == Some(section.as_str()));
            let toml::Value::Table(keys) = keys else {
                return Err(unknown(&section, &source));
            };
            if !known {
                return Err(unknown(&section, &source));
            }
            for (name, value) in keys {
                let path = format!("{section}.{name}");
                let key = find_key(&path).ok_or_else(|| unknown(&path, &source))?;
                check_type(key, &value, &source)?;
                values.push((key, value, source.clone()));
            }
        }
        self.set_all(values)
    }

    /// Sets one layer's values: alternatives given in it replace lower layers' others.
    fn set_all(
        &mut self,
        values: impl IntoIterator<Item = (&'static Key, toml::Value, Source)>,
    ) -> Result<(), ConfigError> {
        let values: Vec<_> = values.into_iter().collect();
        for group in ALTERNATIVES {
            let given: Vec<&str> = values
                .iter()
                .map(|(key, _, _)| key.path)
                .filter(|path| group.contains(path))
                .collect();
            if given.contains(&group[0]) && given.len() > 1 {
                return Err(ConfigError::Invalid {
                    key: group[0],
                    expected: format!(
                        "either {} or {} (with protocol and port), not both in one place ({})",
                        group[0], group[1], values[0].2
                    ),
                });
            }
            if !given.is_empty() {
                for path in group.iter() {
                    self.remove(path);
                }
            }
        }
        for (key, value, source) in values {
            self.set(key, value, source);
        }
        Ok(())
    }

    fn set(&mut self, key: &'static Key, value: toml::Value, source: Source) {
        let (section, name) = key.path.split_once('.').expect("section.key");
        let section = self
            .table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(section) = section {
            section.insert(name.to_owned(), value);
        }
        self.sources.insert(key.path, source);
    }

    fn remove(&mut self, path: &str) {
        let (section, name) = path.split_once('.').expect("section.key");
        if let Some(toml::Value::Table(section)) = self.table.get_mut(section) {
            section.remove(name);
        }
        self.sources.retain(|key, _| *key != path);
    }
}

fn unknown(path: &str, source: &Source) -> ConfigError {
    ConfigError::Invalid {
        key: "file",
        expected: format!(
            "no unknown field: `{}` in {source} is not a setting (see \
             config/snowplow-relay.toml for every key)",
            crate::text::one_line(path, 64)
        ),
    }
}

/// Parses a TOML file. A syntax error names the file, line and column, and says what is
/// wrong without quoting the line (it may hold a secret).
fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|error| {
        let at = error.span().map_or(0, |span| span.start).min(text.len());
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
        let line_text = text.lines().nth(line - 1).unwrap_or_default();
        ConfigError::Invalid {
            key: "file",
            expected: format!(
                "TOML: {} at line {line}, column {column}: {}",
                path.display(),
                redact(error.message(), line_text)
            ),
        }
    })
}

/// `message` with every backquoted fragment that also occurs in `line` replaced by `…`:
/// a parser quotes what it found, and the line may hold a secret.
fn redact(message: &str, line: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        let quoted = i % 2 == 0;
        if quoted && !part.is_empty() && line.contains(part) {
            out.push('…');
        } else {
            out.push_str(part);
        }
    }
    crate::text::one_line(&out, 300)
}

/// The type a file value must have.
fn check_type(key: &Key, value: &toml::Value, source: &Source) -> Result<(), ConfigError> {
    let found = match value {
        toml::Value::String(_) => "text",
        toml::Value::Integer(_) => "a number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    };
    let expected = match (key.kind, value) {
        (Kind::Text, toml::Value::String(_)) | (Kind::Bool, toml::Value::Boolean(_)) => {
            return Ok(());
        }
        (Kind::Word(_) | Kind::Address, toml::Value::String(text)) => {
            return parse_text(key, text, source).map(|_| ());
        }
        (Kind::Number { min, max }, toml::Value::Integer(n)) => {
            return in_range(key, *n, min, max, source);
        }
        (Kind::Numbers, toml::Value::Array(items)) => {
            for item in items {
                match item {
                    toml::Value::Integer(n) if *n >= 0 => {}
                    _ => {
                        return Err(wrong(
                            key,
                            "a list of whole numbers",
                            "another value",
                            source,
                        ));
                    }
                }
            }
            return Ok(());
        }
        (Kind::Text | Kind::Word(_) | Kind::Address, _) => "text (in quotes)",
        (Kind::Number { .. }, _) => "a whole number",
        (Kind::Bool, _) => "true or false",
        (Kind::Numbers, _) => "a list of whole numbers",
    };
    Err(wrong(key, expected, found, source))
}

/// `n` within `min..=max` (a negative `n` stands for a number too large to hold).
fn in_range(key: &Key, n: i64, min: u64, max: u64, source: &Source) -> Result<(), ConfigError> {
    if n >= 0 && (min..=max).contains(&(n as u64)) {
        return Ok(());
    }
    let range = if max == ANY {
        format!("a whole number of at least {min}")
    } else {
        format!("a number from {min} to {max}")
    };
    let found = if n < 0 {
        "a larger number".to_owned()
    } else {
        n.to_string()
    };
    Err(ConfigError::Invalid {
        key: key.path,
        expected: format!("{range} (found {found}, from {source})"),
    })
}

/// Every number in `config` within its key's range: settings built in code (the tracker's
/// builders, tests) pass the same checks as those read from the layers.
pub fn check_ranges(config: &super::Config) -> Result<(), ConfigError> {
    let table = toml::Value::try_from(config).map_err(|e| ConfigError::Invalid {
        key: "settings",
        expected: e.to_string(),
    })?;
    for key in KEYS {
        let Kind::Number { min, max } = key.kind else {
            continue;
        };
        let (section, name) = key.path.split_once('.').expect("section.key");
        if let Some(value) = table.get(section).and_then(|s| s.get(name)) {
            let n = value.as_integer().unwrap_or(-1);
            if n < 0 || !(min..=max).contains(&(n as u64)) {
                let range = if max == ANY {
                    format!("a whole number of at least {min}")
                } else {
                    format!("a number from {min} to {max}")
                };
                return Err(ConfigError::Invalid {
                    key: key.path,
                    expected: format!("{range} (found {n})"),
                });
            }
        }
    }
    Ok(())
}

fn wrong(key: &Key, expected: &str, found: &str, source: &Source) -> ConfigError {
    ConfigError::Invalid {
        key: key.path,
        expected: format!("{expected} (found {found}, from {source})"),
    }
}

/// Parses an environment variable's or a flag's text as `key`'s type. Text stays exactly
/// as given; numbers are plain decimal digits.
fn parse_text(key: &Key, text: &str, source: &Source) -> Result<toml::Value, ConfigError> {
    let shown = || match key.shown {
        Shown::Plain => format!("`{}`", crate::text::one_line(text, 64)),
        _ => "the value given".to_owned(),
    };
    let number = |text: &str| -> Option<i64> {
        (!text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match key.kind {
        Kind::Text => Ok(toml::Value::String(text.to_owned())),
        Kind::Number { min, max } => match number(text) {
            Some(n) => {
                in_range(key, n, min, max, source)?;
                Ok(toml::Value::Integer(n))
            }
            // Digits, but too many for any setting.
            None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                in_range(key, -1, min, max, source).map(|_| toml::Value::Integer(0))
            }
            None => Err(wrong(
                key,
                "a whole number in decimal digits",
                &shown(),
                source,
            )),
        },
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(wrong(key, "true or false", &shown(), source)),
        },
        Kind::Word(words) => {
            if words.iter().any(|w| w.eq_ignore_ascii_case(text)) {
                Ok(toml::Value::String(text.to_owned()))
            } else {
                let list: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
                Err(wrong(
                    key,
                    &format!("one of {}", list.join(", ")),
                    &shown(),
                    source,
                ))
            }
        }
        Kind::Address => match text.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(toml::Value::String(text.to_owned())),
            Err(_) => Err(wrong(
                key,
                "an IP address and port, e.g. 127.0.0.1:9187 or 0.0.0.0:9187",
                &shown(),
                source,
            )),
        },
        Kind::Numbers => text
            .split(',')
            .map(|item| number(item.trim()).map(toml::Value::Integer))
            .collect::<Option<Vec<_>>>()
            .map(toml::Value::Array)
            .ok_or_else(|| wrong(key, "comma-separated whole numbers", &shown(), source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn text_stays_text_and_numbers_are_digits() {
        let layers = Layers::load(
            None,
            &Overrides::default(),
            Some(&env(&[
                ("SNOWPLOW_RELAY_REDIS__KEY", "007"),
                ("SNOWPLOW_RELAY_REDIS__PASSWORD", "00042"),
                ("SNOWPLOW_RELAY_LOG__LEVEL", "1e3"),
                ("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "050"),
            ])),
        )
        .unwrap();
        let redis = layers.table["redis"].as_table().unwrap();
        assert_eq!(redis["key"].as_str(), Some("007"));
        assert_eq!(redis["password"].as_str(), Some("00042"));
        assert_eq!(layers.table["log"]["level"].as_str(), Some("1e3"));
        assert_eq!(
            layers.table["collector"]["buffer_size"].as_integer(),
            Some(50)
        );
        for bad in ["+5", "1e3", "nan", "-1", " 5", "99999999999999999999", ""] {
            let error = Layers::load(
                None,
                &Overrides::default(),
                Some(&env(&[("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", bad)])),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains("collector.buffer_size"), "{bad}: {error}");
            assert!(
                error.contains("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn kubernetes_variables_are_ignored_and_unknown_settings_named() {
        let layers = Layers::load(
            None,
            &Overrides::default(),
            Some(&env(&[
                ("SNOWPLOW_RELAY_SERVICE_HOST", "10.0.0.1"),
                ("SNOWPLOW_RELAY_SERVICE_PORT", "9187"),
                ("SNOWPLOW_RELAY_PORT", "tcp://10.0.0.1:9187"),
                ("SNOWPLOW_RELAY_PORT_9187_TCP_ADDR", "10.0.0.1"),
            ])),
        )
        .unwrap();
        assert!(layers.table.is_empty());
        let error = Layers::load(
            None,
            &Overrides::default(),
            Some(&env(&[("SNOWPLOW_RELAY_REDIS__UTL", "x")])),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("SNOWPLOW_RELAY_REDIS__UTL"), "{error}");
    }

    #[test]
    fn a_syntax_error_never_shows_the_line() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "[redis]\npassword = \"Xy\\q9secret\"\n",
            "[redis]\npassword = Xy9secret\n",
            "[redis]\npassword = 99999999999999999999999\n",
            "[redis]\nurl = \"redis://:Xy9secret@h\n",
        ] {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, text).unwrap();
            let error = Layers::load(Some(&path), &Overrides::default(), Some(&env(&[])))
                .unwrap_err()
                .to_string();
            assert!(
                !error.contains("Xy9secret") && !error.contains("q9secret"),
                "{error}"
            );
            assert!(!error.contains("99999"), "{error}");
            assert!(error.contains("line 2"), "{error}");
        }
    }

    #[test]
    fn a_higher_layer_naming_the_collector_replaces_the_lower_ones_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[collector]\nendpoint = \"c.example.com\"\nport = 8080\nprotocol = \"http\"\n",
        )
        .unwrap();
        let mut flags = Overrides::default();
        flags.set_flag(
            "collector.url",
            "--collector",
            Some("https://other.example.com"),
        );
        let layers = Layers::load(Some(&path), &flags, Some(&env(&[]))).unwrap();
        let collector = layers.table["collector"].as_table().unwrap();
        assert_eq!(collector.len(), 1, "{collector:?}");
        assert_eq!(layers.sources["collector.url"], Source::Flag("--collector"));
        std::fs::write(&path, "[collector]\nurl = \"http://a\"\nport = 8080\n").unwrap();
        let error = Layers::load(Some(&path), &Overrides::default(), Some(&env(&[])))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not both"), "{error}");
    }
}
