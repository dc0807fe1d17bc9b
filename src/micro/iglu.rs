//! The Iglu schemas the local collector validates self-describing data against, as
//! Snowplow Micro does: the user's static registries (`--iglu-dir DIR`, laid out as
//! `DIR/schemas/VENDOR/NAME/jsonschema/M-R-A`, searched first) and all of Iglu Central
//! (`iglu/`, 679 schemas, deflated into the binary by `build.rs`: 0.4 MB), as Micro
//! resolves against Iglu Central by default, with no network. A schema is inflated and
//! compiled when an event first names it, so start-up and memory do not grow with the
//! registry. A schema found nowhere makes the event bad. `GET
//! /micro/iglu/VENDOR/NAME/FORMAT/VERSION` serves what it resolves.
//!
//! Bounded against hostile input: only schemas that exist are compiled and kept (one per
//! file at most; one that fails to compile is remembered as failed, not compiled again
//! for every event), URIs are checked before any file is touched (no component may start
//! with a dot) and a file a symlink leads outside its registry is not read, a `pattern`
//! may take at most [`PATTERN_BACKTRACK_LIMIT`] backtracking steps per value (a
//! backreference could otherwise take ~20 ms per event: past the limit the value is
//! refused, naming the limit), and at most [`MAX_ERRORS_PER_CHECK`] errors are reported
//! per check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use snowplow_relay_tracker::protocol::shorten;

/// Errors reported per validated value, at most.
pub const MAX_ERRORS_PER_CHECK: usize = 10;

/// Backtracking steps a schema's `pattern` may take on one value (fancy-regex's default
/// is 1,000,000, ~20 ms for a backreference on a few hundred bytes). Patterns without
/// backreferences or look-arounds run on the linear-time engine and never backtrack.
pub const PATTERN_BACKTRACK_LIMIT: usize = 10_000;

/// Largest schema file read, in bytes.
const MAX_SCHEMA_BYTES: u64 = 1024 * 1024;

/// Iglu Central (see `iglu/README.md`), each schema deflated on its own by `build.rs`.
const SHIPPED_BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/iglu.bin"));

/// Where each shipped schema lies in [`SHIPPED_BLOB`]: `(vendor/name/format/version,
/// start, end)`, sorted by path.
const SHIPPED_INDEX: &[(&str, usize, usize)] = include!(concat!(env!("OUT_DIR"), "/iglu_index.rs"));

/// The text of the shipped schema at `path`, inflated from the blob; `None` if Iglu
/// Central has no such schema (no inflating then: a miss costs a binary search).
fn shipped(path: &str) -> Option<String> {
    let at = SHIPPED_INDEX
        .binary_search_by(|(shipped, _, _)| (*shipped).cmp(path))
        .ok()?;
    let (_, start, end) = SHIPPED_INDEX[at];
    let text = miniz_oxide::inflate::decompress_to_vec_with_limit(
        &SHIPPED_BLOB[start..end],
        MAX_SCHEMA_BYTES as usize,
    )
    .expect("build.rs deflated every shipped schema, none larger than the limit");
    Some(String::from_utf8(text).expect("Iglu Central's schemas are UTF-8"))
}

/// A schema found and compiled.
struct Known {
    /// The schema as served by `/micro/iglu`.
    json: Value,
    /// `None` for the schemas of other formats Iglu Central holds (Avro, Thrift,
    /// Protobuf): served, never applied.
    validator: Option<jsonschema::Validator>,
}

/// A schema compiled, or why it could not be.
type Compiled = Result<Arc<Known>, String>;

