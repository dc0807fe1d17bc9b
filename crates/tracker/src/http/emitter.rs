//! [`HttpEmitter`]: payloads straight to a collector, batched by count and bytes,
//! retried with backoff until the collector answers, split on 413, with the Python
//! emitter's `on_success` / `on_failure` hooks.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{Attempt, Client};
use super::settings::ClientSettings;
use crate::emit::{BoxFuture, Emit};
use crate::protocol::{Batch, BatchBuilder, Element, MAX_POST_BYTES, Method, ParseOptions};
use crate::retry::{Backoff, Retry};
use crate::{BoxError, Error, Payload};

/// Called with the number of events a request delivered.
pub type OnSuccess = Arc<dyn Fn(usize) + Send + Sync>;
/// Called with how many events of a batch were delivered and the payloads that were not
/// (refused for good by the collector, or given up at [`Emit::close`]).
pub type OnFailure = Arc<dyn Fn(usize, Vec<Payload>) + Send + Sync>;

/// Builds an [`HttpEmitter`]; every setting is the relay's `[collector]` key of the same
/// name and is checked the same way.
/// Builds an [`HttpEmitter`]; [`HttpEmitterBuilder::build`] checks the settings.
pub struct HttpEmitterBuilder {
    url: String,
    settings: ClientSettings,
    buffer_size: Option<usize>,
    byte_limit: Option<usize>,
    max_requests_in_flight: usize,
    close_timeout: Duration,
    give_up_after: Option<Duration>,
    slot_wait: Duration,
    backoff: Backoff,
    on_success: Option<OnSuccess>,
    on_failure: Option<OnFailure>,
}

/// How long a batch is retried before it goes to `on_failure`, unless set otherwise.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// How long [`Emit::emit`] waits for a request slot, unless set otherwise.
pub const DEFAULT_SLOT_WAIT: Duration = Duration::from_secs(5);

impl HttpEmitterBuilder {
    /// `get` or `post` (the default).
    pub fn method(mut self, method: Method) -> Self {
        self.settings.method = Some(method);
        self
    }

    /// Events per POST request (default 50; GET sends one per request).
    pub fn buffer_size(mut self, events: usize) -> Self {
        self.buffer_size = Some(events);
        self
    }

    /// Largest POST body or GET URL in bytes (default 1,000,000 for POST, 16,000 for
    /// GET; at most 1,048,576 for POST: collectors turn larger bodies into bad rows).
    pub fn byte_limit(mut self, bytes: usize) -> Self {
        self.byte_limit = Some(bytes);
        self
    }

    /// Requests on the wire at once (default 16): also how many batches are held.
    pub fn max_requests_in_flight(mut self, requests: usize) -> Self {
        self.max_requests_in_flight = requests.max(1);
        self
    }

