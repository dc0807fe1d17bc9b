//! `snowplow-relay collector`: a local collector for trials and tests, shaped like
//! Snowplow Micro. It accepts the tracker protocol (`GET /i`, `/ice.png`,
//! `/com.snowplowanalytics.snowplow/tp1`; `POST /com.snowplowanalytics.snowplow/tp2`;
//! CORS preflight), answers as the real collector does (200; 413 above the body limit),
//! validates each event against `payload_data` 1-0-4 and each context's and
//! self-describing event's envelope, and keeps what it received in memory (bounded: the
//! oldest are dropped and counted) behind Micro's endpoints:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /micro/all` | `{"total":N,"good":N,"bad":N,"dropped":N}` since the last reset |
//! | `GET\|POST /micro/good` | good events, oldest first; filters `event_type`, `schema`, `limit` (JSON body or query) |
//! | `GET\|POST /micro/bad` | bad events with their errors; filter `limit` |
//! | `GET\|POST /micro/reset` | forgets everything |
//! | `GET /health` | `OK` |
//!
//! It is not a production collector: nothing is enriched or stored beyond memory and the
//! optional `--record` file (one good event per JSON line).
//!
//! Bounded whatever clients send: at most `max_connections` connections, request bodies
//! read within `body_timeout` and within a budget of body bytes read at once (the rest
//! wait), the store bounded in events and in bytes (the oldest dropped and counted), and
//! `/micro/good|bad` answers streamed from the stored events' JSON outside the store's
//! lock.
//!
//! It may touch: the tracker's protocol (the same scanner the relay uses) and
//! [`crate::ops::listener`]; nothing of Redis or the relay.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ops::listener::{Body, Limits, full};

use snowplow_relay_tracker::protocol::{
    PAYLOAD_DATA_FIELDS, PAYLOAD_DATA_SCHEMA, REQUIRED_FIELDS, shorten,
};
use snowplow_relay_tracker::{check_contexts, check_self_describing_event, is_iglu_uri};

/// The real collector's default body limit (`collector.streams.maxBytes` aside): 2 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How many events (good and bad together) are kept by default.
pub const DEFAULT_MAX_EVENTS: usize = 100_000;

/// How many bytes of stored events (their JSON) are kept by default.
pub const DEFAULT_MAX_STORE_BYTES: usize = 256 * 1024 * 1024;

/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// A transparent 1×1 GIF, the answer to a GET.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x01, 0x44, 0x00, 0x3b,
];

/// How the local collector behaves.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// Events kept in memory, good and bad together; the oldest go first.
    pub max_events: usize,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Append every good event to this file as one JSON line.
    pub record: Option<PathBuf>,
    /// Bytes of stored events kept in memory (their JSON); the oldest go first.
    pub max_store_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for a request body to arrive, whole.
    pub body_timeout: Duration,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        CollectorOptions {
            max_events: DEFAULT_MAX_EVENTS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            record: None,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl CollectorOptions {
    /// Bytes of request bodies read at once: eight of the largest, 16 MiB at least.
    fn body_budget(&self) -> usize {
        (8 * self.max_body_bytes).max(16 * 1024 * 1024)
    }
}

/// Counts since the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Events received.
    pub total: u64,
    /// Events that passed validation.
    pub good: u64,
    /// Events that did not.
    pub bad: u64,
    /// Events no longer kept because `max_events` or `max_store_bytes` was reached.
    pub dropped: u64,
}

/// One stored event: its JSON as served, and what the filters look at.
struct Stored {
    json: Bytes,
    event_type: String,
    schema: String,
    /// Order of arrival.
    seq: u64,
}

#[derive(Default)]
struct Store {
    totals: Totals,
    good: VecDeque<Arc<Stored>>,
    bad: VecDeque<Arc<Stored>>,
    /// Bytes of JSON held.
    bytes: usize,
    seq: u64,
}

