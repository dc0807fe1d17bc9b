//! The loop joining the queue and the emitter, and the graceful drain on shutdown.
//!
//! Four tasks, connected by channels:
//!
//! ```text
//! claimer --Claimed--> batcher --spawns--> senders --Resolution--> acker
//!    ^                    |                                         |
//!    |                    +--Resolution (bad elements)------------->|
//!    +---------- claim permits, returned as events are acknowledged -+
//! heartbeat: renews the lease, recovers dead relays' events
//! ```
//!
//! - **claimer** claims up to `claim_batch_size` events per round trip while it holds
//!   claim permits (`max_claimed_events` in all: the memory bound) and the collector is
//!   healthy; on an empty list it blocks in Redis instead of polling, after telling the
//!   batcher the list ran dry so that a lone event is sent at once.
//! - **batcher** parses elements, sends bad ones to the dead-letter path, fills batches by
//!   count and bytes and starts a sender per batch (at most `max_requests_in_flight`).
//! - **senders** retry their batch until it is accepted or rejected, or the drain
//!   deadline passes.
//! - **acker** keeps the window of claimed events in claim order (each has a *position*:
//!   the count of events this instance claimed before it) and acknowledges the resolved
//!   prefix in one script call, writing dead-letter entries in the same call.
//!
//! Shutdown: claiming stops at once; the batcher sends what it holds; senders get until
//! the drain deadline (or a second signal); then every unresolved event goes back to the
//! head of the list in its original order ([`Queue::release`]).

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Method};
use crate::emitter::{Backoff, Batch, BatchBuilder, Emitter, Outcome};
use crate::event::{BadEvent, Event, ParseOptions};
use crate::queue::{DeadLetter, Queue, QueueError};

/// How long one blocking wait on an empty list lasts before it is renewed.
const BLOCK_FOR: Duration = Duration::from_secs(5);

/// Backoff between failed Redis calls.
const REDIS_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events claimed from the list.
    pub claimed: AtomicU64,
    /// Events the collector accepted.
    pub delivered: AtomicU64,
    /// Events written to the dead-letter list.
    pub dead_lettered: AtomicU64,
    /// Events returned to the head of the list at shutdown.
    pub requeued: AtomicU64,
    /// HTTP requests that the collector accepted.
    pub requests: AtomicU64,
    /// Events returned to the list from the in-flight lists of relays whose lease
    /// expired. Some of them may have reached the collector already: this bounds the
    /// redeliveries (duplicates) a crash caused.
    pub redelivered: AtomicU64,
}

/// What one run did, returned by [`crate::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events claimed from the list.
    pub claimed: u64,
    /// Events the collector accepted.
    pub delivered: u64,
    /// Events written to the dead-letter list.
    pub dead_lettered: u64,
    /// Events returned to the head of the list at shutdown.
    pub requeued: u64,
    /// Events this relay returned from dead relays' in-flight lists (possible duplicates).
    pub redelivered: u64,
}

impl Stats {
    /// The counters as they stand.
    pub fn summary(&self) -> Summary {
        Summary {
            redelivered: self.redelivered.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
        }
    }
}

/// The settings the worker uses, taken from [`Config`].
#[derive(Debug, Clone)]
struct Settings {
    claim_batch_size: usize,
    max_claimed_events: usize,
    method: Method,
    buffer_size: NonZeroUsize,
    byte_limit: NonZeroUsize,
    max_requests_in_flight: usize,
    drain_timeout: Duration,
    parse: ParseOptions,
    max_element_bytes: usize,
}

impl Settings {
    fn from_config(config: &Config) -> Settings {
        Settings {
            claim_batch_size: config.redis.claim_batch_size.get(),
            max_claimed_events: config.worker.max_claimed_events.get(),
            method: config.collector.method,
            buffer_size: config.collector.buffer_size.expect("validated"),
            byte_limit: config.collector.byte_limit.expect("validated"),
            max_requests_in_flight: config.collector.max_requests_in_flight.get(),
            drain_timeout: Duration::from_millis(config.worker.drain_timeout_ms),
            parse: ParseOptions {
                allow_unknown_fields: config.events.allow_unknown_fields,
            },
            max_element_bytes: config.events.max_element_bytes.get(),
        }
    }
}

