//! The batcher: parses claimed elements, sends bad ones to the dead-letter path, fills
//! batches by count and bytes, sends a partial batch once it is `flush_interval_ms` old
//! (or at once when the list ran dry, or on a flush request), and runs one sender per
//! batch, as many at once as the concurrency limit allows (see `concurrency`).
//!
//! A sender retries its batch until it is delivered, rejected (dead-lettered), split in
//! halves (413), parked (it kept failing while other requests succeeded) or abandoned
//! (drain deadline). Every way it ends is a [`Resolution`] for the acker.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use super::pipeline::{Claimed, ParkedEvent, Resolution, Shared};
use snowplow_relay_tracker::protocol::{BadElement, Batch, BatchBuilder, Element};

use super::sender::Outcome;
use crate::ops::events::collector::{BatchDelivered, BatchTooLarge, FlushRequested};
use crate::ops::metrics::DeadReason;

pub(super) struct Batcher {
    shared: Arc<Shared>,
    claimed_rx: mpsc::Receiver<Claimed>,
    resolved_tx: mpsc::UnboundedSender<Resolution>,
    flush: Arc<tokio::sync::Notify>,
    builder: BatchBuilder,
    senders: JoinSet<()>,
    /// When the partial batch in `builder` must be sent at the latest.
    flush_timer: FlushTimer,
}

impl Batcher {
    pub(super) fn new(
        shared: Arc<Shared>,
        claimed_rx: mpsc::Receiver<Claimed>,
        resolved_tx: mpsc::UnboundedSender<Resolution>,
        flush: Arc<tokio::sync::Notify>,
    ) -> Batcher {
        let settings = &shared.settings;
        Batcher {
            builder: BatchBuilder::new(
                settings.collector.method,
                settings.collector.buffer_size,
                settings.collector.byte_limit,
            ),
            senders: JoinSet::new(),
            flush_timer: FlushTimer::new(settings.collector.flush_interval),
            shared,
            claimed_rx,
            resolved_tx,
            flush,
        }
    }

    /// Batches and sends until claiming has stopped and every sender is done.
    pub(super) async fn run(mut self) {
        loop {
            let flush_timer = self.flush_timer.expired();
            let claimed = tokio::select! {
                claimed = self.claimed_rx.recv() => match claimed {
                    Some(claimed) => claimed,
                    None => break,
                },
                () = flush_timer => {
                    self.send_partial().await;
                    continue;
                }
                () = self.flush.notified() => {
                    let held = self.builder.pending();
                    self.send_partial().await;
                    self.shared.emit(FlushRequested { events: held });
                    continue;
                }
                Some(joined) = self.senders.join_next(), if !self.senders.is_empty() => {
                    self.check(joined);
                    continue;
                }
            };
            self.take(claimed).await;
        }
        // Claiming stopped: send what is held, then wait for every sender.
        self.send_partial().await;
        while let Some(joined) = self.senders.join_next().await {
            self.check(joined);
        }
    }

    /// Parses and batches one claim's elements.
    async fn take(&mut self, claimed: Claimed) {
        let shared = self.shared.clone();
        let settings = &shared.settings;
        let mut dead = Vec::new();
        for (offset, raw) in claimed.elements.into_iter().enumerate() {
            let position = claimed.first_position + offset as u64;
            // A refused element's bytes come back with the reason: no clone is kept.
            let parsed = if raw.len() > settings.events.max_element_bytes {
                let limit = settings.events.max_element_bytes;
                let size = raw.len();
                Err((raw, BadElement::TooLarge { size, limit }))
            } else {
                Element::parse_or_give_back(raw, shared.parse)
            };
            let (raw, kind, reason) = match parsed.map(|event| self.builder.push(position, event)) {
                Ok(Ok(Some(batch))) => {
                    self.flush_timer.stop();
                    self.start(batch).await;
                    continue;
                }
                Ok(Ok(None)) => continue,
                Ok(Err((event, too_large))) => (
                    event.into_raw(),
                    DeadReason::Unsendable,
                    too_large.to_string(),
                ),
                Err((raw, bad @ BadElement::TooLarge { .. })) => {
                    (raw, DeadReason::Oversized, bad.to_string())
                }
                Err((raw, bad @ BadElement::UndecodableString(_))) => {
                    (raw, DeadReason::Unsendable, bad.to_string())
                }
                Err((raw, bad)) => (raw, DeadReason::Malformed, bad.to_string()),
            };
            dead.push((position, raw, kind, reason));
        }
        if self.builder.pending() > 0 {
            self.flush_timer.partial_batch_waits();
        }
        // Logged and counted once their dead-letter entries are written (the acker).
        for (position, element, reason, text) in dead {
            let _ = self.resolved_tx.send(Resolution::Dead {
                reason,
                meta: self.shared.dead_letter(reason, &text, None).into(),
                detail: text.into(),
                status: None,
                events: vec![(position, element)],
            });
        }
        if claimed.ran_dry {
            self.send_partial().await;
        }
    }

