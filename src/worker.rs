//! The loop joining the queue and the emitter: an event travels in one direction,
//!
//! ```text
//! claimer --Claimed--> batcher --Batch--> sender tasks --Resolution--> acker
//!    ^                    |  (parse, batch, flush timer, dispatch)       |
//!    |                    +--Resolution (bad elements)------------------>|
//!    +--------- claim permits (events and bytes), returned on acknowledgement
//! heartbeat: renews the lease, recovers dead relays' events
//! ```
//!
//! - **claimer** claims up to `claim_batch_size` events and `claim_max_bytes` bytes per
//!   round trip while it holds claim permits (`max_claimed_events` and
//!   `max_claimed_bytes`: the memory bound) and the collector is healthy; on an empty
//!   list it blocks in Redis instead of polling, after telling the batcher the list ran
//!   dry so that a lone event is sent at once.
//! - **batcher** parses elements, sends bad ones to the dead-letter path, fills batches by
//!   count and bytes, sends a partial batch once it is `flush_interval_ms` old, and starts
//!   a sender per batch (at most `max_requests_in_flight`).
//! - **senders** retry their batch until it is accepted or rejected, split it when the
//!   emitter says so (413, or failing alone), or stop when the drain deadline passes.
//! - **acker** keeps the window of claimed events in claim order (each has a *position*:
//!   the count of events this instance claimed before it) and acknowledges the resolved
//!   prefix in one script call, writing dead-letter entries in the same call.
//!
//! Every task follows one `Lifecycle`: *running* → *draining* (shutdown asked or a
//! fatal error: claiming stops, batches are sent) → *abandoning* (drain deadline, second
//! signal or fatal error: requests are dropped). Then every unresolved event goes back
//! to the head of the list in its original order, and every resolution already received
//! is acknowledged, in one script ([`Queue::release`]). A task that panics or ends
//! unexpectedly is a fatal error (exit 1), never swallowed: what it held stays in Redis.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{Method, Valid};
use crate::emitter::{Backoff, Batch, BatchBuilder, Emitter, Outcome};
use crate::event::{BadEvent, Event, ParseOptions};
use crate::health::Health;
use crate::metrics::{DeadReason, Metrics, Summary};
use crate::queue::{DeadLetter, Queue, QueueError};

/// How long one blocking wait on an empty list lasts before it is renewed.
const BLOCK_FOR: Duration = Duration::from_secs(5);

/// Backoff between failed Redis calls.
const REDIS_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// How long returning the undelivered events may take after the drain, Redis answering
/// or not. With a second signal it is [`FORCED_RELEASE_BUDGET`] instead.
pub const RELEASE_BUDGET: Duration = Duration::from_secs(2);

/// The release budget after a second signal: the relay exits within this, leaving what
/// Redis could not take back in the in-flight list for lease recovery.
pub const FORCED_RELEASE_BUDGET: Duration = Duration::from_millis(500);

/// The settings the worker uses, taken from a validated configuration.
#[derive(Debug, Clone)]
struct Settings {
    claim_batch_size: usize,
    claim_max_bytes: usize,
    max_claimed_events: usize,
    max_claimed_bytes: usize,
    buffer_size: NonZeroUsize,
    byte_limit: NonZeroUsize,
    method: Method,
    flush_interval: Duration,
    max_requests_in_flight: usize,
    drain_timeout: Duration,
    parse: ParseOptions,
    max_element_bytes: usize,
}

impl Settings {
    fn from_config(config: &Valid) -> Settings {
        Settings {
            claim_batch_size: config.redis.claim_batch_size.get(),
            claim_max_bytes: config.redis.claim_max_bytes.get(),
            max_claimed_events: config.worker.max_claimed_events.get(),
            max_claimed_bytes: config.worker.max_claimed_bytes.get(),
            buffer_size: config.buffer_size(),
            byte_limit: config.byte_limit(),
            method: config.collector.method,
            flush_interval: Duration::from_millis(config.collector.flush_interval_ms),
            max_requests_in_flight: config.collector.max_requests_in_flight.get(),
            drain_timeout: Duration::from_millis(config.worker.drain_timeout_ms),
            parse: ParseOptions::for_method(
                config.collector.method,
                config.events.allow_unknown_fields,
            ),
            max_element_bytes: config.max_element_bytes().get(),
        }
    }
}

