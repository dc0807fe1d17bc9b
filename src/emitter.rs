//! The collector side: grouping events into requests (by count and by bytes), sending them
//! over keep-alive connections, and deciding what a failed request means.
//!
//! Two questions are kept apart, as Snowplow's trackers and Vector keep them:
//! - *should* a response be retried: [`classify`] (2xx accepted; the configured
//!   no-retry statuses rejected; everything else, timeouts and connection errors retried);
//! - *when*: [`Backoff`] (capped exponential, with jitter; `crate::retry`).
//!
//! [`Emitter::send`] retries one batch until it is accepted, rejected, or the caller gives
//! up (shutdown deadline); it never drops a batch on its own. While any request is
//! failing, [`Emitter::healthy`] reports `false`, which the worker uses to stop claiming
//! more events: the backlog stays in Redis.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CollectorConfig, Method};
use crate::event::{self, Event, POST_BODY_OVERHEAD};
use crate::health::Health;
use crate::metrics::{DeadReason, Metrics};
pub use crate::retry::Backoff;
use crate::retry::Retry;

/// The `User-Agent` the relay sends.
pub const USER_AGENT: &str = concat!("snowplow-relay/", env!("CARGO_PKG_VERSION"));

/// What the collector's answer means for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// 2xx: the events are delivered.
    Accepted,
    /// A no-retry status: the events go to the dead-letter list.
    Rejected,
    /// Anything else: try again later.
    Retry,
}

/// Classifies an HTTP status (retry decisions only; see [`Backoff`] for timing).
pub fn classify(status: u16, no_retry: &[u16]) -> Disposition {
    if (200..300).contains(&status) {
        Disposition::Accepted
    } else if no_retry.contains(&status) {
        Disposition::Rejected
    } else {
        Disposition::Retry
    }
}

/// The collector's retry backoff.
pub fn backoff_of(config: &CollectorConfig) -> Backoff {
    Backoff {
        initial: Duration::from_millis(config.retry_initial_backoff_ms),
        max: Duration::from_millis(config.retry_max_backoff_ms),
    }
}

/// Events bound for one request, with their positions in the claim order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Claim positions (see the worker), parallel to `events`.
    pub positions: Vec<u64>,
    /// The events.
    pub events: Vec<Event>,
    /// Size of the POST body these events make.
    pub body_bytes: usize,
}

impl Batch {
    /// A batch of one event.
    pub fn single(position: u64, event: Event) -> Batch {
        Batch {
            body_bytes: POST_BODY_OVERHEAD + event.post_item_len(),
            positions: vec![position],
            events: vec![event],
        }
    }