    /// Sends the partial batch, if any.
    async fn send_partial(&mut self) {
        self.flush_timer.stop();
        if let Some(batch) = self.builder.take() {
            self.start(batch).await;
        }
    }

    /// Starts a sender for `batch` once the concurrency limit lets one more batch on the
    /// wire. If the relay is abandoning, the batch is not sent: its events stay pending
    /// and go back to the list.
    async fn start(&mut self, batch: Batch) {
        let abandoning = &self.shared.lifecycle.abandoning;
        let concurrency = self.shared.emitter.concurrency().clone();
        let slot = tokio::select! {
            slot = concurrency.slot() => slot,
            () = abandoning.cancelled() => return,
        };
        while let Some(joined) = self.senders.try_join_next() {
            self.check(joined);
        }
        let shared = self.shared.clone();
        let resolved_tx = self.resolved_tx.clone();
        // Boxed: the sender's state (a few KB: the whole request path) then moves into its
        // task as one pointer instead of being copied at each step of spawning and ending.
        self.senders.spawn(Box::pin(async move {
            send_until_resolved(batch, &shared, &resolved_tx).await;
            drop(slot);
        }));
    }

    /// A sender that panicked is a fatal error: its events would never be resolved.
    fn check(&self, joined: Result<(), JoinError>) {
        if let Err(error) = joined {
            self.shared.lifecycle.fail(crate::error::Error::TaskFailed {
                task: "sender",
                message: error.to_string(),
            });
        }
    }
}

/// When a partial batch must leave: `collector.flush_interval_ms` after it began to wait,
/// however many events join it meanwhile.
#[derive(Debug)]
struct FlushTimer {
    interval: std::time::Duration,
    at: Option<tokio::time::Instant>,
}

impl FlushTimer {
    fn new(interval: std::time::Duration) -> FlushTimer {
        FlushTimer { interval, at: None }
    }

    /// A partial batch waits: the timer runs from now, unless it already runs.
    fn partial_batch_waits(&mut self) {
        self.at
            .get_or_insert_with(|| tokio::time::Instant::now() + self.interval);
    }

    /// The batch left (full, flushed, or the list ran dry).
    fn stop(&mut self) {
        self.at = None;
    }