    /// Time allowed per request (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = Some(timeout);
        self
    }

    /// Retry delays: capped exponential with jitter (default 0.5 s doubling to 30 s).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long [`Emit::close`] keeps retrying before it gives the rest to `on_failure`
    /// (default 10 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Hands a batch the collector has not accepted within `time` (retries included) to
    /// `on_failure` instead of retrying on (default [`DEFAULT_GIVE_UP_AFTER`], 30 s).
    pub fn give_up_after(mut self, time: Duration) -> Self {
        self.give_up_after = Some(time);
        self
    }

    /// Retries every batch until the collector answers or [`Emit::close`] gives up: with
    /// a collector down, [`Emit::emit`] then waits as long as it is down once every slot
    /// is taken (bounded only by [`HttpEmitterBuilder::slot_wait`]).
    pub fn retry_until_close(mut self) -> Self {
        self.give_up_after = None;
        self
    }

    /// How long [`Emit::emit`] waits for a free request slot when every one holds a
    /// batch being retried (default [`DEFAULT_SLOT_WAIT`], 5 s); after that the batch
    /// goes to `on_failure` unsent, so a caller (a web handler, say) never waits longer
    /// on a collector that is down.
    pub fn slot_wait(mut self, time: Duration) -> Self {
        self.slot_wait = time;
        self
    }

    /// Sends `SP-Anonymous: *`.
    pub fn anonymous(mut self, anonymous: bool) -> Self {
        self.settings.anonymous = anonymous;
        self
    }

    /// Statuses that are never retried (default 400, 401, 403, 410, 422).
    pub fn no_retry_statuses(mut self, statuses: Vec<u16>) -> Self {
        self.settings.no_retry_statuses = statuses;
        self
    }

    /// TLS and proxy settings (extra CA, client certificate, proxy), and the request URL
    /// (for a POST path of its own), as [`ClientSettings`] holds them; the method, limits
    /// and timeout set on this builder win.
    pub fn client_settings(mut self, settings: ClientSettings) -> Self {
        let keep = std::mem::replace(&mut self.settings, settings);
        self.settings.method = keep.method.or(self.settings.method);
        self.settings.request_timeout = keep.request_timeout.or(self.settings.request_timeout);
        self.settings.anonymous |= keep.anonymous;
        self
    }

    /// The `on_success(count)` hook.
    pub fn on_success(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_success = Some(Arc::new(hook));
        self
    }

    /// The `on_failure(sent, unsent)` hook.
    pub fn on_failure(
        mut self,
        hook: impl Fn(usize, Vec<Payload>) + Send + Sync + 'static,
    ) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(mut self) -> Result<HttpEmitter, Error> {
        let bad = |reason: String| Error::Collector {
            reason,
            source: None,
        };
        let failed = |reason: &str, source: BoxError| Error::Collector {
            reason: reason.to_owned(),
            source: Some(source),
        };
        let base = url::Url::parse(&self.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                bad("the collector URL must be http:// or https:// with a host".into())
            })?;
        let method = self.settings.method.unwrap_or(Method::Post);
        let path = match method {
            Method::Get => "/i",
            Method::Post => "/com.snowplowanalytics.snowplow/tp2",
        };
        if self.settings.url.is_none() {
            let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
            self.settings.url = Some(
                url::Url::parse(&joined)
                    .map_err(|e| failed("the collector URL and path", Box::new(e)))?,
            );
        }
        let buffer_size = match method {
            Method::Get => 1,
            Method::Post => self.buffer_size.unwrap_or(50),
        };
        let byte_limit = match method {
            Method::Get => self.byte_limit.unwrap_or(16_000),
            Method::Post => self.byte_limit.unwrap_or(1_000_000),
        };
        if method == Method::Post && byte_limit > MAX_POST_BYTES {
            return Err(bad(format!(
                "byte_limit: at most {MAX_POST_BYTES} bytes for POST (collectors turn larger \
                 bodies into bad rows)"
            )));
        }
        let buffer_size =
            NonZeroUsize::new(buffer_size).ok_or_else(|| bad("buffer_size: at least 1".into()))?;
        let byte_limit = NonZeroUsize::new(byte_limit)
            .filter(|limit| limit.get() >= 1024)
            .ok_or_else(|| bad("byte_limit: at least 1024 bytes".into()))?;
        self.settings.byte_limit = Some(byte_limit);
        self.settings.max_idle_connections = self.max_requests_in_flight;
        let client =
            Client::new(&self.settings).map_err(|e| failed(&e.to_string(), Box::new(e)))?;
        Ok(HttpEmitter {
            inner: Arc::new(Inner {
                client,
                backoff: self.backoff,
                parse: ParseOptions::for_method(method, false),
                state: Mutex::new(State {
                    builder: BatchBuilder::new(method, buffer_size, byte_limit),
                    next_position: 0,
                    pending: HashMap::new(),
                    closed: false,
                }),
                tasks: TaskTracker::new(),
                in_flight: Arc::new(Semaphore::new(self.max_requests_in_flight)),
                give_up: CancellationToken::new(),
                close_timeout: self.close_timeout,
                give_up_after: self.give_up_after,
                slot_wait: self.slot_wait,
                on_success: self.on_success,
                on_failure: self.on_failure,
            }),
        })
    }
}

/// Sends payloads to a collector with the relay's HTTP emitter: POST batches of
/// `buffer_size` events within `byte_limit` (or one GET per event), retried with backoff
/// until the collector answers, split on 413, refused-for-good events handed to
/// `on_failure`. A batch is sent when full, on [`Emit::flush`] and on [`Emit::close`];
/// call `close().await` before dropping it (a drop with events still buffered hands them
/// to `on_failure` and logs a warning). At most `max_requests_in_flight` batches are held:
/// [`Emit::emit`] waits for a free slot, so memory stays bounded however many events are
/// tracked. With the collector down, nothing waits for ever: a batch is retried for at
/// most 30 s ([`HttpEmitterBuilder::give_up_after`]) and `emit` waits at most 5 s for a
/// slot ([`HttpEmitterBuilder::slot_wait`]); what is given up goes to `on_failure`.
///
/// ```no_run
/// use snowplow_relay_tracker::{Emit, HttpEmitter, PageView, Tracker};
/// # async fn example() -> Result<(), snowplow_relay_tracker::Error> {
/// let emitter = HttpEmitter::builder("http://127.0.0.1:9090")
///     .buffer_size(50)
///     .on_success(|n| println!("{n} delivered"))
///     .on_failure(|sent, unsent| eprintln!("{sent} sent, {} not", unsent.len()))
///     .build()?;
/// let tracker = Tracker::new("ns", "app", emitter, None);
/// tracker.track(PageView::new("https://example.com/"), None).await?;
/// tracker.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpEmitter {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    backoff: Backoff,
    parse: ParseOptions,
    state: Mutex<State>,
    tasks: TaskTracker,
    in_flight: Arc<Semaphore>,
    give_up: CancellationToken,
    close_timeout: Duration,
    give_up_after: Option<Duration>,
    slot_wait: Duration,
    on_success: Option<OnSuccess>,
    on_failure: Option<OnFailure>,
}

