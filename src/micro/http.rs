//! The local collector over HTTP: routing (the tracker protocol's endpoints, Micro's API,
//! CORS), request bodies read within their size, time and memory budget, and the
//! answers (`/micro/good|bad` streamed from the stored events' JSON).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::collector::{LocalCollector, PIXEL, Totals};
use super::event;
use super::origin::Origin;
use super::store::{Filters, Store, Stored, Summary, newest_first};
use crate::ops::listener::{Body, Limits, full};
use snowplow_relay_tracker::protocol::shorten;

impl LocalCollector {
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
        if path.starts_with("/micro/") {
            // Micro's API answers carry no CORS headers: no other web page in the
            // developer's browser may read or reset the store.
            return response;
        }
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
        if method == Method::OPTIONS && !path.starts_with("/micro/") {
            let response = Response::builder()
                .header("access-control-allow-headers", "Content-Type, SP-Anonymous")
                .header("access-control-allow-methods", "POST, GET, OPTIONS")
                .header("access-control-max-age", "3600")
                .body(full(""))
                .unwrap_or_else(|_| Response::new(full("")));
            return (response, 0, 0);
        }
        match (&method, path.as_str()) {
            // The pixel, and GET or HEAD on the tp1 and tp2 paths, as the collector routes
            // them (enrich's tp2 adapter takes a query without a body as one event).
            (
                &Method::GET | &Method::HEAD,
                "/i"
                | "/ice.png"
                | "/com.snowplowanalytics.snowplow/tp1"
                | "/com.snowplowanalytics.snowplow/tp2",
            ) => {
                let version = if path.ends_with("/tp2") { "tp2" } else { "tp1" };
                let origin = Origin::of(&request, version, None);
                let (good, bad, origin) = self
                    .off_the_runtime(move |collector| {
                        let (good, bad) = collector.receive_query(&query, &origin);
                        (good, bad, origin)
                    })
                    .await;
                let mut response = Response::builder()
                    .header("content-type", "image/gif")
                    // The stream collector's: a pixel is never taken from a cache.
                    .header("cache-control", "no-cache, no-store, must-revalidate");
                if let Some(cookie) = origin.set_cookie() {
                    response = response.header("set-cookie", cookie);
                }
                let response = response
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
                let (good, bad, origin) = self
                    .off_the_runtime(move |collector| {
                        let (good, bad) = collector.receive_post(&body, &origin);
                        (good, bad, origin)
                    })
                    .await;
                let mut response = text(StatusCode::OK, "ok");
                if let Some(cookie) = origin.set_cookie()
                    && let Ok(cookie) = hyper::header::HeaderValue::from_str(&cookie)
                {
                    response.headers_mut().insert("set-cookie", cookie);
                }
                (response, good, bad)
            }
            // The stream collector 3.x's answer (the 2.x collector's was `OK`).
            (&Method::GET, "/health") => (text(StatusCode::OK, "ok"), 0, 0),
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
            // Micro 3's list of enriched events, good and incomplete (a bad event
            // enriched all the same, with its `failure` entity), newest first, flattened
            // as the Analytics SDK's lossy JSON.
            (&Method::GET, "/micro/events") => {
                let mut listed: Vec<Arc<Stored>> = {
                    let store = self.store.lock().expect("store lock");
                    store
                        .good
                        .iter()
                        .chain(store.bad.iter().filter(|b| b.incomplete.is_some()))
                        .cloned()
                        .collect()
                };
                listed.sort_by_key(|stored| std::cmp::Reverse(stored.seq));
                let events = self.off_the_runtime(move |_| events_listed(&listed)).await;
                (self.json(&events), 0, 0)
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
            // The Iglu webhook: self-describing data by GET or POST.
            (&Method::GET | &Method::HEAD | &Method::POST, "/com.snowplowanalytics.iglu/v1") => {
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let mut origin = Origin::of(&request, "v1", content_type);
                origin.vendor = "com.snowplowanalytics.iglu".to_owned();
                let (body, _share) = if method == Method::POST {
                    match self.read_body(request).await {
                        Ok((body, share)) => (Some(body), Some(share)),
                        Err(response) => return (response, 0, 0),
                    }
                } else {
                    (None, None)
                };
                let (good, bad) = self
                    .off_the_runtime(move |collector| {
                        collector.receive_iglu(&query, body.as_deref(), &origin)
                    })
                    .await;
                (text(StatusCode::OK, "ok"), good, bad)
            }
            // Any other `/{vendor}/{version}`: the collector takes it; enrich would pick
            // an adapter. One bad event naming it, answered 200 (a 404 is retried).
            (&Method::GET | &Method::HEAD | &Method::POST, adapter)
                if !adapter.starts_with("/micro/")
                    && adapter.split('/').skip(1).filter(|s| !s.is_empty()).count() == 2
                    && adapter.matches('/').count() == 2 =>
            {
                let mut origin = Origin::of(&request, "tp2", None);
                let mut segments = adapter.trim_start_matches('/').split('/');
                origin.vendor = segments.next().unwrap_or_default().to_owned();
                origin.version = segments.next().unwrap_or_default().to_owned();
                let (raw, _share) = if method == Method::POST {
                    match self.read_body(request).await {
                        Ok((body, share)) => (body, Some(share)),
                        Err(response) => return (response, 0, 0),
                    }
                } else {
                    (Bytes::from(query.clone()), None)
                };
                let (good, bad) = self
                    .off_the_runtime(move |collector| collector.receive_unsupported(&raw, &origin))
                    .await;
                (text(StatusCode::OK, "ok"), good, bad)
            }
            _ => (
                text(
                    StatusCode::NOT_FOUND,
                    "not found: GET /i, POST /com.snowplowanalytics.snowplow/tp2, /micro/events, /micro/all, /micro/good, /micro/bad, /micro/reset, /micro/iglu/…, /micro/ui, /health\n",
                ),
                0,
                0,
            ),
        }
    }

