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
use snowplow_relay_tracker::protocol::Batch;
use snowplow_relay_tracker::retry::{Backoff, Retry};
use tokio::sync::watch;

use super::concurrency::{Concurrency, Signal};
use super::lifecycle::Lifecycle;

use crate::config::{CollectorSettings, RetryPolicy};
use crate::ops::events::Observer;
use crate::ops::events::collector::{
    BatchIsolating, BatchParking, BatchRetrying, CollectorFailing, CollectorFailuresEnded,
    CollectorRecovered, CollectorRedirects, CollectorRequest, ConcurrencyChanged,
};
use crate::ops::health::Health;
use crate::ops::metrics::DeadReason;

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The collector accepted it (2xx), after this many attempts.
    Delivered {
        /// Attempts it took.
        attempts: u32,
    },
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
    /// The batch kept failing while nothing else was sent or succeeded (a quiet list),
    /// and the collector is not failing as a whole: send each half on its own, at once,
    /// so that a half that gets through shows the other half to be at fault.
    Isolate,
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
            let now = self.emitter.health.now();
            self.emitter.alone_changed(|alone| {
                alone.insert(self.id, now);
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
    /// The retry policy, published here by [`Sender::set_retry`] (SIGHUP); every task
    /// reads it from here.
    retry: watch::Sender<RetryPolicy>,
    healthy: watch::Sender<bool>,
    /// Batches whose last attempt failed. One failing batch alone says nothing about the
    /// collector (its content may be the problem); two or more mean it is failing.
    failing_batches: AtomicUsize,
    /// Requests the collector accepted so far (batches and parked events): a batch that
    /// fails while this grows is failing on its own, not because of an outage.
    successes: AtomicU64,
    /// Attempts that failed and will be retried (batches and parked events).
    failures: AtomicU64,
    /// Batches failing while other requests succeed: since when, by batch id.
    alone: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    batch_ids: AtomicU64,
    /// How long answers take lately, in milliseconds: the longest recent one, decaying
    /// by an eighth per answer. A drain starts no request it would have to cut.
    answer_ms: AtomicU64,
    /// How many batches may be in flight: the batcher takes a slot per batch, each
    /// answer to a batch moves the limit.
    concurrency: Arc<Concurrency>,
    events: Arc<Observer>,
    health: Arc<Health>,
}

impl Sender {
    /// The collector client for `config`, and the relay's state around it.
    pub fn new(
        config: &CollectorSettings,
        events: Arc<Observer>,
    ) -> Result<Arc<Sender>, crate::error::Error> {
        let client = collector_client(config)?;
        let concurrency = Arc::new(Concurrency::new(
            config.max_requests_in_flight,
            config.adaptive_concurrency,
        ));
        events.emit(ConcurrencyChanged {
            limit: concurrency.limit(),
            ceiling: concurrency.ceiling(),
        });
        Ok(Arc::new(Sender {
            client,
            retry: watch::channel(config.retry).0,
            healthy: watch::channel(true).0,
            failing_batches: AtomicUsize::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            alone: Default::default(),
            batch_ids: AtomicU64::new(0),
            answer_ms: AtomicU64::new(0),
            concurrency,
            health: events.health.clone(),
            events,
        }))
    }

    /// The limit on batches in flight.
    pub(super) fn concurrency(&self) -> &Arc<Concurrency> {
        &self.concurrency
    }

    /// Publishes a new retry policy (a reload): every request and parked event follows
    /// it from its next attempt on.
    pub fn set_retry(&self, policy: RetryPolicy) {
        self.retry.send_replace(policy);
    }

    /// The retry policy now.
    pub fn retry_policy(&self) -> RetryPolicy {
        *self.retry.borrow()
    }

    /// The collector's retry backoff now.
    pub fn backoff(&self) -> Backoff {
        self.retry_policy().backoff
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

    /// The traffic so far, to compare a later [`Traffic`] with.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
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
        let changed = self.healthy.send_if_modified(|current| {
            let changed = *current != healthy;
            *current = healthy;
            changed
        });
        if !changed {
            return;
        }
        match change {
            Change::Failed(error) => self.events.emit(CollectorFailing {
                error,
                collector: &self.shown_url(),
            }),
            Change::Succeeded => self.events.emit(CollectorRecovered),
            // Failing batches parked, dead-lettered or abandoned: the collector has not
            // been seen to recover.
            Change::Ended => self.events.emit(CollectorFailuresEnded),
        }
    }

    /// Sends one batch, retrying transient failures with backoff, until the collector
    /// accepts or rejects it, it has to be split (413, or to isolate what fails) or
    /// parked, or `give_up` is cancelled.
    ///
    /// After `collector.park_after_failures` failed attempts the batch's content, not an
    /// outage, is the likely cause if the collector accepted other requests since its
    /// first attempt: it is parked (parking loses nothing: a parked event is
    /// dead-lettered only on much stronger evidence, see the retrier). If nothing else was
    /// accepted since (a quiet list) and no other batch is failing, it is split and its
    /// halves sent at once: the half that gets through is the other traffic that shows
    /// which half is at fault. A collector that fails every request is an outage (two or
    /// more batches failing): the batch is retried for as long as it takes, and neither
    /// split, parked nor dead-lettered.
    ///
    /// While a stop drains, an attempt whose answer would come after the drain's deadline
    /// (at the pace answers come lately) is not started: its events go back to the list
    /// instead of being sent once more and cut off, which would only duplicate them.
    pub(super) async fn send(&self, batch: &Batch, lifecycle: &Lifecycle) -> Outcome {
        let give_up = &lifecycle.abandoning;
        let mut retry = Retry::new(self.backoff());
        // Counts this batch among the failing ones from its first failure to its end.
        let mut failing = FailingBatch {
            emitter: self,
            id: self.batch_ids.fetch_add(1, Ordering::Relaxed),
            counted: false,
            alone: false,
            delivered: false,
        };
        let start = self.traffic();
        // Attempts that brought no answer in time: each allows the next one twice as long.
        let mut timeouts = 0;
        loop {
            if self.would_be_cut(lifecycle) {
                return Outcome::Abandoned;
            }
            let within = self.attempt_timeout(timeouts);
            let attempt = tokio::select! {
                attempt = self.attempt_counted(batch, true, within) => attempt,
                () = give_up.cancelled() => return Outcome::Abandoned,
            };
            let error = match attempt {
                Attempt::Delivered => {
                    failing.delivered = true;
                    drop(failing);
                    self.update_health(Change::Succeeded);
                    return Outcome::Delivered {
                        attempts: retry.failures() + 1,
                    };
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
            if matches!(error, AttemptError::TimedOut(_)) {
                timeouts += 1;
            }
            let others = self.traffic().since(start);
            let attempts = retry.failures() + 1;
            if others.successes > 0 {
                failing.failing_alone();
            }
            if attempts >= self.retry_policy().park_after_failures {
                if others.successes > 0 {
                    self.events.emit(BatchParking {
                        events: batch.len(),
                        status: error.status(),
                        attempts,
                        error: &error,
                    });
                    return Outcome::Park {
                        status: error.status(),
                        attempts,
                    };
                }
                let others_failing =
                    self.failing_batches.load(Ordering::Relaxed) - usize::from(failing.counted);
                if batch.len() > 1 && others_failing == 0 {
                    self.events.emit(BatchIsolating {
                        events: batch.len(),
                        attempts,
                        error: &error,
                    });
                    return Outcome::Isolate;
                }
            }
            if !failing.counted {
                failing.counted = true;
                self.failing_batches.fetch_add(1, Ordering::Relaxed);
            }
            self.update_health(Change::Failed(&error));
            retry.set_backoff(self.backoff());
            let delay = retry.failed();
            if matches!(error, AttemptError::Redirect { .. }) {
                // A misconfiguration, not a passing fault: said at once, then once a minute.
                self.events.emit(CollectorRedirects {
                    error: &error,
                    attempts,
                    events: batch.len(),
                });
            } else {
                self.events.emit(BatchRetrying {
                    events: batch.len(),
                    attempts,
                    retry_in_ms: delay.as_millis() as u64,
                    error: &error,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = give_up.cancelled() => return Outcome::Abandoned,
            }
        }
    }

    /// Whether a request started now would still wait for its answer when a stop's drain
    /// is cut short.
    fn would_be_cut(&self, lifecycle: &Lifecycle) -> bool {
        lifecycle.drain_deadline.get().is_some_and(|deadline| {
            answer_comes_after(
                *deadline,
                Duration::from_millis(self.answer_ms.load(Ordering::Relaxed)),
            )
        })
    }

    /// The time one attempt allows for its answer: `collector.request_timeout_ms`, or
    /// twice the longest recent answer (timed-out attempts included) if longer, doubled
    /// for each of this batch's attempts that timed out, and never more than
    /// [`MAX_TIMEOUT_FACTOR`] times the configured timeout. A collector slower than the
    /// timeout (a sink falling behind) then gets each batch at most a few times instead
    /// of once per backoff step.
    fn attempt_timeout(&self, timeouts: u32) -> Duration {
        let configured = self.client.timeout();
        let longest = Duration::from_millis(self.answer_ms.load(Ordering::Relaxed));
        let doubled = configured.saturating_mul(1 << timeouts.min(16));
        doubled
            .max(longest.saturating_mul(2))
            .clamp(configured, configured.saturating_mul(MAX_TIMEOUT_FACTOR))
    }

    /// One attempt to send a parked event alone, counted in the metrics but not in the
    /// traffic: the traffic is the evidence of what the collector does with the other
    /// requests, and parked events failing (each other's, say) are no evidence of it.
    pub async fn attempt_parked(&self, batch: &Batch) -> Attempt {
        self.attempt_counted(batch, false, self.attempt_timeout(0))
            .await
    }

    async fn attempt_counted(&self, batch: &Batch, traffic: bool, within: Duration) -> Attempt {
        let report = self.client.attempt_within(batch, Some(within)).await;
        let took_ms = (report.exchanges.last_seconds() * 1e3) as u64;
        let _ = self
            .answer_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |recent| {
                Some(recent_answer_ms(recent, took_ms))
            });
        for exchange in report.exchanges.iter() {
            self.events.emit(CollectorRequest {
                exchange: *exchange,
                events: batch.len(),
            });
        }
        if traffic
            && let Some(last) = report.exchanges.iter().last()
            && let Some(limit) = self
                .concurrency
                .answered(Signal::of(last.status, last.answer_seconds))
        {
            self.events.emit(ConcurrencyChanged {
                limit,
                ceiling: self.concurrency.ceiling(),
            });
        }
        match report.attempt {
            _ if !traffic => {}
            Attempt::Delivered => {
                self.successes.fetch_add(1, Ordering::Relaxed);
            }
            Attempt::Failed(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        report.attempt
    }
}

/// The most an attempt's timeout grows to, in multiples of `collector.request_timeout_ms`
/// (40 s by default): a collector answering within it receives a batch at most four
/// times because of timeouts (allowed 1, 2, 4 and 8 times the timeout); one slower than
/// it is treated as down, each batch sent once per this long plus its backoff.
pub const MAX_TIMEOUT_FACTOR: u32 = 8;

/// Whether a request started now, answered after `expected`, would still wait for its
/// answer at `deadline`.
fn answer_comes_after(deadline: tokio::time::Instant, expected: Duration) -> bool {
    tokio::time::Instant::now() + expected > deadline
}

/// How long answers take lately (ms), after one that took `took`: the longest recent
/// one, decaying by an eighth per answer.
fn recent_answer_ms(recent: u64, took: u64) -> u64 {
    took.max(recent - recent / 8)
}

/// How many requests the collector accepted, and how many attempts failed (to be
/// retried), so far: two of them tell what happened between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests accepted.
    pub successes: u64,
    /// Attempts that failed and will be retried.
    pub failures: u64,
}

impl Traffic {
    /// What happened between `earlier` and this.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            successes: self.successes.saturating_sub(earlier.successes),
            failures: self.failures.saturating_sub(earlier.failures),
        }
    }

    /// Whether other requests, this traffic (since a parked event was parked or its
    /// previous failure counted; parked events' own attempts are not traffic), show the
    /// collector accepting requests: at least
    /// [`Traffic::ENOUGH_ACCEPTED`] accepted, and at most one failed for every ten
    /// accepted. A collector failing at random (half its requests, say) does not
    /// qualify, nor does a quiet list, so their failures never count against a parked
    /// event.
    pub fn shows_collector_accepting(self) -> bool {
        self.successes >= Self::ENOUGH_ACCEPTED && self.failures * 10 <= self.successes
    }

    /// Accepted requests it takes to show anything: with fewer, a collector failing half
    /// its requests at random looks healthy too often (one accepted and none failed,
    /// half the time; ten in a row, once in a thousand).
    pub const ENOUGH_ACCEPTED: u64 = 10;
}

/// What changed the count of failing batches.
enum Change<'a> {
    Failed(&'a AttemptError),
    Succeeded,
    Ended,
}

/// The collector client `config` describes, its TLS material and proxy checked: a
/// problem is a configuration error naming the key.
pub fn collector_client(config: &CollectorSettings) -> Result<Client, crate::error::Error> {
    use snowplow_relay_tracker::http::ClientError;
    let invalid = |key: &'static str, expected: String| {
        crate::error::Error::Config(crate::config::ConfigError::Invalid { key, expected })
    };
    Client::new(&config.client).map_err(|e| match e {
        ClientError::NoCertificates => invalid(
            crate::config::key::COLLECTOR_TLS_CA_FILE,
            "PEM certificates (the file holds none)".into(),
        ),
        ClientError::Identity(why) => invalid(
            crate::config::key::COLLECTOR_TLS_CLIENT_CERT_FILE,
            format!("a PEM certificate and its private key ({why})"),
        ),
        ClientError::Proxy => invalid(crate::config::key::COLLECTOR_PROXY, "a proxy URL".into()),
        ClientError::UnsupportedProxy(scheme) => invalid(
            crate::config::key::COLLECTOR_PROXY,
            format!(
                "an http:// proxy, here or in the HTTP_PROXY, HTTPS_PROXY or ALL_PROXY \
                     variables (one of them names a {scheme}:// proxy)"
            ),
        ),
        other => crate::error::Error::HttpClient(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(successes: u64, failures: u64) -> Traffic {
        Traffic {
            successes,
            failures,
        }
    }

    #[test]
    fn only_other_requests_accepted_nearly_all_show_the_collector_accepting() {
        assert!(traffic(10, 0).shows_collector_accepting());
        assert!(traffic(10, 1).shows_collector_accepting());
        assert!(
            !traffic(9, 0).shows_collector_accepting(),
            "too few to tell a collector failing at random"
        );
        assert!(!traffic(1, 0).shows_collector_accepting());
        assert!(traffic(100, 10).shows_collector_accepting());
        assert!(!traffic(100, 11).shows_collector_accepting());
        assert!(!traffic(0, 0).shows_collector_accepting(), "a quiet list");
        assert!(!traffic(0, 50).shows_collector_accepting(), "an outage");
        assert!(
            !traffic(50, 50).shows_collector_accepting(),
            "failing at random"
        );
        assert_eq!(traffic(7, 3).since(traffic(2, 1)), traffic(5, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_starts_no_request_whose_answer_would_come_after_its_deadline() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(!answer_comes_after(deadline, Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(3)).await;
        // Answers take 3 s: a request now would be answered at 6 s, after the deadline.
        assert!(answer_comes_after(deadline, Duration::from_secs(3)));
        assert!(!answer_comes_after(deadline, Duration::from_millis(10)));
        // The pace of answers: the longest recent one, decaying.
        let mut recent = 0;
        recent = recent_answer_ms(recent, 3_000);
        assert_eq!(recent, 3_000);
        for _ in 0..10 {
            recent = recent_answer_ms(recent, 10);
        }
        assert!(recent < 1_000 && recent > 10, "{recent}");
    }
}