    /// Resolves when the waiting batch must leave; never while none waits.
    fn expired(&self) -> impl std::future::Future<Output = ()> + use<> {
        let at = self.at;
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}

/// How many parts of one batch (after a split) are sent at once: two, so that when one
/// half gets through while the other fails, the failing half is seen failing alone.
const PARTS_AT_ONCE: usize = 2;

/// Sends `batch` (split in halves as often as the collector asks, or to isolate what
/// fails) until every event is delivered, dead-lettered or parked, or the relay abandons
/// it.
async fn send_until_resolved(
    batch: Batch,
    shared: &Shared,
    resolved_tx: &mpsc::UnboundedSender<Resolution>,
) {
    let lifecycle = &shared.lifecycle;
    // The common case: the batch resolves whole, with no split.
    let outcome = shared.emitter.send(&batch, lifecycle).await;
    let Some(halves) = resolve(batch, outcome, shared, resolved_tx) else {
        return;
    };
    let mut waiting: Vec<Batch> = halves.into_iter().rev().collect();
    let mut sending = futures_util::stream::FuturesUnordered::new();
    loop {
        while sending.len() < PARTS_AT_ONCE
            && let Some(part) = waiting.pop()
        {
            sending.push(async move {
                let outcome = shared.emitter.send(&part, lifecycle).await;
                (part, outcome)
            });
        }
        let Some((part, outcome)) = futures_util::StreamExt::next(&mut sending).await else {
            return;
        };
        if let Some(halves) = resolve(part, outcome, shared, resolved_tx) {
            // Halves go before the parts still waiting, first half first.
            waiting.extend(halves.into_iter().rev());
        }
    }
}

/// Hands the acker what `outcome` resolved for `batch`; returns the halves to send when
/// it has to be split.
fn resolve(
    batch: Batch,
    outcome: Outcome,
    shared: &Shared,
    resolved_tx: &mpsc::UnboundedSender<Resolution>,
) -> Option<[Batch; 2]> {
    let sizes = |batch: &Batch| -> Vec<(u64, usize)> {
        batch
            .positions
            .iter()
            .zip(&batch.events)
            .map(|(&position, event)| (position, event.raw().len()))
            .collect()
    };
    let resolution = match outcome {
        Outcome::Delivered { attempts } => {
            shared.emit(BatchDelivered {
                events: batch.len(),
                bytes: batch.body_bytes,
                attempts,
            });
            Resolution::Delivered(sizes(&batch))
        }
        Outcome::Rejected {
            status,
            reason,
            kind,
        } => {
            // Logged and counted once the dead-letter entries are written (the acker).
            Resolution::Dead {
                reason: kind,
                meta: shared.dead_letter(kind, &reason, status).into(),
                detail: reason.into(),
                status,
                events: batch
                    .positions
                    .iter()
                    .zip(&batch.events)
                    .map(|(&position, event)| (position, event.raw().clone()))
                    .collect(),
            }
        }
        Outcome::Split { status } => {
            shared.emit(BatchTooLarge {
                events: batch.len(),
                status,
            });
            let (first, second) = batch.split();
            return Some([first, second]);
        }
        Outcome::Isolate => {
            let (first, second) = batch.split();
            return Some([first, second]);
        }
        Outcome::Park { status, attempts } => Resolution::Parked(
            batch
                .positions
                .iter()
                .zip(&batch.events)
                .map(|(&position, event)| ParkedEvent {
                    position,
                    // A copy of its own: a parked event may be held for long, and a slice
                    // would keep its whole claim's reply buffer alive (src/queue/reader.rs).
                    element: bytes::Bytes::copy_from_slice(event.raw()),
                    attempts,
                    status,
                })
                .collect(),
        ),
        Outcome::Abandoned => return None,
    };
    let _ = resolved_tx.send(resolution);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::{Instant, advance};

    /// Whether `future` has completed after the runtime ran what it could.
    async fn done(future: &mut (impl std::future::Future<Output = ()> + Unpin)) -> bool {
        tokio::time::timeout(Duration::ZERO, future).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_one_interval_after_it_began_to_wait() {
        let mut timer = FlushTimer::new(Duration::from_millis(500));
        assert!(
            !done(&mut Box::pin(timer.expired())).await,
            "no batch waits"
        );
        let began = Instant::now();
        timer.partial_batch_waits();
        advance(Duration::from_millis(300)).await;
        // More events join: the deadline stays where it was.
        timer.partial_batch_waits();
        let mut expired = Box::pin(timer.expired());
        assert!(!done(&mut expired).await);
        advance(Duration::from_millis(199)).await;
        assert!(!done(&mut expired).await);
        advance(Duration::from_millis(1)).await;
        assert!(done(&mut expired).await);
        assert_eq!(began.elapsed(), Duration::from_millis(500));
        timer.stop();
        assert!(
            !done(&mut Box::pin(timer.expired())).await,
            "sent: no timer"
        );
    }
}
