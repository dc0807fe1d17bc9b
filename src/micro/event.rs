//! One received event, checked and shaped as Snowplow Micro shows it: the tracker
//! protocol's atomic fields typed as Snowplow's enrichment types them (`eid` a UUID,
//! timestamps numbers, `p` a known platform, numeric ecommerce and `se_va` fields), its
//! self-describing data checked against Iglu schemas ([`super::iglu`]), and the
//! enriched event's canonical fields (`app_id`, `event_id`, `se_category`,
//! `unstruct_event`, `contexts`, `derived_tstamp`…) mapped from the protocol's names as
//! the enrichment's first step maps them. No third-party enrichment runs.

use serde_json::{Map, Value, json};

use snowplow_relay_tracker::protocol::{
    PAYLOAD_DATA_FIELDS, PAYLOAD_DATA_SCHEMA, REQUIRED_FIELDS, shorten,
};
use snowplow_relay_tracker::{check_contexts, check_self_describing_event};

use super::iglu::Registry;

/// The platforms Snowplow's enrichment accepts (`p`).
const PLATFORMS: &[&str] = &[
    "web", "mob", "pc", "srv", "app", "tv", "cnsl", "iot", "headset",
];

/// What a good event is: Micro's `eventType`, `schema`, `contexts` and the enriched
/// `event`.
#[derive(Debug)]
pub struct Good {
    /// `page_view`, `struct`, `unstruct`…
    pub event_type: &'static str,
    /// The event's schema (for `unstruct`, its own).
    pub schema: String,
    /// The schemas of its contexts.
    pub contexts: Vec<String>,
    /// The enriched event's canonical fields.
    pub event: Map<String, Value>,
}

/// The decoded self-describing parts of an event.
struct Parts {
    event_type: &'static str,
    schema: String,
    unstruct: Option<Value>,
    contexts: Option<Value>,
}

/// What the collector adds to an event from the request it came in, as the stream
/// collector and enrich do: used where the tracker sent nothing of its own.
#[derive(Clone, Copy, Default)]
pub struct Arrival<'a> {
    /// When it arrived, in epoch milliseconds.
    pub millis: u64,
    /// `X-Forwarded-For`'s first address or the peer's; `None` under `SP-Anonymous`.
    pub ip: Option<&'a str>,
    /// The `User-Agent` header.
    pub useragent: Option<&'a str>,
    /// The collector's network user id (its `sp` cookie, or a new one).
    pub network_userid: Option<&'a str>,
    /// A pixel request's `Referer`: the page, when the event names none (a noscript
    /// pixel), as enrich takes it.
    pub page_from_referer: Option<&'a str>,
}

/// Enrich's default `validation.atomicFieldsLimits` (its reference.conf; Micro checks
/// them since 2.1.3): the longest value, in UTF-16 code units as the JVM counts a
/// string's length, each atomic field of the enriched event may hold.
pub const ATOMIC_FIELDS_LIMITS: [(&str, usize); 84] = [
    ("app_id", 255),
    ("platform", 255),
    ("event", 128),
    ("event_id", 36),
    ("name_tracker", 128),
    ("v_tracker", 100),
    ("v_collector", 100),
    ("v_etl", 100),
    ("user_id", 255),
    ("user_ipaddress", 128),
    ("user_fingerprint", 128),
    ("domain_userid", 128),
    ("network_userid", 128),
    ("geo_country", 2),
    ("geo_region", 3),
    ("geo_city", 75),
    ("geo_zipcode", 15),
    ("geo_region_name", 100),
    ("ip_isp", 100),
    ("ip_organization", 128),
    ("ip_domain", 128),
    ("ip_netspeed", 100),
    ("page_url", 10000),
    ("page_title", 2000),
    ("page_referrer", 10000),
    ("page_urlscheme", 16),
    ("page_urlhost", 255),
    ("page_urlpath", 3000),
    ("page_urlquery", 6000),
    ("page_urlfragment", 3000),
    ("refr_urlscheme", 16),
    ("refr_urlhost", 255),
    ("refr_urlpath", 6000),
    ("refr_urlquery", 6000),
    ("refr_urlfragment", 3000),
    ("refr_medium", 25),
    ("refr_source", 50),
    ("refr_term", 255),
    ("mkt_clickid", 1000),
    ("mkt_network", 64),
    ("mkt_medium", 255),
    ("mkt_source", 255),
    ("mkt_term", 255),
    ("mkt_content", 500),
    ("mkt_campaign", 255),
    ("se_category", 1000),
    ("se_action", 1000),
    ("se_label", 4096),
    ("se_property", 1000),
    ("tr_orderid", 255),
    ("tr_affiliation", 255),
    ("tr_city", 255),
    ("tr_state", 255),
    ("tr_country", 255),
    ("ti_orderid", 255),
    ("ti_sku", 255),
    ("ti_name", 255),
    ("ti_category", 255),
    ("useragent", 1000),
    ("br_name", 50),
    ("br_family", 50),
    ("br_version", 50),
    ("br_type", 50),
    ("br_renderengine", 50),
    ("br_lang", 255),
    ("br_colordepth", 12),
    ("os_name", 50),
    ("os_family", 50),
    ("os_manufacturer", 50),
    ("os_timezone", 255),
    ("dvce_type", 50),
    ("doc_charset", 128),
    ("tr_currency", 3),
    ("ti_currency", 3),
    ("base_currency", 3),
    ("geo_timezone", 64),
    ("etl_tags", 500),
    ("refr_domain_userid", 128),
    ("domain_sessionid", 128),
    ("event_vendor", 1000),
    ("event_name", 1000),
    ("event_format", 128),
    ("event_version", 128),
    ("event_fingerprint", 128),
];

