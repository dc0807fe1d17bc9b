//! The claimer: takes events from the list into this instance's in-flight list while it
//! holds claim permits (events and bytes: the memory bound) and the collector accepts
//! requests, and hands them to the batcher. On an empty list it blocks in Redis instead
//! of polling, after telling the batcher the list ran dry so that a lone event is sent at
//! once. While the collector fails as a whole, it claims one probe batch at a time (a
//! probe that gets through shows whether the collector or a few events are at fault).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};

use super::pipeline::{Claimed, Shared};
use crate::ops::events::pipeline::{DeadLettered, EventsClaimed};
use crate::ops::events::redis::{ClaimBudgetChanged, RedisCall, ReplyLimitTooSmall};
use crate::ops::health::Stage;
use crate::ops::metrics::{DeadReason, RedisOperation};
use crate::queue::{BlockingConnection, QueueError};
use snowplow_relay_tracker::retry::Retry;

/// How long one blocking wait on an empty list lasts before it is renewed.
const BLOCK_FOR: Duration = Duration::from_secs(5);

/// After the claim budget was halved, how long and how many claims at the smaller size
/// before the larger one is tried again.
const RETRY_LARGER_AFTER: Duration = Duration::from_secs(300);
const RETRY_LARGER_AFTER_CLAIMS: u32 = 100;

pub(super) struct Claimer {
    shared: Arc<Shared>,
    claimed_tx: mpsc::Sender<Claimed>,
    collector_healthy: watch::Receiver<bool>,
    /// How many events this instance claimed so far (as far as it knows).
    position: u64,
    /// The bytes one claim may bring: `redis.claim_max_bytes`, less if Redis's reply
    /// limit is smaller, halved while Redis is shown to close the connection on replies
    /// of this size (see [`Claimer::claim_failed`]).
    budget: usize,
    /// The budget claims start from and return to.
    full_budget: usize,
    /// A claim at this budget lost its connection, and Redis had answered this many
    /// calls by then: the same again after Redis answered others shows the reply's size
    /// to be the cause.
    suspect: Option<(usize, u64)>,
    /// When the budget was last halved, and claims succeeded since: after a while at the
    /// smaller size it is tried larger again (the limit may have been raised).
    halved: Option<(tokio::time::Instant, u32)>,
    /// Elements above this go to the dead-letter list from the claim script.
    max_element_bytes: usize,
    blocking: Option<BlockingConnection>,
    claims: Retry,
    waits: Retry,
    probes: Retry,
    /// How many batches were failing when the last probe was claimed: a probe is only
    /// claimed while that number has not grown (the last probe did not fail too).
    failing_at_probe: Option<usize>,
}

impl Claimer {
    pub(super) fn new(shared: Arc<Shared>, claimed_tx: mpsc::Sender<Claimed>) -> Claimer {
        let settings = &shared.settings;
        let mut max_element_bytes = settings.events.max_element_bytes;
        let mut budget = settings.redis.claim_max_bytes;
        if let Some(limit) = shared.queue.probe().reply_limit_bytes {
            // A reply Redis cannot send closes the connection: keep claims to half of it.
            let half = (limit / 2) as usize;
            if half < max_element_bytes {
                shared.emit(ReplyLimitTooSmall {
                    reply_limit_bytes: limit,
                    max_element_bytes: half,
                });
                max_element_bytes = half.max(1);
            }
            budget = budget.min(half).max(max_element_bytes);
        }
        let full_budget = budget;
        let backoff = shared.emitter.backoff();
        Claimer {
            collector_healthy: shared.emitter.healthy(),
            shared,
            claimed_tx,
            position: 0,
            budget,
            full_budget,
            suspect: None,
            halved: None,
            max_element_bytes,
            blocking: None,
            claims: Retry::new(crate::queue::REDIS_BACKOFF),
            waits: Retry::new(crate::queue::REDIS_BACKOFF),
            probes: Retry::new(backoff),
            failing_at_probe: None,
        }
    }