    /// Splits the batch into two halves (first half first), each with its own body size.
    /// A batch of one event stays whole in the first half.
    pub fn split(mut self) -> (Batch, Batch) {
        let middle = self.events.len().div_ceil(2);
        let events = self.events.split_off(middle);
        let positions = self.positions.split_off(middle);
        let body_bytes = |events: &[Event]| {
            POST_BODY_OVERHEAD
                + events.iter().map(Event::post_item_len).sum::<usize>()
                + events.len().saturating_sub(1)
        };
        let first = Batch {
            body_bytes: body_bytes(&self.events),
            positions: self.positions,
            events: self.events,
        };
        let second = Batch {
            body_bytes: body_bytes(&events),
            positions,
            events,
        };
        (first, second)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Why an event cannot join any batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event needs {needed} bytes in a request, more than collector.byte_limit ({limit})")]
pub struct TooLargeForRequest {
    /// Bytes the event alone needs.
    pub needed: usize,
    /// The configured limit.
    pub limit: usize,
}

/// Fills batches up to `buffer_size` events and `byte_limit` bytes.
#[derive(Debug)]
pub struct BatchBuilder {
    max_events: usize,
    byte_limit: usize,
    method: Method,
    current: Batch,
}

impl BatchBuilder {
    /// A builder for `method` with the given limits.
    pub fn new(method: Method, max_events: NonZeroUsize, byte_limit: NonZeroUsize) -> Self {
        BatchBuilder {
            max_events: max_events.get(),
            byte_limit: byte_limit.get(),
            method,
            current: Batch::default(),
        }
    }

    /// Adds an event. Returns a batch that is ready to send, if adding this one filled it
    /// or would have overflowed it.
    pub fn push(
        &mut self,
        position: u64,
        event: Event,
    ) -> Result<Option<Batch>, (Event, TooLargeForRequest)> {
        let item = match self.method {
            Method::Post => event.post_item_len(),
            // GET checks the real URL length at send time; one event per request.
            Method::Get => 0,
        };
        if POST_BODY_OVERHEAD + item > self.byte_limit {
            let error = TooLargeForRequest {
                needed: POST_BODY_OVERHEAD + item,
                limit: self.byte_limit,
            };
            return Err((event, error));
        }
        // Close the current batch first if this event would push it over the limit.
        let mut ready = None;
        if !self.current.is_empty() && self.current.body_bytes + 1 + item > self.byte_limit {
            ready = self.take();
        }
        self.current.body_bytes = if self.current.is_empty() {
            POST_BODY_OVERHEAD + item
        } else {
            self.current.body_bytes + 1 + item
        };
        self.current.positions.push(position);
        self.current.events.push(event);
        if self.current.len() >= self.max_events {
            // A batch closed by bytes leaves one event behind, which fills a batch only
            // when max_events is 1; but then the batch was empty and nothing was closed.
            debug_assert!(ready.is_none());
            return Ok(self.take());
        }
        Ok(ready)
    }

    /// How many events the batch being filled holds.
    pub fn pending(&self) -> usize {
        self.current.len()
    }

    /// Takes the batch being filled, if it holds anything.
    pub fn take(&mut self) -> Option<Batch> {
        (!self.current.is_empty()).then(|| std::mem::take(&mut self.current))
    }
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The collector accepted it (2xx).
    Delivered,
    /// The collector refused it for good, or it cannot be sent at all.
    Rejected {
        /// The collector's status, if it answered.
        status: Option<u16>,
        /// What to store in the dead-letter entry.
        reason: String,
        /// The metrics' reason label.
        kind: DeadReason,
    },
    /// The collector answered 413 to the batch as a whole: send each half on its own.
    Split {
        /// The status that made the batch split.
        status: Option<u16>,
    },
    /// The batch kept failing while other requests to the collector succeeded: its
    /// content, not an outage, is the likely cause. It leaves the relay's window (to the
    /// retry list in Redis) so that it holds back no other event; each of its events is
    /// then retried on its own.
    Park {
        /// The last status, if the collector answered.
        status: Option<u16>,
        /// Attempts made.
        attempts: u32,
    },
    /// The caller gave up (shutdown deadline) before it was accepted.
    Abandoned,
}

/// What one attempt to send a batch came to.
#[derive(Debug)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Refused for good (a no-retry status, 413 for a single event, or unsendable).
    Rejected {
        /// The collector's status, if it answered.
        status: Option<u16>,
        /// What to store in the dead-letter entry.
        reason: String,
        /// The metrics' reason label.
        kind: DeadReason,
    },
    /// 413 for a batch of several events.
    TooLarge,
    /// Worth retrying: a transient status, a redirect, a timeout or a connection error.
    Failed(AttemptError),
}

/// Why one attempt failed. Its `Display` never holds the request URL's query (event
/// data) nor credentials.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A status that is retried.
    #[error("collector answered {0}")]
    Status(u16),
    /// A redirect, which is never followed.
    #[error(
        "collector answered {status} redirecting to {location}; redirects are not followed \
         (a POST would be replayed as a GET without its events): point collector.url at \
         the final address"
    )]
    Redirect {
        /// The 3xx status.
        status: u16,
        /// The masked `Location`, without its query.
        location: String,
    },
    /// The error and its causes (e.g. the certificate problem), without the URL.
    #[error("request failed: {0}")]
    Transport(String),
}

impl AttemptError {
    /// The collector's status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status(status) | AttemptError::Redirect { status, .. } => Some(*status),
            AttemptError::Transport(_) => None,
        }
    }
}

/// Takes a batch off the failing count (and the batches failing alone) when it ends,
/// however it ends.
struct FailingBatch<'a> {
    emitter: &'a Emitter,
    id: u64,
    counted: bool,
    alone: bool,
    /// It ended delivered (else rejected, parked, split or abandoned).
    delivered: bool,
}

impl FailingBatch<'_> {
    /// The batch failed while other requests succeeded: it counts as failing alone (for
    /// liveness) from its first such failure.
    fn failing_alone(&mut self) {
        if !self.alone {
            self.alone = true;
            self.emitter.alone_changed(|alone| {
                alone.insert(self.id, now_millis());
            });
        }
    }
}