/// Where the worker is in its life. It only moves forward, and every task watches it.
#[derive(Debug, Default)]
struct Lifecycle {
    /// Shutdown asked or a fatal error: claim nothing more; send and acknowledge what is
    /// held.
    draining: CancellationToken,
    /// Drain deadline, second signal or fatal error: drop requests in flight; what is
    /// unresolved goes back to the list.
    abandoning: CancellationToken,
    /// The first fatal error, reported when the worker returns.
    fatal: Mutex<Option<crate::Error>>,
}

impl Lifecycle {
    fn drain(&self) {
        self.draining.cancel();
    }

    fn abandon(&self) {
        self.draining.cancel();
        self.abandoning.cancel();
    }

    /// Records a fatal error (the first one wins) and stops everything.
    fn fail(&self, error: crate::Error) {
        tracing::error!(%error, "fatal error; stopping");
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(error);
        }
        self.abandon();
    }

    fn take_fatal(&self) -> Option<crate::Error> {
        self.fatal.lock().ok().and_then(|mut fatal| fatal.take())
    }

    /// Turns a task's end into a fatal error if it panicked or failed.
    fn check<T>(
        &self,
        task: &'static str,
        joined: Result<Result<T, QueueError>, JoinError>,
    ) -> Option<T> {
        match joined {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.fail(error.into());
                None
            }
            Err(error) => {
                self.fail(crate::Error::TaskFailed {
                    task,
                    message: error.to_string(),
                });
                None
            }
        }
    }
}

/// Elements claimed in one round trip, starting at `first_position`.
#[derive(Debug)]
struct Claimed {
    first_position: u64,
    elements: Vec<Bytes>,
    /// The list held fewer events than the claim could take: send partial batches now.
    ran_dry: bool,
}

/// How some events ended: `(position, element bytes)` each.
#[derive(Debug)]
enum Resolution {
    /// The collector accepted the events at these positions.
    Delivered(Vec<(u64, usize)>),
    /// These positions go to the dead-letter list with these entries, for this reason.
    Dead(DeadReason, Vec<(u64, usize, Vec<u8>)>),
}

/// The fate of one claimed event.
#[derive(Debug)]
enum Slot {
    Pending,
    Delivered {
        bytes: usize,
    },
    Dead {
        bytes: usize,
        entry: Vec<u8>,
        reason: DeadReason,
    },
}

/// Claimed events not yet acknowledged, in claim order.
#[derive(Debug, Default)]
struct Window {
    /// Position of `slots[0]`: every earlier event is acknowledged.
    start: u64,
    slots: VecDeque<Slot>,
}

impl Window {
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

