//! What the relay knows about its own health, for `/healthz`, `/readyz`, systemd's
//! watchdog and `STATUS=`.
//!
//! **Alive** means that when there is work, the pipeline attempts it. An outage is alive:
//! attempts go on and fail, Redis's or the collector's. A wedged stage is not:
//! - a Redis call that has not returned for [`Health::stuck_after`] (calls have
//!   deadlines, so this is a bug or a frozen runtime);
//! - claims or acknowledgements that have failed for that long while Redis answers the
//!   heartbeat (Redis works, the relay's own work does not);
//! - claiming that has waited that long for room in the window while the collector
//!   accepts requests (the window is blocked);
//! - a batch that has failed for that long while other requests succeed (it holds back
//!   the others);
//! - the heartbeat loop not turning.
//!
//! **Ready** means alive, registered in Redis with a fresh lease, Redis calls succeeding,
//! the collector not failing, and not stopping.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A stage of the pipeline that calls Redis, watched for liveness and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Claiming events (and waiting on an empty list).
    Claim,
    /// Acknowledging resolved events.
    Ack,
    /// Renewing the lease.
    Heartbeat,
    /// Settling parked events.
    Settle,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Claim, Stage::Ack, Stage::Heartbeat, Stage::Settle];

    fn name(self) -> &'static str {
        match self {
            Stage::Claim => "claim",
            Stage::Ack => "acknowledgement",
            Stage::Heartbeat => "lease renewal",
            Stage::Settle => "settling parked events",
        }
    }
}

/// Milliseconds of the health's own monotonic clock ([`Health::now`]); 0 means "not
/// set" in the fields below.
#[derive(Debug, Default)]
struct StageState {
    /// When the call in progress started.
    busy_since: AtomicU64,
    /// When the current run of failures began.
    failing_since: AtomicU64,
    /// The last success.
    last_ok: AtomicU64,
    /// The last failure's kind, for `/readyz` and `STATUS=`.
    last_error: Mutex<String>,
}

impl StageState {
    /// The kind of the last failure, for a health message.
    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

/// The relay's health, shared by the worker, the admin listener and the notifier.
#[derive(Debug)]
pub struct Health {
    /// How long a stage may stand still before the relay counts as stuck, in
    /// milliseconds (a reload of the retry backoff changes it).
    stuck_after_ms: AtomicU64,
    /// How long a lease lives.
    lease_ttl: Duration,
    /// How long one Redis call may take (`redis.command_timeout_ms`): a call outstanding
    /// for longer makes the relay not ready.
    command_timeout: Duration,
    /// When the times below count from: every time is monotonic (a clock step of the
    /// wall clock neither restarts a healthy relay nor hides a stuck stage), in
    /// milliseconds since this instant, plus one (0 means "not set").
    epoch: Instant,
    /// When the heartbeat loop last turned (whatever Redis said).
    loop_turned_at: AtomicU64,
    /// The last successful registration or lease renewal.
    lease_renewed_at: AtomicU64,
    registered: AtomicBool,
    collector_failing: AtomicBool,
    stopping: AtomicBool,
    stages: [StageState; 4],
    /// Since when the claimer has waited for room in the window (0: not waiting).
    window_blocked_since: AtomicU64,
    /// Since when the oldest batch has failed while other requests succeed (0: none).
    batch_failing_alone_since: AtomicU64,
    /// What the relay is doing, in a few words (systemd's STATUS=).
    status: Mutex<String>,
}

impl Health {
    /// Health of a relay whose lease lives `lease_ttl` and whose stages count as stuck
    /// after `stuck_after` (see [`Health::stuck_after_for`]); it starts alive and not
    /// ready.
    pub fn new(lease_ttl: Duration, command_timeout: Duration, stuck_after: Duration) -> Health {
        Health {
            stuck_after_ms: AtomicU64::new(stuck_after.as_millis() as u64),
            lease_ttl,
            command_timeout,
            epoch: Instant::now(),
            loop_turned_at: AtomicU64::new(1),
            lease_renewed_at: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            collector_failing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stages: Default::default(),
            window_blocked_since: AtomicU64::new(0),
            batch_failing_alone_since: AtomicU64::new(0),
            status: Mutex::new("starting".into()),
        }
    }