struct State {
    builder: BatchBuilder,
    next_position: u64,
    /// Every payload not yet resolved, by position.
    pending: HashMap<u64, Payload>,
    closed: bool,
}

impl HttpEmitter {
    /// A builder for the collector at `url` (e.g. `https://collector.example.com`).
    pub fn builder(url: impl Into<String>) -> HttpEmitterBuilder {
        HttpEmitterBuilder {
            url: url.into(),
            settings: ClientSettings {
                no_retry_statuses: vec![400, 401, 403, 410, 422],
                ..ClientSettings::default()
            },
            buffer_size: None,
            byte_limit: None,
            max_requests_in_flight: 16,
            close_timeout: Duration::from_secs(10),
            give_up_after: Some(DEFAULT_GIVE_UP_AFTER),
            slot_wait: DEFAULT_SLOT_WAIT,
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
            on_success: None,
            on_failure: None,
        }
    }

    /// Starts sending `batch` once a slot is free (waiting for one keeps memory bounded);
    /// when none frees within the slot wait, the batch goes to `on_failure` unsent.
    async fn spawn(&self, batch: Batch) {
        let slot = self.inner.in_flight.clone().acquire_owned();
        let permit = match tokio::time::timeout(self.inner.slot_wait, slot).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return,
            Err(_waited) => {
                tracing::warn!(
                    events = batch.len(),
                    "every request slot holds a batch the collector has not accepted; \
                     handing this one to on_failure"
                );
                self.inner.give_up_now(batch);
                return;
            }
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            inner.resolve(batch).await;
            drop(permit);
        });
    }
}

/// How one batch ended.
enum Sent {
    Delivered,
    /// 413 for several events: send each half.
    Split,
    Refused(String),
    /// `close` gave up, or `give_up_after` passed.
    GaveUp,
}

impl Inner {
    /// Hands `batch` to `on_failure` without sending it.
    fn give_up_now(&self, batch: Batch) {
        let unsent: Vec<Payload> = {
            let mut state = self.state.lock().expect("state lock");
            batch
                .positions
                .iter()
                .filter_map(|p| state.pending.remove(p))
                .collect()
        };
        if let Some(hook) = &self.on_failure {
            hook(0, unsent);
        }
    }

    /// Sends `batch` until the collector accepts or refuses it, or it is given up,
    /// retrying everything else with backoff.
    async fn send(&self, batch: &Batch) -> Sent {
        let mut retry = Retry::new(self.backoff);
        loop {
            let report = tokio::select! {
                report = self.client.attempt(batch) => report,
                () = self.give_up.cancelled() => return Sent::GaveUp,
            };
            match report.attempt {
                Attempt::Delivered => return Sent::Delivered,
                Attempt::Rejected { reason, .. } => return Sent::Refused(reason),
                Attempt::TooLarge => return Sent::Split,
                Attempt::Failed(error) => {
                    tracing::debug!(%error, events = batch.len(), "collector request failed; will retry");
                    if !retry.pause(&self.give_up).await {
                        return Sent::GaveUp;
                    }
                }
            }
        }
    }

    async fn resolve(&self, batch: Batch) {
        let positions = batch.positions.clone();
        let mut sent = 0;
        let mut unsent = Vec::new();
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let send = self.send(&part);
            let outcome = match self.give_up_after {
                Some(time) => tokio::time::timeout(time, send)
                    .await
                    .unwrap_or(Sent::GaveUp),
                None => send.await,
            };
            match outcome {
                Sent::Delivered => sent += part.len(),
                Sent::Split => {
                    let (first, second) = part.split();
                    parts.push(second);
                    parts.push(first);
                }
                Sent::Refused(reason) => {
                    tracing::warn!(events = part.len(), %reason, "collector refused events for good");
                    unsent.extend(part.positions);
                }
                Sent::GaveUp => unsent.extend(part.positions),
            }
        }
        let unsent_payloads: Vec<Payload> = {
            let mut state = self.state.lock().expect("state lock");
            for position in &positions {
                if !unsent.contains(position) {
                    state.pending.remove(position);
                }
            }
            unsent
                .iter()
                .filter_map(|p| state.pending.remove(p))
                .collect()
        };
        if unsent_payloads.is_empty() {
            if let Some(hook) = &self.on_success {
                hook(sent);
            }
        } else if let Some(hook) = &self.on_failure {
            hook(sent, unsent_payloads);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending: Vec<Payload> = match self.state.get_mut() {
            Ok(state) => state.pending.drain().map(|(_, p)| p).collect(),
            Err(_) => return,
        };
        if !pending.is_empty() {
            tracing::warn!(
                events = pending.len(),
                "HttpEmitter dropped with unsent events; call close().await before dropping it"
            );
            if let Some(hook) = &self.on_failure {
                hook(0, pending);
            }
        }
    }
}