/// Checks one event (its parameters as received) and shapes it, with what its request
/// adds (`arrival`). The errors name the check and the field or schema.
pub fn check(
    parameters: &Map<String, Value>,
    registry: &Registry,
    arrival: Arrival<'_>,
) -> Result<Good, Vec<String>> {
    let mut errors = Vec::new();
    check_payload_data(parameters, &mut errors);
    check_atomic_fields(parameters, &mut errors);
    let parts = decode_parts(parameters, &mut errors);
    let mut contexts = Vec::new();
    if let Some(envelope) = &parts.contexts {
        match check_contexts(envelope) {
            Ok(list) => {
                for context in &list {
                    contexts.push(context.schema().to_owned());
                    if let Err(mut found) = registry.validate(context.schema(), context.data()) {
                        errors.append(&mut found);
                    }
                }
            }
            Err(e) => errors.push(format!("contexts: {e}")),
        }
    }
    if let Some(envelope) = &parts.unstruct {
        match check_self_describing_event(envelope) {
            Ok(event) => {
                if let Err(mut found) = registry.validate(event.schema(), event.data()) {
                    errors.append(&mut found);
                }
            }
            Err(e) => errors.push(format!("unstruct_event: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let event = enrich(parameters, &parts, arrival);
    check_atomic_field_lengths(&event, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Good {
        event_type: parts.event_type,
        schema: parts.schema,
        contexts,
        event,
    })
}

/// Enrich's last check of an enriched event: no atomic field longer than its limit
/// ([`ATOMIC_FIELDS_LIMITS`]); the error names the field, as enrich's does.
fn check_atomic_field_lengths(event: &Map<String, Value>, errors: &mut Vec<String>) {
    for name in over_long_fields(event) {
        let limit = ATOMIC_FIELDS_LIMITS
            .iter()
            .find(|(field, _)| *field == name)
            .map_or(0, |(_, limit)| *limit);
        errors.push(format!(
            "atomic field {name} is longer than the maximum allowed size {limit} (enrich's atomicFieldsLimits)"
        ));
    }
}

/// The atomic fields of `event` longer than their [`ATOMIC_FIELDS_LIMITS`].
fn over_long_fields(event: &Map<String, Value>) -> Vec<&'static str> {
    ATOMIC_FIELDS_LIMITS
        .iter()
        .filter(|(name, limit)| match event.get(*name) {
            // Bytes bound code units from above: most values need no count.
            Some(Value::String(value)) => {
                value.len() > *limit && value.encode_utf16().count() > *limit
            }
            _ => false,
        })
        .map(|(name, _)| *name)
        .collect()
}

/// `payload_data` 1-0-4: known fields only, each a string; `e`, `p`, `tv` present.
fn check_payload_data(parameters: &Map<String, Value>, errors: &mut Vec<String>) {
    for (name, value) in parameters {
        if PAYLOAD_DATA_FIELDS.binary_search(&name.as_str()).is_err() {
            errors.push(format!(
                "field {} is not allowed by {PAYLOAD_DATA_SCHEMA}",
                shorten(name)
            ));
        } else if !value.is_string() {
            errors.push(format!("field {name} must be a string"));
        }
    }
    for required in REQUIRED_FIELDS {
        if !parameters.contains_key(*required) {
            errors.push(format!("field {required} is required"));
        }
    }
}

/// The atomic fields' types, as the enrichment converts them.
fn check_atomic_fields(parameters: &Map<String, Value>, errors: &mut Vec<String>) {
    let text = |name: &str| parameters.get(name).and_then(Value::as_str);
    let mut expect = |name: &str, what: &str, ok: fn(&str) -> bool| {
        if let Some(value) = text(name)
            && !ok(value)
        {
            errors.push(format!(
                "atomic field {name}: expected {what}, got {:?}",
                shorten(value)
            ));
        }
    };
    expect("eid", "a UUID", |v| uuid::Uuid::try_parse(v).is_ok());
    for name in ["dtm", "stm", "ttm"] {
        expect(name, "a timestamp in epoch milliseconds", |v| {
            v.parse::<u64>().is_ok()
        });
    }
    expect(
        "p",
        "one of web, mob, pc, srv, app, tv, cnsl, iot, headset",
        |v| PLATFORMS.contains(&v),
    );
    for name in ["se_va", "tr_tt", "tr_tx", "tr_sh", "ti_pr"] {
        expect(name, "a number", is_decimal);
    }
    for name in [
        "ti_qu", "pp_mix", "pp_max", "pp_miy", "pp_may", "vid", "cd", "tid",
    ] {
        expect(name, "a whole number", |v| v.parse::<i64>().is_ok());
    }
    for name in ["res", "vp", "ds"] {
        expect(name, "WIDTHxHEIGHT in whole pixels", |v| {
            dimensions(v).is_some()
        });
    }
    let mut need = |names: &[&str]| {
        for name in names {
            if text(name).is_none_or(str::is_empty) {
                errors.push(format!("field {name} is required for this event type"));
            }
        }
    };
    match text("e").unwrap_or_default() {
        // What enrich requires (it takes `se` without an action, `tr` without a total,
        // `ti` without a price or quantity).
        "se" => need(&["se_ca"]),
        "tr" => need(&["tr_id"]),
        "ti" => need(&["ti_id", "ti_sk"]),
        "pv" | "pp" | "ue" | "" => {}
        other => errors.push(format!("unknown event type e={}", shorten(other))),
    }
}

fn is_decimal(text: &str) -> bool {
    // `inf`, `infinity` and `nan` parse, but not as finite numbers.
    text.parse::<f64>().is_ok_and(f64::is_finite)
}

fn dimensions(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// The event type, its schema and the decoded `ue_px`/`ue_pr` and `cx`/`co`.
fn decode_parts(parameters: &Map<String, Value>, errors: &mut Vec<String>) -> Parts {
    let field = |name: &str| parameters.get(name).and_then(Value::as_str);
    let decoded = |encoded: &str, plain: &str, errors: &mut Vec<String>| {
        let found = match (field(encoded), field(plain)) {
            (Some(text), _) => decode_json(encoded, text, true),
            (None, Some(text)) => decode_json(plain, text, false),
            (None, None) => return None,
        };
        found.map_err(|e| errors.push(e)).ok()
    };
    let snowplow =
        |name: &str| format!("iglu:com.snowplowanalytics.snowplow/{name}/jsonschema/1-0-0");
    let (event_type, mut schema) = match field("e").unwrap_or_default() {
        "pv" => ("page_view", snowplow("page_view")),
        "pp" => ("page_ping", snowplow("page_ping")),
        "se" => (
            "struct",
            "iglu:com.google.analytics/event/jsonschema/1-0-0".to_owned(),
        ),
        "ue" => ("unstruct", String::new()),
        "tr" => ("transaction", snowplow("transaction")),
        "ti" => ("transaction_item", snowplow("transaction_item")),
        _ => ("unknown", String::new()),
    };
    let unstruct = decoded("ue_px", "ue_pr", errors);
    if event_type == "unstruct" {
        match unstruct.as_ref().map(|v| v["data"]["schema"].as_str()) {
            Some(Some(inner)) => schema = inner.to_owned(),
            Some(None) => {}
            None if errors.is_empty() => {
                errors.push("a self-describing event (e=ue) needs ue_px or ue_pr".into());
            }
            None => {}
        }
    }
    Parts {
        event_type,
        schema,
        unstruct,
        contexts: decoded("cx", "co", errors),
    }
}

/// Decodes base64 (URL-safe or standard, padded or not) JSON.
pub fn decode_json(field: &str, text: &str, base64: bool) -> Result<Value, String> {
    use base64::Engine as _;
    let bytes = if base64 {
        let indifferent = base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
        let url_safe =
            base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, indifferent);
        let standard =
            base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, indifferent);
        url_safe
            .decode(text)
            .or_else(|_| standard.decode(text))
            .map_err(|e| format!("{field} is not base64: {e}"))?
    } else {
        text.as_bytes().to_vec()
    };
    serde_json::from_slice(&with_lone_surrogates_replaced(&bytes))
        .map_err(|e| format!("{field} is not JSON: {e}"))
}

/// JSON text with every lone UTF-16 surrogate escape (`\ud800` not followed by a low
/// surrogate's escape, or a low one alone) replaced by `\ufffd`. Enrich parses bodies
/// with a parser that keeps a lone surrogate in the string (a Java string can hold one),
/// so one event holding one does not make the others of its request bad; here it becomes
/// the replacement character, as it does when enrich writes the event out as UTF-8. The
/// relay forwards such an element in a POST body byte for byte, so relay and collector
/// agree. Escapes are found by their backslash (an escaped backslash is skipped whole),
/// so text outside strings, invalid anyway, is left to the parser.
pub(crate) fn with_lone_surrogates_replaced(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let unit = |at: usize| -> Option<u16> {
        let hex = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let is_escape = |at: usize| json.get(at) == Some(&b'\\') && json.get(at + 1) == Some(&b'u');
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while at + 1 < json.len() {
        if json[at] != b'\\' {
            at += 1;
            continue;
        }
        if !is_escape(at) {
            at += 2; // any other escape, `\\` included
            continue;
        }
        let Some(first) = unit(at + 2) else {
            at += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&first)
            && is_escape(at + 6)
            && unit(at + 8).is_some_and(|second| (0xDC00..0xE000).contains(&second));
        if paired {
            at += 12;
        } else if (0xD800..0xE000).contains(&first) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            out.extend_from_slice(&json[copied..at]);
            out.extend_from_slice(b"\\ufffd");
            at += 6;
            copied = at;
        } else {
            at += 6;
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(json),
        Some(mut out) => {
            out.extend_from_slice(&json[copied..]);
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The columns of Snowplow's enriched event, in the canonical order (the Analytics SDK's
/// `Event`: 131). Every good event carries each of them, `null` where it has nothing, as
/// Micro shows them; the enrichments that fill `geo_*`, `br_name`, `mkt_*`… do not run
/// here.
pub const EVENT_COLUMNS: [&str; 131] = [
    "app_id",
    "platform",
    "etl_tstamp",
    "collector_tstamp",
    "dvce_created_tstamp",
    "event",
    "event_id",
    "txn_id",
    "name_tracker",
    "v_tracker",
    "v_collector",
    "v_etl",
    "user_id",
    "user_ipaddress",
    "user_fingerprint",
    "domain_userid",
    "domain_sessionidx",
    "network_userid",
    "geo_country",
    "geo_region",
    "geo_city",
    "geo_zipcode",
    "geo_latitude",
    "geo_longitude",
    "geo_region_name",
    "ip_isp",
    "ip_organization",
    "ip_domain",
    "ip_netspeed",
    "page_url",
    "page_title",
    "page_referrer",
    "page_urlscheme",
    "page_urlhost",
    "page_urlport",
    "page_urlpath",
    "page_urlquery",
    "page_urlfragment",
    "refr_urlscheme",
    "refr_urlhost",
    "refr_urlport",
    "refr_urlpath",
    "refr_urlquery",
    "refr_urlfragment",
    "refr_medium",
    "refr_source",
    "refr_term",
    "mkt_medium",
    "mkt_source",
    "mkt_term",
    "mkt_content",
    "mkt_campaign",
    "contexts",
    "se_category",
    "se_action",
    "se_label",
    "se_property",
    "se_value",
    "unstruct_event",
    "tr_orderid",
    "tr_affiliation",
    "tr_total",
    "tr_tax",
    "tr_shipping",
    "tr_city",
    "tr_state",
    "tr_country",
    "ti_orderid",
    "ti_sku",
    "ti_name",
    "ti_category",
    "ti_price",
    "ti_quantity",
    "pp_xoffset_min",
    "pp_xoffset_max",
    "pp_yoffset_min",
    "pp_yoffset_max",
    "useragent",
    "br_name",
    "br_family",
    "br_version",
    "br_type",
    "br_renderengine",
    "br_lang",
    "br_features_pdf",
    "br_features_flash",
    "br_features_java",
    "br_features_director",
    "br_features_quicktime",
    "br_features_realplayer",
    "br_features_windowsmedia",
    "br_features_gears",
    "br_features_silverlight",
    "br_cookies",
    "br_colordepth",
    "br_viewwidth",
    "br_viewheight",
    "os_name",
    "os_family",
    "os_manufacturer",
    "os_timezone",
    "dvce_type",
    "dvce_ismobile",
    "dvce_screenwidth",
    "dvce_screenheight",
    "doc_charset",
    "doc_width",
    "doc_height",
    "tr_currency",
    "tr_total_base",
    "tr_tax_base",
    "tr_shipping_base",
    "ti_currency",
    "ti_price_base",
    "base_currency",
    "geo_timezone",
    "mkt_clickid",
    "mkt_network",
    "etl_tags",
    "dvce_sent_tstamp",
    "refr_domain_userid",
    "refr_device_tstamp",
    "derived_contexts",
    "domain_sessionid",
    "derived_tstamp",
    "event_vendor",
    "event_name",
    "event_format",
    "event_version",
    "event_fingerprint",
    "true_tstamp",
];

/// The envelope every event's contexts are shown in, whatever version the tracker sent
/// (Python 1.x sends 1-0-1), as enrich re-encodes them.
const CONTEXTS_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0";
const UNSTRUCT_EVENT_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0";

/// The canonical fields of the enriched event, in Snowplow's column order, `null` where
/// the event has nothing (as Micro shows them).
fn enrich(
    parameters: &Map<String, Value>,
    parts: &Parts,
    arrival: Arrival<'_>,
) -> Map<String, Value> {
    let collector_ms = arrival.millis;
    let text = |name: &str| {
        parameters
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let number = |name: &str| {
        text(name)
            .and_then(|v| v.parse::<f64>().ok())
            .map(Value::from)
    };
    let whole = |name: &str| {
        text(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map(Value::from)
    };
    let millis = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let (dtm, stm, ttm) = (millis("dtm"), millis("stm"), millis("ttm"));
    let derived = ttm.or_else(|| match (dtm, stm) {
        (Some(created), Some(sent)) => {
            Some(collector_ms.saturating_sub(sent.saturating_sub(created)))
        }
        _ => dtm.or(Some(collector_ms)),
    });
    let page_url = text("url").or_else(|| arrival.page_from_referer.map(str::to_owned));
    let page = page_url.as_deref().and_then(|u| url::Url::parse(u).ok());
    let referrer = text("refr").and_then(|u| url::Url::parse(&u).ok());
    let url_parts = |url: &Option<url::Url>| -> [Option<Value>; 6] {
        match url {
            Some(url) => [
                Some(url.scheme().into()),
                url.host_str().map(Value::from),
                url.port_or_known_default().map(Value::from),
                Some(url.path().into()),
                url.query().map(Value::from),
                url.fragment().map(Value::from),
            ],
            None => Default::default(),
        }
    };
    let [
        page_scheme,
        page_host,
        page_port,
        page_path,
        page_query,
        page_fragment,
    ] = url_parts(&page);
    let [
        refr_scheme,
        refr_host,
        refr_port,
        refr_path,
        refr_query,
        refr_fragment,
    ] = url_parts(&referrer);
    let (screen_w, screen_h) = text("res").and_then(|v| dimensions(&v)).unzip();
    let (view_w, view_h) = text("vp").and_then(|v| dimensions(&v)).unzip();
    let (doc_w, doc_h) = text("ds").and_then(|v| dimensions(&v)).unzip();
    let schema_parts: Vec<&str> = parts
        .schema
        .strip_prefix("iglu:")
        .map(|s| s.split('/').collect())
        .unwrap_or_default();
    let schema_part = |i: usize| schema_parts.get(i).map(|s| Value::from(*s));
    let timestamp = |ms: Option<u64>| ms.map(|ms| Value::from(iso_timestamp(ms)));
    let fields: Vec<(&str, Option<Value>)> = vec![
        ("app_id", text("aid").map(Value::from)),
        ("platform", text("p").map(Value::from)),
        ("etl_tstamp", timestamp(Some(collector_ms))),
        ("collector_tstamp", timestamp(Some(collector_ms))),
        ("dvce_created_tstamp", timestamp(dtm)),
        ("event", Some(parts.event_type.into())),
        // Enrich gives an event without `eid` a fresh one.
        (
            "event_id",
            Some(text("eid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()).into()),
        ),
        ("txn_id", whole("tid")),
        ("name_tracker", text("tna").map(Value::from)),
        ("v_tracker", text("tv").map(Value::from)),
        (
            "v_collector",
            Some(concat!("snowplow-relay-", env!("CARGO_PKG_VERSION")).into()),
        ),
        (
            "v_etl",
            Some(concat!("snowplow-relay-micro-", env!("CARGO_PKG_VERSION")).into()),
        ),
        ("user_id", text("uid").map(Value::from)),
        (
            "user_ipaddress",
            text("ip")
                .or_else(|| arrival.ip.map(str::to_owned))
                .map(Value::from),
        ),
        ("user_fingerprint", text("fp").map(Value::from)),
        ("domain_userid", text("duid").map(Value::from)),
        ("domain_sessionidx", whole("vid")),
        (
            "network_userid",
            // enrich: the collector's id, replaced by `nuid`, replaced by `tnuid`.
            text("tnuid")
                .or_else(|| text("nuid"))
                .or_else(|| arrival.network_userid.map(str::to_owned))
                .map(Value::from),
        ),
        ("page_url", page_url.map(Value::from)),
        ("page_title", text("page").map(Value::from)),
        ("page_referrer", text("refr").map(Value::from)),
        ("page_urlscheme", page_scheme),
        ("page_urlhost", page_host),
        ("page_urlport", page_port),
        ("page_urlpath", page_path),
        ("page_urlquery", page_query),
        ("page_urlfragment", page_fragment),
        ("refr_urlscheme", refr_scheme),
        ("refr_urlhost", refr_host),
        ("refr_urlport", refr_port),
        ("refr_urlpath", refr_path),
        ("refr_urlquery", refr_query),
        ("refr_urlfragment", refr_fragment),
        (
            "contexts",
            Some(json!({"schema": CONTEXTS_SCHEMA, "data": parts.contexts.as_ref().map(|c| c["data"].clone())}))
                .filter(|c| c["data"].as_array().is_some_and(|list| !list.is_empty()))
                .or_else(|| Some(json!({}))),
        ),
        // No enrichment adds any here.
        ("derived_contexts", Some(json!({}))),
        ("se_category", text("se_ca").map(Value::from)),
        ("se_action", text("se_ac").map(Value::from)),
        ("se_label", text("se_la").map(Value::from)),
        ("se_property", text("se_pr").map(Value::from)),
        ("se_value", number("se_va")),
        (
            "unstruct_event",
            parts
                .unstruct
                .as_ref()
                .map(|u| json!({"schema": UNSTRUCT_EVENT_SCHEMA, "data": u["data"].clone()})),
        ),
        ("tr_orderid", text("tr_id").map(Value::from)),
        ("tr_affiliation", text("tr_af").map(Value::from)),
        ("tr_total", number("tr_tt")),
        ("tr_tax", number("tr_tx")),
        ("tr_shipping", number("tr_sh")),
        ("tr_city", text("tr_ci").map(Value::from)),
        ("tr_state", text("tr_st").map(Value::from)),
        ("tr_country", text("tr_co").map(Value::from)),
        ("ti_orderid", text("ti_id").map(Value::from)),
        ("ti_sku", text("ti_sk").map(Value::from)),
        ("ti_name", text("ti_nm").map(Value::from)),
        ("ti_category", text("ti_ca").map(Value::from)),
        ("ti_price", number("ti_pr")),
        ("ti_quantity", whole("ti_qu")),
        ("pp_xoffset_min", whole("pp_mix")),
        ("pp_xoffset_max", whole("pp_max")),
        ("pp_yoffset_min", whole("pp_miy")),
        ("pp_yoffset_max", whole("pp_may")),
        (
            "useragent",
            text("ua")
                .or_else(|| arrival.useragent.map(str::to_owned))
                .map(Value::from),
        ),
        ("br_lang", text("lang").map(Value::from)),
        ("br_cookies", text("cookie").map(|v| Value::from(v == "1"))),
        ("br_colordepth", text("cd").map(Value::from)),
        ("os_timezone", text("tz").map(Value::from)),
        ("dvce_screenwidth", screen_w.map(Value::from)),
        ("dvce_screenheight", screen_h.map(Value::from)),
        ("doc_charset", text("cs").map(Value::from)),
        ("doc_width", doc_w.map(Value::from)),
        ("doc_height", doc_h.map(Value::from)),
        ("tr_currency", text("tr_cu").map(Value::from)),
        ("ti_currency", text("ti_cu").map(Value::from)),
        ("br_viewwidth", view_w.map(Value::from)),
        ("br_viewheight", view_h.map(Value::from)),
        ("dvce_sent_tstamp", timestamp(stm)),
        ("domain_sessionid", text("sid").map(Value::from)),
        ("derived_tstamp", timestamp(derived)),
        ("event_vendor", schema_part(0)),
        ("event_name", schema_part(1)),
        ("event_format", schema_part(2)),
        ("event_version", schema_part(3)),
        ("true_tstamp", timestamp(ttm)),
    ];
    let mut event: Map<String, Value> = EVENT_COLUMNS
        .iter()
        .map(|column| ((*column).to_owned(), Value::Null))
        .collect();
    for (name, value) in fields {
        debug_assert!(EVENT_COLUMNS.contains(&name), "{name} is a column");
        event.insert(name.to_owned(), value.unwrap_or(Value::Null));
    }
    event
}

/// The entity Micro 3 attaches to an incomplete event.
const FAILURE_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/failure/jsonschema/1-0-0";

/// Micro 3's incomplete event for an event that failed its checks: enriched all the same,
/// the contexts and self-describing event that failed validation left out, and a
/// `failure` entity naming the errors in `derived_contexts`; `None` when it is not a
/// tracker event at all (no known `e`).
pub fn incomplete(
    parameters: &Map<String, Value>,
    registry: &Registry,
    arrival: Arrival<'_>,
    errors: &[String],
) -> Option<Map<String, Value>> {
    let mut ignored = Vec::new();
    let mut parts = decode_parts(parameters, &mut ignored);
    if parts.event_type == "unknown" {
        return None;
    }
    if let Some(envelope) = &parts.contexts {
        let kept: Vec<Value> = check_contexts(envelope)
            .map(|list| {
                list.iter()
                    .filter(|c| registry.validate(c.schema(), c.data()).is_ok())
                    .map(|c| json!({"schema": c.schema(), "data": c.data()}))
                    .collect()
            })
            .unwrap_or_default();
        parts.contexts = Some(json!({"schema": CONTEXTS_SCHEMA, "data": kept}));
    }
    if let Some(envelope) = &parts.unstruct {
        let valid = check_self_describing_event(envelope)
            .is_ok_and(|e| registry.validate(e.schema(), e.data()).is_ok());
        if !valid {
            parts.unstruct = None;
        }
    }
    let mut event = enrich(parameters, &parts, arrival);
    // As enrich's incomplete events (emitFailed): a field over its limit is emptied.
    for name in over_long_fields(&event) {
        event.insert(name.to_owned(), Value::Null);
    }
    let failure = json!({
        "schema": FAILURE_SCHEMA,
        "data": {
            "failureType": "ValidationError",
            "errors": errors.iter().map(|message| json!({"message": message, "source": "snowplow-relay-collector"})).collect::<Vec<_>>(),
            "schema": null,
            "data": null,
            "timestamp": iso_timestamp(arrival.millis),
            "componentName": "snowplow-relay-collector",
            "componentVersion": env!("CARGO_PKG_VERSION"),
        }
    });
    event.insert(
        "derived_contexts".to_owned(),
        json!({"schema": CONTEXTS_SCHEMA, "data": [failure]}),
    );
    Some(event)
}

/// An enriched event as Micro 3's `GET /micro/events` lists it (the Analytics SDK's
/// lossy JSON): the atomic columns, each context's data (with `_schema_version`) under
/// `contexts_VENDOR_NAME_MODEL`, the self-describing event's under
/// `unstruct_event_VENDOR_NAME_MODEL`.
pub fn flattened(event: &Map<String, Value>) -> Map<String, Value> {
    let mut flat: Map<String, Value> = event
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "contexts" | "derived_contexts" | "unstruct_event"
            )
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    for field in ["contexts", "derived_contexts"] {
        for entity in event[field]["data"].as_array().into_iter().flatten() {
            let schema = entity["schema"].as_str().unwrap_or_default();
            let Some(column) = column_name("contexts_", schema) else {
                continue;
            };
            let mut data = entity["data"].clone();
            if let Some(object) = data.as_object_mut() {
                object.insert("_schema_version".to_owned(), schema.into());
            }
            let list = flat
                .entry(column)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(data);
            }
        }
    }
    let unstruct = &event["unstruct_event"]["data"];
    if let Some(column) = unstruct["schema"]
        .as_str()
        .and_then(|s| column_name("unstruct_event_", s))
    {
        flat.insert(column, unstruct["data"].clone());
    }
    flat
}

/// `contexts_com_acme_my_thing_1` for `iglu:com.acme/myThing/jsonschema/1-0-0`: the
/// vendor's dots and dashes as underscores, the name's camel case as snake case, the
/// model (the Analytics SDK's `transformSchema`).
fn column_name(prefix: &str, uri: &str) -> Option<String> {
    let mut parts = uri.strip_prefix("iglu:")?.split('/');
    let (vendor, name, _format, version) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let model = version.split('-').next()?;
    let vendor = vendor.replace(['.', '-'], "_").to_lowercase();
    let mut snake = String::with_capacity(name.len() + 4);
    let mut previous: Option<char> = None;
    for c in name.chars() {
        let c = if c == '.' || c == '-' { '_' } else { c };
        if c.is_ascii_uppercase() && previous.is_some_and(|p| !p.is_ascii_uppercase() && p != '_') {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
        previous = Some(c);
    }
    Some(format!("{prefix}{vendor}_{snake}_{model}"))
}

/// `2026-11-30T15:04:05.123Z` for epoch milliseconds `ms` (UTC, proleptic Gregorian).
pub fn iso_timestamp(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let of_day = ms % 86_400_000;
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1_000 % 60,
        of_day % 1_000
    )
}

/// The fields filters and the page read, kept beside the stored JSON.
pub fn summary(good: &Good) -> Value {
    json!({"eventType": good.event_type, "schema": good.schema, "contexts": good.contexts})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_fields_longer_than_enrichs_limits_make_the_event_bad() {
        let registry = Registry::default();
        let event = |extra: &[(&str, String)]| {
            let mut parameters = Map::new();
            for (name, value) in [("e", "se"), ("p", "web"), ("tv", "t"), ("se_ca", "c")] {
                parameters.insert(name.to_owned(), Value::from(value));
            }
            for (name, value) in extra {
                parameters.insert((*name).to_owned(), Value::from(value.as_str()));
            }
            check(&parameters, &registry, Arrival::default())
        };
        assert!(event(&[("uid", "u".repeat(255))]).is_ok());
        // 255 characters of two bytes each: 255 code units, as the JVM counts.
        assert!(event(&[("uid", "é".repeat(255))]).is_ok());
        let errors = event(&[("uid", "u".repeat(256))]).unwrap_err();
        assert_eq!(
            errors,
            [
                "atomic field user_id is longer than the maximum allowed size 255 (enrich's atomicFieldsLimits)"
            ]
        );
        // A character outside the BMP is two code units.
        assert!(event(&[("uid", "😀".repeat(128))]).is_err());
        assert!(event(&[("se_ca", "c".repeat(1001))]).is_err());
        assert!(event(&[("se_ca", "c".repeat(1000))]).is_ok());
        let mut transaction = Map::new();
        for (name, value) in [("e", "tr"), ("p", "web"), ("tv", "t"), ("tr_id", "o")] {
            transaction.insert(name.to_owned(), Value::from(value));
        }
        assert!(check(&transaction, &registry, Arrival::default()).is_ok());
        transaction.insert("tr_cu".to_owned(), Value::from("EURO"));
        let errors = check(&transaction, &registry, Arrival::default()).unwrap_err();
        assert!(errors[0].contains("tr_currency"), "{errors:?}");
        // In the incomplete event (Micro's /micro/events) the field is emptied, as enrich
        // empties it.
        let mut long = Map::new();
        for (name, value) in [("e", "pv"), ("p", "web"), ("tv", "t")] {
            long.insert(name.to_owned(), Value::from(value));
        }
        long.insert("uid".to_owned(), Value::from("u".repeat(256)));
        long.insert("aid".to_owned(), Value::from("shop"));
        let errors = check(&long, &registry, Arrival::default()).unwrap_err();
        let incomplete = incomplete(&long, &registry, Arrival::default(), &errors).unwrap();
        assert_eq!(incomplete["user_id"], Value::Null);
        assert_eq!(incomplete["app_id"], "shop");
        // Every limit names a column of the enriched event.
        for (name, _) in ATOMIC_FIELDS_LIMITS {
            assert!(EVENT_COLUMNS.contains(&name), "{name}");
        }
    }

    #[test]
    fn a_lone_surrogate_becomes_the_replacement_character_as_enrich_writes_it() {
        let replaced = |text: &str| {
            String::from_utf8(with_lone_surrogates_replaced(text.as_bytes()).into_owned()).unwrap()
        };
        assert_eq!(replaced(r#"{"a":"\ud800"}"#), r#"{"a":"\ufffd"}"#);
        assert_eq!(replaced(r#"{"a":"x\udc00y"}"#), r#"{"a":"x\ufffdy"}"#);
        assert_eq!(
            replaced(r#"{"a":"\ud800\u0041"}"#),
            r#"{"a":"\ufffd\u0041"}"#
        );
        // A pair, an escaped backslash before `u`, and other escapes stay as they are.
        for kept in [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\\ud800"}"#,
            r#"{"a":"\n\u00e9"}"#,
        ] {
            assert_eq!(replaced(kept), kept);
            assert!(matches!(
                with_lone_surrogates_replaced(kept.as_bytes()),
                std::borrow::Cow::Borrowed(_)
            ));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&with_lone_surrogates_replaced(br#"["\ud800!"]"#)).unwrap();
        assert_eq!(value[0], "\u{fffd}!");
    }

    #[test]
    fn a_decimal_is_a_finite_number() {
        for good in ["0", "-1.5", "1e3", "9.0", ".5"] {
            assert!(is_decimal(good), "{good}");
        }
        for bad in ["inf", "-Infinity", "NaN", "nan", "1e999", "", "1,5", "0x10"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }

    fn event(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect()
    }

    const BASE: [(&str, &str); 4] = [
        ("e", "pv"),
        ("p", "web"),
        ("tv", "t"),
        ("eid", "5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b"),
    ];

    fn checked(extra: &[(&str, &str)]) -> Result<Good, Vec<String>> {
        let mut pairs = BASE.to_vec();
        pairs.extend_from_slice(extra);
        let mut parameters = event(&pairs);
        // A later pair replaces a base one of the same name.
        for (k, v) in extra {
            parameters.insert(k.to_string(), Value::from(*v));
        }
        let arrival = Arrival {
            millis: 1_700_000_000_000,
            ..Arrival::default()
        };
        check(&parameters, &Registry::default(), arrival)
    }

    /// Every column of the Analytics SDK's `Event`, `null` when empty; `contexts` and
    /// `derived_contexts` `{}` when there are none (snowplow-micro-examples' helpers call
    /// `contexts.hasOwnProperty("data")`); contexts re-encoded under 1-0-0 whatever the
    /// tracker sent (582e716: 77 columns, `contexts` null, the tracker's 1-0-1 kept).
    #[test]
    fn the_enriched_event_has_every_column_and_contexts_as_enrich_writes_them() {
        let bare = checked(&[]).unwrap().event;
        assert_eq!(bare.len(), 131, "{:?}", bare.keys());
        assert!(EVENT_COLUMNS.iter().all(|c| bare.contains_key(*c)));
        assert_eq!(bare["contexts"], json!({}));
        assert_eq!(bare["derived_contexts"], json!({}));
        assert_eq!(bare["unstruct_event"], Value::Null);
        assert_eq!(bare["geo_country"], Value::Null);
        let screen = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0","data":{"name":"Home","id":"5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b"}}}"#;
        let contexts = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{"schema":"iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1","data":{"targetUrl":"http://x/"}},{"schema":"iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1","data":{"targetUrl":"http://y/"}}]}"#;
        let full = checked(&[("e", "ue"), ("ue_pr", screen), ("co", contexts)])
            .unwrap()
            .event;
        assert_eq!(full["contexts"]["schema"], CONTEXTS_SCHEMA);
        assert_eq!(full["contexts"]["data"].as_array().unwrap().len(), 2);
        assert_eq!(full["unstruct_event"]["schema"], UNSTRUCT_EVENT_SCHEMA);
        // Micro 3's `/micro/events`: flattened as the Analytics SDK's lossy JSON.
        let flat = flattened(&full);
        assert!(!flat.contains_key("contexts") && !flat.contains_key("unstruct_event"));
        let clicks = &flat["contexts_com_snowplowanalytics_snowplow_link_click_1"];
        assert_eq!(clicks[1]["targetUrl"], "http://y/", "{flat:?}");
        assert_eq!(
            clicks[0]["_schema_version"],
            "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1"
        );
        assert_eq!(
            flat["unstruct_event_com_snowplowanalytics_mobile_screen_view_1"]["name"],
            "Home"
        );
        assert_eq!(flat.len(), 131 - 3 + 2);
        assert_eq!(
            column_name(
                "contexts_",
                "iglu:com.my-co.web/ABTestV2Result/jsonschema/2-1-0"
            )
            .as_deref(),
            Some("contexts_com_my_co_web_abtest_v2_result_2")
        );
    }

    #[test]
    fn each_atomic_rule_has_a_good_and_a_bad_case() {
        for (field, good, bad) in [
            (
                "eid",
                "5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b",
                "invalidEventId",
            ),
            ("dtm", "1700000000000", "notanumber"),
            ("stm", "1700000000001", "1.5e3x"),
            ("ttm", "1700000000002", "-1"),
            ("p", "mob", "xyz"),
            ("se_va", "9.5", "notnum"),
            ("tr_tt", "21", "twenty"),
            ("ti_qu", "2", "2.5"),
            ("res", "1920x1080", "big"),
            ("vid", "3", "three"),
        ] {
            assert!(checked(&[(field, good)]).is_ok(), "{field}={good}");
            let errors = checked(&[(field, bad)]).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(&format!("atomic field {field}"))),
                "{field}={bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn self_describing_data_is_checked_against_its_schema() {
        let screen = |data: &str| {
            format!(
                r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{{"schema":"iglu:com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0","data":{data}}}}}"#
            )
        };
        let good = checked(&[("e", "ue"), ("ue_pr", &screen(r#"{"name":"Home"}"#))]).unwrap();
        assert_eq!(good.event_type, "unstruct");
        assert_eq!(good.event["event_name"], "screen_view");
        assert_eq!(good.event["unstruct_event"]["data"]["data"]["name"], "Home");
        let errors = checked(&[("e", "ue"), ("ue_pr", &screen(r#"{"name":123}"#))]).unwrap_err();
        assert!(
            errors[0].contains("screen_view") && errors[0].contains("/name"),
            "{errors:?}"
        );
        let nowhere = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{"schema":"iglu:com.acme/nowhere/jsonschema/1-0-0","data":{}}]}"#;
        let errors = checked(&[("co", nowhere)]).unwrap_err();
        assert!(errors[0].contains("not found"), "{errors:?}");
    }

    #[test]
    fn the_enriched_event_maps_the_protocol_names() {
        let good = checked(&[
            ("aid", "shop"),
            ("url", "https://shop.example.com:8443/a/b?q=1#top"),
            ("dtm", "1700000000000"),
            ("stm", "1700000000500"),
            ("res", "1920x1080"),
        ])
        .unwrap();
        let e = &good.event;
        assert_eq!(e["app_id"], "shop");
        assert_eq!(e["platform"], "web");
        assert_eq!(e["event"], "page_view");
        assert_eq!(e["event_id"], "5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b");
        assert_eq!(e["page_urlhost"], "shop.example.com");
        assert_eq!(e["page_urlport"], 8443);
        assert_eq!(e["page_urlquery"], "q=1");
        assert_eq!(e["dvce_screenwidth"], 1920);
        assert_eq!(e["dvce_created_tstamp"], "2023-11-14T22:13:20.000Z");
        // Collector time minus the time the event spent on the device.
        assert_eq!(e["derived_tstamp"], "2023-11-14T22:13:19.500Z");
        assert_eq!(e["se_category"], Value::Null);
        assert_eq!(e["event_name"], "page_view");
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(iso_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso_timestamp(1_796_051_076_433), "2026-11-30T15:04:36.433Z");
    }
}
