//! Self-describing JSON: the `{"schema": "iglu:…", "data": …}` shape of contexts and
//! self-describing events, the envelopes the tracker protocol wraps them in, and the checks
//! the local collector applies to what it receives.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shorten;
use crate::Error;

/// The envelope of a context list (`cx`/`co`), as the Python tracker 0.15 writes it.
pub const CONTEXTS_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1";

/// The envelope of a self-describing event (`ue_px`/`ue_pr`).
pub const UNSTRUCT_EVENT_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0";

/// A JSON value tagged with the Iglu schema that describes it: a context, or the body of
/// a self-describing event.
///
/// ```
/// use snowplow_relay_tracker::SelfDescribingJson;
/// use serde_json::json;
///
/// let context = SelfDescribingJson::new(
///     "iglu:com.acme/user_context/jsonschema/1-0-0",
///     json!({"plan": "pro"}),
/// )?;
/// assert_eq!(context.schema(), "iglu:com.acme/user_context/jsonschema/1-0-0");
///
/// // Anything that is not an Iglu URI is refused, never sent.
/// assert!(SelfDescribingJson::new("com.acme/user_context", json!({})).is_err());
/// # Ok::<(), snowplow_relay_tracker::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfDescribingJson {
    schema: String,
    data: Value,
}

impl SelfDescribingJson {
    /// Tags `data` with `schema`, which must be an Iglu URI
    /// (`iglu:vendor/name/format/model-revision-addition`).
    pub fn new(schema: impl Into<String>, data: Value) -> Result<Self, Error> {
        let schema = schema.into();
        if !is_iglu_uri(&schema) {
            return Err(Error::InvalidSchema(shorten(&schema)));
        }
        Ok(SelfDescribingJson { schema, data })
    }

    /// Parses `{"schema": "iglu:…", "data": …}` text, e.g. from a command-line flag.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::InvalidJson(format!("not JSON ({e})")))?;
        Self::from_value(&value).map_err(Error::InvalidJson)
    }

    /// Checks a received value's shape: an object with an Iglu `schema` and a `data`
    /// member, nothing else.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let Some(object) = value.as_object() else {
            return Err("a self-describing JSON must be an object".into());
        };
        let Some(schema) = object.get("schema").and_then(Value::as_str) else {
            return Err("a self-describing JSON needs a string `schema`".into());
        };
        if !is_iglu_uri(schema) {
            return Err(format!("`schema` is not an Iglu URI: {}", shorten(schema)));
        }
        let Some(data) = object.get("data") else {
            return Err("a self-describing JSON needs `data`".into());
        };
        if let Some(extra) = object.keys().find(|k| *k != "schema" && *k != "data") {
            return Err(format!(
                "a self-describing JSON holds only `schema` and `data`, not `{}`",
                shorten(extra)
            ));
        }
        Ok(SelfDescribingJson {
            schema: schema.to_owned(),
            data: data.clone(),
        })
    }

    /// The Iglu URI.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The data.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// As a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::json!({"schema": self.schema, "data": self.data})
    }
}

/// Whether `uri` is `iglu:vendor/name/format/M-R-A`: vendor of letters, digits, `-`, `_`
/// and `.`; name and format of letters, digits, `-` and `_`; a SchemaVer whose model is
/// at least 1.
pub fn is_iglu_uri(uri: &str) -> bool {
    let Some(path) = uri.strip_prefix("iglu:") else {
        return false;
    };
    let parts: Vec<&str> = path.split('/').collect();
    let [vendor, name, format, version] = parts[..] else {
        return false;
    };
    let word = |s: &str, dot: bool| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dot && b == b'.'))
    };
    let number = |s: &str| {
        !s.is_empty()
            && s.len() <= 9
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'))
    };
    let version: Vec<&str> = version.split('-').collect();
    word(vendor, true)
        && word(name, false)
        && word(format, false)
        && version.len() == 3
        && version.iter().all(|n| number(n))
        && version[0] != "0"
}

