//! `snowplow-relay collector`: a local collector for trials and tests, a drop-in for
//! Snowplow Micro's API. It accepts the tracker protocol (`GET /i`, `/ice.png`,
//! `/com.snowplowanalytics.snowplow/tp1`; `POST /com.snowplowanalytics.snowplow/tp2`;
//! CORS preflight), answers as the real collector does (200; 413 above the body limit),
//! checks each event as Micro does ([`event`]: `payload_data`, the atomic fields' types,
//! self-describing data against Iglu schemas from [`iglu`]) and keeps what it received
//! in memory (bounded: the oldest are dropped and counted) behind Micro's endpoints:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /micro/all` | `{"total":N,"good":N,"bad":N}` since the last reset |
//! | `GET\|POST /micro/good` | good events, newest first; filters `event_type`, `schema`, `contexts`, `limit` (JSON body; as query parameters too, our extension) |
//! | `GET\|POST /micro/bad` | bad events with their `errors`, newest first; filters `vendor`, `version`, `limit` |
//! | `GET\|POST /micro/reset` | forgets everything |
//! | `GET /micro/iglu/VENDOR/NAME/FORMAT/VERSION` | a schema the collector resolves |
//! | `GET /micro/ui` | a page listing the events, filterable, each expandable |
//! | `GET /micro/stats` | our extension: the counts plus `dropped` and the bytes held |
//! | `GET /health` | `OK` |
//!
//! It is not a production collector: no third-party enrichment runs, and nothing is
//! stored beyond memory and the optional `--record` file (one good event per JSON line).
//!
//! Bounded whatever clients send: at most `max_connections` connections, request bodies
//! read within `body_timeout` and within a budget of body bytes read at once (the rest
//! wait), the store bounded in events and in bytes (the oldest dropped and counted), and
//! `/micro/good|bad` answers streamed from the stored events' JSON outside the store's
//! lock.
//!
//! It may touch: the tracker's protocol (the same scanner the relay uses) and
//! [`crate::ops::listener`]; nothing of Redis or the relay.

pub mod event;
pub mod iglu;

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ops::listener::{Body, Limits, Peer, full};

use snowplow_relay_tracker::is_iglu_uri;
use snowplow_relay_tracker::protocol::{PAYLOAD_DATA_SCHEMA, shorten};

use event::Good;
use iglu::Registry;

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
    /// Static Iglu registries (`DIR/schemas/VENDOR/NAME/jsonschema/M-R-A`) searched before
    /// Snowplow's own schemas.
    pub iglu_dirs: Vec<PathBuf>,
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
            iglu_dirs: Vec::new(),
        }
    }
}

impl CollectorOptions {
    /// Bytes of request bodies read at once: eight of the largest, 16 MiB at least.
    fn body_budget(&self) -> usize {
        (8 * self.max_body_bytes).max(16 * 1024 * 1024)
    }
}

/// Counts since the last reset (`/micro/stats`; `/micro/all` shows the first three, as
/// Micro does).
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

/// Micro's `/micro/all`.
#[derive(serde::Serialize)]
struct Summary {
    total: u64,
    good: u64,
    bad: u64,
}

impl Summary {
    fn of(totals: Totals) -> Summary {
        Summary {
            total: totals.total,
            good: totals.good,
            bad: totals.bad,
        }
    }
}

/// One stored event: its JSON as served, and what the filters look at.
#[derive(Default)]
struct Stored {
    json: Bytes,
    event_type: String,
    schema: String,
    contexts: Vec<String>,
    /// The API the event came through (`com.snowplowanalytics.snowplow`, `tp2`).
    vendor: &'static str,
    version: &'static str,
    /// Order of arrival.
    seq: u64,
    /// The request it came in.
    batch: u64,
}

#[derive(Default)]
struct Store {
    totals: Totals,
    good: VecDeque<Arc<Stored>>,
    bad: VecDeque<Arc<Stored>>,
    /// Bytes of JSON held.
    bytes: usize,
    seq: u64,
    batches: u64,
}

