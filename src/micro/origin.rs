//! What a request brings besides its parameters: where and how it arrived (Micro's
//! `rawEvent` and `collectorPayload`, headers that carry secrets left out), what the
//! stream collector adds from it (the client's address, its user agent, the network
//! user id of its `sp` cookie, nothing of the client under `SP-Anonymous`), and the
//! items of a `payload_data` POST body. Nothing is shortened: the listener's header
//! limit bounds what a request brings.

use hyper::Request;
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::event::{self, Arrival};
use super::iglu::MAX_ERRORS_PER_CHECK;
use crate::ops::listener::Peer;
use snowplow_relay_tracker::is_iglu_uri;
use snowplow_relay_tracker::protocol::{
    PAYLOAD_DATA_FIELDS, PAYLOAD_DATA_SCHEMA, REQUIRED_FIELDS, shorten,
};

/// Where and how a request arrived: Micro's `rawEvent` fields besides the parameters.
pub(super) struct Origin {
    /// The path's `/{vendor}/{version}` (`com.snowplowanalytics.snowplow`, `tp2`).
    pub(super) vendor: String,
    pub(super) version: String,
    pub(super) content_type: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) ip: Option<String>,
    pub(super) useragent: Option<String>,
    pub(super) referer: Option<String>,
    /// `Name: value`, as Micro lists them; cookies and credentials
    /// ([`NEVER_LISTED_HEADERS`]) left out, and the client's address too under
    /// `SP-Anonymous` ([`ANONYMOUS_UNLISTED_HEADERS`]).
    pub(super) headers: Vec<String>,
    pub(super) millis: u64,
    /// The collector's network user id: the request's `nuid` parameter, else its `sp`
    /// cookie, else a new one; all zeros under `SP-Anonymous`. `None` for local events.
    pub(super) network_userid: Option<String>,
    /// The request carried `SP-Anonymous`: no cookie is set in the answer.
    pub(super) anonymous: bool,
}

/// Request headers never listed in an event's `rawEvent.context.headers`: whoever can
/// read `/micro/good` must not learn a cookie, a password or a token from them.
pub const NEVER_LISTED_HEADERS: [&str; 3] = ["cookie", "authorization", "proxy-authorization"];

/// Headers the stream collector drops under `SP-Anonymous` (with the cookie, above).
const ANONYMOUS_UNLISTED_HEADERS: [&str; 2] = ["x-forwarded-for", "x-real-ip"];

/// The stream collector's cookie (its default `cookie` settings).
const COOKIE_NAME: &str = "sp";
const COOKIE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The network user id of an anonymous request (the stream collector's).
pub const ANONYMOUS_NUID: &str = "00000000-0000-0000-0000-000000000000";

impl Origin {
    pub(super) fn of(
        request: &Request<Incoming>,
        version: &'static str,
        content_type: Option<String>,
    ) -> Origin {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let anonymous = request.headers().contains_key("sp-anonymous");
        let forwarded = header("x-forwarded-for")
            .and_then(|v| v.split(',').next().map(|ip| ip.trim().to_owned()));
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.ip().to_string());
        let network_userid = if anonymous {
            ANONYMOUS_NUID.to_owned()
        } else {
            let query = request.uri().query().unwrap_or_default();
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "nuid")
                .map(|(_, nuid)| nuid.into_owned())
                .filter(|nuid| is_cookie_value(nuid))
                .or_else(|| cookie(request, COOKIE_NAME).filter(|nuid| is_cookie_value(nuid)))
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        };
        Origin {
            hostname: header("host").map(|h| h.split(':').next().unwrap_or_default().to_owned()),
            ip: if anonymous { None } else { forwarded.or(peer) },
            useragent: header("user-agent"),
            referer: header("referer"),
            headers: request
                .headers()
                .iter()
                .filter(|(name, _)| !NEVER_LISTED_HEADERS.contains(&name.as_str()))
                .filter(|(name, _)| {
                    !(anonymous && ANONYMOUS_UNLISTED_HEADERS.contains(&name.as_str()))
                })
                .take(64)
                .map(|(name, value)| {
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
                })
                .collect(),
            network_userid: Some(network_userid),
            anonymous,
            ..Origin::local(version, content_type)
        }
    }

    /// An origin for events handed in by code rather than over HTTP.
    pub(super) fn local(version: &'static str, content_type: Option<String>) -> Origin {
        Origin {
            vendor: "com.snowplowanalytics.snowplow".to_owned(),
            version: version.to_owned(),
            content_type,
            hostname: None,
            ip: None,
            useragent: None,
            referer: None,
            headers: Vec::new(),
            millis: snowplow_relay_tracker::protocol::now_millis(),
            network_userid: None,
            anonymous: false,
        }
    }

    /// What the request adds to each of its events.
    pub(super) fn arrival(&self) -> Arrival<'_> {
        Arrival {
            millis: self.millis,
            ip: self.ip.as_deref(),
            useragent: self.useragent.as_deref(),
            network_userid: self.network_userid.as_deref(),
            page_from_referer: self.referer.as_deref().filter(|_| self.version == "tp1"),
        }
    }

    /// The stream collector's answer cookie, `sp=<network user id>` with its default
    /// attributes; none under `SP-Anonymous` (nor for local events).
    pub(super) fn set_cookie(&self) -> Option<String> {
        let nuid = self.network_userid.as_deref().filter(|_| !self.anonymous)?;
        let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + COOKIE_LIFETIME);
        Some(format!(
            "{COOKIE_NAME}={nuid}; Expires={expires}; Path=/; SameSite=None; Secure; HttpOnly"
        ))
    }

    /// What Micro shows of the request a bad event came in (its body is in `rawEvent`).
    pub(super) fn collector_payload(&self) -> Value {
        json!({
            "api": {"vendor": self.vendor, "version": self.version},
            "contentType": self.content_type,
            "source": {"name": "snowplow-relay-collector", "encoding": "UTF-8", "hostname": self.hostname},
            "context": {"timestamp": event::iso_timestamp(self.millis), "ipAddress": self.ip, "useragent": self.useragent},
        })
    }

    /// The request's listed headers as JSON, shared by all its events' stored JSON
    /// (`raw_event` holds [`headers_marker`] in their place).
    pub(super) fn shared_headers(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(&self.headers).unwrap_or_default())
    }

    /// `rawEvent`, its `context.headers` the [`headers_marker`] string: the stored JSON
    /// is split there around the request's [`Origin::shared_headers`].
    pub(super) fn raw_event(&self, parameters: Value) -> Value {
        json!({
            "api": {"vendor": self.vendor, "version": self.version},
            "parameters": parameters,
            "contentType": self.content_type,
            "source": {"name": "snowplow-relay-collector", "encoding": "UTF-8", "hostname": self.hostname},
            "context": {
                "timestamp": event::iso_timestamp(self.millis),
                "ipAddress": self.ip,
                "useragent": self.useragent,
                "refererUri": self.referer,
                "headers": headers_marker(),
                "userId": self.network_userid,
            },
        })
    }
}

