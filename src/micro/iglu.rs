//! The Iglu schemas the local collector validates self-describing data against, as
//! Snowplow Micro does: the user's static registries (`--iglu-dir DIR`, laid out as
//! `DIR/schemas/VENDOR/NAME/jsonschema/M-R-A`, searched first) and Snowplow's own schemas
//! shipped in `iglu/` (from Iglu Central, compiled in). A schema found nowhere makes the
//! event bad. `GET /micro/iglu/VENDOR/NAME/FORMAT/VERSION` serves what it resolves.
//!
//! Bounded against hostile input: only schemas that exist are compiled and kept (one per
//! file at most), URIs are checked before any file is touched (no component may start
//! with a dot, so nothing outside a registry is read), and at most
//! [`MAX_ERRORS_PER_CHECK`] errors are reported per check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use snowplow_relay_tracker::protocol::shorten;

/// Errors reported per validated value, at most.
pub const MAX_ERRORS_PER_CHECK: usize = 10;

/// Largest schema file read, in bytes.
const MAX_SCHEMA_BYTES: u64 = 1024 * 1024;

macro_rules! shipped {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/iglu/schemas/", $path)))),*]
    };
}

/// Snowplow's own schemas, as `(vendor/name/format/version, text)` (see `iglu/README.md`).
const SHIPPED: &[(&str, &str)] = shipped!(
    "com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/application_error/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/application_error/jsonschema/1-0-1",
    "com.snowplowanalytics.snowplow/application_error/jsonschema/1-0-2",
    "com.snowplowanalytics.snowplow/change_form/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
    "com.snowplowanalytics.snowplow/focus_form/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
    "com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-1",
    "com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-2",
    "com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-3",
    "com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
    "com.snowplowanalytics.snowplow/remove_from_cart/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/site_search/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/timing/jsonschema/1-0-0",
    "com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
);

/// A schema found and compiled.
struct Known {
    /// The schema as served by `/micro/iglu`.
    json: Value,
    validator: jsonschema::Validator,
}

/// Resolves and applies Iglu schemas; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    dirs: Arc<Vec<PathBuf>>,
    /// Compiled schemas by `vendor/name/format/version`; only existing ones are kept.
    known: Arc<Mutex<HashMap<String, Arc<Known>>>>,
}

impl Registry {
    /// Snowplow's schemas plus the static registries in `dirs` (searched first, in order).
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry {
            dirs: Arc::new(dirs),
            known: Arc::default(),
        }
    }

    /// The schema at `path` (`vendor/name/format/version`), if any registry has it.
    pub fn schema(&self, path: &str) -> Option<Value> {
        self.resolve(path).ok().map(|known| known.json.clone())
    }

    /// Checks `data` against the schema `uri` (`iglu:vendor/name/format/version`); the
    /// errors name the schema and the place in the data.
    pub fn validate(&self, uri: &str, data: &Value) -> Result<(), Vec<String>> {
        let path = uri.strip_prefix("iglu:").unwrap_or(uri);
        let known = self.resolve(path).map_err(|why| vec![why])?;
        let errors: Vec<String> = known
            .validator
            .iter_errors(data)
            .take(MAX_ERRORS_PER_CHECK)
            .map(|error| {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("{}: {at}: {}", shorten(uri), shorten(&error.to_string()))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn resolve(&self, path: &str) -> Result<Arc<Known>, String> {
        if let Some(known) = self.known.lock().expect("iglu lock").get(path) {
            return Ok(known.clone());
        }
        let not_found = || {
            format!(
                "schema iglu:{} not found in the Iglu registries (--iglu-dir, then Snowplow's own)",
                shorten(path)
            )
        };
        if !is_registry_path(path) {
            return Err(not_found());
        }
        let text = self
            .read_from_dirs(path)
            .or_else(|| {
                SHIPPED
                    .iter()
                    .find(|(shipped, _)| *shipped == path)
                    .map(|(_, text)| (*text).to_owned())
            })
            .ok_or_else(not_found)?;
        let known = Arc::new(compile(path, &text)?);
        self.known
            .lock()
            .expect("iglu lock")
            .insert(path.to_owned(), known.clone());
        Ok(known)
    }

    fn read_from_dirs(&self, path: &str) -> Option<String> {
        self.dirs.iter().find_map(|dir| {
            let file = dir.join("schemas").join(path);
            let metadata = std::fs::metadata(&file).ok()?;
            if !metadata.is_file() || metadata.len() > MAX_SCHEMA_BYTES {
                return None;
            }
            std::fs::read_to_string(file).ok()
        })
    }
}

/// `vendor/name/format/M-R-A` with no component that could leave a registry folder.
fn is_registry_path(path: &str) -> bool {
    snowplow_relay_tracker::is_iglu_uri(&format!("iglu:{path}"))
        && path
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// A validator for an Iglu schema: its `$schema` (the self-describing meta-schema) and
/// `self` keys set aside, as Iglu does, and JSON Schema draft 4 applied.
fn compile(path: &str, text: &str) -> Result<Known, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("schema iglu:{path} is not JSON: {e}"))?;
    let mut schema = json.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("self");
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .map_err(|e| format!("schema iglu:{path} is not a valid JSON Schema: {e}"))?;
    Ok(Known { json, validator })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shipped_schemas_compile_and_apply() {
        let registry = Registry::default();
        for (path, _) in SHIPPED {
            assert!(registry.schema(path).is_some(), "{path}");
        }
        let screen = "iglu:com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0";
        assert!(registry.validate(screen, &json!({"name": "Home"})).is_ok());
        let errors = registry
            .validate(screen, &json!({"name": 123}))
            .unwrap_err();
        assert!(errors[0].contains("/name"), "{errors:?}");
        assert!(errors[0].contains(screen), "{errors:?}");
    }

    #[test]
    fn unknown_schemas_and_escapes_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(vec![dir.path().join("registry")]);
        for uri in [
            "iglu:com.acme/nothing/jsonschema/1-0-0",
            "iglu:../../etc/jsonschema/1-0-0",
            "iglu:./x/jsonschema/1-0-0",
            "not-iglu",
        ] {
            let errors = registry.validate(uri, &json!({})).unwrap_err();
            assert!(errors[0].contains("not found"), "{uri}: {errors:?}");
        }
    }

    #[test]
    fn a_users_registry_is_searched_first() {
        let dir = tempfile::tempdir().unwrap();
        let schema_dir = dir.path().join("schemas/com.acme/checkout/jsonschema");
        std::fs::create_dir_all(&schema_dir).unwrap();
        std::fs::write(
            schema_dir.join("1-0-0"),
            r#"{"$schema":"http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
               "self":{"vendor":"com.acme","name":"checkout","format":"jsonschema","version":"1-0-0"},
               "type":"object","properties":{"step":{"type":"integer"}},"required":["step"]}"#,
        )
        .unwrap();
        let registry = Registry::new(vec![dir.path().to_owned()]);
        let uri = "iglu:com.acme/checkout/jsonschema/1-0-0";
        assert!(registry.validate(uri, &json!({"step": 2})).is_ok());
        assert!(registry.validate(uri, &json!({"step": "two"})).is_err());
        assert!(registry.validate(uri, &json!({})).is_err());
        assert_eq!(
            registry
                .schema("com.acme/checkout/jsonschema/1-0-0")
                .unwrap()["self"]["name"],
            "checkout"
        );
    }
}
