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

/// The log filter every Rust program reads: `log.level` from the environment, when
/// `SNOWPLOW_RELAY_LOG__LEVEL` is not set (a flag still wins, as over any variable).
pub const RUST_LOG: &str = "RUST_LOG";

use super::keys::out_of_range;
pub use super::keys::{KEYS, Key, Kind, Shown, key};

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
    /// What reading them found worth a warning (an environment variable that looks
    /// like a setting but is none).
    pub warnings: Vec<String>,
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
                    .filter(|(k, _)| k.starts_with(ENV_PREFIX) || k == RUST_LOG)
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
                // Not a setting: the file's name, a Kubernetes service variable, or a
                // typo worth a warning.
                if name != CONFIG_ENV && !is_kubernetes_service_variable(name) {
                    layers.warnings.push(not_a_setting(name));
                }
                continue;
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
        let log_level = format!("{ENV_PREFIX}LOG__LEVEL");
        if let Some(value) = env.get(RUST_LOG)
            && !env.contains_key(&log_level)
        {
            let key = find_key(key::LOG_LEVEL).expect("declared");
            let source = Source::Env(RUST_LOG.into());
            from_env.push((key, parse_text(key, value, &source)?, &RUST_LOG_NAME));
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

/// `RUST_LOG`, as the environment's names are held.
static RUST_LOG_NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| RUST_LOG.into());

/// A variable Kubernetes sets for every Service in the namespace (a Service named
/// `snowplow-relay` gives `SNOWPLOW_RELAY_SERVICE_HOST`, `SNOWPLOW_RELAY_PORT_9187_TCP`…).
fn is_kubernetes_service_variable(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") || name.ends_with("_PORT")
    {
        return true;
    }
    if name.contains("_SERVICE_PORT_") {
        return true;
    }
    // X_PORT_<port>_<PROTOCOL>[_PROTO|_PORT|_ADDR]
    let Some((_, after)) = name.rsplit_once("_PORT_").filter(|(_, a)| {
        a.split('_')
            .next()
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    }) else {
        return false;
    };
    let mut parts = after.split('_').skip(1);
    matches!(parts.next(), Some("TCP" | "UDP" | "SCTP"))
        && matches!(parts.next(), None | Some("PROTO" | "PORT" | "ADDR"))
        && parts.next().is_none()
}

/// The warning for `SNOWPLOW_RELAY_<something>` that names no setting: the setting it
/// probably meant when a `__` became `_`.
fn not_a_setting(name: &str) -> String {
    let meant = KEYS.iter().find_map(|key| {
        let (section, key_name) = key.parts();
        let setting = format!("{ENV_PREFIX}{section}__{key_name}").to_ascii_uppercase();
        (setting.replace("__", "_") == name.to_ascii_uppercase()).then_some(setting)
    });
    match meant {
        Some(setting) => format!(
            "the environment variable {name} is not a setting and is ignored: did you mean \
             {setting} (two underscores between section and key)?"
        ),
        None => format!(
            "the environment variable {name} is not a setting and is ignored (settings are \
             SNOWPLOW_RELAY_<SECTION>__<KEY>, e.g. SNOWPLOW_RELAY_REDIS__URL)"
        ),
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
        (Kind::Endpoints, toml::Value::Array(items)) => {
            for item in items {
                match item {
                    toml::Value::String(text) => {
                        parse_text(key, text, source)?;
                    }
                    _ => {
                        return Err(wrong(
                            key,
                            "a list of \"host:port\" texts",
                            "another value",
                            source,
                        ));
                    }
                }
            }
            return Ok(());
        }
        (Kind::Endpoints, _) => "a list of \"host:port\" texts",
    };
    Err(wrong(key, expected, found, source))
}

/// `n` within `min..=max` (a negative `n` stands for a number too large to hold).
fn in_range(key: &Key, n: i64, min: u64, max: u64, source: &Source) -> Result<(), ConfigError> {
    match u64::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        Ok(n) => Err(out_of_range(key, n, Some(source))),
        Err(_) => Err(out_of_range(key, u64::MAX, Some(source))),
    }
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
        Kind::Endpoints => {
            let items: Vec<&str> = text
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .collect();
            for item in &items {
                let port = item
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port > 0) {
                    return Err(wrong(
                        key,
                        "\"host:port\" endpoints, comma-separated, e.g. 10.0.0.1:26379,10.0.0.2:26379",
                        &format!("`{}`", crate::text::one_line(item, 64)),
                        source,
                    ));
                }
            }
            Ok(toml::Value::Array(
                items
                    .into_iter()
                    .map(|i| toml::Value::String(i.to_owned()))
                    .collect(),
            ))
        }
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
                ("SNOWPLOW_RELAY_PORT_9187_TCP", "tcp://10.0.0.1:9187"),
                ("SNOWPLOW_RELAY_METRICS_SERVICE_PORT_HTTP", "9187"),
                ("SNOWPLOW_RELAY_CONFIG", "/dev/null"),
            ])),
        )
        .unwrap();
        assert!(layers.table.is_empty());
        assert_eq!(layers.warnings, Vec::<String>::new());
        // A typo is named, with the setting it probably meant.
        let layers = Layers::load_text(
            None,
            &Overrides::default(),
            &env(&[
                ("SNOWPLOW_RELAY_REDIS_URL", "redis://x"),
                ("SNOWPLOW_RELAY_COLOR", "1"),
            ]),
        )
        .unwrap();
        assert!(layers.table.is_empty());
        assert_eq!(layers.warnings.len(), 2, "{:?}", layers.warnings);
        assert!(
            layers.warnings[1].contains("did you mean SNOWPLOW_RELAY_REDIS__URL"),
            "{:?}",
            layers.warnings
        );
        assert!(layers.warnings[0].contains("SNOWPLOW_RELAY_COLOR is not a setting"));
        let error = Layers::load(
            None,
            &Overrides::default(),
            Some(&env(&[("SNOWPLOW_RELAY_REDIS__UTL", "x")])),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("SNOWPLOW_RELAY_REDIS__UTL"), "{error}");
    }

    /// RUST_LOG is log.level's environment variable: it beats the file, and
    /// SNOWPLOW_RELAY_LOG__LEVEL and the flag beat it; each value says where it came from.
    #[test]
    fn rust_log_is_log_level_from_the_environment() {
        let file = Some((Path::new("relay.toml"), "[log]\nlevel = \"warn\"\n"));
        let level = |layers: &Layers| {
            (
                layers.table["log"]["level"].as_str().unwrap().to_owned(),
                layers.sources[key::LOG_LEVEL].to_string(),
            )
        };
        let rust_log = env(&[("RUST_LOG", "debug")]);
        let layers = Layers::load_text(file, &Overrides::default(), &rust_log).unwrap();
        assert_eq!(
            level(&layers),
            ("debug".into(), "environment RUST_LOG".into())
        );
        let both = env(&[
            ("RUST_LOG", "debug"),
            ("SNOWPLOW_RELAY_LOG__LEVEL", "error"),
        ]);
        let layers = Layers::load_text(file, &Overrides::default(), &both).unwrap();
        assert_eq!(
            level(&layers),
            (
                "error".into(),
                "environment SNOWPLOW_RELAY_LOG__LEVEL".into()
            )
        );
        let mut flag = Overrides::default();
        flag.set_flag(key::LOG_LEVEL, "--log-level", Some("trace"));
        let layers = Layers::load_text(file, &flag, &both).unwrap();
        assert_eq!(level(&layers), ("trace".into(), "flag --log-level".into()));
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
