//! The local collector itself: its options and bounds, its store behind a lock, and
//! what each request's events come to (checked as Micro checks them, stored, recorded).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::event::{self, Good};
use super::iglu::Registry;
use super::origin::{Origin, post_items};
use super::record::Recorder;
pub use super::store::Totals;
use super::store::{Store, Stored, StoredJson, newest_first};
use super::webhook;
use snowplow_relay_tracker::protocol::{PAYLOAD_DATA_FIELDS, shorten};

/// The real collector's default body limit (`collector.streams.maxBytes` aside): 2 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How many events (good and bad together) are kept by default.
pub const DEFAULT_MAX_EVENTS: usize = 100_000;

/// How many bytes of stored events (their JSON) are kept by default.
pub const DEFAULT_MAX_STORE_BYTES: usize = 256 * 1024 * 1024;

/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// A transparent 1×1 GIF, the answer to a GET.
pub(super) const PIXEL: &[u8] = &[
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
    /// Time for a request body to arrive, whole, once it may be read (see
    /// [`CollectorOptions::budget_wait`]).
    pub body_timeout: Duration,
    /// Static Iglu registries (`DIR/schemas/VENDOR/NAME/jsonschema/M-R-A`) searched before
    /// the built-in Iglu Central.
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

    /// Time a request waits for its share of the body budget before it is answered 503:
    /// three body timeouts, so a queue of bodies each taking its whole time drains first.
    pub(super) fn budget_wait(&self) -> Duration {
        3 * self.body_timeout
    }
}

/// The local collector; clone it to share its store (e.g. to read it in a test).
#[derive(Clone)]
pub struct LocalCollector {
    pub(super) options: Arc<CollectorOptions>,
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) record: Option<Arc<Recorder>>,
    /// Bytes of request bodies being read now.
    pub(super) body_budget: Arc<Semaphore>,
    pub(super) registry: Registry,
}