    fn stage(&self, stage: Stage) -> &StageState {
        &self.stages[stage as usize]
    }

    /// Now, on the health's monotonic clock: milliseconds since it was made, plus one
    /// (never 0, which means "not set").
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Milliseconds since `at` (a time from [`Health::now`]).
    fn since(&self, at: u64) -> u64 {
        self.now().saturating_sub(at)
    }

    /// A call of `stage` to Redis starts.
    pub fn call_started(&self, stage: Stage) {
        self.stage(stage)
            .busy_since
            .store(self.now(), Ordering::Relaxed);
    }

    /// A call of `stage` ended: `Ok`, or failed with an error of this kind.
    pub fn call_ended(&self, stage: Stage, result: Result<(), &str>) {
        let state = self.stage(stage);
        state.busy_since.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => {
                state.failing_since.store(0, Ordering::Relaxed);
                state.last_ok.store(self.now(), Ordering::Relaxed);
            }
            Err(kind) => {
                let _ = state.failing_since.compare_exchange(
                    0,
                    self.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if let Ok(mut last) = state.last_error.lock() {
                    kind.clone_into(&mut last);
                }
            }
        }
    }

    /// A stage stopped calling Redis (it ended): it no longer counts as failing or busy.
    pub fn stage_idle(&self, stage: Stage) {
        let state = self.stage(stage);
        state.busy_since.store(0, Ordering::Relaxed);
        state.failing_since.store(0, Ordering::Relaxed);
    }

    /// A new instance starts its run: what the ended one's stages left (a call that
    /// failed as its lease was lost, a blocked window) says nothing about the new one.
    pub fn instance_started(&self) {
        for stage in Stage::ALL {
            let state = self.stage(stage);
            state.busy_since.store(0, Ordering::Relaxed);
            state.failing_since.store(0, Ordering::Relaxed);
        }
        self.window_blocked_since.store(0, Ordering::Relaxed);
        self.batch_failing_alone_since.store(0, Ordering::Relaxed);
    }

    /// The claimer waits for room in the window (`true`) or has it (`false`).
    pub fn window_blocked(&self, blocked: bool) {
        let value = if blocked { self.now() } else { 0 };
        if !blocked || self.window_blocked_since.load(Ordering::Relaxed) == 0 {
            self.window_blocked_since.store(value, Ordering::Relaxed);
        }
    }

    /// The oldest batch that has been failing while other requests succeed, failing
    /// since this time of [`Health::now`] (`None`: there is none).
    pub fn batch_failing_alone_since(&self, since: Option<u64>) {
        self.batch_failing_alone_since
            .store(since.unwrap_or(0), Ordering::Relaxed);
    }

    /// The relay registered in Redis (or renewed its lease).
    pub fn lease_renewed(&self) {
        self.registered.store(true, Ordering::Relaxed);
        self.lease_renewed_at.store(self.now(), Ordering::Relaxed);
    }

    /// The relay is no longer registered (lease lost, stopping).
    pub fn unregistered(&self) {
        self.registered.store(false, Ordering::Relaxed);
    }

    /// A loop that must keep turning did (the heartbeat loop, the Redis connect loop).
    pub fn loop_turned(&self) {
        self.loop_turned_at.store(self.now(), Ordering::Relaxed);
    }

    /// The collector started or stopped failing.
    pub fn set_collector_failing(&self, failing: bool) {
        self.collector_failing.store(failing, Ordering::Relaxed);
    }

