//! The Iglu webhook (`/com.snowplowanalytics.iglu/v1`), as enrich's Iglu adapter reads
//! it: a request that carries self-describing data becomes one self-describing event
//! (`e=ue`, `tv=com.snowplowanalytics.iglu-v1`, `p` from the query, else `app`; `srv`
//! for a form body), which the collector then checks as any tracker event. Pure: it
//! turns a query, a body and its content type into the events' parameters, or the error
//! enrich would give.

use serde_json::{Map, Value, json};

use snowplow_relay_tracker::is_iglu_uri;
use snowplow_relay_tracker::protocol::iglu::UNSTRUCT_EVENT_SCHEMA;
use snowplow_relay_tracker::protocol::shorten;

/// The tracker version enrich gives an Iglu webhook's events.
const TRACKER_VERSION: &str = "com.snowplowanalytics.iglu-v1";

/// Query parameters the adapter carries over into each event (enrich's
/// `toUnstructEventParams`).
const CARRIED_PARAMETERS: [&str; 6] = ["aid", "cv", "eid", "ttm", "url", "nuid"];

/// Events enrich takes from one Iglu webhook request, one per array item of a JSON body
/// sent with a `schema` query parameter and one otherwise.
pub(super) fn events(
    query: &str,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Result<Vec<Map<String, Value>>, String> {
    let parameters: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = body.filter(|b| !b.is_empty());
    let mime = content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let event = |schema: &str, data: Value, platform: &str| {
        let mut event = Map::new();
        event.insert("tv".into(), TRACKER_VERSION.into());
        event.insert("e".into(), "ue".into());
        event.insert("p".into(), parameter("p").unwrap_or(platform).into());
        let envelope =
            json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": {"schema": schema, "data": data}});
        event.insert("ue_pr".into(), envelope.to_string().into());
        for name in CARRIED_PARAMETERS {
            if let Some(value) = parameter(name) {
                event.insert(name.into(), value.into());
            }
        }
        event
    };
    let expected = "expected one of application/json, application/json; charset=utf-8, application/x-www-form-urlencoded";
    match (parameter("schema"), body) {
        (None, None) => {
            Err("empty `schema` field and empty body: the Iglu webhook needs one".into())
        }
        (_, Some(_)) if mime.is_none() => Err(format!("no Content-Type: {expected}")),
        // A self-describing JSON body.
        (None, Some(body)) => {
            if mime.as_deref() != Some("application/json") {
                return Err(format!(
                    "Content-Type {}: expected application/json for a self-describing body",
                    shorten(content_type.unwrap_or_default())
                ));
            }
            let parsed: Value =
                serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            let schema = parsed
                .get("schema")
                .and_then(Value::as_str)
                .filter(|s| is_iglu_uri(s));
            match (schema, parsed.get("data")) {
                (Some(schema), Some(data)) => Ok(vec![event(schema, data.clone(), "app")]),
                _ => Err("the body is not self-describing JSON (an Iglu `schema` URI and `data`), and no `schema` parameter names one".into()),
            }
        }
        (Some(schema), _) if !is_iglu_uri(schema) => Err(format!(
            "the `schema` parameter {} is not an Iglu URI",
            shorten(schema)
        )),
        // The query's other parameters, as strings.
        (Some(schema), None) => {
            let data: Map<String, Value> = parameters
                .iter()
                .filter(|(name, _)| name != "schema")
                .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
                .collect();
            Ok(vec![event(schema, Value::Object(data), "app")])
        }
        (Some(schema), Some(body)) => match mime.as_deref() {
            Some("application/json") => {
                let parsed: Value = serde_json::from_slice(body)
                    .map_err(|e| format!("the body is not JSON: {e}"))?;
                match parsed {
                    Value::Array(items) if items.is_empty() => Err("empty array of events".into()),
                    Value::Array(items) => Ok(items
                        .into_iter()
                        .map(|item| event(schema, item, "app"))
                        .collect()),
                    Value::Object(fields) if !fields.is_empty() => {
                        Ok(vec![event(schema, Value::Object(fields), "app")])
                    }
                    _ => Err("the body has no key-value pairs".into()),
                }
            }
            Some("application/x-www-form-urlencoded") => {
                let data: Map<String, Value> = form_urlencoded::parse(body)
                    .map(|(name, value)| (name.into_owned(), Value::from(value.into_owned())))
                    .collect();
                Ok(vec![event(schema, Value::Object(data), "srv")])
            }
            _ => Err(format!(
                "Content-Type {}: {expected}",
                shorten(content_type.unwrap_or_default())
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK_CLICK: &str = "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1";

    fn ue_pr(event: &Map<String, Value>) -> Value {
        serde_json::from_str(event["ue_pr"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn a_self_describing_body_is_one_event() {
        let body = json!({"schema": LINK_CLICK, "data": {"targetUrl": "http://x/"}}).to_string();
        let events = events(
            "aid=shop",
            Some(body.as_bytes()),
            Some("application/json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event["e"], "ue");
        assert_eq!(event["p"], "app");
        assert_eq!(event["tv"], TRACKER_VERSION);
        assert_eq!(event["aid"], "shop");
        assert_eq!(ue_pr(event)["schema"], UNSTRUCT_EVENT_SCHEMA);
        assert_eq!(ue_pr(event)["data"]["schema"], LINK_CLICK);
        assert_eq!(ue_pr(event)["data"]["data"]["targetUrl"], "http://x/");
    }

    #[test]
    fn a_schema_parameter_takes_the_query_a_json_body_or_a_form() {
        let query = format!("schema={LINK_CLICK}&targetUrl=http%3A%2F%2Fx%2F&p=mob");
        let from_query = events(&query, None, None).unwrap();
        assert_eq!(
            ue_pr(&from_query[0])["data"]["data"],
            json!({"targetUrl": "http://x/", "p": "mob"})
        );
        assert_eq!(from_query[0]["p"], "mob");
        let schema = format!("schema={LINK_CLICK}");
        let array = events(
            &schema,
            Some(br#"[{"targetUrl":"a"},{"targetUrl":"b"}]"#),
            Some("application/json"),
        )
        .unwrap();
        assert_eq!(array.len(), 2);
        let form = events(
            &schema,
            Some(b"targetUrl=c"),
            Some("application/x-www-form-urlencoded"),
        )
        .unwrap();
        assert_eq!(form[0]["p"], "srv");
        assert_eq!(ue_pr(&form[0])["data"]["data"]["targetUrl"], "c");
    }

    #[test]
    fn what_enrich_refuses_is_an_error() {
        for (query, body, content_type) in [
            ("", None, None),
            ("", Some(&b"{}"[..]), None),
            ("", Some(&b"{\"a\":1}"[..]), Some("application/json")),
            ("", Some(&b"x"[..]), Some("text/plain")),
            ("schema=nope", None, None),
            (
                "schema=iglu:a/b/jsonschema/1-0-0",
                Some(&b"[]"[..]),
                Some("application/json"),
            ),
            (
                "schema=iglu:a/b/jsonschema/1-0-0",
                Some(&b"{}"[..]),
                Some("application/json"),
            ),
        ] {
            assert!(
                events(query, body, content_type).is_err(),
                "{query} {body:?}"
            );
        }
    }
}