impl LocalCollector {
    /// A collector with an empty store; opens the `record` file for appending.
    pub fn new(options: CollectorOptions) -> std::io::Result<LocalCollector> {
        let record = match &options.record {
            Some(path) => Some(Arc::new(Recorder::open(path)?)),
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
            .filter_map(|e| serde_json::from_slice(&e.json.whole()).ok())
            .collect()
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

    pub(super) fn receive_query(&self, query: &str, origin: &Origin) -> (usize, usize) {
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
        // The tp1 adapter keeps the query as it is: a parameter payload_data does not
        // list (a cache-buster `cb=…`) is listed in rawEvent and not checked.
        let known: Map<String, Value> = parameters
            .iter()
            .filter(|(name, _)| PAYLOAD_DATA_FIELDS.binary_search(&name.as_str()).is_ok())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let verdict = if errors.is_empty() {
            event::check(&known, &self.registry, origin.arrival())
        } else {
            Err(errors)
        };
        self.store(vec![(Value::Object(parameters), verdict)], origin)
    }

    /// A request to an adapter this collector does not implement: one bad event naming
    /// it (answered 200, as the collector takes any `/{vendor}/{version}`; a 404 would
    /// make a tracker retry it forever).
    pub(super) fn receive_unsupported(&self, raw: &[u8], origin: &Origin) -> (usize, usize) {
        let raw = String::from_utf8_lossy(&raw[..raw.len().min(1024)]).into_owned();
        let error = format!(
            "no adapter for {}/{} in this collector: it implements com.snowplowanalytics.snowplow tp1 and tp2 only (docs/collector.md)",
            shorten(&origin.vendor),
            shorten(&origin.version)
        );
        self.store(vec![(Value::from(raw), Err(vec![error]))], origin)
    }

    /// The Iglu webhook ([`super::webhook`]): its events checked as tracker events; a
    /// request enrich's Iglu adapter refuses is one bad event with its reason.
    pub(super) fn receive_iglu(
        &self,
        query: &str,
        body: Option<&[u8]>,
        origin: &Origin,
    ) -> (usize, usize) {
        let events = match webhook::events(query, body, origin.content_type.as_deref()) {
            Ok(events) => events
                .into_iter()
                .map(|parameters| {
                    let verdict = event::check(&parameters, &self.registry, origin.arrival());
                    (Value::Object(parameters), verdict)
                })
                .collect(),
            Err(error) => {
                let raw = body.unwrap_or(query.as_bytes());
                let raw = String::from_utf8_lossy(&raw[..raw.len().min(1024)]).into_owned();
                vec![(Value::from(raw), Err(vec![error]))]
            }
        };
        self.store(events, origin)
    }

    pub(super) fn receive_post(&self, body: &[u8], origin: &Origin) -> (usize, usize) {
        let text = event::with_lone_surrogates_replaced(body);
        let items = match origin.content_type.as_deref() {
            Some(content_type) if is_json_content_type(content_type) => post_items(&text),
            other => Err(vec![format!(
                "Content-Type {} is not application/json (with or without charset=utf-8), as enrich requires",
                other.map_or_else(|| "(none)".to_owned(), |c| format!("{:?}", shorten(c)))
            )]),
        };
        match items {
            // Each item parsed again as it is checked and stored, a chunk at a time: a
            // body's events are never all built at once.
            Ok(items) => self.store(
                items.into_iter().map(|item| {
                    let parameters: Map<String, Value> =
                        serde_json::from_str(item.get()).unwrap_or_default();
                    let verdict = event::check(&parameters, &self.registry, origin.arrival());
                    (Value::Object(parameters), verdict)
                }),
                origin,
            ),
            Err(errors) => {
                let raw = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
                self.store([(Value::from(raw), Err(errors))], origin)
            }
        }
    }

    /// Stores `events` (each its parameters and verdict) with what their request adds:
    /// built a chunk at a time (about [`STORE_CHUNK_BYTES`] of JSON) outside the lock,
    /// then stored under it, so a request of many events never holds them all at once.
    fn store(
        &self,
        events: impl IntoIterator<Item = (Value, Result<Good, Vec<String>>)>,
        origin: &Origin,
    ) -> (usize, usize) {
        let (mut good, mut bad) = (0, 0);
        let shared_headers = origin.shared_headers();
        let marker = format!("\"{}\"", super::origin::headers_marker());
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut entries: Vec<(bool, Stored)> = Vec::new();
            let mut built = 0;
            for (parameters, verdict) in events.by_ref() {
                let (is_good, stored) =
                    self.entry(parameters, verdict, origin, &marker, &shared_headers);
                built += stored.held_bytes();
                entries.push((is_good, stored));
                if built >= STORE_CHUNK_BYTES {
                    break;
                }
            }
            let mut lines = Vec::new();
            {
                let mut store = self.store.lock().expect("store lock");
                for (is_good, mut stored) in entries {
                    store.totals.total += 1;
                    store.seq += 1;
                    stored.seq = store.seq;
                    store.bytes += stored.held_bytes();
                    if is_good {
                        good += 1;
                        store.totals.good += 1;
                        if self.record.is_some() {
                            lines.push(stored.json.whole());
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
                record.record(lines);
            }
        }
        (good, bad)
    }

    /// One event as stored: Micro's entry for it (good, or bad with its errors and its
    /// incomplete form), serialised, split around the request's shared headers.
    fn entry(
        &self,
        parameters: Value,
        verdict: Result<Good, Vec<String>>,
        origin: &Origin,
        marker: &str,
        shared_headers: &Bytes,
    ) -> (bool, Stored) {
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
                let incomplete = raw_event["parameters"]
                    .as_object()
                    .and_then(|parameters| {
                        event::incomplete(parameters, &self.registry, origin.arrival(), &errors)
                    })
                    .and_then(|event| serde_json::to_vec(&event).ok())
                    .map(Bytes::from);
                let entry = json!({
                    "collectorPayload": origin.collector_payload(),
                    "rawEvent": raw_event,
                    "errors": errors,
                });
                let stored = Stored {
                    incomplete,
                    ..Stored::default()
                };
                (false, entry, stored)
            }
        };
        let json = serde_json::to_vec(&entry).unwrap_or_default();
        let stored = Stored {
            json: StoredJson::split(json, marker.as_bytes(), shared_headers),
            vendor: origin.vendor.clone(),
            version: origin.version.clone(),
            ..stored
        };
        (is_good, stored)
    }
}

/// Bytes of stored events built outside the store's lock before they are stored.
const STORE_CHUNK_BYTES: usize = 1024 * 1024;

/// `application/json`, with or without `charset=utf-8` (any case, any spacing): the
/// content types enrich's tp2 adapter takes.
fn is_json_content_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';').map(str::trim);
    let mime = parts.next().unwrap_or_default();
    mime.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| {
            parameter.is_empty()
                || parameter
                    .replace(' ', "")
                    .eq_ignore_ascii_case("charset=utf-8")
        })
}