/// Resolves and applies Iglu schemas; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    dirs: Arc<Vec<PathBuf>>,
    /// Compiled schemas by `vendor/name/format/version`, or why one failed to compile;
    /// only existing ones are kept.
    known: Arc<Mutex<HashMap<String, Compiled>>>,
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
        let Some(validator) = &known.validator else {
            return Err(vec![format!(
                "schema {uri} is not a JSON Schema (its format is not jsonschema): self-describing data must name one"
            )]);
        };
        let errors: Vec<String> = validator
            .iter_errors(data)
            .take(MAX_ERRORS_PER_CHECK)
            .map(|error| {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                // The URI whole (it resolved, so it is a registry path); the message,
                // which may quote the data, shortened.
                format!("{uri}: {at}: {}", shorten(&error.to_string()))
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
            return known.clone();
        }
        // A registry path is named whole; anything else (it may be any string a
        // client sent) shortened.
        let not_found = || {
            let named = if is_registry_path(path) {
                path.to_owned()
            } else {
                shorten(path)
            };
            format!(
                "schema iglu:{named} not found in the Iglu registries (--iglu-dir, then Iglu Central)"
            )
        };
        if !is_registry_path(path) {
            return Err(not_found());
        }
        let text = self
            .read_from_dirs(path)
            .or_else(|| shipped(path))
            .ok_or_else(not_found)?;
        let known = compile(path, &text).map(Arc::new);
        self.known
            .lock()
            .expect("iglu lock")
            .insert(path.to_owned(), known.clone());
        known
    }

    fn read_from_dirs(&self, path: &str) -> Option<String> {
        self.dirs.iter().find_map(|dir| {
            // Where the file really is, symlinks followed: inside the registry or not read.
            let registry = dir.join("schemas").canonicalize().ok()?;
            let file = registry.join(path).canonicalize().ok()?;
            if !file.starts_with(&registry) {
                return None;
            }
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
/// `self` keys set aside, as Iglu does, and JSON Schema draft 4 applied. A schema of
/// another format is kept to be served, with no validator.
fn compile(path: &str, text: &str) -> Result<Known, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("schema iglu:{path} is not JSON: {e}"))?;
    if path.split('/').nth(2) != Some("jsonschema") {
        return Ok(Known {
            json,
            validator: None,
        });
    }
    let mut schema = json.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("self");
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .with_retriever(IgluCentral)
        .with_pattern_options(
            jsonschema::PatternOptions::fancy_regex().backtrack_limit(PATTERN_BACKTRACK_LIMIT),
        )
        .build(&schema)
        .map_err(|e| format!("schema iglu:{path} is not a valid JSON Schema: {e}"))?;
    Ok(Known {
        json,
        validator: Some(validator),
    })
}

/// Resolves a schema's `$ref` to Iglu Central (`http://iglucentral.com/schemas/PATH`,
/// as Iglu Central's own schemas write it) from the shipped pack, never the network.
struct IgluCentral;

impl jsonschema::Retrieve for IgluCentral {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let uri = uri.as_str();
        let path = [
            "http://iglucentral.com/schemas/",
            "https://iglucentral.com/schemas/",
        ]
        .iter()
        .find_map(|prefix| uri.strip_prefix(prefix))
        .map(|rest| rest.split('#').next().unwrap_or(rest));
        let text = path
            .filter(|path| is_registry_path(path))
            .and_then(shipped)
            .ok_or_else(|| {
                format!(
                    "{} is not in the shipped Iglu Central (no network)",
                    shorten(uri)
                )
            })?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn all_of_iglu_central_is_shipped_and_compiles() {
        // The count of iglu/README.md (release R183): a file lost from the pack fails here.
        assert_eq!(SHIPPED_INDEX.len(), 679);
        assert!(SHIPPED_INDEX.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        let registry = Registry::default();
        let failing: Vec<String> = SHIPPED_INDEX
            .iter()
            .filter_map(|(path, _, _)| registry.resolve(path).err())
            .collect();
        assert!(failing.is_empty(), "{failing:#?}");
        for (path, _, _) in SHIPPED_INDEX {
            let schema = registry.schema(path).unwrap_or_else(|| panic!("{path}"));
            if !path.contains("/jsonschema/") {
                let uri = format!("iglu:{path}");
                let errors = registry.validate(&uri, &json!({})).unwrap_err();
                assert!(errors[0].contains("not a JSON Schema"), "{errors:?}");
                continue;
            }
            let self_ = &schema["self"];
            let named = format!(
                "{}/{}/{}/{}",
                self_["vendor"].as_str().unwrap(),
                self_["name"].as_str().unwrap(),
                self_["format"].as_str().unwrap(),
                self_["version"].as_str().unwrap()
            );
            assert_eq!(&named, path, "a schema's self names its place");
        }
    }

    #[test]
    fn the_entities_real_trackers_send_by_default_resolve() {
        let registry = Registry::default();
        let web_page = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0";
        let id = "2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c";
        assert!(registry.validate(web_page, &json!({"id": id})).is_ok());
        let errors = registry.validate(web_page, &json!({"id": 7})).unwrap_err();
        assert!(
            errors[0].starts_with(&format!("{web_page}: /id: ")),
            "whole: {errors:?}"
        );
        for uri in [
            "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
            "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0",
            "iglu:com.snowplowanalytics.snowplow/consent_document/jsonschema/1-0-0",
            "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
        ] {
            let errors = registry.validate(uri, &json!({})).err().unwrap_or_default();
            assert!(
                errors.iter().all(|e| !e.contains("not found")),
                "{uri}: {errors:?}"
            );
        }
    }

    #[test]
    fn shipped_schemas_apply() {
        let registry = Registry::default();
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
    fn hostile_registries_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let folder = dir
                .path()
                .join(format!("schemas/com.acme/{name}/jsonschema"));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(
                folder.join("1-0-0"),
                format!(
                    r#"{{"self":{{"vendor":"com.acme","name":"{name}","format":"jsonschema","version":"1-0-0"}},{body}}}"#
                ),
            )
            .unwrap();
            folder.join("1-0-0")
        };
        // A backreference: past the backtracking limit the value is refused, naming it.
        write("echo", r#""type":"string","pattern":"^(a|a)*\\1b""#);
        // A schema that fails to compile is remembered as failed.
        let broken = write("broken", r#""type":"string","pattern":"(""#);
        // A symlink out of the registry is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), r#"{"type":"string"}"#).unwrap();
        let leak = dir.path().join("schemas/com.acme/leak/jsonschema");
        std::fs::create_dir_all(&leak).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), leak.join("1-0-0")).unwrap();
        let registry = Registry::new(vec![dir.path().to_owned()]);

        let errors = registry
            .validate(
                "iglu:com.acme/echo/jsonschema/1-0-0",
                &json!(format!("{}!", "a".repeat(16))),
            )
            .unwrap_err();
        assert!(errors[0].contains("backtracking"), "{errors:?}");
        assert!(
            registry
                .validate("iglu:com.acme/echo/jsonschema/1-0-0", &json!("aab"))
                .is_ok()
        );

        let first = registry.validate("iglu:com.acme/broken/jsonschema/1-0-0", &json!("x"));
        assert!(first.unwrap_err()[0].contains("not a valid JSON Schema"));
        std::fs::remove_file(broken).unwrap();
        let again = registry.validate("iglu:com.acme/broken/jsonschema/1-0-0", &json!("x"));
        assert!(
            again.unwrap_err()[0].contains("not a valid JSON Schema"),
            "cached, not read again"
        );

        let errors = registry
            .validate("iglu:com.acme/leak/jsonschema/1-0-0", &json!("x"))
            .unwrap_err();
        assert!(errors[0].contains("not found"), "{errors:?}");
        assert!(registry.schema("com.acme/leak/jsonschema/1-0-0").is_none());
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