impl Store {
    /// Drops the oldest events until both bounds hold.
    fn trim(&mut self, max_events: usize, max_bytes: usize) {
        while self.good.len() + self.bad.len() > max_events || self.bytes > max_bytes {
            let from_good = match (self.good.front(), self.bad.front()) {
                (Some(good), Some(bad)) => good.seq < bad.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            let dropped = if from_good {
                self.good.pop_front()
            } else {
                self.bad.pop_front()
            };
            if let Some(dropped) = dropped {
                self.bytes -= dropped.json.len();
                self.totals.dropped += 1;
            }
        }
    }
}

/// The local collector; clone it to share its store (e.g. to read it in a test).
#[derive(Clone)]
pub struct LocalCollector {
    options: Arc<CollectorOptions>,
    store: Arc<Mutex<Store>>,
    record: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
    /// Bytes of request bodies being read now.
    body_budget: Arc<Semaphore>,
}

impl LocalCollector {
    /// A collector with an empty store; opens the `record` file for appending.
    pub fn new(options: CollectorOptions) -> std::io::Result<LocalCollector> {
        let record = match &options.record {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot open --record {}: {e}", path.display()),
                        )
                    })?;
                Some(Arc::new(Mutex::new(std::io::BufWriter::new(file))))
            }
            None => None,
        };
        Ok(LocalCollector {
            body_budget: Arc::new(Semaphore::new(options.body_budget())),
            options: Arc::new(options),
            store: Arc::default(),
            record,
        })
    }

    /// Counts since the last reset.
    pub fn totals(&self) -> Totals {
        self.store.lock().expect("store lock").totals
    }

    /// The good events kept, oldest first.
    pub fn good(&self) -> Vec<Value> {
        self.kept(|store| &store.good)
    }

    /// The bad events kept, oldest first.
    pub fn bad(&self) -> Vec<Value> {
        self.kept(|store| &store.bad)
    }

    fn kept(&self, which: impl Fn(&Store) -> &VecDeque<Arc<Stored>>) -> Vec<Value> {
        let events: Vec<Arc<Stored>> = which(&self.store.lock().expect("store lock"))
            .iter()
            .cloned()
            .collect();
        events
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.json).ok())
            .collect()
    }

    /// Serves connections from `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let limits = Limits {
            max_connections: self.options.max_connections,
            // A GET carries the event in its query string.
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(300),
            keep_alive: true,
        };
        let answer = move |request: Request<Incoming>| {
            let collector = self.clone();
            async move { collector.answer(request).await }
        };
        crate::ops::listener::serve_http(listener, limits, answer, shutdown).await;
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let origin = request.headers().get("origin").cloned();
        let (response, good, bad) = self.route(request).await;
        tracing::info!(%method, path, status = response.status().as_u16(), good, bad, "request");
        let mut response = response;
        let headers = response.headers_mut();
        headers.insert(
            "access-control-allow-origin",
            origin.unwrap_or(hyper::header::HeaderValue::from_static("*")),
        );
        headers.insert(
            "access-control-allow-credentials",
            hyper::header::HeaderValue::from_static("true"),
        );
        response
    }

    /// The response and how many good and bad events the request brought.
    async fn route(&self, request: Request<Incoming>) -> (Response<Body>, usize, usize) {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        if method == Method::OPTIONS {
            let response = Response::builder()
                .header("access-control-allow-headers", "Content-Type, SP-Anonymous")
                .header("access-control-allow-methods", "POST, GET, OPTIONS")
                .header("access-control-max-age", "3600")
                .body(full(""))
                .unwrap_or_else(|_| Response::new(full("")));
            return (response, 0, 0);
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/i" | "/ice.png" | "/com.snowplowanalytics.snowplow/tp1") => {
                let (good, bad) = self.receive_query(&query);
                let response = Response::builder()
                    .header("content-type", "image/gif")
                    .body(full(Bytes::from_static(PIXEL)))
                    .unwrap_or_else(|_| Response::new(full("")));
                (response, good, bad)
            }
            (&Method::POST, "/com.snowplowanalytics.snowplow/tp2") => {
                let body = match self.read_body(request).await {
                    Ok(body) => body,
                    Err(response) => return (response, 0, 0),
                };
                let (good, bad) = self.receive_post(&body);
                (text(StatusCode::OK, "ok"), good, bad)
            }
            (&Method::GET, "/health") => (text(StatusCode::OK, "OK"), 0, 0),
            (&Method::GET | &Method::POST, "/micro/all") => (self.json(&self.totals()), 0, 0),
            (&Method::GET | &Method::POST, "/micro/reset") => {
                *self.store.lock().expect("store lock") = Store::default();
                (self.json(&self.totals()), 0, 0)
            }
            (&Method::GET | &Method::POST, "/micro/good" | "/micro/bad") => {
                let filters = if method == Method::POST {
                    match self.read_body(request).await {
                        Ok(body) if body.iter().all(u8::is_ascii_whitespace) => Filters::default(),
                        Ok(body) => match serde_json::from_slice::<Filters>(&body) {
                            Ok(filters) => filters,
                            Err(e) => {
                                let message = format!(
                                    "filters must be JSON like {{\"event_type\":\"page_view\",\"schema\":\"iglu:…\",\"limit\":10}}: {e}\n"
                                );
                                return (text(StatusCode::BAD_REQUEST, &message), 0, 0);
                            }
                        },
                        Err(response) => return (response, 0, 0),
                    }
                } else {
                    Filters::from_query(&query)
                };
                // Only references are taken under the lock; the answer is streamed.
                let selected: Vec<Arc<Stored>> = {
                    let store = self.store.lock().expect("store lock");
                    let events = if path == "/micro/good" {
                        &store.good
                    } else {
                        &store.bad
                    };
                    events
                        .iter()
                        .filter(|e| filters.matches(e))
                        .take(filters.limit.unwrap_or(usize::MAX))
                        .cloned()
                        .collect()
                };
                let response = Response::builder()
                    .header("content-type", "application/json")
                    .body(JsonArray::new(selected).boxed())
                    .unwrap_or_else(|_| Response::new(full("")));
                (response, 0, 0)
            }
            _ => (
                text(
                    StatusCode::NOT_FOUND,
                    "not found: GET /i, POST /com.snowplowanalytics.snowplow/tp2, /micro/all, /micro/good, /micro/bad, /micro/reset, /health\n",
                ),
                0,
                0,
            ),
        }
    }

    /// Reads a body within the size limit, the time limit and the budget of body bytes
    /// read at once (a request waits for its share, within the same time limit).
    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let limit = self.options.max_body_bytes;
        let too_large = || {
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {limit} bytes\n"),
            )
        };
        let declared = request
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let share = declared.map_or(limit, |n| n as usize).max(1) as u32;
        let deadline = tokio::time::Instant::now() + self.options.body_timeout;
        let timed_out = || {
            text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s\n",
                    self.options.body_timeout.as_secs()
                ),
            )
        };
        let _permit =
            match tokio::time::timeout_at(deadline, self.body_budget.acquire_many(share)).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(timed_out()),
            };
        let read = Limited::new(request.into_body(), limit).collect();
        let Ok(read) = tokio::time::timeout_at(deadline, read).await else {
            return Err(timed_out());
        };
        match read {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}\n"),
            )),
        }
    }

    fn json(&self, value: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(serde_json::to_vec(value).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(full("")))
    }

    /// Bytes of stored events held now (at most `max_store_bytes`).
    pub fn stored_bytes(&self) -> usize {
        self.store.lock().expect("store lock").bytes
    }

    /// What `GET /i?query` does to the store: validates and keeps the event. Returns how
    /// many good and bad events it brought.
    pub fn ingest_query(&self, query: &str) -> (usize, usize) {
        self.receive_query(query)
    }

    /// What `POST /com.snowplowanalytics.snowplow/tp2` with `body` does to the store.
    /// Returns how many good and bad events it brought.
    pub fn ingest_post(&self, body: &[u8]) -> (usize, usize) {
        self.receive_post(body)
    }

    fn receive_query(&self, query: &str) -> (usize, usize) {
        let mut parameters = Map::new();
        let mut errors = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if parameters
                .insert(name.to_string(), Value::from(value.as_ref()))
                .is_some()
            {
                errors.push(format!("field {} appears twice", shorten(&name)));
            }
        }
        let verdict = if errors.is_empty() {
            validate(&parameters)
        } else {
            Err(errors)
        };
        self.store(vec![(Value::Object(parameters), verdict)])
    }

    fn receive_post(&self, body: &[u8]) -> (usize, usize) {
        let events = match post_items(body) {
            Ok(items) => items
                .into_iter()
                .map(|item| {
                    let verdict = match item.as_object() {
                        Some(parameters) => validate(parameters),
                        None => Err(vec!["an event must be a JSON object".to_owned()]),
                    };
                    (item, verdict)
                })
                .collect(),
            Err(error) => {
                let raw = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
                vec![(Value::from(raw), Err(vec![error]))]
            }
        };
        self.store(events)
    }

    fn store(&self, events: Vec<(Value, Result<Good, Vec<String>>)>) -> (usize, usize) {
        let (mut good, mut bad) = (0, 0);
        let mut lines = Vec::new();
        // Serialised before the lock is taken.
        let entries: Vec<(bool, Stored)> = events
            .into_iter()
            .map(|(parameters, verdict)| match verdict {
                Ok(kind) => {
                    let entry = json!({
                        "eventType": kind.event_type,
                        "schema": kind.schema,
                        "contexts": kind.contexts,
                        "rawEvent": {"parameters": parameters},
                    });
                    let json = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
                    let stored = Stored {
                        json,
                        event_type: kind.event_type.to_owned(),
                        schema: kind.schema,
                        seq: 0,
                    };
                    (true, stored)
                }
                Err(errors) => {
                    let entry = json!({
                        "rawEvent": {"parameters": parameters},
                        "errors": errors,
                    });
                    let json = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
                    let stored = Stored {
                        json,
                        event_type: String::new(),
                        schema: String::new(),
                        seq: 0,
                    };
                    (false, stored)
                }
            })
            .collect();
        {
            let mut store = self.store.lock().expect("store lock");
            for (is_good, mut stored) in entries {
                store.totals.total += 1;
                store.seq += 1;
                stored.seq = store.seq;
                store.bytes += stored.json.len();
                if is_good {
                    good += 1;
                    store.totals.good += 1;
                    if self.record.is_some() {
                        lines.push(stored.json.clone());
                    }
                    store.good.push_back(Arc::new(stored));
                } else {
                    bad += 1;
                    store.totals.bad += 1;
                    store.bad.push_back(Arc::new(stored));
                }
                store.trim(self.options.max_events, self.options.max_store_bytes);
            }
        }
        if let Some(record) = &self.record {
            let mut file = record.lock().expect("record lock");
            let written = lines
                .iter()
                .try_for_each(|line| {
                    file.write_all(line)?;
                    file.write_all(b"\n")
                })
                .and_then(|()| file.flush());
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot append to the --record file");
            }
        }
        (good, bad)
    }
}

