//! The retrier: retries parked events (batches that kept failing while other requests
//! succeeded) one event per request, with the collector's backoff, while the rest of
//! the pipeline goes on. A parked event is delivered, refused for good, or
//! dead-lettered once it failed `collector.isolated_failure_limit` times, each time
//! while the collector was seen accepting other requests since it was parked or its
//! previous failure counted ([`Traffic::shows_collector_accepting`]: ten accepted at
//! least, at most one failed for every ten). Failures during an outage, or while the collector fails at random, do not
//! count; without other traffic a parked event is retried on (it holds back nothing). Resolved events are removed from the retry list in Redis in
//! one script call per round; what is unresolved when the run ends stays in the retry
//! list, and the release returns it to the list in claim order.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::pipeline::{DeadEnd, ParkedEvent, Shared, Unsettled};
use super::sender::Traffic;
use crate::ops::events::collector::{ParkedEventDelivered, ParkedEventFailed};
use crate::ops::events::pipeline::{DeadLetterTally, ParkedEventGivenUp, ParkedSettled};
use snowplow_relay_tracker::protocol::{Batch, Element};

use crate::ops::health::Stage;
use crate::ops::metrics::{DeadReason, RedisOperation};
use crate::queue::QueueError;
use snowplow_relay_tracker::http::Attempt;
use snowplow_relay_tracker::retry::{Backoff, Retry};

/// One parked event and its attempts since it was parked.
struct Held {
    event: ParkedEvent,
    /// Attempts in all, before and since it was parked.
    attempts: u32,
    /// Failures since it was parked while the collector accepted other requests.
    isolated: u32,
    /// The traffic when it was parked or its last failure counted as isolated: what
    /// other requests did since decides whether its next failure counts. The window
    /// grows until it shows the collector accepting, so a list with little traffic
    /// gathers the evidence over several attempts, and a collector failing at random
    /// never shows it.
    since: Traffic,
    next_at: Instant,
}

/// A parked event resolved here, to be removed from the retry list.
struct Settled {
    position: u64,
    element: Bytes,
    /// The dead-letter metadata and why, or `None` when delivered.
    dead: Option<(Vec<u8>, DeadEnd)>,
}

pub(super) struct Retrier {
    shared: Arc<Shared>,
    parked_rx: mpsc::UnboundedReceiver<ParkedEvent>,
    held: Vec<Held>,
    settled: Vec<Settled>,
    settle_at: Option<Instant>,
    settles: Retry,
}

impl Retrier {
    pub(super) fn new(
        shared: Arc<Shared>,
        parked_rx: mpsc::UnboundedReceiver<ParkedEvent>,
    ) -> Retrier {
        Retrier {
            shared,
            parked_rx,
            held: Vec::new(),
            settled: Vec::new(),
            settle_at: None,
            settles: Retry::new(crate::queue::REDIS_BACKOFF),
        }
    }

    fn backoff(&self) -> Backoff {
        self.shared.emitter.backoff()
    }

    /// Retries until the run drains; returns what it resolved but could not settle.
    pub(super) async fn run(mut self) -> Result<Unsettled, QueueError> {
        let shared = self.shared.clone();
        let draining = &shared.lifecycle.draining;
        loop {
            let next_attempt = self.held.iter().map(|h| h.next_at).min();
            let settle_at = self.settle_at;
            tokio::select! {
                parked = self.parked_rx.recv() => match parked {
                    Some(event) => self.hold(event),
                    None => break,
                },
                () = sleep_until(next_attempt) => self.attempt_due().await,
                () = sleep_until(settle_at) => self.settle().await?,
                () = draining.cancelled() => break,
            }
        }
        // Draining: write what is resolved once more, then leave the rest to the release.
        if !self.settled.is_empty() && !shared.lifecycle.abandoning.is_cancelled() {
            let settle = self.settle();
            let _ = tokio::select! {
                result = settle => result,
                () = shared.lifecycle.abandoning.cancelled() => Ok(()),
            };
        }
        shared.health.stage_idle(Stage::Settle);
        let mut unsettled = Unsettled::default();
        for settled in self.settled {
            match settled.dead {
                None => unsettled.delivered.push(settled.position),
                Some((meta, end)) => {
                    unsettled
                        .dead
                        .push((settled.position, meta, settled.element, end))
                }
            }
        }
        Ok(unsettled)
    }

    fn hold(&mut self, event: ParkedEvent) {
        let next_at = Instant::now() + self.backoff().delay(1);
        self.held.push(Held {
            attempts: event.attempts,
            event,
            isolated: 0,
            since: self.shared.emitter.traffic(),
            next_at,
        });
    }