/// Elements claimed in one round trip, starting at `first_position`.
#[derive(Debug)]
struct Claimed {
    first_position: u64,
    elements: Vec<Bytes>,
    /// The list held fewer events than asked for: send partial batches now.
    ran_dry: bool,
}

/// How some events ended.
#[derive(Debug)]
enum Resolution {
    /// The collector accepted the events at these positions.
    Delivered(Vec<u64>),
    /// These positions go to the dead-letter list with these entries.
    Dead(Vec<(u64, Vec<u8>)>),
}

/// The fate of one claimed event.
#[derive(Debug)]
enum Slot {
    Pending,
    Delivered,
    Dead(Vec<u8>),
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
                for position in positions {
                    self.set(position, Slot::Delivered);
                }
            }
            Resolution::Dead(entries) => {
                for (position, entry) in entries {
                    self.set(position, Slot::Dead(entry));
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
                Slot::Dead(entry) => Some(entry.as_slice()),
                _ => None,
            })
            .collect()
    }

    fn advance(&mut self, count: usize) {
        self.slots.drain(..count);
        self.start += count as u64;
    }
}

/// Runs the relay on a registered queue until `shutdown` resolves, then drains; `force`
/// cuts the drain short. Returns what was done.
pub(crate) async fn run(
    config: &Config,
    queue: Arc<Queue>,
    emitter: Arc<Emitter>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> Result<Summary, crate::Error> {
    let settings = Settings::from_config(config);
    let stop_claiming = CancellationToken::new();
    let give_up = CancellationToken::new();
    let stop_heartbeat = CancellationToken::new();
    let claim_permits = Arc::new(Semaphore::new(settings.max_claimed_events));
    let (claimed_tx, claimed_rx) = mpsc::channel(2);
    let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();

    let claimer = tokio::spawn(claim_loop(
        queue.clone(),
        claimed_tx,
        claim_permits.clone(),
        emitter.healthy(),
        settings.clone(),
        stop_claiming.clone(),
        stats.clone(),
    ));
    let batcher = tokio::spawn(batch_loop(
        claimed_rx,
        resolved_tx,
        emitter,
        settings.clone(),
        queue.instance().to_owned(),
        give_up.clone(),
        stats.clone(),
    ));
    let acker = tokio::spawn(ack_loop(
        resolved_rx,
        queue.clone(),
        claim_permits,
        give_up.clone(),
        stop_claiming.clone(),
        stats.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat_loop(
        queue.clone(),
        stats.clone(),
        stop_heartbeat.clone(),
        stop_claiming.clone(),
        give_up.clone(),
    ));

    tokio::select! {
        () = shutdown => tracing::info!(
            drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
            "shutdown requested: claiming stopped, draining what is held"
        ),
        () = stop_claiming.cancelled() => tracing::error!("stopping after a fatal error"),
    }
    stop_claiming.cancel();

    let drained = async { (claimer.await, batcher.await, acker.await) };
    tokio::pin!(drained);
    let deadline = async {
        tokio::select! {
            () = tokio::time::sleep(settings.drain_timeout) => tracing::warn!(
                "drain deadline reached; returning undelivered events to the list"
            ),
            () = force => tracing::warn!(
                "second signal: returning undelivered events to the list now"
            ),
        }
    };
    let (claimed, batched, acked) = tokio::select! {
        results = &mut drained => results,
        () = deadline => {
            give_up.cancel();
            drained.await
        }
    };
    give_up.cancel();

    let mut fatal: Option<crate::Error> = None;
    if let Err(e) = claimed.expect("claimer task panicked") {
        fatal = Some(e.into());
    }
    batched.expect("batcher task panicked");
    let window = match acked.expect("acker task panicked") {
        Ok(window) => Some(window),
        Err(e) => {
            fatal.get_or_insert(e.into());
            None
        }
    };

    let released = match window {
        Some(window) => release(&queue, &window, &stats).await,
        None => Ok(()),
    };
    stop_heartbeat.cancel();
    if let Err(e) = heartbeat.await.expect("heartbeat task panicked") {
        fatal.get_or_insert(e.into());
    }
    let summary = stats.summary();
    tracing::info!(
        claimed = summary.claimed,
        delivered = summary.delivered,
        dead_lettered = summary.dead_lettered,
        requeued = summary.requeued,
        redelivered = summary.redelivered,
        "relay stopped"
    );
    match (fatal, released) {
        (Some(error), _) | (None, Err(error)) => Err(error),
        (None, Ok(())) => Ok(summary),
    }
}

/// Returns every unresolved event of `window` (and any claimed event the relay never
/// saw) to the head of the list; retries a few times if Redis is unavailable.
async fn release(queue: &Queue, window: &Window, stats: &Stats) -> Result<(), crate::Error> {
    let resolved: Vec<bool> = window
        .slots
        .iter()
        .map(|slot| !matches!(slot, Slot::Pending))
        .collect();
    let dead = window.dead_entries(window.slots.len());
    let dead_count = dead.len() as u64;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match queue.release(window.start, &resolved, &dead).await {
            Ok(requeued) => {
                stats.requeued.fetch_add(requeued, Ordering::Relaxed);
                stats.dead_lettered.fetch_add(dead_count, Ordering::Relaxed);
                if requeued > 0 {
                    tracing::info!(
                        requeued,
                        list = %queue.keys().list,
                        "returned undelivered events to the head of the list"
                    );
                }
                return Ok(());
            }
            // A retry after a lost reply, or another relay recovered us: either way the
            // events are back in the list.
            Err(QueueError::LeaseLost) => return Ok(()),
            Err(error) if attempt >= 5 => {
                return Err(crate::Error::Unreleased {
                    inflight_key: queue.keys().inflight(queue.instance()),
                    lease_ttl_secs: queue.lease_ttl().as_secs(),
                    source: error,
                });
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "cannot return events to the list yet; retrying");
                tokio::time::sleep(REDIS_BACKOFF.delay(attempt)).await;
            }
        }
    }
}