/// What a good event is.
#[derive(Debug)]
struct Good {
    event_type: &'static str,
    schema: String,
    contexts: Vec<String>,
}

/// The items of a `payload_data` POST body.
fn post_items(body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let schema = value
        .get("schema")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let payload_data = &PAYLOAD_DATA_SCHEMA[..PAYLOAD_DATA_SCHEMA.len() - "1-0-4".len()];
    if !schema.starts_with(payload_data) || !is_iglu_uri(schema) {
        return Err(format!(
            "the body must be self-describing JSON with schema {PAYLOAD_DATA_SCHEMA}, not {}",
            shorten(schema)
        ));
    }
    match value.get("data") {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items.clone()),
        _ => Err("payload_data needs a non-empty `data` array (minItems 1)".into()),
    }
}

/// Decodes base64 (URL-safe or standard, padded or not) JSON.
fn decode_json(field: &str, text: &str, base64: bool) -> Result<Value, String> {
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
    serde_json::from_slice(&bytes).map_err(|e| format!("{field} is not JSON: {e}"))
}

/// Validates one event: `payload_data` 1-0-4 (known fields only, every value a string,
/// `e`, `p` and `tv` present), the fields its event type needs, and the envelopes of its
/// contexts and self-describing event.
fn validate(parameters: &Map<String, Value>) -> Result<Good, Vec<String>> {
    let mut errors = Vec::new();
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
    let field = |name: &str| parameters.get(name).and_then(Value::as_str);
    let mut need = |names: &[&str]| {
        for name in names {
            if field(name).is_none_or(str::is_empty) {
                errors.push(format!("field {name} is required for this event type"));
            }
        }
    };
    let mut schema = String::new();
    let event_type = match field("e").unwrap_or_default() {
        "pv" => {
            schema = "iglu:com.snowplowanalytics.snowplow/page_view/jsonschema/1-0-0".into();
            "page_view"
        }
        "pp" => {
            schema = "iglu:com.snowplowanalytics.snowplow/page_ping/jsonschema/1-0-0".into();
            "page_ping"
        }
        "se" => {
            need(&["se_ca", "se_ac"]);
            schema = "iglu:com.google.analytics/event/jsonschema/1-0-0".into();
            "struct"
        }
        "ue" => "unstruct",
        "tr" => {
            need(&["tr_id", "tr_tt"]);
            schema = "iglu:com.snowplowanalytics.snowplow/transaction/jsonschema/1-0-0".into();
            "transaction"
        }
        "ti" => {
            need(&["ti_id", "ti_sk", "ti_pr", "ti_qu"]);
            schema = "iglu:com.snowplowanalytics.snowplow/transaction_item/jsonschema/1-0-0".into();
            "transaction_item"
        }
        other => {
            if !other.is_empty() {
                errors.push(format!("unknown event type e={}", shorten(other)));
            }
            "unknown"
        }
    };
    if event_type == "unstruct" {
        let found = match (field("ue_px"), field("ue_pr")) {
            (Some(text), _) => Some(decode_json("ue_px", text, true)),
            (None, Some(text)) => Some(decode_json("ue_pr", text, false)),
            (None, None) => None,
        };
        match found {
            None => errors.push("a self-describing event (e=ue) needs ue_px or ue_pr".into()),
            Some(Err(e)) => errors.push(e),
            Some(Ok(value)) => match check_self_describing_event(&value) {
                Ok(event) => schema = event.schema().to_owned(),
                Err(e) => errors.push(e),
            },
        }
    }
    let mut contexts = Vec::new();
    let found = match (field("cx"), field("co")) {
        (Some(text), _) => Some(decode_json("cx", text, true)),
        (None, Some(text)) => Some(decode_json("co", text, false)),
        (None, None) => None,
    };
    match found {
        None => {}
        Some(Err(e)) => errors.push(e),
        Some(Ok(value)) => match check_contexts(&value) {
            Ok(list) => contexts = list.iter().map(|c| c.schema().to_owned()).collect(),
            Err(e) => errors.push(e),
        },
    }
    if errors.is_empty() {
        Ok(Good {
            event_type,
            schema,
            contexts,
        })
    } else {
        Err(errors)
    }
}