impl Drop for FailingBatch<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.emitter.failing_batches.fetch_sub(1, Ordering::Relaxed);
            self.emitter.update_health(if self.delivered {
                Change::Succeeded
            } else {
                Change::Ended
            });
        }
        if self.alone {
            self.emitter.alone_changed(|alone| {
                alone.remove(&self.id);
            });
        }
    }
}

/// How much of a collector's response body is read (to let the connection be reused);
/// a larger body is dropped with its connection.
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// Sends batches to the collector.
pub struct Emitter {
    client: reqwest::Client,
    url: Url,
    method: Method,
    byte_limit: usize,
    no_retry: Vec<u16>,
    /// Changed while running by [`Emitter::set_retry`] (SIGHUP).
    backoff: std::sync::RwLock<Backoff>,
    park_after_failures: std::sync::atomic::AtomicU32,
    healthy: watch::Sender<bool>,
    /// Batches whose last attempt failed. One failing batch alone says nothing about the
    /// collector (its content may be the problem); two or more mean it is failing.
    failing_batches: AtomicUsize,
    /// Requests the collector accepted so far: a batch that fails while this grows is
    /// failing on its own, not because of an outage.
    successes: AtomicU64,
    /// When a request last succeeded (Unix milliseconds).
    last_success_ms: AtomicU64,
    /// Batches failing while other requests succeed: since when, by batch id.
    alone: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    batch_ids: AtomicU64,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Emitter {
    /// Builds the HTTP client: keep-alive pool sized to the requests in flight, request
    /// timeout, no cookie store, no redirects, an honest `User-Agent`, and `SP-Anonymous`
    /// if asked.
    pub fn new(
        config: &CollectorConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Arc<Emitter>, crate::Error> {
        // reqwest is built without a bundled crypto provider; use ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = config.request_url()?;
        let mut headers = HeaderMap::new();
        if config.anonymous {
            headers.insert("SP-Anonymous", HeaderValue::from_static("*"));
        }
        let https = url.scheme() == "https";
        let builder = tls_and_proxy(reqwest::Client::builder(), config, https)?;
        let client = builder
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .timeout(config.request_timeout())
            .connect_timeout(config.request_timeout())
            .pool_max_idle_per_host(config.max_requests_in_flight.get())
            .tcp_nodelay(true)
            // A followed 301/302 turns a POST into a GET without its body, which a
            // collector answers 200: the events would count as delivered and be lost.
            .redirect(reqwest::redirect::Policy::none())
            // An https collector is never reached over plain http.
            .https_only(https)
            .build()
            .map_err(|e| {
                if https {
                    crate::Error::TrustStore(error_chain(&e))
                } else {
                    crate::Error::HttpClient(e.without_url())
                }
            })?;
        Ok(Arc::new(Emitter {
            client,
            url,
            method: config.method,
            byte_limit: config.byte_limit.map_or(usize::MAX, NonZeroUsize::get),
            no_retry: config.no_retry_statuses.clone(),
            backoff: std::sync::RwLock::new(backoff_of(config)),
            park_after_failures: config.park_after_failures.into(),
            healthy: watch::channel(true).0,
            failing_batches: AtomicUsize::new(0),
            successes: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
            alone: Default::default(),
            batch_ids: AtomicU64::new(0),
            metrics,
            health,
        }))
    }

    /// Applies new retry settings (`retry_*_backoff_ms`, `park_after_failures`) to every
    /// request from its next attempt on.
    pub fn set_retry(&self, config: &CollectorConfig) {
        if let Ok(mut backoff) = self.backoff.write() {
            *backoff = backoff_of(config);
        }
        self.park_after_failures
            .store(config.park_after_failures, Ordering::Relaxed);
    }

    /// The collector's retry backoff now.
    pub fn backoff(&self) -> Backoff {
        self.backoff.read().map_or(
            Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
            |backoff| *backoff,
        )
    }

    /// Where requests go (may hold credentials: log [`Emitter::shown_url`] instead).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Where requests go, fit for a log line: credentials masked.
    pub fn shown_url(&self) -> String {
        crate::config::mask_url(self.url.as_str())
    }

    /// Follows whether the collector currently accepts requests: `false` while two or
    /// more batches are failing. A single failing batch keeps it `true`, so that other
    /// traffic can show whether the batch or the collector is at fault.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Batches whose last attempt failed.
    pub fn failing_batches(&self) -> usize {
        self.failing_batches.load(Ordering::Relaxed)
    }

    /// Requests the collector accepted so far.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Changes the set of batches failing alone and tells [`Health`] the oldest.
    fn alone_changed(&self, change: impl FnOnce(&mut std::collections::BTreeMap<u64, u64>)) {
        if let Ok(mut alone) = self.alone.lock() {
            change(&mut alone);
            self.health
                .batch_failing_alone_since(alone.values().min().copied());
        }
    }

    fn update_health(&self, change: Change<'_>) {
        let healthy = self.failing_batches.load(Ordering::Relaxed) < 2;
        self.health.set_collector_failing(!healthy);
        let changed = self.healthy.send_if_modified(|current| {
            let changed = *current != healthy;
            *current = healthy;
            changed
        });
        if !changed {
            return;
        }
        match change {
            Change::Failed(error) => tracing::warn!(
                %error,
                collector = %self.shown_url(),
                "collector requests are failing; claiming paused (one probe batch at a time), \
                 retrying with backoff"
            ),
            Change::Succeeded => {
                tracing::info!("collector requests succeed again; claiming resumed")
            }
            // Failing batches parked, dead-lettered or abandoned: the collector has not
            // been seen to recover.
            Change::Ended => tracing::debug!("fewer than two batches are failing now"),
        }
    }

    /// Whether the collector is seen accepting requests: no batch of the window is
    /// failing, and a request succeeded within `within`.
    pub fn accepting(&self, within: Duration) -> bool {
        self.failing_batches.load(Ordering::Relaxed) == 0
            && now_millis().saturating_sub(self.last_success_ms.load(Ordering::Relaxed))
                <= within.as_millis() as u64
    }

    /// Sends one batch, retrying transient failures with backoff, until the collector
    /// accepts or rejects it, it has to be split (413) or parked, or `give_up` is
    /// cancelled.
    ///
    /// A batch is parked once it failed `collector.park_after_failures` times while other
    /// requests succeeded since its first attempt: its content, not an outage, is the
    /// likely cause. A collector that fails every request is an outage: the batch is
    /// retried for as long as it takes, and neither parked nor dead-lettered.
    pub async fn send(&self, batch: &Batch, give_up: &CancellationToken) -> Outcome {
        let mut retry = Retry::new(self.backoff());
        // Counts this batch among the failing ones from its first failure to its end.
        let mut failing = FailingBatch {
            emitter: self,
            id: self.batch_ids.fetch_add(1, Ordering::Relaxed),
            counted: false,
            alone: false,
            delivered: false,
        };
        let successes_at_start = self.successes();
        loop {
            let attempt = tokio::select! {
                attempt = self.attempt(batch) => attempt,
                () = give_up.cancelled() => return Outcome::Abandoned,
            };
            let error = match attempt {
                Attempt::Delivered => {
                    failing.delivered = true;
                    drop(failing);
                    self.update_health(Change::Succeeded);
                    tracing::debug!(
                        events = batch.len(),
                        bytes = batch.body_bytes,
                        attempts = retry.failures() + 1,
                        "batch delivered"
                    );
                    return Outcome::Delivered;
                }
                Attempt::Rejected {
                    status,
                    reason,
                    kind,
                } => {
                    return Outcome::Rejected {
                        status,
                        reason,
                        kind,
                    };
                }
                Attempt::TooLarge => return Outcome::Split { status: Some(413) },
                Attempt::Failed(error) => error,
            };
            let attempts = retry.failures() + 1;
            let others_succeeded = self.successes() > successes_at_start;
            if others_succeeded {
                failing.failing_alone();
            }
            if others_succeeded && attempts >= self.park_after_failures.load(Ordering::Relaxed) {
                tracing::warn!(
                    events = batch.len(),
                    status = error.status(),
                    %error,
                    attempts,
                    "a batch keeps failing while other requests to the collector succeed; \
                     parking it in Redis and retrying each of its events on its own"
                );
                return Outcome::Park {
                    status: error.status(),
                    attempts,
                };
            }
            if !failing.counted {
                failing.counted = true;
                self.failing_batches.fetch_add(1, Ordering::Relaxed);
            }
            self.update_health(Change::Failed(&error));
            self.metrics.retry();
            retry.set_backoff(self.backoff());
            let delay = retry.failed();
            if matches!(error, AttemptError::Redirect { .. }) {
                // A misconfiguration, not a passing fault: say so every time.
                tracing::warn!(%error, attempts, "collector redirects; not following");
            } else {
                tracing::debug!(
                    events = batch.len(),
                    attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %error,
                    "collector request failed; will retry"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = give_up.cancelled() => return Outcome::Abandoned,
            }
        }
    }

    /// One attempt to send `batch`, counted in the metrics and in [`Emitter::successes`].
    pub async fn attempt(&self, batch: &Batch) -> Attempt {
        match self.request(batch).await {
            Ok(()) => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.last_success_ms.store(now_millis(), Ordering::Relaxed);
                Attempt::Delivered
            }
            Err(Failure::Unsendable(reason)) => Attempt::Rejected {
                status: None,
                reason,
                kind: DeadReason::Unsendable,
            },
            Err(Failure::Attempt(AttemptError::Status(status)))
                if classify(status, &self.no_retry) == Disposition::Rejected =>
            {
                Attempt::Rejected {
                    status: Some(status),
                    reason: format!("collector answered {status}, which is not retried"),
                    kind: DeadReason::Rejected,
                }
            }
            Err(Failure::Attempt(AttemptError::Status(413))) if batch.len() > 1 => {
                Attempt::TooLarge
            }
            Err(Failure::Attempt(AttemptError::Status(413))) => Attempt::Rejected {
                status: Some(413),
                reason: "collector answered 413 (payload too large) to this event alone".into(),
                kind: DeadReason::TooLarge,
            },
            Err(Failure::Attempt(error)) => Attempt::Failed(error),
        }
    }

    async fn request(&self, batch: &Batch) -> Result<(), Failure> {
        let stm = epoch_millis();
        let request = match self.method {
            Method::Post => {
                let mut body = Vec::with_capacity(batch.body_bytes + 16);
                event::write_post_body(&batch.events, &stm, &mut body);
                self.client
                    .post(self.url.clone())
                    .header(CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(body)
            }
            Method::Get => {
                let Some(event) = batch.events.first() else {
                    return Ok(());
                };
                let query = event::get_query(event, &stm)
                    .map_err(|bad| Failure::Unsendable(bad.to_string()))?;
                let mut url = self.url.clone();
                url.set_query(Some(&query));
                if url.as_str().len() > self.byte_limit {
                    return Err(Failure::Unsendable(format!(
                        "the GET request URL is {} bytes, more than collector.byte_limit ({}); \
                         send it with method = \"post\"",
                        url.as_str().len(),
                        self.byte_limit
                    )));
                }
                self.client.get(url)
            }
        };
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.request(
            sent.as_ref().ok().map(|r| r.status().as_u16()),
            seconds,
            batch.len(),
        );
        let mut response = sent.map_err(|e| {
            Failure::Attempt(AttemptError::Transport(error_chain(&e.without_url())))
        })?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map_or_else(|| "(no Location)".to_owned(), crate::config::mask_url);
            return Err(Failure::Attempt(AttemptError::Redirect {
                status,
                location,
            }));
        }
        // Read a small body so the connection goes back to the pool; never a large one.
        let mut read = 0;
        while read <= MAX_RESPONSE_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        match classify(status, &self.no_retry) {
            Disposition::Accepted => Ok(()),
            _ => Err(Failure::Attempt(AttemptError::Status(status))),
        }
    }
}

/// What changed the count of failing batches.
enum Change<'a> {
    Failed(&'a AttemptError),
    Succeeded,
    Ended,
}

/// Why a request did not succeed: it could not even be built, or the attempt failed.
enum Failure {
    Unsendable(String),
    Attempt(AttemptError),
}

/// The collector's trust store, client identity, minimum TLS version and proxy.
fn tls_and_proxy(
    mut builder: reqwest::ClientBuilder,
    config: &CollectorConfig,
    https: bool,
) -> Result<reqwest::ClientBuilder, crate::Error> {
    use crate::config::{ConfigError, read_file};
    let bad = |key: &'static str, what: String| {
        crate::Error::Config(ConfigError::Invalid {
            key,
            expected: what,
        })
    };
    builder = builder.tls_version_min(reqwest::tls::Version::TLS_1_2);
    match (&config.tls_ca_file, https) {
        (Some(file), _) => {
            let pem = read_file("collector.tls_ca_file", file)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    bad(
                        "collector.tls_ca_file",
                        format!("PEM certificates ({} holds none)", file.display()),
                    )
                })?;
            builder = if config.tls_ca_only {
                builder.tls_certs_only(certs)
            } else {
                builder.tls_certs_merge(certs)
            };
        }
        // Plain HTTP needs no trust store: do not load one, so that a host or image
        // without CA certificates can still relay to an http collector.
        (None, false) => builder = builder.tls_certs_only(std::iter::empty()),
        (None, true) => {}
    }
    if let (Some(cert), Some(key)) = (&config.tls_client_cert_file, &config.tls_client_key_file) {
        let mut pem = read_file("collector.tls_client_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read_file("collector.tls_client_key_file", key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            bad(
                "collector.tls_client_cert_file",
                format!(
                    "a PEM certificate and its private key ({} + {}: {})",
                    cert.display(),
                    key.display(),
                    error_chain(&e)
                ),
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(proxy) = &config.proxy {
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|_| bad("collector.proxy", "a proxy URL".into()))?
            .no_proxy(
                config
                    .no_proxy
                    .as_deref()
                    .and_then(reqwest::NoProxy::from_string),
            );
        builder = builder.proxy(proxy);
    }
    Ok(builder)
}

