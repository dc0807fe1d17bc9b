//! The acker: keeps the window of claimed events in claim order (each has a *position*:
//! the count of events this instance claimed before it), applies resolutions as they
//! come, and acknowledges the resolved prefix in one script call that also writes its
//! dead-letter and retry-list entries. Parked events go to the retrier once their entry
//! is in Redis. At the end of a run, [`release`] returns what is unresolved.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::pipeline::{DeadEnd, ParkedEvent, Resolution, Shared, Unsettled, unreleased};
use crate::ops::events::pipeline::{
    DeadLetterTally, EventsParked, EventsReturned, EventsSettled, ReturnRetrying,
};
use crate::ops::health::Stage;
use crate::ops::metrics::RedisOperation;
use crate::queue::{Entry, Parked, QueueError};
use snowplow_relay_tracker::retry::Retry;

/// The fate of one claimed event. Sixteen bytes: the rare outcomes are boxed, so the
/// window of delivered events (one slot per event) stays small to move and drop.
#[derive(Debug)]
enum Slot {
    Pending,
    Delivered { bytes: usize },
    Dead(Box<DeadSlot>),
    Parked(Box<ParkedSlot>),
}

#[derive(Debug)]
struct DeadSlot {
    element: Bytes,
    meta: Arc<[u8]>,
    end: DeadEnd,
}

#[derive(Debug)]
struct ParkedSlot {
    event: ParkedEvent,
    meta: Vec<u8>,
}

impl Slot {
    fn bytes(&self) -> usize {
        match self {
            Slot::Pending => 0,
            Slot::Delivered { bytes } => *bytes,
            Slot::Dead(dead) => dead.element.len(),
            Slot::Parked(parked) => parked.event.element.len(),
        }
    }
}

/// Claimed events not yet acknowledged, in claim order.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Position of `slots[0]`: every earlier event is acknowledged.
    start: u64,
    slots: VecDeque<Slot>,
}

