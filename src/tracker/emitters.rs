//! Where a tracker's payloads go: [`RedisEmitter`] (onto the list the relay reads) and
//! [`HttpEmitter`] (straight to a collector, with the relay's own HTTP emitter), behind
//! the [`Emit`] trait so that a tracker can hold several and users can add their own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Error, Payload};
use crate::config::{CollectorConfig, Config, Method};
use crate::emitter::{Batch, BatchBuilder, Outcome};
use crate::event::{Event as ParsedEvent, ParseOptions};
use crate::queue::Connection;

/// A boxed future, so that [`Emit`] can be used as `dyn Emit`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives a tracker's payloads.
pub trait Emit: Send + Sync {
    /// Takes payloads (several at once are sent together where the emitter can).
    fn emit(&self, payloads: Vec<Payload>) -> BoxFuture<'_, Result<(), Error>>;

    /// Sends whatever is buffered and waits until it is resolved. Default: nothing to do.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Flushes and stops taking payloads. Default: [`Emit::flush`].
    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.flush()
    }
}

/// Pushes payloads onto a Redis list, as the Python tracker's `RedisEmitter` does: one
/// JSON object per element, RPUSH onto `snowplow` unless told otherwise. Several payloads
/// go in one round trip (pipelined RPUSHes of up to 1,000 elements each).
///
/// ```no_run
/// use snowplow_relay::tracker::{RedisEmitter, Structured, Tracker};
/// # async fn example() -> Result<(), snowplow_relay::tracker::Error> {
/// let emitter = RedisEmitter::connect("redis://127.0.0.1:6379", "snowplow").await?;
/// let tracker = Tracker::new("ns", "app", emitter, None);
/// tracker.track(Structured::new("shop", "buy"), None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisEmitter {
    conn: Connection,
    key: String,
}

impl RedisEmitter {
    /// Elements per RPUSH when many payloads come at once.
    const CHUNK: usize = 1000;

    /// Pushes onto `key` over an existing connection.
    pub fn new(conn: Connection, key: impl Into<String>) -> RedisEmitter {
        RedisEmitter {
            conn,
            key: key.into(),
        }
    }

    /// Connects to one Redis server at `url` (`redis://…`; `rediss://` for TLS with the
    /// system's roots). For credentials files, client certificates or Redis Cluster use
    /// [`RedisEmitter::from_settings`].
    pub async fn connect(url: &str, key: impl Into<String>) -> Result<RedisEmitter, Error> {
        let mut config = Config::default();
        config.redis.url = url.to_owned();
        config.redis.key = key.into();
        config.collector.endpoint = Some("unused.invalid".into());
        let settings = config.validate().map_err(|e| Error::Redis(e.to_string()))?;
        Self::from_settings(&settings).await
    }

    /// Connects with the relay's own Redis settings (`[redis]`: URL, key, credentials,
    /// TLS, cluster), as `snowplow-relay track` does.
    pub async fn from_settings(settings: &crate::Valid) -> Result<RedisEmitter, Error> {
        let conn = crate::queue::open_connection(settings)
            .await
            .map_err(|e| Error::Redis(e.to_string()))?;
        Ok(RedisEmitter::new(conn, settings.redis.key.clone()))
    }
}

impl Emit for RedisEmitter {
    fn emit(&self, payloads: Vec<Payload>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if payloads.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for chunk in payloads.chunks(Self::CHUNK) {
                let elements: Vec<Vec<u8>> = chunk.iter().map(Payload::to_json).collect();
                pipe.rpush(&self.key, elements).ignore();
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| Error::Redis(e.to_string()))
        })
    }
}

/// Called with the number of events a request delivered.
pub type OnSuccess = Arc<dyn Fn(usize) + Send + Sync>;
/// Called with how many events of a batch were delivered and the payloads that were not
/// (refused for good by the collector, or given up at [`Emit::close`]).
pub type OnFailure = Arc<dyn Fn(usize, Vec<Payload>) + Send + Sync>;

/// Builds an [`HttpEmitter`]; every setting is the relay's `[collector]` key of the same
/// name and is checked the same way.
pub struct HttpEmitterBuilder {
    collector: CollectorConfig,
    close_timeout: Duration,
    give_up_after: Option<Duration>,
    on_success: Option<OnSuccess>,
    on_failure: Option<OnFailure>,
}

impl HttpEmitterBuilder {
    /// `get` or `post` (the default).
    pub fn method(mut self, method: Method) -> Self {
        self.collector.method = method;
        self
    }

    /// Events per POST request (default 10).
    pub fn buffer_size(mut self, events: usize) -> Self {
        self.collector.buffer_size = std::num::NonZeroUsize::new(events);
        self
    }

    /// Largest POST body or GET URL in bytes.
    pub fn byte_limit(mut self, bytes: usize) -> Self {
        self.collector.byte_limit = std::num::NonZeroUsize::new(bytes);
        self
    }

