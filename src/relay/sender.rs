//! The relay's side of sending: one batch retried with the collector's backoff until it
//! is delivered, refused for good, split (413) or parked (it kept failing while other
//! requests succeeded), over the tracker crate's collector client
//! ([`snowplow_relay_tracker::http::Client`]), which only reports what each attempt came
//! to. Here those reports become metrics and health: whether the collector fails as a
//! whole (two or more batches failing), which the claimer follows to claim nothing more
//! than a probe, and whether a batch fails alone, which liveness follows.
//!
//! [`Sender::send`] never drops a batch on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use snowplow_relay_tracker::http::{Attempt, AttemptError, Client};
use snowplow_relay_tracker::protocol::{Batch, now_millis};
use snowplow_relay_tracker::retry::{Backoff, Retry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorSettings;
use crate::ops::health::Health;
use crate::ops::metrics::{DeadReason, Metrics};

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

/// Takes a batch off the failing count (and the batches failing alone) when it ends,
/// however it ends.
struct FailingBatch<'a> {
    emitter: &'a Sender,
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

/// Sends batches to the collector, for every sender task of the relay.
pub struct Sender {
    client: Client,
    /// Changed while running by [`Sender::set_retry`] (SIGHUP).
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

impl Sender {
    /// The collector client for `config`, and the relay's state around it.
    pub fn new(
        config: &CollectorSettings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Arc<Sender>, crate::error::Error> {
        use snowplow_relay_tracker::http::ClientError;
        let invalid = |key: &'static str, expected: String| {
            crate::error::Error::Config(crate::config::ConfigError::Invalid { key, expected })
        };
        let client = Client::new(&config.client).map_err(|e| match e {
            ClientError::NoCertificates => invalid(
                crate::config::key::COLLECTOR_TLS_CA_FILE,
                "PEM certificates (the file holds none)".into(),
            ),
            ClientError::Identity(why) => invalid(
                crate::config::key::COLLECTOR_TLS_CLIENT_CERT_FILE,
                format!("a PEM certificate and its private key ({why})"),
            ),
            ClientError::Proxy => {
                invalid(crate::config::key::COLLECTOR_PROXY, "a proxy URL".into())
            }
            other => crate::error::Error::HttpClient(other),
        })?;
        Ok(Arc::new(Sender {
            client,
            backoff: std::sync::RwLock::new(config.backoff),
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
    pub fn set_retry(&self, config: &CollectorSettings) {
        if let Ok(mut backoff) = self.backoff.write() {
            *backoff = config.backoff;
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

    /// Where requests go, fit for a log line: credentials masked.
    pub fn shown_url(&self) -> String {
        crate::config::mask_url(self.client.url().as_str())
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
                    refusal,
                } => {
                    return Outcome::Rejected {
                        status,
                        reason,
                        kind: refusal.into(),
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

    /// One attempt to send `batch`, counted in the metrics and in [`Sender::successes`].
    pub async fn attempt(&self, batch: &Batch) -> Attempt {
        let report = self.client.attempt(batch).await;
        if report.seconds > 0.0 {
            self.metrics.request(
                report.status,
                report.seconds,
                batch.len(),
                report.bytes_sent,
            );
        }
        if let Attempt::Delivered = report.attempt {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.last_success_ms.store(now_millis(), Ordering::Relaxed);
        }
        report.attempt
    }
}

/// What changed the count of failing batches.
enum Change<'a> {
    Failed(&'a AttemptError),
    Succeeded,
    Ended,
}