/// Micro's filters for `/micro/good` and `/micro/bad`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Filters {
    event_type: Option<String>,
    schema: Option<String>,
    limit: Option<usize>,
}

impl Filters {
    fn from_query(query: &str) -> Filters {
        let mut filters = Filters::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "event_type" => filters.event_type = Some(value.into_owned()),
                "schema" => filters.schema = Some(value.into_owned()),
                "limit" => filters.limit = value.parse().ok(),
                _ => {}
            }
        }
        filters
    }

    fn matches(&self, event: &Stored) -> bool {
        let same =
            |found: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|w| found == w);
        same(&event.event_type, &self.event_type) && same(&event.schema, &self.schema)
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(body.to_owned()))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A JSON array of stored events, streamed one event's JSON at a time (no copy).
struct JsonArray {
    events: std::vec::IntoIter<Arc<Stored>>,
    /// What is sent next before the next event: `[`, then `,`.
    separator: Option<&'static [u8]>,
    /// An event waiting behind its separator.
    next: Option<Bytes>,
    closed: bool,
}

impl JsonArray {
    fn new(events: Vec<Arc<Stored>>) -> JsonArray {
        JsonArray {
            events: events.into_iter(),
            separator: Some(b"["),
            next: None,
            closed: false,
        }
    }
}