async fn claim_loop(
    queue: Arc<Queue>,
    claimed_tx: mpsc::Sender<Claimed>,
    permits: Arc<Semaphore>,
    mut collector_healthy: watch::Receiver<bool>,
    settings: Settings,
    stop: CancellationToken,
    stats: Arc<Stats>,
) -> Result<(), QueueError> {
    let mut position: u64 = 0;
    let mut blocking = None;
    let mut failures: u32 = 0;
    loop {
        // While the collector fails, claim nothing more: the backlog stays in Redis.
        tokio::select! {
            healthy = collector_healthy.wait_for(|ok| *ok) => { let _ = healthy; }
            () = stop.cancelled() => return Ok(()),
        }
        let first = tokio::select! {
            permit = permits.acquire() => permit.expect("never closed"),
            () = stop.cancelled() => return Ok(()),
        };
        first.forget();
        let extra = (settings.claim_batch_size - 1).min(permits.available_permits());
        if let Ok(more) = permits.try_acquire_many(extra as u32) {
            more.forget();
        }
        let wanted = 1 + extra;

        // Not cancelled by `stop`: a claim that ran in Redis must reach the window (a
        // lost one would still be returned by `release`, which reads Redis's copy).
        let (elements, oversized) = match queue
            .claim(position, wanted, settings.max_element_bytes)
            .await
        {
            Ok(claim) => {
                failures = 0;
                if claim.oversized > 0 {
                    stats
                        .dead_lettered
                        .fetch_add(claim.oversized, Ordering::Relaxed);
                    tracing::warn!(
                        count = claim.oversized,
                        limit = settings.max_element_bytes,
                        "elements over events.max_element_bytes went to the dead-letter list"
                    );
                }
                (claim.elements, claim.oversized as usize)
            }
            Err(QueueError::LeaseLost) => {
                stop.cancel();
                return Err(QueueError::LeaseLost);
            }
            Err(error) => {
                permits.add_permits(wanted);
                failures += 1;
                tracing::warn!(%error, attempt = failures, "cannot claim events from Redis; retrying");
                tokio::select! {
                    () = tokio::time::sleep(REDIS_BACKOFF.delay(failures)) => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
        };
        let count = elements.len();
        match count.cmp(&wanted) {
            std::cmp::Ordering::Less => permits.add_permits(wanted - count),
            std::cmp::Ordering::Greater => {
                // Events of an earlier claim whose reply was lost came back too.
                if let Ok(more) = permits.try_acquire_many((count - wanted) as u32) {
                    more.forget();
                }
            }
            std::cmp::Ordering::Equal => {}
        }
        let ran_dry = count + oversized < wanted;
        if count > 0 {
            stats.claimed.fetch_add(count as u64, Ordering::Relaxed);
            let claimed = Claimed {
                first_position: position,
                elements,
                ran_dry,
            };
            position += count as u64;
            if claimed_tx.send(claimed).await.is_err() {
                return Ok(());
            }
            // Claim again at once; if the list is empty now, that claim finds nothing.
            continue;
        }
        // Nothing to claim: let the batcher send what it holds, then block in Redis.
        let flush = Claimed {
            first_position: position,
            elements: Vec::new(),
            ran_dry: true,
        };
        if claimed_tx.send(flush).await.is_err() {
            return Ok(());
        }
        if let Err(error) = wait_for_events(&queue, &mut blocking, &stop).await {
            blocking = None;
            failures += 1;
            tracing::warn!(%error, attempt = failures, "cannot wait on the Redis list; retrying");
            tokio::select! {
                () = tokio::time::sleep(REDIS_BACKOFF.delay(failures)) => {}
                () = stop.cancelled() => return Ok(()),
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
        None => blocking.insert(queue.blocking_connection(BLOCK_FOR).await?),
    };
    tokio::select! {
        result = queue.wait_for_events(conn, BLOCK_FOR) => result,
        // Abandoning the wait is harmless: it moves nothing.
        () = stop.cancelled() => Ok(()),
    }
}

/// Starts senders, at most `max_requests_in_flight` at once.
struct Dispatcher {
    emitter: Arc<Emitter>,
    requests: Arc<Semaphore>,
    sending: JoinSet<()>,
    resolved_tx: mpsc::UnboundedSender<Resolution>,
    give_up: CancellationToken,
    instance: String,
    stats: Arc<Stats>,
}

impl Dispatcher {
    async fn dispatch(&mut self, batch: Batch) {
        let permit = tokio::select! {
            permit = self.requests.clone().acquire_owned() => permit.expect("never closed"),
            // Not sent: its events stay pending and go back to the list.
            () = self.give_up.cancelled() => return,
        };
        while self.sending.try_join_next().is_some() {}
        let emitter = self.emitter.clone();
        let resolved_tx = self.resolved_tx.clone();
        let give_up = self.give_up.clone();
        let instance = self.instance.clone();
        let stats = self.stats.clone();
        self.sending.spawn(async move {
            let outcome = emitter.send(&batch, &give_up).await;
            drop(permit);
            let resolution = match outcome {
                Outcome::Delivered => {
                    stats
                        .delivered
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    Resolution::Delivered(batch.positions)
                }
                Outcome::Rejected { status, reason } => {
                    let meta = DeadLetter::new(reason, status, &instance);
                    Resolution::Dead(
                        batch
                            .positions
                            .iter()
                            .zip(&batch.events)
                            .map(|(&position, event)| (position, meta.encode(event.raw())))
                            .collect(),
                    )
                }
                Outcome::Abandoned => return,
            };
            let _ = resolved_tx.send(resolution);
        });
    }

    async fn finish(mut self) {
        while self.sending.join_next().await.is_some() {}
    }
}

async fn batch_loop(
    mut claimed_rx: mpsc::Receiver<Claimed>,
    resolved_tx: mpsc::UnboundedSender<Resolution>,
    emitter: Arc<Emitter>,
    settings: Settings,
    instance: String,
    give_up: CancellationToken,
    stats: Arc<Stats>,
) {
    let mut builder = BatchBuilder::new(settings.method, settings.buffer_size, settings.byte_limit);
    let mut dispatcher = Dispatcher {
        emitter,
        requests: Arc::new(Semaphore::new(settings.max_requests_in_flight)),
        sending: JoinSet::new(),
        resolved_tx: resolved_tx.clone(),
        give_up,
        instance,
        stats,
    };
    while let Some(claimed) = claimed_rx.recv().await {
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
            let reason = match parsed.map(|event| builder.push(position, event)) {
                Ok(Ok(Some(batch))) => {
                    dispatcher.dispatch(batch).await;
                    continue;
                }
                Ok(Ok(None)) => continue,
                Ok(Err((_, too_large))) => too_large.to_string(),
                Err(bad) => bad.to_string(),
            };
            dead.push((position, reason, raw));
        }
        if !dead.is_empty() {
            tracing::warn!(
                count = dead.len(),
                first_reason = %dead[0].1,
                "elements cannot be relayed; dead-lettering them"
            );
            let entries = dead
                .into_iter()
                .map(|(position, reason, raw)| {
                    (
                        position,
                        DeadLetter::new(reason, None, &dispatcher.instance).encode(&raw),
                    )
                })
                .collect();
            let _ = resolved_tx.send(Resolution::Dead(entries));
        }
        if claimed.ran_dry
            && let Some(batch) = builder.take()
        {
            dispatcher.dispatch(batch).await;
        }
    }
    // Claiming stopped: send what is held, then wait for every sender.
    if let Some(batch) = builder.take() {
        dispatcher.dispatch(batch).await;
    }
    dispatcher.finish().await;
}

async fn ack_loop(
    mut resolved_rx: mpsc::UnboundedReceiver<Resolution>,
    queue: Arc<Queue>,
    claim_permits: Arc<Semaphore>,
    give_up: CancellationToken,
    stop_claiming: CancellationToken,
    stats: Arc<Stats>,
) -> Result<Window, QueueError> {
    let mut window = Window::default();
    while let Some(resolution) = resolved_rx.recv().await {
        window.apply(resolution);
        while let Ok(more) = resolved_rx.try_recv() {
            window.apply(more);
        }
        let count = window.resolved_prefix();
        if count == 0 {
            continue;
        }
        let acked_total = window.start + count as u64;
        let dead = window.dead_entries(count);
        let mut attempt = 0;
        loop {
            match queue.ack(acked_total, &dead).await {
                Ok(()) => break,
                Err(QueueError::LeaseLost) => {
                    stop_claiming.cancel();
                    give_up.cancel();
                    return Err(QueueError::LeaseLost);
                }
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "cannot acknowledge events in Redis; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(REDIS_BACKOFF.delay(attempt)) => {}
                        // Unacknowledged events stay in the window; release() decides.
                        () = give_up.cancelled() => return Ok(window),
                    }
                }
            }
        }
        tracing::debug!(acked = count, dead_lettered = dead.len(), "acknowledged");
        stats
            .dead_lettered
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        window.advance(count);
        claim_permits.add_permits(count);
    }
    Ok(window)
}

async fn heartbeat_loop(
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    stop_claiming: CancellationToken,
    give_up: CancellationToken,
) -> Result<(), QueueError> {
    let period = queue.lease_ttl() / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return Ok(()),
        }
        match queue.heartbeat().await {
            Ok(()) => {}
            Err(QueueError::LeaseLost) => {
                tracing::error!("lease lost: another relay recovered this relay's events");
                stop_claiming.cancel();
                give_up.cancel();
                return Err(QueueError::LeaseLost);
            }
            Err(error) => tracing::warn!(%error, "cannot renew the lease; retrying"),
        }
        if let Err(error) = recover_expired(&queue, &stats).await {
            tracing::warn!(%error, "cannot check for expired relays");
        }
    }
}

/// Returns the in-flight events of relays whose lease expired to the list, and counts
/// them as redelivered.
pub(crate) async fn recover_expired(queue: &Queue, stats: &Stats) -> Result<(), QueueError> {
    let recovered = queue.recover_expired().await?;
    if recovered.instances > 0 {
        stats
            .redelivered
            .fetch_add(recovered.events, Ordering::Relaxed);
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
        window.apply(Resolution::Delivered(vec![1, 2]));
        assert_eq!(window.resolved_prefix(), 0, "position 0 is still pending");
        window.apply(Resolution::Dead(vec![(0, b"entry".to_vec())]));
        assert_eq!(window.resolved_prefix(), 3);
        assert_eq!(window.dead_entries(3), vec![b"entry".as_slice()]);
        window.advance(3);
        window.apply(Resolution::Delivered(vec![4]));
        assert_eq!(window.start, 3);
        assert_eq!(window.resolved_prefix(), 0);
        window.apply(Resolution::Delivered(vec![3]));
        assert_eq!(window.resolved_prefix(), 2);
    }
}