    /// Reads a body within the size limit, the time limit and the budget of body bytes
    /// held at once: a body takes its share of the budget when its first bytes arrive (a
    /// client that declares a big body and sends nothing holds nothing; one that sends a
    /// byte and stalls holds its share for the body's time limit at most), waiting for it
    /// when the budget is spent (503 past [`CollectorOptions::budget_wait`]; that wait
    /// does not count against the body's time limit). Returns the body with its share, which the
    /// caller holds while it works on the body.
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
        let timed_out = || {
            text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s\n",
                    self.options.body_timeout.as_secs()
                ),
            )
        };
        let busy = |wait: Duration| {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "busy: no room to read more request bodies within {} s; retry\n",
                    wait.as_secs()
                ),
            )
        };
        let budget_wait = self.options.budget_wait();
        let mut share = self
            .body_budget
            .try_acquire_many(0)
            .map_err(|_| busy(budget_wait))?;
        let mut deadline = tokio::time::Instant::now() + self.options.body_timeout;
        // The pieces as hyper hands them over, joined once at the end.
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut collected = 0;
        let mut body = request.into_body();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the body: {e}\n"),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if collected + data.len() > limit {
                return Err(too_large());
            }
            if !data.is_empty() && collected == 0 {
                // The body's whole share (its declared length, else the limit) when its
                // first bytes arrive: a share taken piece by piece would let bodies that
                // each hold part of the budget wait for one another forever.
                let whole = declared.map_or(limit, |n| n as usize).max(1) as u32;
                let asked = tokio::time::Instant::now();
                let more = self.body_budget.acquire_many(whole);
                match tokio::time::timeout(budget_wait, more).await {
                    Ok(Ok(more)) => share.merge(more),
                    _ => return Err(busy(budget_wait)),
                }
                // Waiting for the budget is the collector being busy, not the client slow.
                deadline += asked.elapsed();
            }
            collected += data.len();
            pieces.push(data);
        }
        let body = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.pop().unwrap_or_default(),
            _ => Bytes::from(pieces.concat()),
        };
        Ok((body, share))
    }

    /// Runs `work` (checking and storing events: validation may take a while) on
    /// tokio's blocking threads, so `/health` and the API answer meanwhile.
    async fn off_the_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(LocalCollector) -> T + Send + 'static,
    ) -> T {
        let collector = self.clone();
        match tokio::task::spawn_blocking(move || work(collector)).await {
            Ok(done) => done,
            Err(failed) => std::panic::resume_unwind(failed.into_panic()),
        }
    }

    fn json(&self, value: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(serde_json::to_vec(value).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(full("")))
    }
}

/// `/micro/events`' list: each event's enriched form, flattened.
fn events_listed(listed: &[Arc<Stored>]) -> Vec<Value> {
    listed
        .iter()
        .filter_map(|stored| match &stored.incomplete {
            Some(incomplete) => serde_json::from_slice::<Value>(incomplete).ok(),
            None => serde_json::from_slice::<Value>(&stored.json.whole())
                .ok()
                .and_then(|mut entry| entry.get_mut("event").map(Value::take)),
        })
        .filter_map(|enriched| match enriched {
            Value::Object(enriched) => Some(Value::Object(event::flattened(&enriched))),
            _ => None,
        })
        .collect()
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

/// A JSON array of stored events, streamed one piece of an event's JSON at a time (no
/// copy: the pieces are the stored ones, the request's shared headers among them).
struct JsonArray {
    events: std::vec::IntoIter<Arc<Stored>>,
    /// Frames to send before the next event, last first.
    pending: Vec<Bytes>,
    started: bool,
    closed: bool,
}

impl JsonArray {
    fn new(events: Vec<Arc<Stored>>) -> JsonArray {
        JsonArray {
            events: events.into_iter(),
            pending: Vec::new(),
            started: false,
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
        while let Some(piece) = this.pending.pop() {
            if !piece.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
        }
        if this.closed {
            return Poll::Ready(None);
        }
        let opening = if this.started { "," } else { "[" };
        this.started = true;
        let frame = match this.events.next() {
            Some(event) => {
                let [head, shared, tail] = event.json.pieces();
                this.pending = vec![tail, shared, head];
                Bytes::from_static(opening.as_bytes())
            }
            None => {
                this.closed = true;
                Bytes::from_static(if opening == "[" { b"[]" } else { b"]" })
            }
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}