impl hyper::body::Body for JsonArray {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(event) = this.next.take() {
            this.separator = Some(b",");
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        if this.closed {
            return Poll::Ready(None);
        }
        let separator = this.separator.take().unwrap_or(b",");
        let frame = match this.events.next() {
            Some(event) => {
                this.next = Some(event.json.clone());
                if separator == b"," {
                    Bytes::from_static(b",")
                } else {
                    Bytes::from_static(b"[")
                }
            }
            None => {
                this.closed = true;
                if separator == b"[" {
                    Bytes::from_static(b"[]")
                } else {
                    Bytes::from_static(b"]")
                }
            }
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn event(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn payload_data_rules() {
        let base = [("e", "pv"), ("p", "pc"), ("tv", "t")];
        assert_eq!(validate(&event(&base)).unwrap().event_type, "page_view");
        let errors = validate(&event(&[("e", "pv"), ("tv", "t"), ("zz", "1")])).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("zz is not allowed")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("p is required")),
            "{errors:?}"
        );
        let mut numeric = event(&base);
        numeric.insert("dtm".into(), json!(1));
        assert!(validate(&numeric).unwrap_err()[0].contains("must be a string"));
        let errors = validate(&event(&[("e", "se"), ("p", "pc"), ("tv", "t")])).unwrap_err();
        assert!(errors[0].contains("se_ca"), "{errors:?}");
        let errors = validate(&event(&[("e", "ue"), ("p", "pc"), ("tv", "t")])).unwrap_err();
        assert!(errors[0].contains("ue_px"), "{errors:?}");
        let errors = validate(&event(&[
            ("e", "pv"),
            ("p", "pc"),
            ("tv", "t"),
            ("cx", "!!"),
        ]))
        .unwrap_err();
        assert!(errors[0].contains("cx is not base64"), "{errors:?}");
    }

    #[test]
    fn bodies_must_be_payload_data() {
        assert!(post_items(b"[1]").unwrap_err().contains("payload_data"));
        assert!(post_items(b"{\"schema\":\"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\",\"data\":[]}").is_err());
        assert!(post_items(b"not json").unwrap_err().contains("not JSON"));
    }
}