    /// Whether the collector is failing as a whole.
    pub fn collector_failing(&self) -> bool {
        self.collector_failing.load(Ordering::Relaxed)
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the relay is registered in Redis.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Whether shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Sets what the relay is doing.
    pub fn set_status(&self, status: impl Into<String>) {
        if let Ok(mut current) = self.status.lock() {
            *current = status.into();
        }
    }

    /// What the relay is doing and, when it is not ready, why (the words `/readyz`
    /// answers): the one-line `STATUS=`.
    pub fn status(&self) -> String {
        let mut status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let registered = self.registered.load(Ordering::Relaxed);
        // Before registration the status itself says what the relay waits for.
        if !stopping
            && registered
            && let Err(why) = self.ready()
        {
            status.push_str("; not ready: ");
            status.push_str(&why);
        }
        status
    }

    /// What is failing right now (Redis calls, the collector), if anything.
    fn failing(&self) -> Result<(), String> {
        for stage in Stage::ALL {
            let state = self.stage(stage);
            let at = state.failing_since.load(Ordering::Relaxed);
            if at != 0 {
                let kind = state.last_error();
                return Err(format!(
                    "Redis {} failing for {} ms ({kind})",
                    stage.name(),
                    self.since(at)
                ));
            }
        }
        if self.collector_failing.load(Ordering::Relaxed) {
            return Err("collector requests failing".into());
        }
        Ok(())
    }

    /// `Err` naming the first stage whose Redis call has been outstanding for more than
    /// `bound_ms` (`hint` is appended to the message).
    fn no_call_outstanding_for(&self, bound_ms: u64, hint: &str) -> Result<(), String> {
        for stage in Stage::ALL {
            let busy = self.stage(stage).busy_since.load(Ordering::Relaxed);
            if busy != 0 && self.since(busy) > bound_ms {
                return Err(format!(
                    "a Redis {} call has not returned for {} ms{hint}",
                    stage.name(),
                    self.since(busy)
                ));
            }
        }
        Ok(())
    }

    /// Alive: every stage that has work attempts it (see the module header). `Err` says
    /// what is stuck.
    pub fn alive(&self) -> Result<(), String> {
        let bound = self.stuck_after_ms.load(Ordering::Relaxed);
        let turned = self.since(self.loop_turned_at.load(Ordering::Relaxed));
        if turned > bound {
            return Err(format!("the heartbeat loop has not turned for {turned} ms"));
        }
        self.no_call_outstanding_for(bound, "")?;
        let heartbeat_ok = self.stage(Stage::Heartbeat).last_ok.load(Ordering::Relaxed);
        for stage in Stage::ALL {
            let state = self.stage(stage);
            let failing = state.failing_since.load(Ordering::Relaxed);
            if stage != Stage::Heartbeat
                && failing != 0
                && self.since(failing) > bound
                && heartbeat_ok > failing
            {
                let kind = state.last_error();
                return Err(format!(
                    "Redis {} has failed for {} ms ({kind}) while Redis answers the lease \
                     renewal",
                    stage.name(),
                    self.since(failing)
                ));
            }
        }
        let blocked = self.window_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && self.since(blocked) > bound && !self.collector_failing() {
            return Err(format!(
                "claiming has waited {} ms for room in the window while the collector accepts \
                 requests: the window is blocked",
                self.since(blocked)
            ));
        }
        let alone = self.batch_failing_alone_since.load(Ordering::Relaxed);
        if alone != 0 && self.since(alone) > bound {
            return Err(format!(
                "a batch has failed for {} ms while other requests succeed",
                self.since(alone)
            ));
        }
        Ok(())
    }

    /// How long a stage may stand still before the relay counts as stuck.
    pub fn stuck_after(&self) -> Duration {
        Duration::from_millis(self.stuck_after_ms.load(Ordering::Relaxed))
    }

    /// A new bound (a reload changed the retry backoff).
    pub fn set_stuck_after(&self, stuck_after: Duration) {
        self.stuck_after_ms
            .store(stuck_after.as_millis() as u64, Ordering::Relaxed);
    }

    /// The bound for a relay whose lease lives `lease_ttl` and whose slowest collector
    /// attempt comes `retry_max_backoff + request_timeout` after the one before: the
    /// longer of the two, plus 10 s. With the defaults (30 s, 30 s + 5 s) it is 45 s;
    /// keep systemd's `WatchdogSec=` above it.
    pub fn stuck_after_for(
        lease_ttl: Duration,
        retry_max_backoff: Duration,
        request_timeout: Duration,
    ) -> Duration {
        lease_ttl.max(retry_max_backoff + request_timeout) + Duration::from_secs(10)
    }

    /// Ready: alive, registered, lease renewed within its TTL, Redis calls succeeding,
    /// collector not failing, not stopping. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        self.alive()?;
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if !self.registered.load(Ordering::Relaxed) {
            // The status says what the relay waits for (Redis's address, the attempt, the
            // last error: refused credentials, say).
            let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
            return Err(format!("not registered in Redis ({status})"));
        }
        // A frozen Redis: a call (the heartbeat's at the latest, every third of the
        // lease) outlives its deadline before it fails.
        self.no_call_outstanding_for(
            self.command_timeout.as_millis() as u64,
            " (Redis frozen or overloaded?)",
        )?;
        let renewed = self.since(self.lease_renewed_at.load(Ordering::Relaxed));
        if renewed > self.lease_ttl.as_millis() as u64 {
            return Err(format!(
                "lease not renewed for {renewed} ms (Redis failing?)"
            ));
        }
        self.failing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    /// Health with a 30 s lease, a 5 s command timeout and a 40 s liveness bound, its
    /// clock 100 s old (paused time), registered.
    async fn health() -> Health {
        let health = Health::new(30 * SECOND, 5 * SECOND, 40 * SECOND);
        advance(100 * SECOND).await;
        health.lease_renewed();
        health.loop_turned();
        health
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_alive_a_wedged_stage_is_not() {
        let health = health().await;
        assert!(health.alive().is_ok());
        assert!(health.ready().is_ok());
        // Redis down: claims and the heartbeat fail alike, for long. Alive, not ready.
        health.call_ended(Stage::Claim, Err("timeout"));
        health.call_ended(Stage::Heartbeat, Err("timeout"));
        for _ in 0..6 {
            advance(10 * SECOND).await;
            health.loop_turned();
            health.lease_renewed();
        }
        assert!(health.alive().is_ok());
        assert!(health.ready().unwrap_err().contains("claim failing"));
        // Claims failing for a minute while the heartbeat succeeds: stuck.
        health.call_ended(Stage::Heartbeat, Ok(()));
        assert!(health.alive().unwrap_err().contains("while Redis answers"));
        health.call_ended(Stage::Claim, Ok(()));
        assert!(health.alive().is_ok());
        // A call outstanding past its deadline: not ready at once, not yet dead.
        health.call_started(Stage::Heartbeat);
        advance(6 * SECOND).await;
        health.loop_turned();
        assert!(health.alive().is_ok());
        assert!(health.ready().unwrap_err().contains("has not returned"));
        health.call_ended(Stage::Heartbeat, Ok(()));
        health.lease_renewed();
        assert!(health.ready().is_ok());
        // A call that never returns.
        health.call_started(Stage::Ack);
        advance(41 * SECOND).await;
        health.loop_turned();
        health.lease_renewed();
        assert!(health.alive().unwrap_err().contains("has not returned"));
        health.call_ended(Stage::Ack, Ok(()));
        // A blocked window counts only while the collector accepts requests.
        health.window_blocked(true);
        advance(41 * SECOND).await;
        health.loop_turned();
        health.lease_renewed();
        assert!(health.alive().unwrap_err().contains("window is blocked"));
        health.set_collector_failing(true);
        assert!(
            health.alive().is_ok(),
            "an outage blocks the window legitimately"
        );
        health.window_blocked(false);
        health.set_collector_failing(false);
        health.batch_failing_alone_since(Some(health.now()));
        advance(41 * SECOND).await;
        health.loop_turned();
        health.lease_renewed();
        assert!(
            health
                .alive()
                .unwrap_err()
                .contains("other requests succeed")
        );
        health.batch_failing_alone_since(None);
        assert!(health.alive().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_loop_standing_still_is_caught_by_the_monotonic_clock() {
        let health = health().await;
        advance(39 * SECOND).await;
        assert!(health.alive().is_ok(), "within the bound");
        advance(2 * SECOND).await;
        assert!(
            health
                .alive()
                .unwrap_err()
                .contains("heartbeat loop has not turned")
        );
        // The lease is not renewed within its lifetime: not ready.
        health.loop_turned();
        assert!(health.ready().unwrap_err().contains("lease not renewed"));
    }
}