    /// Claims while running; returns the claim position reached.
    pub(super) async fn run(mut self) -> Result<u64, QueueError> {
        let shared = self.shared.clone();
        let stop = &shared.lifecycle.draining;
        loop {
            let Some(probe) = self.may_claim().await else {
                return Ok(self.position);
            };
            let Some(wanted) = self.take_permits(probe).await else {
                return Ok(self.position);
            };
            // Cancelled by shutdown, a claim that ran in Redis is not lost: the release
            // reads Redis's own copy of the in-flight list.
            shared.health.call_started(Stage::Claim);
            let call = shared.events.redis_call(RedisOperation::Claim);
            let claim = tokio::select! {
                claim = shared.queue.claim(
                    self.position,
                    wanted,
                    self.max_element_bytes,
                    self.budget,
                ) => claim,
                () = stop.cancelled() => {
                    shared.health.stage_idle(Stage::Claim);
                    return Ok(self.position);
                }
            };
            let claim = match claim {
                Ok(claim) => {
                    shared.health.call_ended(Stage::Claim, Ok(()));
                    call.succeeded();
                    self.claims.succeeded();
                    self.claim_succeeded();
                    claim
                }
                Err(error) => {
                    shared.health.call_ended(Stage::Claim, Err(error.kind()));
                    shared.permits.give_back(wanted, self.budget);
                    if error.needs_new_instance() {
                        shared.lifecycle.lost_instance(error);
                        return Ok(self.position);
                    }
                    if matches!(error, QueueError::FollowingFailover(_)) {
                        // The sentinels will name the new master within seconds: ask
                        // again soon rather than backing off to seconds between tries.
                        self.claims.succeeded();
                    }
                    self.claim_failed(&error, call);
                    if !self.claims.pause(stop).await {
                        return Ok(self.position);
                    }
                    continue;
                }
            };
            if claim.oversized > 0 {
                shared.emit(DeadLettered {
                    reason: DeadReason::Oversized,
                    count: claim.oversized,
                    status: None,
                    detail: &format!(
                        "larger than events.max_element_bytes ({} bytes)",
                        self.max_element_bytes
                    ),
                });
            }
            let count = claim.elements.len();
            let bytes: usize = claim.elements.iter().map(Bytes::len).sum();
            // Give back what the claim did not use; take what a resent claim brought more.
            settle_permits(&shared.permits.events, wanted, count);
            settle_permits(&shared.permits.bytes, self.budget, bytes);
            if count > 0 {
                shared.emit(EventsClaimed {
                    count: count as u64,
                    bytes: bytes as u64,
                });
                let claimed = Claimed {
                    first_position: self.position,
                    elements: claim.elements,
                    ran_dry: claim.ran_dry,
                };
                self.position += count as u64;
                if self.claimed_tx.send(claimed).await.is_err() {
                    return Ok(self.position);
                }
            }
            if !claim.ran_dry || count > 0 {
                // More to take at once; or claim again: if the list is empty now, that
                // claim says so.
                continue;
            }
            // Nothing to claim: let the batcher send what it holds, then block in Redis.
            let flush = Claimed {
                first_position: self.position,
                elements: Vec::new(),
                ran_dry: true,
            };
            if self.claimed_tx.send(flush).await.is_err() {
                return Ok(self.position);
            }
            if !self.wait_for_events().await {
                return Ok(self.position);
            }
        }
    }

    /// Waits until claiming is allowed: `Some(false)` for a full claim, `Some(true)` for
    /// a probe while the collector fails, `None` when claiming stopped.
    ///
    /// While the collector fails as a whole, a probe batch is claimed after each backoff
    /// delay, but only while the number of failing batches has not grown since the last
    /// probe: one probe fails at a time. A probe that gets through shows that a few
    /// events, not the collector, are at fault (those batches are then parked).
    async fn may_claim(&mut self) -> Option<bool> {
        let stop = self.shared.lifecycle.draining.clone();
        loop {
            if *self.collector_healthy.borrow() {
                self.probes.succeeded();
                self.failing_at_probe = None;
                return Some(false);
            }
            self.probes.set_backoff(self.shared.emitter.backoff());
            let delay = self.probes.failed();
            tokio::select! {
                _ = self.collector_healthy.wait_for(|healthy| *healthy) => continue,
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return None,
            }
            let failing = self.shared.emitter.failing_batches();
            if self.failing_at_probe.is_none_or(|before| failing <= before) {
                self.failing_at_probe = Some(failing);
                return Some(true);
            }
        }
    }

    /// Takes permits for one claim: one event at least and the claim's byte budget, then
    /// as many more events as a claim takes and the window allows. Returns how many
    /// events to claim, or `None` when claiming stopped.
    async fn take_permits(&self, probe: bool) -> Option<usize> {
        let shared = &self.shared;
        let settings = &shared.settings;
        let room = async {
            let first = shared.permits.events.acquire().await.ok()?;
            let bytes = shared
                .permits
                .bytes
                .acquire_many(self.budget as u32)
                .await
                .ok()?;
            first.forget();
            bytes.forget();
            Some(())
        };
        let immediately = shared.permits.events.available_permits() > 0
            && shared.permits.bytes.available_permits() >= self.budget;
        if !immediately {
            shared.health.window_blocked(true);
        }
        let got = tokio::select! {
            got = room => got,
            () = shared.lifecycle.draining.cancelled() => None,
        };
        shared.health.window_blocked(false);
        got?;
        let most = if probe {
            settings.collector.buffer_size.get()
        } else {
            settings.redis.claim_batch_size
        };
        let extra = (most - 1).min(shared.permits.events.available_permits());
        if let Ok(more) = shared.permits.events.try_acquire_many(extra as u32) {
            more.forget();
        }
        Some(1 + extra)
    }