/// An error and its causes, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The current time in epoch milliseconds, as the tracker protocol writes it.
pub fn epoch_millis() -> String {
    now_millis().to_string()
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ParseOptions;
    use bytes::Bytes;

    #[test]
    fn every_status_has_one_disposition() {
        let no_retry = [400, 401, 403, 410, 422];
        for status in 0..=599u16 {
            let expected = match status {
                200..=299 => Disposition::Accepted,
                400 | 401 | 403 | 410 | 422 => Disposition::Rejected,
                _ => Disposition::Retry,
            };
            assert_eq!(classify(status, &no_retry), expected, "status {status}");
        }
        assert_eq!(classify(429, &no_retry), Disposition::Retry);
        assert_eq!(classify(503, &no_retry), Disposition::Retry);
        assert_eq!(classify(418, &[418]), Disposition::Rejected);
    }

    fn event(size: usize) -> Event {
        let text = format!(
            r#"{{"e":"pv","tv":"t","p":"pc","url":"{}"}}"#,
            "x".repeat(size)
        );
        Event::parse(
            Bytes::from(text),
            ParseOptions {
                allow_unknown_fields: false,
                require_decodable_strings: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn batches_close_at_the_event_count() {
        let mut builder = BatchBuilder::new(
            Method::Post,
            NonZeroUsize::new(3).unwrap(),
            NonZeroUsize::new(100_000).unwrap(),
        );
        let mut ready = Vec::new();
        for position in 0..7 {
            ready.extend(builder.push(position, event(10)).unwrap());
        }
        ready.extend(builder.take());
        let sizes: Vec<usize> = ready.iter().map(Batch::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let positions: Vec<u64> = ready.iter().flat_map(|b| b.positions.clone()).collect();
        assert_eq!(positions, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn batches_close_before_the_byte_limit_and_the_estimate_is_exact() {
        let limit = 2_000;
        let mut builder = BatchBuilder::new(
            Method::Post,
            NonZeroUsize::new(100).unwrap(),
            NonZeroUsize::new(limit).unwrap(),
        );
        let mut ready = Vec::new();
        for position in 0..20 {
            ready.extend(builder.push(position, event(300)).unwrap());
        }
        ready.extend(builder.take());
        assert!(ready.len() > 1);
        for batch in &ready {
            let mut body = Vec::new();
            event::write_post_body(&batch.events, &epoch_millis(), &mut body);
            assert_eq!(body.len(), batch.body_bytes);
            assert!(body.len() <= limit, "{} > {limit}", body.len());
        }
        assert_eq!(ready.iter().map(Batch::len).sum::<usize>(), 20);
    }

    #[test]
    fn a_split_keeps_order_and_exact_sizes() {
        let mut builder = BatchBuilder::new(
            Method::Post,
            NonZeroUsize::new(5).unwrap(),
            NonZeroUsize::new(100_000).unwrap(),
        );
        let mut batch = None;
        for position in 0..5 {
            batch = builder
                .push(position, event(10 * position as usize))
                .unwrap();
        }
        let (first, second) = batch.unwrap().split();
        assert_eq!(first.positions, vec![0, 1, 2]);
        assert_eq!(second.positions, vec![3, 4]);
        for half in [&first, &second] {
            let mut body = Vec::new();
            event::write_post_body(&half.events, &epoch_millis(), &mut body);
            assert_eq!(body.len(), half.body_bytes);
        }
    }

    #[test]
    fn an_event_larger_than_the_limit_is_refused() {
        let mut builder = BatchBuilder::new(
            Method::Post,
            NonZeroUsize::new(10).unwrap(),
            NonZeroUsize::new(1_024).unwrap(),
        );
        let (_, error) = builder.push(0, event(2_000)).unwrap_err();
        assert_eq!(error.limit, 1_024);
        assert!(builder.take().is_none());
    }
}