    fn apply(&mut self, resolution: Resolution) {
        match resolution {
            Resolution::Delivered(positions) => {
                for (position, bytes) in positions {
                    self.set(position, Slot::Delivered { bytes });
                }
            }
            Resolution::Dead(reason, entries) => {
                for (position, bytes, entry) in entries {
                    self.set(
                        position,
                        Slot::Dead {
                            bytes,
                            entry,
                            reason,
                        },
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

    /// Dead-letter entries among the first `count` slots.
    fn dead_entries(&self, count: usize) -> Vec<&[u8]> {
        self.slots
            .iter()
            .take(count)
            .filter_map(|slot| match slot {
                Slot::Dead { entry, .. } => Some(entry.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Counts the dead-letter entries among the first `count` slots, by reason (once
    /// they are written).
    fn count_dead(&self, count: usize, metrics: &Metrics) {
        for slot in self.slots.iter().take(count) {
            if let Slot::Dead { reason, .. } = slot {
                metrics.dead_lettered(*reason, 1);
            }
        }
    }

    /// Drops the first `count` slots; returns the element bytes they held.
    fn advance(&mut self, count: usize) -> usize {
        self.start += count as u64;
        self.slots
            .drain(..count)
            .map(|slot| match slot {
                Slot::Delivered { bytes } | Slot::Dead { bytes, .. } => bytes,
                Slot::Pending => 0,
            })
            .sum()
    }
}

/// What bounds the claimed events: permits for events and for bytes, taken by the
/// claimer and given back by the acker.
#[derive(Debug)]
struct ClaimPermits {
    events: Semaphore,
    bytes: Semaphore,
}

impl ClaimPermits {
    fn give_back(&self, events: usize, bytes: usize) {
        self.events.add_permits(events);
        self.bytes.add_permits(bytes);
    }
}

/// Runs the relay on a registered queue until `shutdown` resolves, then drains; `force`
/// cuts the drain short. Returns what was done.
// The tasks' inputs are spelled out one by one so that each task's signature says
// exactly what it touches.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    config: &Valid,
    queue: Arc<Queue>,
    emitter: Arc<Emitter>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    flush: Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> Result<Summary, crate::Error> {
    let settings = Settings::from_config(config);
    let lifecycle = Arc::new(Lifecycle::default());
    let permits = Arc::new(ClaimPermits {
        events: Semaphore::new(settings.max_claimed_events),
        bytes: Semaphore::new(settings.max_claimed_bytes),
    });
    let (claimed_tx, claimed_rx) = mpsc::channel(2);
    let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();

    let mut claimer = tokio::spawn(claim_loop(
        queue.clone(),
        claimed_tx,
        permits.clone(),
        emitter.healthy(),
        settings.clone(),
        lifecycle.clone(),
        metrics.clone(),
    ));
    let mut batcher = tokio::spawn(batch_loop(
        claimed_rx,
        resolved_tx,
        emitter,
        settings.clone(),
        queue.instance().to_owned(),
        lifecycle.clone(),
        metrics.clone(),
        flush,
    ));
    let mut acker = tokio::spawn(ack_loop(
        resolved_rx,
        queue.clone(),
        permits,
        lifecycle.clone(),
        metrics.clone(),
    ));
    let mut heartbeat = tokio::spawn(heartbeat_loop(
        queue.clone(),
        metrics.clone(),
        health.clone(),
        lifecycle.clone(),
    ));
    let sampler = tokio::spawn(sample_loop(queue.clone(), metrics.clone()));
    health.set_status("relaying");

    tokio::pin!(force, shutdown);
    let mut forced = false;
    let (mut position, mut batched, mut window) = (None, None, None);
    // Run until shutdown or a fatal error; a task that ends before then is one.
    let ended_early = tokio::select! {
        () = &mut shutdown => {
            health.stopping();
            tracing::info!(
                drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
                "shutdown requested: claiming stopped, draining what is held"
            );
            None
        }
        () = lifecycle.draining.cancelled() => None,
        joined = &mut claimer => {
            position = Some(lifecycle.check("claimer", joined));
            Some("claimer")
        }
        joined = &mut batcher => {
            batched = Some(lifecycle.check("batcher", joined.map(Ok::<(), QueueError>)));
            Some("batcher")
        }
        joined = &mut acker => {
            window = Some(lifecycle.check("acker", joined));
            Some("acker")
        }
        joined = &mut heartbeat => {
            lifecycle.check("heartbeat", joined);
            Some("heartbeat")
        }
    };
    if let Some(task) = ended_early
        && !lifecycle.draining.is_cancelled()
    {
        lifecycle.fail(crate::Error::TaskFailed {
            task,
            message: "ended unexpectedly".into(),
        });
    }
    lifecycle.drain();
    health.stopping();
    health.set_status("draining: sending what is held, then returning the rest to the list");

    // Drain until every task is done, the deadline passes or a second signal comes.
    let drain_deadline = tokio::time::sleep(settings.drain_timeout);
    tokio::pin!(drain_deadline);
    while position.is_none() || batched.is_none() || window.is_none() {
        tokio::select! {
            joined = &mut claimer, if position.is_none() => {
                position = Some(lifecycle.check("claimer", joined));
            }
            joined = &mut batcher, if batched.is_none() => {
                batched = Some(lifecycle.check("batcher", joined.map(Ok::<(), QueueError>)));
            }
            joined = &mut acker, if window.is_none() => {
                window = Some(lifecycle.check("acker", joined));
            }
            () = &mut drain_deadline, if !lifecycle.abandoning.is_cancelled() => {
                tracing::warn!("drain deadline reached; returning undelivered events to the list");
                lifecycle.abandon();
            }
            () = &mut force, if !forced => {
                forced = true;
                tracing::warn!("second signal: returning undelivered events to the list now");
                lifecycle.abandon();
            }
        }
    }

    let mut fatal = lifecycle.take_fatal();
    let needs_new_instance =
        matches!(&fatal, Some(crate::Error::Queue(e)) if e.needs_new_instance());
    if let Some(crate::Error::Queue(QueueError::StateMismatch(_))) = &fatal {
        metrics.state_mismatch();
        // Nothing positional is trusted: everything in flight goes back.
        match tokio::time::timeout(RELEASE_BUDGET, queue.abandon()).await {
            Ok(Ok(returned)) => tracing::warn!(
                returned,
                "returned everything this relay had in flight to the list; events it had \
                 delivered will arrive twice"
            ),
            _ => tracing::warn!(
                "could not return the in-flight list now; it goes back when this instance's \
                 lease expires"
            ),
        }
    } else if let (Some(Some(window)), Some(Some(position))) = (&window, position)
        && !needs_new_instance
    {
        let budget = if forced {
            FORCED_RELEASE_BUDGET
        } else {
            RELEASE_BUDGET
        };
        let released = tokio::select! {
            released = release(&queue, window, position, &metrics, budget) => released,
            () = &mut force, if !forced => Err(unreleased(&queue, "second signal".into())),
        };
        if let Err(error) = released {
            fatal.get_or_insert(error);
        }
    }
    heartbeat.abort();
    sampler.abort();
    health.unregistered();
    if needs_new_instance {
        metrics.nothing_in_flight();
    }
    let summary = metrics.summary();
    tracing::info!(
        claimed = summary.claimed,
        delivered = summary.delivered,
        dead_lettered = summary.dead_lettered,
        requeued = summary.requeued,
        redelivered = summary.redelivered,
        "relay stopped"
    );
    match fatal {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

fn unreleased(queue: &Queue, why: String) -> crate::Error {
    crate::Error::Unreleased {
        inflight_key: queue.keys().inflight(queue.instance()),
        lease_ttl_secs: queue.lease_ttl().as_secs(),
        why,
    }
}

/// Acknowledges every resolved event of `window` and returns every unresolved one (and
/// any claimed event the relay never saw) to the head of the list, in one script;
/// retries within `budget` if Redis does not answer.
async fn release(
    queue: &Queue,
    window: &Window,
    position: u64,
    metrics: &Metrics,
    budget: Duration,
) -> Result<(), crate::Error> {
    let resolved: Vec<bool> = window
        .slots
        .iter()
        .map(|slot| !matches!(slot, Slot::Pending))
        .collect();
    let dead = window.dead_entries(window.slots.len());
    let deadline = tokio::time::Instant::now() + budget;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = tokio::time::timeout_at(
            deadline,
            queue.release(window.start, &resolved, position, &dead),
        )
        .await;
        let error = match result {
            Ok(Ok(released)) => {
                metrics.requeued(released.requeued);
                metrics.nothing_in_flight();
                if released.state_mismatch {
                    tracing::warn!(
                        requeued = released.requeued,
                        "Redis had lost writes: every in-flight event went back to the list, \
                         delivered ones too (they will arrive twice)"
                    );
                } else {
                    window.count_dead(window.slots.len(), metrics);
                }
                if released.requeued > 0 {
                    tracing::info!(
                        requeued = released.requeued,
                        list = %queue.keys().list,
                        "returned undelivered events to the head of the list"
                    );
                }
                return Ok(());
            }
            // A retry after a lost reply, or another relay recovered us: either way the
            // events are back in the list.
            Ok(Err(QueueError::LeaseLost)) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("Redis did not answer within {} ms", budget.as_millis()),
        };
        if tokio::time::Instant::now() + REDIS_BACKOFF.initial >= deadline {
            return Err(unreleased(queue, error));
        }
        tracing::warn!(%error, attempt, "cannot return events to the list yet; retrying");
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + REDIS_BACKOFF.delay(attempt)).min(deadline),
        )
        .await;
    }
}

/// Claims while running; returns the claim position reached (the count of events this
/// instance claimed, as far as it knows).
async fn claim_loop(
    queue: Arc<Queue>,
    claimed_tx: mpsc::Sender<Claimed>,
    permits: Arc<ClaimPermits>,
    mut collector_healthy: watch::Receiver<bool>,
    settings: Settings,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
) -> Result<u64, QueueError> {
    let stop = &lifecycle.draining;
    let mut position: u64 = 0;
    let mut blocking = None;
    let mut failures: u32 = 0;
    loop {
        // While the collector fails, claim nothing more: the backlog stays in Redis.
        // Then wait for room: one event, and the bytes one claim may bring.
        let room = async {
            let _ = collector_healthy.wait_for(|ok| *ok).await;
            let first = permits.events.acquire().await.ok()?;
            let bytes = permits
                .bytes
                .acquire_many(settings.claim_max_bytes as u32)
                .await
                .ok()?;
            first.forget();
            bytes.forget();
            let extra = (settings.claim_batch_size - 1).min(permits.events.available_permits());
            if let Ok(more) = permits.events.try_acquire_many(extra as u32) {
                more.forget();
            }
            Some(1 + extra)
        };
        let wanted = tokio::select! {
            wanted = room => wanted.unwrap_or(0),
            () = stop.cancelled() => return Ok(position),
        };
        if wanted == 0 {
            return Ok(position); // the semaphores never close; defensive
        }

        // Cancelled by shutdown, a claim that ran in Redis is not lost: `release` reads
        // Redis's own copy of the in-flight list.
        let claim = tokio::select! {
            claim = queue.claim(
                position,
                wanted,
                settings.max_element_bytes,
                settings.claim_max_bytes,
            ) => claim,
            () = stop.cancelled() => return Ok(position),
        };
        let claim = match claim {
            Ok(claim) => {
                failures = 0;
                claim
            }
            Err(error) if error.needs_new_instance() => {
                // Stop the others first, so that their ending is not taken for a
                // failure of their own; the error itself is reported when joined.
                lifecycle.abandon();
                return Err(error);
            }
            Err(error) => {
                permits.give_back(wanted, settings.claim_max_bytes);
                metrics.redis_error("claim");
                failures += 1;
                tracing::warn!(%error, attempt = failures, "cannot claim events from Redis; retrying");
                tokio::select! {
                    () = tokio::time::sleep(REDIS_BACKOFF.delay(failures)) => continue,
                    () = stop.cancelled() => return Ok(position),
                }
            }
        };
        if claim.oversized > 0 {
            metrics.dead_lettered(DeadReason::Oversized, claim.oversized);
            tracing::warn!(
                count = claim.oversized,
                limit = settings.max_element_bytes,
                "elements over events.max_element_bytes went to the dead-letter list"
            );
        }
        let count = claim.elements.len();
        let bytes: usize = claim.elements.iter().map(Bytes::len).sum();
        // Give back what the claim did not use; take what a resent claim brought more.
        let take_more = |semaphore: &Semaphore, have: usize, used: usize| {
            if used < have {
                semaphore.add_permits(have - used);
            } else if let Ok(more) = semaphore.try_acquire_many((used - have) as u32) {
                more.forget();
            }
        };
        take_more(&permits.events, wanted, count);
        take_more(&permits.bytes, settings.claim_max_bytes, bytes);
        if count > 0 {
            metrics.claimed(count as u64, bytes as u64);
            let claimed = Claimed {
                first_position: position,
                elements: claim.elements,
                ran_dry: claim.ran_dry,
            };
            position += count as u64;
            if claimed_tx.send(claimed).await.is_err() {
                return Ok(position);
            }
        }
        if !claim.ran_dry {
            continue; // more to take at once
        }
        if count > 0 {
            continue; // claim again: if the list is empty now, that claim says so
        }
        // Nothing to claim: let the batcher send what it holds, then block in Redis.
        let flush = Claimed {
            first_position: position,
            elements: Vec::new(),
            ran_dry: true,
        };
        if claimed_tx.send(flush).await.is_err() {
            return Ok(position);
        }
        if let Err(error) = wait_for_events(&queue, &mut blocking, stop).await {
            blocking = None;
            failures += 1;
            tracing::warn!(%error, attempt = failures, "cannot wait on the Redis list; retrying");
            tokio::select! {
                () = tokio::time::sleep(REDIS_BACKOFF.delay(failures)) => {}
                () = stop.cancelled() => return Ok(position),
            }
        }
    }
}

/// Blocks until the list has an element, `BLOCK_FOR` passes, or `stop` fires.
async fn wait_for_events(
    queue: &Queue,
    blocking: &mut Option<crate::queue::BlockingConnection>,
    stop: &CancellationToken,
) -> Result<(), QueueError> {
    let conn = match blocking {
        Some(conn) => conn,
        // Connecting waits on Redis too (a frozen one answers nothing): cancellable.
        None => tokio::select! {
            conn = queue.blocking_connection(BLOCK_FOR) => blocking.insert(conn?),
            () = stop.cancelled() => return Ok(()),
        },
    };
    tokio::select! {
        result = queue.wait_for_events(conn, BLOCK_FOR) => result,
        // Abandoning the wait is harmless: it moves nothing.
        () = stop.cancelled() => Ok(()),
    }
}

/// Parses claimed elements, fills batches, and runs one sender task per batch; ends
/// when claiming has stopped and every sender is done.
#[allow(clippy::too_many_arguments)]
async fn batch_loop(
    mut claimed_rx: mpsc::Receiver<Claimed>,
    resolved_tx: mpsc::UnboundedSender<Resolution>,
    emitter: Arc<Emitter>,
    settings: Settings,
    instance: String,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    flush: Arc<tokio::sync::Notify>,
) {
    let mut builder = BatchBuilder::new(settings.method, settings.buffer_size, settings.byte_limit);
    let mut senders = Senders {
        emitter,
        requests: Arc::new(Semaphore::new(settings.max_requests_in_flight)),
        running: JoinSet::new(),
        resolved_tx: resolved_tx.clone(),
        lifecycle: lifecycle.clone(),
        instance: Arc::from(instance.as_str()),
        metrics,
    };
    // When the partial batch in `builder` must be sent at the latest.
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let flush_timer = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let claimed = tokio::select! {
            claimed = claimed_rx.recv() => match claimed {
                Some(claimed) => claimed,
                None => break,
            },
            () = flush_timer => {
                flush_at = None;
                if let Some(batch) = builder.take() {
                    senders.start(batch).await;
                }
                continue;
            }
            () = flush.notified() => {
                flush_at = None;
                let held = builder.pending();
                if let Some(batch) = builder.take() {
                    senders.start(batch).await;
                }
                tracing::info!(events = held, "flush requested: partial batch sent");
                continue;
            }
            Some(joined) = senders.running.join_next(), if !senders.running.is_empty() => {
                senders.check(joined);
                continue;
            }
        };
        let mut dead = Vec::new();
        for (offset, raw) in claimed.elements.into_iter().enumerate() {
            let position = claimed.first_position + offset as u64;
            let parsed = if raw.len() > settings.max_element_bytes {
                Err(BadEvent::TooLarge {
                    size: raw.len(),
                    limit: settings.max_element_bytes,
                })
            } else {
                Event::parse(raw.clone(), settings.parse)
            };
            let (kind, reason) = match parsed.map(|event| builder.push(position, event)) {
                Ok(Ok(Some(batch))) => {
                    flush_at = None;
                    senders.start(batch).await;
                    continue;
                }
                Ok(Ok(None)) => continue,
                Ok(Err((_, too_large))) => (DeadReason::Unsendable, too_large.to_string()),
                Err(bad @ BadEvent::TooLarge { .. }) => (DeadReason::Oversized, bad.to_string()),
                Err(bad @ BadEvent::UndecodableString(_)) => {
                    (DeadReason::Unsendable, bad.to_string())
                }
                Err(bad) => (DeadReason::Malformed, bad.to_string()),
            };
            dead.push((position, kind, reason, raw));
        }
        if builder.pending() > 0 && flush_at.is_none() {
            flush_at = Some(tokio::time::Instant::now() + settings.flush_interval);
        }
        if !dead.is_empty() {
            tracing::warn!(
                count = dead.len(),
                first_reason = %dead[0].2,
                "elements cannot be relayed; dead-lettering them"
            );
            for (position, kind, reason, raw) in dead {
                let entry = DeadLetter::new(reason, None, &senders.instance).encode(&raw);
                let _ =
                    resolved_tx.send(Resolution::Dead(kind, vec![(position, raw.len(), entry)]));
            }
        }
        if claimed.ran_dry
            && let Some(batch) = builder.take()
        {
            flush_at = None;
            senders.start(batch).await;
        }
    }
    // Claiming stopped: send what is held, then wait for every sender.
    if let Some(batch) = builder.take() {
        senders.start(batch).await;
    }
    while let Some(joined) = senders.running.join_next().await {
        senders.check(joined);
    }
}

/// The sender tasks, at most `max_requests_in_flight` at once.
struct Senders {
    emitter: Arc<Emitter>,
    requests: Arc<Semaphore>,
    running: JoinSet<()>,
    resolved_tx: mpsc::UnboundedSender<Resolution>,
    lifecycle: Arc<Lifecycle>,
    instance: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Senders {
    /// Starts a sender for `batch` once a request slot is free. If the relay is
    /// abandoning, the batch is not sent: its events stay pending and go back to the list.
    async fn start(&mut self, batch: Batch) {
        let permit = tokio::select! {
            permit = self.requests.clone().acquire_owned() => permit,
            () = self.lifecycle.abandoning.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        while let Some(joined) = self.running.try_join_next() {
            self.check(joined);
        }
        let emitter = self.emitter.clone();
        let resolved_tx = self.resolved_tx.clone();
        let lifecycle = self.lifecycle.clone();
        let instance = self.instance.clone();
        let metrics = self.metrics.clone();
        self.running.spawn(async move {
            send_until_resolved(
                batch,
                &emitter,
                &resolved_tx,
                &lifecycle,
                &instance,
                &metrics,
            )
            .await;
            drop(permit);
        });
    }

    /// A sender that panicked is a fatal error: its events would never be resolved.
    fn check(&self, joined: Result<(), JoinError>) {
        if let Err(error) = joined {
            self.lifecycle.fail(crate::Error::TaskFailed {
                task: "sender",
                message: error.to_string(),
            });
        }
    }
}

/// Sends `batch` (split in halves as often as the emitter asks) until every event is
/// delivered or dead-lettered, or the relay abandons it.
async fn send_until_resolved(
    batch: Batch,
    emitter: &Emitter,
    resolved_tx: &mpsc::UnboundedSender<Resolution>,
    lifecycle: &Lifecycle,
    instance: &str,
    metrics: &Metrics,
) {
    let mut parts = vec![batch];
    while let Some(batch) = parts.pop() {
        let resolution = match emitter.send(&batch, &lifecycle.abandoning).await {
            Outcome::Delivered => {
                metrics.delivered(batch.len() as u64);
                Resolution::Delivered(
                    batch
                        .positions
                        .iter()
                        .zip(&batch.events)
                        .map(|(&position, event)| (position, event.raw().len()))
                        .collect(),
                )
            }
            Outcome::Rejected {
                status,
                reason,
                kind,
            } => {
                tracing::warn!(
                    events = batch.len(),
                    status,
                    %reason,
                    "collector refused a batch for good; dead-lettering it"
                );
                let meta = DeadLetter::new(reason, status, instance);
                Resolution::Dead(
                    kind,
                    batch
                        .positions
                        .iter()
                        .zip(&batch.events)
                        .map(|(&position, event)| {
                            (position, event.raw().len(), meta.encode(event.raw()))
                        })
                        .collect(),
                )
            }
            Outcome::Split { status } => {
                tracing::warn!(
                    events = batch.len(),
                    status,
                    "a batch cannot succeed as a whole; sending each half on its own"
                );
                let (first, second) = batch.split();
                parts.push(second);
                parts.push(first);
                continue;
            }
            Outcome::Abandoned => return,
        };
        let _ = resolved_tx.send(resolution);
    }
}

/// Applies resolutions to the window in claim order and acknowledges the resolved
/// prefix; once the relay abandons, it only collects them for the final release.
async fn ack_loop(
    mut resolved_rx: mpsc::UnboundedReceiver<Resolution>,
    queue: Arc<Queue>,
    permits: Arc<ClaimPermits>,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
) -> Result<Window, QueueError> {
    let mut window = Window::default();
    while let Some(resolution) = resolved_rx.recv().await {
        window.apply(resolution);
        while let Ok(more) = resolved_rx.try_recv() {
            window.apply(more);
        }
        let count = window.resolved_prefix();
        if count == 0 || lifecycle.abandoning.is_cancelled() {
            continue;
        }
        let acked_total = window.start + count as u64;
        let dead = window.dead_entries(count);
        let mut attempt = 0;
        let acked = loop {
            let result = tokio::select! {
                result = queue.ack(window.start, acked_total, &dead) => result,
                // What is not acknowledged stays in the window; the release decides.
                () = lifecycle.abandoning.cancelled() => break false,
            };
            match result {
                Ok(()) => break true,
                Err(error) if error.needs_new_instance() => {
                    // Stop the others first, so that their ending is not taken for a
                    // failure of their own; the error itself is reported when joined.
                    lifecycle.abandon();
                    return Err(error);
                }
                Err(error) => {
                    attempt += 1;
                    metrics.redis_error("ack");
                    tracing::warn!(%error, attempt, "cannot acknowledge events in Redis; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(REDIS_BACKOFF.delay(attempt)) => {}
                        () = lifecycle.abandoning.cancelled() => break false,
                    }
                }
            }
        };
        if !acked {
            continue;
        }
        tracing::debug!(acked = count, dead_lettered = dead.len(), "acknowledged");
        window.count_dead(count, &metrics);
        let bytes = window.advance(count);
        permits.give_back(count, bytes);
        metrics.settled(count as u64, bytes as u64);
    }
    Ok(window)
}

/// How often the list lengths and the head event's age are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples the list, the dead-letter list and the head event's age for the metrics.
async fn sample_loop(queue: Arc<Queue>, metrics: Arc<Metrics>) {
    loop {
        match queue.sample().await {
            Ok(sample) => {
                let age = sample.head_dtm_millis.map_or(0.0, |dtm| {
                    (crate::emitter::now_millis().saturating_sub(dtm)) as f64 / 1e3
                });
                metrics.sampled(sample.list, sample.dead, age);
            }
            Err(_) => metrics.redis_error("sample"),
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Renews the lease and recovers dead relays' events every third of the lease TTL.
async fn heartbeat_loop(
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    lifecycle: Arc<Lifecycle>,
) -> Result<(), QueueError> {
    let period = queue.lease_ttl() / 3;
    health.lease_renewed(); // registered just before the worker started
    loop {
        health.loop_turned();
        tokio::time::sleep(period).await;
        health.loop_turned();
        match tokio::time::timeout(period, queue.heartbeat()).await {
            Ok(Ok(())) => {
                health.lease_renewed();
                metrics.lease_renewed();
            }
            Ok(Err(QueueError::LeaseLost)) => {
                metrics.lease_lost();
                health.unregistered();
                lifecycle.fail(QueueError::LeaseLost.into());
                return Err(QueueError::LeaseLost);
            }
            Ok(Err(error)) => {
                metrics.redis_error("heartbeat");
                tracing::warn!(%error, "cannot renew the lease; retrying");
            }
            Err(_) => {
                metrics.redis_error("heartbeat");
                tracing::warn!("Redis did not answer the lease renewal in time; retrying");
            }
        }
        if let Err(error) = recover_expired(&queue, &metrics).await {
            tracing::warn!(%error, "cannot check for expired relays");
        }
    }
}

/// Returns the in-flight events of relays whose lease expired to the list, and counts
/// them as redelivered.
pub(crate) async fn recover_expired(queue: &Queue, metrics: &Metrics) -> Result<(), QueueError> {
    let recovered = queue.recover_expired().await?;
    if recovered.instances > 0 {
        metrics.redelivered(recovered.events);
        tracing::warn!(
            instances = recovered.instances,
            events = recovered.events,
            "returned the in-flight events of relays whose lease expired; \
             those they had delivered will arrive twice"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_acknowledges_only_the_resolved_prefix() {
        let mut window = Window::default();
        window.apply(Resolution::Delivered(vec![(1, 10), (2, 20)]));
        assert_eq!(window.resolved_prefix(), 0, "position 0 is still pending");
        window.apply(Resolution::Dead(
            DeadReason::Malformed,
            vec![(0, 5, b"entry".to_vec())],
        ));
        assert_eq!(window.resolved_prefix(), 3);
        assert_eq!(window.dead_entries(3), vec![b"entry".as_slice()]);
        assert_eq!(
            window.advance(3),
            35,
            "the bytes of the acknowledged events"
        );
        window.apply(Resolution::Delivered(vec![(4, 1)]));
        assert_eq!(window.start, 3);
        assert_eq!(window.resolved_prefix(), 0);
        window.apply(Resolution::Delivered(vec![(3, 1)]));
        assert_eq!(window.resolved_prefix(), 2);
    }
}