impl Emit for HttpEmitter {
    fn emit(&self, payloads: Vec<Payload>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut ready = Vec::new();
            let mut too_large = None;
            {
                let mut state = self.inner.state.lock().expect("state lock");
                if state.closed {
                    return Err(Error::Closed);
                }
                for payload in payloads {
                    let raw = Bytes::from(payload.to_json());
                    let event = match Element::parse(raw, self.inner.parse) {
                        Ok(event) => event,
                        Err(bad) => {
                            too_large = Some(Error::Unsendable(bad.to_string()));
                            continue;
                        }
                    };
                    let position = state.next_position;
                    state.next_position += 1;
                    match state.builder.push(position, event) {
                        Ok(batch) => {
                            state.pending.insert(position, payload);
                            ready.extend(batch);
                        }
                        Err((_, error)) => {
                            too_large = Some(Error::Unsendable(format!(
                                "an event of {} bytes does not fit collector.byte_limit = {}",
                                error.needed, error.limit
                            )));
                        }
                    }
                }
            }
            for batch in ready {
                self.spawn(batch).await;
            }
            too_large.map_or(Ok(()), Err)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let batch = self.inner.state.lock().expect("state lock").builder.take();
            if let Some(batch) = batch {
                self.spawn(batch).await;
            }
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
            self.inner.tasks.reopen();
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.state.lock().expect("state lock").closed = true;
            let give_up = self.inner.give_up.clone();
            let deadline = self.inner.close_timeout;
            let timer = tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                give_up.cancel();
            });
            let result = self.flush().await;
            timer.abort();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let error = HttpEmitter::builder("ftp://x").build().err().unwrap();
        assert!(error.to_string().contains("http:// or https://"), "{error}");
        let error = HttpEmitter::builder("http://x")
            .byte_limit(2_000_000)
            .build()
            .err()
            .unwrap();
        assert!(error.to_string().contains("byte_limit"), "{error}");
    }

    /// A collector that is down, both ways (a black hole that takes connections and
    /// never answers, and a port nobody listens on): with the defaults' rules, no `emit`
    /// waits longer than the slot wait, and every event reaches `on_failure`. (On
    /// 582e716 `emit` waited for ever once every slot held a batch.) Paused time: the
    /// bounds are the emitter's own, not the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn a_collector_that_is_down_never_blocks_emit_for_ever() {
        let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hole = black_hole.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = black_hole.accept().await {
                held.push(stream);
            }
        });
        let nobody = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        for addr in [hole, nobody] {
            let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = failed.clone();
            let emitter = HttpEmitter::builder(format!("http://{addr}"))
                .buffer_size(1)
                .max_requests_in_flight(2)
                .request_timeout(Duration::from_secs(1))
                .on_failure(move |sent, unsent| {
                    assert_eq!(sent, 0);
                    counted.fetch_add(unsent.len(), std::sync::atomic::Ordering::SeqCst);
                })
                .build()
                .unwrap();
            for i in 0..6 {
                let mut payload = Payload::default();
                payload.add_str("e", "pv");
                payload.add_str("p", "pc");
                payload.add_str("tv", "t");
                payload.add_str("eid", &format!("e-{i}"));
                let started = tokio::time::Instant::now();
                tokio::time::timeout(Duration::from_secs(600), emitter.emit(vec![payload]))
                    .await
                    .unwrap_or_else(|_| panic!("emit still waits after 600 s ({addr})"))
                    .unwrap();
                assert!(
                    started.elapsed() <= DEFAULT_SLOT_WAIT,
                    "emit waited {:?} ({addr})",
                    started.elapsed()
                );
            }
            emitter.close().await.unwrap();
            assert_eq!(
                failed.load(std::sync::atomic::Ordering::SeqCst),
                6,
                "every event handed to on_failure ({addr})"
            );
        }
    }
}