impl Window {
    /// No claimed event is waiting for its acknowledgement.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn set(&mut self, position: u64, slot: Slot) {
        // Every position is resolved once, and only resolved positions are acknowledged.
        debug_assert!(position >= self.start, "position {position} resolved twice");
        let Some(index) = position.checked_sub(self.start) else {
            return;
        };
        let index = index as usize;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || Slot::Pending);
        }
        self.slots[index] = slot;
    }

    fn apply(&mut self, resolution: Resolution, instance: &str) {
        match resolution {
            Resolution::Delivered(events) => {
                for (position, bytes) in events {
                    self.set(position, Slot::Delivered { bytes });
                }
            }
            Resolution::Dead {
                reason,
                meta,
                detail,
                status,
                events,
            } => {
                for (position, element) in events {
                    let end = DeadEnd {
                        reason,
                        status,
                        detail: detail.clone(),
                    };
                    let meta = meta.clone();
                    self.set(
                        position,
                        Slot::Dead(Box::new(DeadSlot { element, meta, end })),
                    );
                }
            }
            Resolution::Parked(events) => {
                let parked_at = crate::queue::timestamp(std::time::SystemTime::now());
                for event in events {
                    let meta = Parked {
                        position: event.position,
                        parked_at: parked_at.clone(),
                        status: event.status,
                        attempts: event.attempts,
                        relay: instance.to_owned(),
                    }
                    .meta_line();
                    self.set(
                        event.position,
                        Slot::Parked(Box::new(ParkedSlot { event, meta })),
                    );
                }
            }
        }
    }

    /// How many events at the front are resolved.
    fn resolved_prefix(&self) -> usize {
        self.slots
            .iter()
            .take_while(|slot| !matches!(slot, Slot::Pending))
            .count()
    }

    /// The dead-letter and retry-list entries among the first `count` slots.
    fn entries(&self, count: usize) -> Vec<(u64, Entry<'_>)> {
        self.slots
            .iter()
            .take(count)
            .zip(self.start..)
            .filter_map(|(slot, position)| match slot {
                Slot::Dead(dead) => Some((
                    position,
                    Entry::Dead {
                        meta: &dead.meta,
                        element: &dead.element,
                    },
                )),
                Slot::Parked(parked) => Some((
                    position,
                    Entry::Parked {
                        meta: &parked.meta,
                        element: &parked.event.element,
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// Drops the first `count` slots once they are acknowledged: counts the dead ones,
    /// hands the parked ones to the retrier, and returns the bytes of the others.
    fn advance(
        &mut self,
        count: usize,
        shared: &Shared,
        parked_tx: &mpsc::UnboundedSender<ParkedEvent>,
    ) -> usize {
        self.start += count as u64;
        let mut bytes = 0;
        let mut parked = 0;
        let mut dead_letters = DeadLetterTally::default();
        for slot in self.slots.drain(..count) {
            match slot {
                Slot::Parked(slot) => {
                    parked += 1;
                    // The retrier holds its bytes from here on.
                    let _ = parked_tx.send(slot.event);
                }
                Slot::Dead(dead) => {
                    dead_letters.add(dead.end.reason, dead.end.status, &dead.end.detail);
                    bytes += dead.element.len();
                }
                other => bytes += other.bytes(),
            }
        }
        dead_letters.emit(&shared.events);
        shared.emit(EventsParked { count: parked });
        bytes
    }
}

pub(super) struct Acker {
    shared: Arc<Shared>,
    resolved_rx: mpsc::UnboundedReceiver<Resolution>,
    parked_tx: mpsc::UnboundedSender<ParkedEvent>,
    window: Window,
}

impl Acker {
    pub(super) fn new(
        shared: Arc<Shared>,
        resolved_rx: mpsc::UnboundedReceiver<Resolution>,
        parked_tx: mpsc::UnboundedSender<ParkedEvent>,
    ) -> Acker {
        Acker {
            shared,
            resolved_rx,
            parked_tx,
            window: Window::default(),
        }
    }

    /// Applies resolutions and acknowledges the resolved prefix; once the relay abandons,
    /// it only collects them for the final release. Returns the window left.
    pub(super) async fn run(mut self) -> Result<Window, QueueError> {
        let shared = self.shared.clone();
        let abandoning = &shared.lifecycle.abandoning;
        let mut retry = Retry::new(crate::queue::REDIS_BACKOFF);
        while let Some(resolution) = self.resolved_rx.recv().await {
            self.window.apply(resolution, shared.queue.instance());
            while let Ok(more) = self.resolved_rx.try_recv() {
                self.window.apply(more, shared.queue.instance());
            }
            let count = self.window.resolved_prefix();
            if count == 0 || abandoning.is_cancelled() {
                continue;
            }
            let acked_total = self.window.start + count as u64;
            let acked = loop {
                let entries = self.window.entries(count);
                shared.health.call_started(Stage::Ack);
                let call = shared.events.redis_call(RedisOperation::Ack);
                let result = tokio::select! {
                    result = shared.queue.ack(self.window.start, acked_total, &entries) => result,
                    // What is not acknowledged stays in the window; the release decides.
                    () = abandoning.cancelled() => break false,
                };
                match result {
                    Ok(()) => {
                        shared.health.call_ended(Stage::Ack, Ok(()));
                        call.succeeded();
                        retry.succeeded();
                        break true;
                    }
                    Err(error) => {
                        shared.health.call_ended(Stage::Ack, Err(error.kind()));
                        if error.needs_new_instance() {
                            shared.lifecycle.lost_instance(error);
                            return Ok(self.window);
                        }
                        call.failed(
                            &error,
                            "cannot acknowledge events in Redis; retrying with backoff",
                        );
                        if !retry.pause(abandoning).await {
                            break false;
                        }
                    }
                }
            };
            shared.health.stage_idle(Stage::Ack);
            if !acked {
                continue;
            }
            let bytes = self.window.advance(count, &shared, &self.parked_tx);
            shared.permits.give_back(count, bytes);
            shared.emit(EventsSettled {
                count: count as u64,
                bytes: bytes as u64,
            });
        }
        Ok(self.window)
    }
}

/// Acknowledges every resolved event of `window` (and what the retrier resolved but did
/// not write) and returns every unresolved one, in flight or parked, and any claimed event
/// the relay never saw, to the head of the list, in one script; retries within `budget`
/// if Redis does not answer.
pub(super) async fn release(
    shared: &Shared,
    window: &Window,
    position: u64,
    unsettled: &Unsettled,
    budget: Duration,
) -> Result<(), crate::error::Error> {
    let queue = &shared.queue;
    // A parked slot not yet acknowledged is still in the in-flight list: it goes back.
    let resolved: Vec<bool> = window
        .slots
        .iter()
        .map(|slot| matches!(slot, Slot::Delivered { .. } | Slot::Dead(_)))
        .collect();
    let mut dead: Vec<(u64, &[u8], &[u8])> = window
        .slots
        .iter()
        .zip(window.start..)
        .filter_map(|(slot, position)| match slot {
            Slot::Dead(dead) => Some((position, &dead.meta[..], &dead.element[..])),
            _ => None,
        })
        .collect();
    dead.extend(
        unsettled
            .dead
            .iter()
            .map(|(p, meta, element, _)| (*p, meta.as_slice(), &element[..])),
    );
    let deadline = tokio::time::Instant::now() + budget;
    let mut retry = Retry::new(crate::queue::REDIS_BACKOFF);
    loop {
        let result = tokio::time::timeout_at(
            deadline,
            queue.release(
                window.start,
                &resolved,
                position,
                &dead,
                &unsettled.delivered,
            ),
        )
        .await;
        let error = match result {
            Ok(Ok(released)) => {
                if !released.state_mismatch {
                    let mut dead_letters = DeadLetterTally::default();
                    let ends = window
                        .slots
                        .iter()
                        .filter_map(|slot| match slot {
                            Slot::Dead(dead) => Some(&dead.end),
                            _ => None,
                        })
                        .chain(unsettled.dead.iter().map(|(_, _, _, end)| end));
                    for end in ends {
                        dead_letters.add(end.reason, end.status, &end.detail);
                    }
                    dead_letters.emit(&shared.events);
                }
                shared.emit(EventsReturned {
                    requeued: released.requeued,
                    list: &crate::queue::shown_key(&queue.keys().list),
                    after_lost_writes: released.state_mismatch,
                });
                return Ok(());
            }
            // A retry after a lost reply, or another relay recovered us: either way the
            // events are back in the list. (Or Redis lost everything, events included:
            // there is nothing left to return.)
            Ok(Err(QueueError::LeaseLost | QueueError::Forgotten)) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("Redis did not answer within {} ms", budget.as_millis()),
        };
        let delay = retry.failed();
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(unreleased(queue, error));
        }
        shared.emit(ReturnRetrying {
            error: &error,
            attempt: retry.failures(),
        });
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::DeadReason;

    #[test]
    fn a_slot_is_two_words() {
        // One slot per claimed event is moved and dropped on every acknowledgement.
        assert_eq!(
            std::mem::size_of::<Slot>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn the_window_acknowledges_only_the_resolved_prefix() {
        let mut window = Window::default();
        window.apply(Resolution::Delivered(vec![(1, 10), (2, 20)]), "i");
        assert_eq!(window.resolved_prefix(), 0, "position 0 is still pending");
        window.apply(
            Resolution::Dead {
                reason: DeadReason::Malformed,
                meta: Arc::from(&b"meta"[..]),
                detail: Arc::from("not JSON"),
                status: None,
                events: vec![(0, Bytes::from_static(b"12345"))],
            },
            "i",
        );
        assert_eq!(window.resolved_prefix(), 3);
        let entries = window.entries(3);
        assert_eq!(entries.len(), 1);
        assert!(matches!(
            entries[0],
            (
                0,
                Entry::Dead {
                    meta: b"meta",
                    element: b"12345"
                }
            )
        ));
        window.apply(
            Resolution::Parked(vec![ParkedEvent {
                position: 4,
                element: Bytes::from_static(b"{}"),
                attempts: 3,
                status: Some(500),
            }]),
            "i",
        );
        assert_eq!(window.resolved_prefix(), 3, "position 3 is pending");
        window.apply(Resolution::Delivered(vec![(3, 1)]), "i");
        assert_eq!(window.resolved_prefix(), 5);
        let entries = window.entries(5);
        assert!(
            matches!(entries[1], (4, Entry::Parked { meta, .. }) if meta.starts_with(b"{\"position\":4,"))
        );
    }
}
