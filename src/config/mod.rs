//! Typed, documented settings, loaded in layers and validated once at start-up.
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config FILE`, or the file
//! `SNOWPLOW_RELAY_CONFIG` names) < environment (`SNOWPLOW_RELAY_<SECTION>__<KEY>`, e.g.
//! `SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE=100`; lists comma-separated) < command-line
//! flags ([`layers`]). Unknown keys are errors, so a typo never silently falls back to a
//! default. Every key is declared once, in [`keys`]: the structures below, the layers'
//! key table, the documented example file `config/snowplow-relay.toml` and the reload set
//! come from that declaration.
//!
//! [`Settings::load`] returns the typed [`Settings`] whose method-dependent defaults
//! (`buffer_size`, `byte_limit`, `dead_letter_key`) are filled in and whose values were
//! all checked, so the rest of the program never re-validates.
//!
//! It may touch: files and the environment (nothing else), [`crate::text`] and the
//! tracker's protocol types. Every other room reads [`Settings`]; none writes them.

pub mod keys;
pub mod layers;
mod settings;

pub use keys::{
    AdminConfig, CollectorConfig, Config, EventsConfig, LogConfig, RedisConfig, WorkerConfig, key,
};
pub use layers::{Overrides, Source};
pub use settings::{
    CollectorSettings, EventsSettings, RedisSettings, RedisTls, RetryPolicy, SentinelSettings,
    Settings, ToolSettings, WorkerSettings,
};

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

pub use snowplow_relay_tracker::protocol::{MAX_POST_BYTES, Method};

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Protocol {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS, verified against the system's trust store.
    Https,
}

/// Events per POST request unless `collector.buffer_size` says otherwise, decided with
/// `worker.max_claimed_events` and `max_claimed_bytes` from the benchmark's rows at a
/// distance (docs/performance.md#at-a-distance): with a collector 100 ms away, 50 per
/// request needed 300 requests in flight and twice the CPU per event of loopback for
/// 78,000 events/s; 200 per request reached 118,000 with 1.3 times it. 200 average
/// events make a ~160 KB body, far below the collector's 1 MB limit.
pub const DEFAULT_POST_BUFFER_SIZE: usize = 200;

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
        Settings::new(self, Default::default(), Vec::new())
    }

    /// The configuration as TOML, each value shown as its key says ([`keys::Shown`]):
    /// passwords as `****`, URLs with their credentials masked. What `check` prints and
    /// what the start-up log line shows.
    pub fn to_masked_toml(&self) -> String {
        self.to_toml_with(|_| None)
    }

    /// As [`Config::to_masked_toml`], each line followed by `  # <note>` where `note`
    /// has one for its key.
    pub(crate) fn to_toml_with(&self, note: impl Fn(&'static str) -> Option<String>) -> String {
        let Ok(toml::Value::Table(table)) = toml::Value::try_from(self) else {
            return "# cannot show the settings\n".into();
        };
        let mut out = String::new();
        let mut section = "";
        for key in keys::KEYS {
            let (this, name) = key.parts();
            let Some(value) = table.get(this).and_then(|s| s.get(name)) else {
                continue;
            };
            if this != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("[{this}]\n"));
                section = this;
            }
            let shown = match (key.shown, value) {
                (keys::Shown::Url, toml::Value::String(url)) => {
                    toml::Value::String(mask_url(url)).to_string()
                }
                (keys::Shown::Secret, _) => "\"****\"".to_owned(),
                _ => value.to_string(),
            };
            out.push_str(&format!("{name} = {shown}"));
            if let Some(note) = note(key.path) {
                out.push_str(&format!("  # {note}"));
            }
            out.push('\n');
        }
        out
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
        assert_eq!(post.collector.buffer_size.get(), 200);
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
                "1 to 16384",
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

    /// A configuration built in code passes the ranges the layers check.
    #[test]
    fn a_config_built_in_code_is_range_checked() {
        let mut config = Config::default();
        config.collector.url = Some("http://127.0.0.1:9090".into());
        assert!(config.clone().validate().is_ok());
        config.redis.claim_batch_size = std::num::NonZeroUsize::new(9_000).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("redis.claim_batch_size") && err.contains("1 to 8000 (found 9000)"),
            "{err}"
        );
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
    use super::keys::{KEYS, Reload};
    use super::*;

    /// `config/snowplow-relay.toml` is what the declaration generates
    /// (`snowplow-relay check --print-default-config`).
    #[test]
    fn the_example_file_is_generated_from_the_declaration() {
        let example = include_str!("../../config/snowplow-relay.toml");
        assert!(
            example == keys::example_file(),
            "config/snowplow-relay.toml differs from what src/config/keys.rs declares; \
             regenerate it: cargo run -- check --print-default-config > \
             config/snowplow-relay.toml"
        );
    }

    /// The example file shows every key with its default: uncommenting every
    /// `# key = value` line but those showing an example value (a key unset by default)
    /// changes nothing.
    #[test]
    fn the_example_file_shows_each_default() {
        let example = keys::example_file();
        let mut uncommented = String::new();
        let mut section = "";
        for line in example.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
                uncommented.push_str(&format!("{line}\n"));
            } else if let Some((name, _)) =
                line.strip_prefix("# ").and_then(|l| l.split_once(" = "))
                && let Some(key) = KEYS.iter().find(|k| k.path == format!("{section}.{name}"))
                && key.example.is_none()
            {
                uncommented.push_str(&format!("{}\n", &line[2..]));
            }
        }
        // The file has a [collector] section: the URL goes into it.
        let with_url = uncommented.replace(
            "[collector]\n",
            "[collector]\nurl = \"https://collector.example.com\"\n",
        );
        let loaded =
            Settings::load_text(Some(&with_url), &Overrides::default(), &Default::default())
                .unwrap_or_else(|e| panic!("{e}\n{with_url}"));
        let mut defaults = Config::default();
        defaults.collector.url = Some("https://collector.example.com".into());
        let defaults = defaults.validate().unwrap();
        assert_eq!(loaded.to_masked_toml(), defaults.to_masked_toml());
    }

    /// The keys of the file, of `Config` and of the example file are the declared ones,
    /// no more and no fewer; each key a reload applies at once reaches what a reload
    /// publishes (the retry policy, or the log's level).
    #[test]
    fn config_example_and_reload_set_hold_exactly_the_declared_keys() {
        let declared: Vec<&str> = KEYS.iter().map(|k| k.path).collect();
        // Every declared key set, to its default or example: Config takes each (it
        // refuses unknown fields) and gives each back (none missing, none extra).
        let mut table = toml::Table::new();
        for key in KEYS {
            let (section, name) = key.parts();
            let value = key
                .example
                .map(str::to_owned)
                .or_else(|| keys::default_shown(key))
                .unwrap_or_else(|| panic!("{}: neither default nor example", key.path));
            let value: toml::Value =
                format!("v = {value}").parse::<toml::Table>().unwrap()["v"].clone();
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap()
                .insert(name.into(), value);
        }
        let config: Config = toml::Value::Table(table).try_into().unwrap();
        let back = toml::Value::try_from(&config).unwrap();
        let mut held: Vec<String> = Vec::new();
        for (section, keys) in back.as_table().unwrap() {
            for name in keys.as_table().unwrap().keys() {
                held.push(format!("{section}.{name}"));
            }
        }
        held.sort();
        let mut sorted = declared.clone();
        sorted.sort();
        assert_eq!(held, sorted, "Config's keys");
        // The example file's.
        let mut shown = Vec::new();
        let mut section = String::new();
        for line in keys::example_file().lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.into();
            } else if let Some((name, _)) =
                line.strip_prefix("# ").and_then(|l| l.split_once(" = "))
                && !name.contains(' ')
            {
                shown.push(format!("{section}.{name}"));
            }
        }
        assert_eq!(shown, declared, "the example file's keys");
        // Each key a reload applies at once changes what a reload publishes.
        let base = Settings::load_text(
            Some("[collector]\nurl = \"http://127.0.0.1:1\"\n"),
            &Overrides::default(),
            &Default::default(),
        )
        .unwrap();
        for key in KEYS.iter().filter(|k| k.reload == Reload::Now) {
            let mut overrides = Overrides::default();
            let other = match key.path {
                "log.level" => "debug",
                _ => "999",
            };
            overrides.set(key.path, Some(other));
            let changed = Settings::load_text(
                Some("[collector]\nurl = \"http://127.0.0.1:1\"\n"),
                &overrides,
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", key.path));
            assert!(
                changed.collector.retry != base.collector.retry
                    || changed.log.level != base.log.level,
                "{} is declared as reloaded at once but reaches neither the published retry \
                 policy nor the log",
                key.path
            );
        }
    }
}