/// Events as Micro lists them: the newest request's first, each request's in the order
/// they were sent (Micro prepends each request's list).
fn newest_first(events: &VecDeque<Arc<Stored>>) -> Vec<Arc<Stored>> {
    let mut listed: Vec<Arc<Stored>> = events.iter().rev().cloned().collect();
    let mut start = 0;
    while start < listed.len() {
        let batch = listed[start].batch;
        let end = start
            + listed[start..]
                .iter()
                .take_while(|e| e.batch == batch)
                .count();
        listed[start..end].reverse();
        start = end;
    }
    listed
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
    registry: Registry,
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
            registry: Registry::new(options.iglu_dirs.clone()),
            options: Arc::new(options),
            store: Arc::default(),
            record,
        })
    }

    /// Counts since the last reset.
    pub fn totals(&self) -> Totals {
        self.store.lock().expect("store lock").totals
    }

    /// The good events kept, newest first (as `/micro/good` lists them).
    pub fn good(&self) -> Vec<Value> {
        self.kept(|store| &store.good)
    }

    /// The bad events kept, newest first.
    pub fn bad(&self) -> Vec<Value> {
        self.kept(|store| &store.bad)
    }

    fn kept(&self, which: impl Fn(&Store) -> &VecDeque<Arc<Stored>>) -> Vec<Value> {
        let events = newest_first(which(&self.store.lock().expect("store lock")));
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
                let origin = Origin::of(&request, "tp1", None);
                let (good, bad) = self.receive_query(&query, &origin);
                let response = Response::builder()
                    .header("content-type", "image/gif")
                    .body(full(Bytes::from_static(PIXEL)))
                    .unwrap_or_else(|_| Response::new(full("")));
                (response, good, bad)
            }
            (&Method::POST, "/com.snowplowanalytics.snowplow/tp2") => {
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let origin = Origin::of(&request, "tp2", content_type);
                // The body's share of the budget is held until its events are stored:
                // checking and shaping them takes a few times the body's size.
                let (body, _share) = match self.read_body(request).await {
                    Ok(read) => read,
                    Err(response) => return (response, 0, 0),
                };
                let (good, bad) = self.receive_post(&body, &origin);
                (text(StatusCode::OK, "ok"), good, bad)
            }
            (&Method::GET, "/health") => (text(StatusCode::OK, "OK"), 0, 0),
            (&Method::GET | &Method::POST, "/micro/all") => {
                (self.json(&Summary::of(self.totals())), 0, 0)
            }
            (&Method::GET, "/micro/stats") => {
                let stats = json!({"totals": self.totals(), "stored_bytes": self.stored_bytes()});
                (self.json(&stats), 0, 0)
            }
            (&Method::GET | &Method::POST, "/micro/reset") => {
                *self.store.lock().expect("store lock") = Store::default();
                (self.json(&Summary::of(Totals::default())), 0, 0)
            }
            (&Method::GET, "/micro/ui" | "/micro/ui/") => {
                let response = Response::builder()
                    .header("content-type", "text/html; charset=utf-8")
                    .header(
                        "content-security-policy",
                        "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
                    )
                    .body(full(UI_PAGE))
                    .unwrap_or_else(|_| Response::new(full("")));
                (response, 0, 0)
            }
            (&Method::GET, iglu) if iglu.starts_with("/micro/iglu/") => {
                let schema_path = &iglu["/micro/iglu/".len()..];
                match self.registry.schema(schema_path) {
                    Some(schema) => (self.json(&schema), 0, 0),
                    None => {
                        let message = format!("schema iglu:{} not found\n", shorten(schema_path));
                        (text(StatusCode::NOT_FOUND, &message), 0, 0)
                    }
                }
            }
            (&Method::GET | &Method::POST, "/micro/good" | "/micro/bad") => {
                let good = path == "/micro/good";
                let filters = if method == Method::POST {
                    match self.read_body(request).await {
                        Ok((body, _)) if body.iter().all(u8::is_ascii_whitespace) => {
                            Filters::default()
                        }
                        Ok((body, _)) => match Filters::from_json(&body, good) {
                            Ok(filters) => filters,
                            Err(message) => {
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
                    let events = if good { &store.good } else { &store.bad };
                    newest_first(events)
                        .into_iter()
                        .filter(|e| filters.matches(e))
                        .take(filters.limit.unwrap_or(usize::MAX))
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
                    "not found: GET /i, POST /com.snowplowanalytics.snowplow/tp2, /micro/all, /micro/good, /micro/bad, /micro/reset, /micro/iglu/…, /micro/ui, /health\n",
                ),
                0,
                0,
            ),
        }
    }

    /// Reads a body within the size limit, the time limit and the budget of body bytes
    /// handled at once (a request waits for its share, within the same time limit);
    /// returns it with its share, which the caller holds while it works on the body.
    async fn read_body(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Bytes, tokio::sync::SemaphorePermit<'_>), Response<Body>> {
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
        let permit =
            match tokio::time::timeout_at(deadline, self.body_budget.acquire_many(share)).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(timed_out()),
            };
        let read = Limited::new(request.into_body(), limit).collect();
        let Ok(read) = tokio::time::timeout_at(deadline, read).await else {
            return Err(timed_out());
        };
        match read {
            Ok(collected) => Ok((collected.to_bytes(), permit)),
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
        self.receive_query(query, &Origin::local("tp1", None))
    }

    /// What `POST /com.snowplowanalytics.snowplow/tp2` with `body` does to the store.
    /// Returns how many good and bad events it brought.
    pub fn ingest_post(&self, body: &[u8]) -> (usize, usize) {
        self.receive_post(body, &Origin::local("tp2", Some("application/json".into())))
    }

    fn receive_query(&self, query: &str, origin: &Origin) -> (usize, usize) {
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
            event::check(&parameters, &self.registry, origin.millis)
        } else {
            Err(errors)
        };
        self.store(vec![(Value::Object(parameters), verdict)], origin)
    }

    fn receive_post(&self, body: &[u8], origin: &Origin) -> (usize, usize) {
        let events = match post_items(body) {
            Ok(items) => items
                .into_iter()
                .map(|item| {
                    let verdict = match item.as_object() {
                        Some(parameters) => event::check(parameters, &self.registry, origin.millis),
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
        self.store(events, origin)
    }

    fn store(
        &self,
        events: Vec<(Value, Result<Good, Vec<String>>)>,
        origin: &Origin,
    ) -> (usize, usize) {
        let (mut good, mut bad) = (0, 0);
        let mut lines = Vec::new();
        // Serialised before the lock is taken.
        let entries: Vec<(bool, Stored)> = events
            .into_iter()
            .map(|(parameters, verdict)| {
                let raw_event = origin.raw_event(parameters);
                let (is_good, entry, stored) = match verdict {
                    Ok(good) => {
                        let entry = json!({
                            "rawEvent": raw_event,
                            "eventType": good.event_type,
                            "schema": good.schema,
                            "contexts": good.contexts,
                            "event": good.event,
                        });
                        let stored = Stored {
                            event_type: good.event_type.to_owned(),
                            schema: good.schema,
                            contexts: good.contexts,
                            ..Stored::default()
                        };
                        (true, entry, stored)
                    }
                    Err(errors) => {
                        let entry = json!({
                            "collectorPayload": origin.collector_payload(),
                            "rawEvent": raw_event,
                            "errors": errors,
                        });
                        (false, entry, Stored::default())
                    }
                };
                let stored = Stored {
                    json: Bytes::from(serde_json::to_vec(&entry).unwrap_or_default()),
                    vendor: origin.vendor,
                    version: origin.version,
                    ..stored
                };
                (is_good, stored)
            })
            .collect();
        {
            let mut store = self.store.lock().expect("store lock");
            store.batches += 1;
            let batch = store.batches;
            for (is_good, mut stored) in entries {
                store.totals.total += 1;
                store.seq += 1;
                stored.seq = store.seq;
                stored.batch = batch;
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

/// Where and how a request arrived: Micro's `rawEvent` fields besides the parameters.
struct Origin {
    vendor: &'static str,
    version: &'static str,
    content_type: Option<String>,
    hostname: Option<String>,
    ip: Option<String>,
    useragent: Option<String>,
    referer: Option<String>,
    /// `Name: value`, as Micro lists them; cookies and credentials
    /// ([`NEVER_LISTED_HEADERS`]) left out.
    headers: Vec<String>,
    millis: u64,
}

/// Request headers never listed in an event's `rawEvent.context.headers`: whoever can
/// read `/micro/good` must not learn a cookie, a password or a token from them.
pub const NEVER_LISTED_HEADERS: [&str; 3] = ["cookie", "authorization", "proxy-authorization"];

impl Origin {
    fn of(
        request: &Request<Incoming>,
        version: &'static str,
        content_type: Option<String>,
    ) -> Origin {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(shorten)
        };
        let forwarded = header("x-forwarded-for")
            .and_then(|v| v.split(',').next().map(|ip| ip.trim().to_owned()));
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.ip().to_string());
        Origin {
            hostname: header("host").map(|h| h.split(':').next().unwrap_or_default().to_owned()),
            ip: forwarded.or(peer),
            useragent: header("user-agent"),
            referer: header("referer"),
            headers: request
                .headers()
                .iter()
                .filter(|(name, _)| !NEVER_LISTED_HEADERS.contains(&name.as_str()))
                .take(64)
                .map(|(name, value)| {
                    format!(
                        "{name}: {}",
                        shorten(&String::from_utf8_lossy(value.as_bytes()))
                    )
                })
                .collect(),
            ..Origin::local(version, content_type)
        }
    }

    /// An origin for events handed in by code rather than over HTTP.
    fn local(version: &'static str, content_type: Option<String>) -> Origin {
        Origin {
            vendor: "com.snowplowanalytics.snowplow",
            version,
            content_type,
            hostname: None,
            ip: None,
            useragent: None,
            referer: None,
            headers: Vec::new(),
            millis: snowplow_relay_tracker::protocol::now_millis(),
        }
    }

    /// What Micro shows of the request a bad event came in (its body is in `rawEvent`).
    fn collector_payload(&self) -> Value {
        json!({
            "api": {"vendor": self.vendor, "version": self.version},
            "contentType": self.content_type,
            "source": {"name": "snowplow-relay-collector", "encoding": "UTF-8", "hostname": self.hostname},
            "context": {"timestamp": event::iso_timestamp(self.millis), "ipAddress": self.ip, "useragent": self.useragent},
        })
    }

    fn raw_event(&self, parameters: Value) -> Value {
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
                "headers": self.headers,
                "userId": null,
            },
        })
    }
}

/// The items of a `payload_data` POST body.
fn post_items(body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value = serde_json::from_slice(&event::with_lone_surrogates_replaced(body))
        .map_err(|e| format!("the body is not JSON: {e}"))?;
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

/// Micro's filters: `/micro/good` takes `event_type`, `schema`, `contexts` (every one
/// named must be among the event's) and `limit`; `/micro/bad` takes `vendor`, `version`
/// and `limit`. As query parameters (our extension) any of them, `contexts` repeated or
/// comma-separated.
#[derive(Debug, Default)]
struct Filters {
    event_type: Option<String>,
    schema: Option<String>,
    contexts: Vec<String>,
    vendor: Option<String>,
    version: Option<String>,
    limit: Option<usize>,
}

/// `/micro/good`'s JSON filters, as Micro names them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GoodFilters {
    event_type: Option<String>,
    schema: Option<String>,
    contexts: Option<Vec<String>>,
    limit: Option<usize>,
}

/// `/micro/bad`'s JSON filters, as Micro names them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BadFilters {
    vendor: Option<String>,
    version: Option<String>,
    limit: Option<usize>,
}

impl Filters {
    fn from_json(body: &[u8], good: bool) -> Result<Filters, String> {
        if good {
            let f: GoodFilters = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "filters must be JSON like {{\"event_type\":\"page_view\",\"schema\":\"iglu:…\",\"contexts\":[\"iglu:…\"],\"limit\":10}}: {e}\n"
                )
            })?;
            Ok(Filters {
                event_type: f.event_type,
                schema: f.schema,
                contexts: f.contexts.unwrap_or_default(),
                limit: f.limit,
                ..Filters::default()
            })
        } else {
            let f: BadFilters = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "filters must be JSON like {{\"vendor\":\"com.snowplowanalytics.snowplow\",\"version\":\"tp2\",\"limit\":10}}: {e}\n"
                )
            })?;
            Ok(Filters {
                vendor: f.vendor,
                version: f.version,
                limit: f.limit,
                ..Filters::default()
            })
        }
    }

    fn from_query(query: &str) -> Filters {
        let mut filters = Filters::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "event_type" => filters.event_type = Some(value.into_owned()),
                "schema" => filters.schema = Some(value.into_owned()),
                "contexts" => filters.contexts.extend(
                    value
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned),
                ),
                "vendor" => filters.vendor = Some(value.into_owned()),
                "version" => filters.version = Some(value.into_owned()),
                "limit" => filters.limit = value.parse().ok(),
                _ => {}
            }
        }
        filters
    }

    fn matches(&self, event: &Stored) -> bool {
        let same =
            |found: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|w| found == w);
        same(&event.event_type, &self.event_type)
            && same(&event.schema, &self.schema)
            && same(event.vendor, &self.vendor)
            && same(event.version, &self.version)
            && self.contexts.iter().all(|c| event.contexts.contains(c))
    }
}

/// The page of `/micro/ui`.
const UI_PAGE: &str = include_str!("ui.html");

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

    #[test]
    fn listed_newest_request_first_each_requests_events_in_order() {
        let stored = |seq, batch| {
            Arc::new(Stored {
                seq,
                batch,
                ..Stored::default()
            })
        };
        let events: VecDeque<Arc<Stored>> =
            [stored(1, 1), stored(2, 2), stored(3, 2), stored(4, 3)].into();
        let order: Vec<u64> = newest_first(&events).iter().map(|e| e.seq).collect();
        assert_eq!(order, [4, 2, 3, 1]);
    }

    #[test]
    fn bodies_must_be_payload_data() {
        assert!(post_items(b"[1]").unwrap_err().contains("payload_data"));
        assert!(post_items(b"{\"schema\":\"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\",\"data\":[]}").is_err());
        assert!(post_items(b"not json").unwrap_err().contains("not JSON"));
    }
}