    /// Requests on the wire at once (default 16).
    pub fn max_requests_in_flight(mut self, requests: usize) -> Self {
        if let Some(n) = std::num::NonZeroUsize::new(requests) {
            self.collector.max_requests_in_flight = n;
        }
        self
    }

    /// Time allowed per request (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.collector.request_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// How long [`Emit::close`] keeps retrying before it gives the rest to `on_failure`
    /// (default 10 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Hands a batch the collector has not accepted within `time` (retries included) to
    /// `on_failure` instead of retrying on (default: retry until [`Emit::close`]).
    pub fn give_up_after(mut self, time: Duration) -> Self {
        self.give_up_after = Some(time);
        self
    }

    /// Sends `SP-Anonymous: *`.
    pub fn anonymous(mut self, anonymous: bool) -> Self {
        self.collector.anonymous = anonymous;
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

    /// Checks the settings (errors name the `collector.*` key) and builds the client.
    pub fn build(self) -> Result<HttpEmitter, Error> {
        let config = Config {
            collector: self.collector,
            ..Config::default()
        };
        let settings = config
            .validate()
            .map_err(|e| Error::Collector(e.to_string()))?;
        let emitter = crate::emitter::Emitter::new(
            &settings.collector,
            Arc::new(crate::metrics::Metrics::new()),
            Arc::new(crate::health::Health::new(
                Duration::from_secs(30),
                Duration::from_secs(45),
            )),
        )
        .map_err(|e| Error::Collector(e.to_string()))?;
        let method = settings.collector.method;
        Ok(HttpEmitter {
            inner: Arc::new(Inner {
                emitter,
                parse: ParseOptions::for_method(method, false),
                state: Mutex::new(State {
                    builder: BatchBuilder::new(
                        method,
                        settings.buffer_size(),
                        settings.byte_limit(),
                    ),
                    next_position: 0,
                    pending: HashMap::new(),
                    closed: false,
                }),
                tasks: TaskTracker::new(),
                in_flight: Arc::new(Semaphore::new(
                    settings.collector.max_requests_in_flight.get(),
                )),
                give_up: CancellationToken::new(),
                close_timeout: self.close_timeout,
                give_up_after: self.give_up_after,
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
/// tracked.
///
/// ```no_run
/// use snowplow_relay::tracker::{Emit, HttpEmitter, PageView, Tracker};
/// # async fn example() -> Result<(), snowplow_relay::tracker::Error> {
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
    emitter: Arc<crate::emitter::Emitter>,
    parse: ParseOptions,
    state: Mutex<State>,
    tasks: TaskTracker,
    in_flight: Arc<Semaphore>,
    give_up: CancellationToken,
    close_timeout: Duration,
    give_up_after: Option<Duration>,
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
        Self::builder_from(CollectorConfig {
            url: Some(url.into()),
            ..CollectorConfig::default()
        })
    }

    /// A builder starting from the relay's `[collector]` settings (URL, method, batching,
    /// TLS, proxy), as `snowplow-relay track --collector URL` uses.
    pub fn builder_from(collector: CollectorConfig) -> HttpEmitterBuilder {
        HttpEmitterBuilder {
            collector,
            close_timeout: Duration::from_secs(10),
            give_up_after: None,
            on_success: None,
            on_failure: None,
        }
    }

    /// Starts sending `batch` once a slot is free (waiting for one keeps memory bounded).
    async fn spawn(&self, batch: Batch) {
        let Ok(permit) = self.inner.in_flight.clone().acquire_owned().await else {
            return;
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            inner.resolve(batch).await;
            drop(permit);
        });
    }
}

impl Inner {
    async fn resolve(&self, batch: Batch) {
        let positions = batch.positions.clone();
        let mut sent = 0;
        let mut unsent = Vec::new();
        let mut parts = vec![batch];
        while let Some(part) = parts.pop() {
            let send = self.emitter.send(&part, &self.give_up);
            let outcome = match self.give_up_after {
                Some(time) => tokio::time::timeout(time, send)
                    .await
                    .unwrap_or(Outcome::Abandoned),
                None => send.await,
            };
            match outcome {
                Outcome::Delivered => sent += part.len(),
                Outcome::Split { .. } => {
                    let (first, second) = part.split();
                    parts.push(second);
                    parts.push(first);
                }
                Outcome::Rejected { status, reason, .. } => {
                    tracing::warn!(events = part.len(), status, %reason, "collector refused events for good");
                    unsent.extend(part.positions);
                }
                Outcome::Park { status, attempts } => {
                    // No retry list here: a batch failing alone goes back to the caller.
                    tracing::warn!(
                        events = part.len(),
                        status,
                        attempts,
                        "events keep failing while other requests succeed"
                    );
                    unsent.extend(part.positions);
                }
                Outcome::Abandoned => unsent.extend(part.positions),
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
                    let event = match ParsedEvent::parse(raw, self.inner.parse) {
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
    fn bad_settings_name_the_key() {
        let error = HttpEmitter::builder("ftp://x").build().err().unwrap();
        assert!(error.to_string().contains("collector.url"), "{error}");
    }
}