    /// A claim failed. Redis closes a connection whose reply outgrows its output buffer
    /// limit (`client-output-buffer-limit normal`), and the claim's reply (or its resend)
    /// must then get smaller to get through. But a restart or a dropped link closes the
    /// connection too: the claim budget is halved only when that is shown to be the
    /// cause: a claim of the same size lost its connection twice, with Redis answering
    /// other calls in between.
    fn claim_failed(&mut self, error: &QueueError, call: RedisCall<'_>) {
        let shared = &self.shared;
        let dropped =
            matches!(error, QueueError::Redis(e) if e.is_connection_dropped() || e.is_io_error());
        let answered = shared.queue.calls_answered();
        if dropped && self.budget > self.max_element_bytes {
            match self.suspect {
                Some((budget, answered_then))
                    if budget == self.budget && answered > answered_then =>
                {
                    self.suspect = None;
                    self.budget = (self.budget / 2).max(self.max_element_bytes);
                    self.halved = Some((tokio::time::Instant::now(), 0));
                    shared.emit(ClaimBudgetChanged {
                        claim_max_bytes: self.budget,
                        error: Some(error as &dyn std::fmt::Display),
                    });
                    return;
                }
                _ => self.suspect = Some((self.budget, answered)),
            }
        }
        call.failed(
            error,
            "cannot claim events from Redis; retrying with backoff",
        );
    }

    /// A claim succeeded: a lost connection before it was not the reply's size; and
    /// after a while of claims at a halved budget, the full budget is tried again.
    fn claim_succeeded(&mut self) {
        self.suspect = None;
        if let Some((since, claims)) = &mut self.halved {
            *claims += 1;
            if *claims >= RETRY_LARGER_AFTER_CLAIMS && since.elapsed() >= RETRY_LARGER_AFTER {
                self.budget = (self.budget * 2).min(self.full_budget);
                self.shared.emit(ClaimBudgetChanged {
                    claim_max_bytes: self.budget,
                    error: None,
                });
                self.halved =
                    (self.budget < self.full_budget).then(|| (tokio::time::Instant::now(), 0));
            }
        }
    }

    /// Blocks until the list has an element, the wait times out, or claiming stops;
    /// `false` when it stopped.
    async fn wait_for_events(&mut self) -> bool {
        let shared = self.shared.clone();
        let stop = &shared.lifecycle.draining;
        // A reload may have changed the credentials: a connection made before it goes.
        if self
            .blocking
            .as_ref()
            .is_some_and(|conn| !shared.queue.is_current(conn))
        {
            self.blocking = None;
        }
        let waited = async {
            let conn = match &mut self.blocking {
                Some(conn) => conn,
                None => {
                    let conn = shared.queue.blocking_connection(BLOCK_FOR).await?;
                    self.blocking.insert(conn)
                }
            };
            shared.queue.wait_for_events(conn, BLOCK_FOR).await
        };
        // Abandoning the wait is harmless: it moves nothing. A master switch the
        // sentinels announce cuts it short: the old master may take no more events.
        let mut switches = shared.queue.switch_notices();
        let switched = async {
            match &mut switches {
                Some(switches) => {
                    let _ = switches.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let call = shared.events.redis_call(RedisOperation::Wait);
        let result = tokio::select! {
            result = waited => result,
            () = stop.cancelled() => return false,
            () = switched => {
                call.succeeded();
                return true;
            }
        };
        match result {
            Ok(()) => {
                call.succeeded();
                self.waits.succeeded();
                true
            }
            Err(error) => {
                self.blocking = None;
                if matches!(error, QueueError::FollowingFailover(_)) {
                    self.waits.succeeded();
                }
                call.failed(
                    &error,
                    "cannot wait on the Redis list; retrying with backoff",
                );
                self.waits.pause(stop).await
            }
        }
    }
}

/// Gives back the permits a claim did not use, or takes those a resent claim brought
/// beyond what was asked.
fn settle_permits(semaphore: &Semaphore, have: usize, used: usize) {
    if used < have {
        semaphore.add_permits(have - used);
    } else if let Ok(more) = semaphore.try_acquire_many((used - have) as u32) {
        more.forget();
    }
}