/// The string that stands for a request's headers in its events' JSON until it is split:
/// random for each run, so no client can send it.
pub(super) fn headers_marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| format!("headers-{}", uuid::Uuid::new_v4()))
}

/// A value the answer's `Set-Cookie` may carry as it is: RFC 6265's cookie-octets, at
/// most 128 of them. Anything else (a `;` would add attributes to the cookie, a control
/// character would spoil the answer) is not taken as the network user id.
fn is_cookie_value(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// The value of the request's cookie `name`, if it sent one.
fn cookie(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"').to_owned())
        })
}

/// The items of a `payload_data` POST body, checked whole against `payload_data` 1-0-4
/// as enrich's tp2 adapter checks it: one item that is not an event (not an object, a
/// field the schema does not list, a value not a string, `e`, `p` or `tv` missing)
/// makes the whole body one bad event. The errors name the item (`data/3`), at most
/// [`MAX_ERRORS_PER_CHECK`] of them.
///
/// `body` has had its lone surrogates replaced ([`event::with_lone_surrogates_replaced`]).
/// The items are returned unparsed (slices of `body`, 16 bytes each): a body of a
/// million tiny items is never a million values at once.
pub(super) fn post_items(body: &[u8]) -> Result<Vec<&RawValue>, Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        schema: Option<&'a RawValue>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let top: &RawValue =
        serde_json::from_slice(body).map_err(|e| vec![format!("the body is not JSON: {e}")])?;
    let envelope: Option<Envelope<'_>> = top
        .get()
        .starts_with('{')
        .then(|| serde_json::from_str(top.get()).ok())
        .flatten();
    let schema: String = envelope
        .as_ref()
        .and_then(|e| e.schema)
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let payload_data = &PAYLOAD_DATA_SCHEMA[..PAYLOAD_DATA_SCHEMA.len() - "1-0-4".len()];
    if !schema.starts_with(payload_data) || !is_iglu_uri(&schema) {
        return Err(vec![format!(
            "the body must be self-describing JSON with schema {PAYLOAD_DATA_SCHEMA}, not {}",
            shorten(&schema)
        )]);
    }
    let items: Vec<&RawValue> = envelope
        .and_then(|e| e.data)
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .filter(|items: &Vec<&RawValue>| !items.is_empty())
        .ok_or_else(|| {
            vec!["payload_data needs a non-empty `data` array (minItems 1)".to_owned()]
        })?;
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if errors.len() >= MAX_ERRORS_PER_CHECK {
            break;
        }
        let Ok(fields) = serde_json::from_str::<Map<String, Value>>(item.get()) else {
            errors.push(format!(
                "payload_data: data/{i}: an event must be a JSON object"
            ));
            continue;
        };
        for (name, value) in &fields {
            if PAYLOAD_DATA_FIELDS.binary_search(&name.as_str()).is_err() {
                errors.push(format!(
                    "payload_data: data/{i}: field {} is not allowed",
                    shorten(name)
                ));
            } else if !value.is_string() {
                errors.push(format!(
                    "payload_data: data/{i}: field {name} must be a string"
                ));
            }
        }
        for required in REQUIRED_FIELDS {
            if !fields.contains_key(*required) {
                errors.push(format!(
                    "payload_data: data/{i}: field {required} is required"
                ));
            }
        }
    }
    errors.truncate(MAX_ERRORS_PER_CHECK);
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cookie_octets_become_the_network_user_id() {
        assert!(is_cookie_value("2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c"));
        for hostile in [
            "",
            "x; Domain=evil.example",
            "a b",
            "x\r\nSet-Cookie: y",
            "\"q\"",
            &"a".repeat(129),
        ] {
            assert!(!is_cookie_value(hostile), "{hostile:?}");
        }
    }

    #[test]
    fn bodies_must_be_payload_data() {
        assert!(post_items(b"[1]").unwrap_err()[0].contains("payload_data"));
        assert!(post_items(b"{\"schema\":\"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\",\"data\":[]}").is_err());
        assert!(post_items(b"not json").unwrap_err()[0].contains("not JSON"));
        let ones = format!(
            "{{\"schema\":\"{PAYLOAD_DATA_SCHEMA}\",\"data\":[{}1]}}",
            "1,".repeat(100_000)
        );
        let errors = post_items(ones.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS_PER_CHECK);
        assert_eq!(
            errors[3],
            "payload_data: data/3: an event must be a JSON object"
        );
    }
}