/// Whether `schema` is `envelope` at any version of the same model (`…/1-0-0` and
/// `…/1-0-1` are both contexts envelopes).
fn is_envelope(schema: &str, envelope: &str) -> bool {
    let prefix = &envelope[..envelope.len() - "0-0".len()];
    schema.starts_with(prefix) && is_iglu_uri(schema)
}

/// Checks a decoded `cx`/`co` value: the contexts envelope holding a non-empty array of
/// self-describing JSONs. Returns the contexts.
pub fn check_contexts(value: &Value) -> Result<Vec<SelfDescribingJson>, String> {
    let envelope = SelfDescribingJson::from_value(value)?;
    if !is_envelope(envelope.schema(), CONTEXTS_SCHEMA) {
        return Err(format!(
            "contexts must be wrapped in {CONTEXTS_SCHEMA}, not {}",
            shorten(envelope.schema())
        ));
    }
    let Some(items) = envelope.data().as_array() else {
        return Err("the contexts envelope's data must be an array".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            SelfDescribingJson::from_value(item).map_err(|e| format!("context {i}: {e}"))
        })
        .collect()
}

/// Checks a decoded `ue_px`/`ue_pr` value: the unstruct_event envelope holding one
/// self-describing JSON. Returns the event.
pub fn check_self_describing_event(value: &Value) -> Result<SelfDescribingJson, String> {
    let envelope = SelfDescribingJson::from_value(value)?;
    if !is_envelope(envelope.schema(), UNSTRUCT_EVENT_SCHEMA) {
        return Err(format!(
            "a self-describing event must be wrapped in {UNSTRUCT_EVENT_SCHEMA}, not {}",
            shorten(envelope.schema())
        ));
    }
    SelfDescribingJson::from_value(envelope.data()).map_err(|e| format!("event: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iglu_uris() {
        for good in [
            "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
            "iglu:com.acme_1/my-event/jsonschema/10-0-12",
        ] {
            assert!(is_iglu_uri(good), "{good}");
        }
        for bad in [
            "",
            "iglu:",
            "com.acme/x/jsonschema/1-0-0",
            "iglu:com.acme/x/jsonschema/1-0",
            "iglu:com.acme/x/jsonschema/0-1-0",
            "iglu:com.acme/x/jsonschema/1-01-0",
            "iglu:com.acme/x/jsonschema/1-0-0/extra",
            "iglu:com acme/x/jsonschema/1-0-0",
            "iglu:com.acme/x.y/jsonschema/1-0-0",
            "iglu:com.acme//jsonschema/1-0-0",
        ] {
            assert!(!is_iglu_uri(bad), "{bad}");
        }
    }

    #[test]
    fn envelopes_are_checked() {
        let context = json!({"schema": "iglu:com.acme/c/jsonschema/1-0-0", "data": {"a": 1}});
        let good = json!({"schema": CONTEXTS_SCHEMA, "data": [context]});
        assert_eq!(check_contexts(&good).unwrap().len(), 1);
        let old = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0", "data": []});
        assert!(check_contexts(&old).is_ok());
        let not_array = json!({"schema": CONTEXTS_SCHEMA, "data": {}});
        assert!(check_contexts(&not_array).unwrap_err().contains("array"));
        let wrong = json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": []});
        assert!(check_contexts(&wrong).unwrap_err().contains("wrapped"));
        let bad_item = json!({"schema": CONTEXTS_SCHEMA, "data": [{"schema": "x", "data": 1}]});
        assert!(
            check_contexts(&bad_item)
                .unwrap_err()
                .starts_with("context 0")
        );

        let event = json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": context});
        assert_eq!(
            check_self_describing_event(&event).unwrap().schema(),
            "iglu:com.acme/c/jsonschema/1-0-0"
        );
        let extra = json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": context, "x": 1});
        assert!(check_self_describing_event(&extra).is_err());
    }
}