    /// Sends every parked event that is due, each alone, a few at a time.
    async fn attempt_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<Held>, Vec<Held>) =
            self.held.drain(..).partition(|h| h.next_at <= now);
        self.held = later;
        let concurrency = self
            .shared
            .settings
            .collector
            .max_requests_in_flight
            .clamp(1, 8);
        let mut due = due.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < concurrency {
                let Some(held) = due.next() else { break };
                let shared = self.shared.clone();
                running.spawn(async move {
                    // None: the parked element no longer parses.
                    let attempt = match single_batch(&shared, &held.event) {
                        Some(batch) => Some(shared.emitter.attempt_parked(&batch).await),
                        None => None,
                    };
                    (held, attempt)
                });
            }
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                // Abandoned attempts leave their events parked; the release returns them.
                () = self.shared.lifecycle.abandoning.cancelled() => None,
            };
            let Some(joined) = joined else { break };
            match joined {
                Ok((held, attempt)) => self.resolve(held, attempt),
                Err(error) => self.shared.lifecycle.fail(crate::error::Error::TaskFailed {
                    task: "retrier",
                    message: error.to_string(),
                }),
            }
        }
        // Whatever was not attempted stays parked.
        self.held.extend(due);
    }

    fn resolve(&mut self, mut held: Held, attempt: Option<Attempt>) {
        let shared = &self.shared;
        let position = held.event.position;
        let element = held.event.element.clone();
        let dead_end = |reason: DeadReason, status: Option<u16>, detail: String| {
            Some((
                shared.dead_letter(reason, &detail, status),
                DeadEnd {
                    reason,
                    status,
                    detail: detail.into(),
                },
            ))
        };
        let dead = match attempt {
            None => dead_end(
                DeadReason::Malformed,
                None,
                "the parked element no longer parses".into(),
            ),
            Some(Attempt::Delivered) => {
                shared.emit(ParkedEventDelivered);
                None
            }
            Some(Attempt::Rejected {
                status,
                reason,
                refusal,
            }) => dead_end(refusal.into(), status, reason),
            Some(Attempt::TooLarge) => dead_end(
                DeadReason::TooLarge,
                Some(413),
                "collector answered 413 to this event alone".into(),
            ),
            Some(Attempt::Failed(error)) => {
                held.attempts += 1;
                // The pipeline's requests since the window began (parked events'
                // attempts, this one's included, are not traffic).
                let now = shared.emitter.traffic();
                if now.since(held.since).shows_collector_accepting() {
                    held.isolated += 1;
                    held.since = now;
                }
                if held.isolated < shared.emitter.retry_policy().isolated_failure_limit {
                    held.next_at = Instant::now() + self.backoff().delay(held.attempts);
                    shared.emit(ParkedEventFailed {
                        position,
                        attempts: held.attempts,
                        error: &error,
                    });
                    self.held.push(held);
                    return;
                }
                let reason = format!(
                    "{error} on {} attempts, {} of them after it was parked while the \
                     collector accepted other requests",
                    held.attempts, held.isolated
                );
                shared.emit(ParkedEventGivenUp {
                    status: error.status(),
                    attempts: held.attempts,
                });
                dead_end(DeadReason::FailedAlone, error.status(), reason)
            }
        };
        self.settled.push(Settled {
            position,
            element,
            dead,
        });
        self.settle_at.get_or_insert_with(Instant::now);
    }

    /// Removes the resolved events from the retry list (dead-lettering those that must
    /// be) and gives back their bytes. A Redis failure is retried with backoff.
    async fn settle(&mut self) -> Result<(), QueueError> {
        let shared = self.shared.clone();
        let entries: Vec<(u64, Option<&[u8]>)> = self
            .settled
            .iter()
            .map(|s| (s.position, s.dead.as_ref().map(|(meta, _)| meta.as_slice())))
            .collect();
        shared.health.call_started(Stage::Settle);
        let call = shared.events.redis_call(RedisOperation::Settle);
        match shared.queue.settle_parked(&entries).await {
            Ok(()) => {
                shared.health.call_ended(Stage::Settle, Ok(()));
                call.succeeded();
                self.settles.succeeded();
                self.settle_at = None;
                let (mut events, mut bytes) = (0, 0);
                let mut dead_letters = DeadLetterTally::default();
                for settled in self.settled.drain(..) {
                    events += 1;
                    bytes += settled.element.len();
                    if let Some((_, end)) = settled.dead {
                        dead_letters.add(end.reason, end.status, &end.detail);
                    }
                }
                dead_letters.emit(&shared.events);
                shared.emit(ParkedSettled {
                    count: events,
                    bytes: bytes as u64,
                });
                shared.permits.give_back(0, bytes);
                Ok(())
            }
            Err(error) if error.needs_new_instance() => {
                shared.health.call_ended(Stage::Settle, Err(error.kind()));
                self.settle_at = None;
                shared.lifecycle.lost_instance(error);
                Ok(())
            }
            Err(error) => {
                shared.health.call_ended(Stage::Settle, Err(error.kind()));
                call.failed(
                    &error,
                    "cannot remove settled events from the retry list; retrying with backoff",
                );
                self.settle_at = Some(Instant::now() + self.settles.failed());
                Ok(())
            }
        }
    }
}

/// A batch of the parked event alone.
fn single_batch(shared: &Shared, event: &ParkedEvent) -> Option<Batch> {
    let parsed = Element::parse(event.element.clone(), shared.parse).ok()?;
    Some(Batch::single(event.position, parsed))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
