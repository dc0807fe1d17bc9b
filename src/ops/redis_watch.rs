//! The one place a failed Redis call is logged and counted. Every stage reports each
//! call's end here; an operator reading the log sees one line when calls start failing,
//! at most one line a minute while they go on (with how many failed meanwhile), and one
//! line when they succeed again, however many stages retry how often.
//!
//! Failures are grouped by cause: Redis unreachable (a refused or dropped connection, a
//! missed deadline, a server that cannot take writes) is one cause whichever stage met
//! it, and ends with any call that succeeds; any other error (a refused permission, a
//! full Redis, a script error) is a cause of its stage, and ends when that stage's call
//! succeeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::metrics::{Metrics, RedisOperation};
use crate::queue::QueueError;

/// How often a cause that goes on failing is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Why calls fail: Redis as a whole, or one stage's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// Redis cannot be reached or cannot take writes: every stage meets it.
    Unreachable,
    /// One stage's calls fail with an error of this kind.
    Call(RedisOperation, &'static str),
}

/// One cause that is failing now.
#[derive(Debug)]
struct Failing {
    since: Instant,
    /// Calls failed since it began.
    calls: u64,
    /// Calls failed since it was last logged.
    unlogged: u64,
    logged_at: Instant,
}

/// Follows every Redis call's end; logs and counts failures (see the module header).
#[derive(Debug)]
pub struct RedisWatch {
    metrics: Arc<Metrics>,
    failing: Mutex<BTreeMap<Cause, Failing>>,
}

impl RedisWatch {
    /// A watch counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> RedisWatch {
        RedisWatch {
            metrics,
            failing: Mutex::default(),
        }
    }

    /// A call of `operation` starts now; say how it ended with [`RedisCall::succeeded`]
    /// or [`RedisCall::failed`].
    pub fn call(&self, operation: RedisOperation) -> RedisCall<'_> {
        RedisCall {
            watch: self,
            operation,
            started: Instant::now(),
        }
    }

    /// A call of `operation` failed with `error`; `hint` says what the relay does about
    /// it (e.g. "retrying"). Counted always; logged when its cause starts failing and at
    /// most once a minute after that (at debug otherwise).
    fn failed(&self, operation: RedisOperation, error: &QueueError, hint: &str) {
        self.metrics.redis_error(operation);
        let cause = if error.is_unreachable() {
            Cause::Unreachable
        } else {
            Cause::Call(operation, error.kind())
        };
        let now = Instant::now();
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        let operation = operation.as_str();
        match failing.get_mut(&cause) {
            None => {
                failing.insert(
                    cause,
                    Failing {
                        since: now,
                        calls: 1,
                        unlogged: 0,
                        logged_at: now,
                    },
                );
                match cause {
                    Cause::Unreachable => tracing::warn!(
                        operation,
                        %error,
                        "Redis calls are failing: {hint}; every Redis call is retried with \
                         backoff, and one line a minute says how it goes"
                    ),
                    Cause::Call(..) => {
                        tracing::warn!(operation, %error, "a Redis call failed: {hint}")
                    }
                }
            }
            Some(state) => {
                state.calls += 1;
                state.unlogged += 1;
                if now.duration_since(state.logged_at) >= REPEAT_EVERY {
                    tracing::warn!(
                        operation,
                        %error,
                        failing_for_s = now.duration_since(state.since).as_secs(),
                        failed_calls = state.calls,
                        since_last_line = state.unlogged,
                        "Redis calls are still failing: {hint}"
                    );
                    state.unlogged = 0;
                    state.logged_at = now;
                } else {
                    tracing::debug!(operation, %error, "a Redis call failed again: {hint}");
                }
            }
        }
    }

    /// A call of `operation` that started at `started` succeeded: Redis answers, and that
    /// stage's own errors are over. Says so once for each cause that was failing, unless
    /// it began failing after this call started (an answer already on its way when the
    /// connection broke is no sign that Redis is back).
    fn succeeded(&self, operation: RedisOperation, started: Instant) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if failing.is_empty() {
            return;
        }
        let now = Instant::now();
        failing.retain(|cause, state| {
            let over = state.since <= started
                && match cause {
                    Cause::Unreachable => true,
                    Cause::Call(stage, _) => *stage == operation,
                };
            if over {
                let kind = match cause {
                    Cause::Unreachable => "unreachable",
                    Cause::Call(_, kind) => kind,
                };
                tracing::info!(
                    operation = operation.as_str(),
                    cause = kind,
                    failed_for_s = now.duration_since(state.since).as_secs(),
                    failed_calls = state.calls,
                    "Redis calls succeed again"
                );
            }
            !over
        });
    }

    /// Whether any cause is failing now.
    pub fn any_failing(&self) -> bool {
        self.failing.lock().is_ok_and(|failing| !failing.is_empty())
    }
}

/// One Redis call of a stage, from its start to its end.
#[must_use = "say how the call ended"]
pub struct RedisCall<'a> {
    watch: &'a RedisWatch,
    operation: RedisOperation,
    started: Instant,
}

impl RedisCall<'_> {
    /// It succeeded.
    pub fn succeeded(self) {
        self.watch.succeeded(self.operation, self.started);
    }

    /// It failed with `error`; `hint` says what the relay does about it.
    pub fn failed(self, error: &QueueError, hint: &str) {
        self.watch.failed(self.operation, error, hint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> QueueError {
        QueueError::Timeout(5_000)
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_when_failing_starts_one_a_minute_and_one_when_it_ends() {
        let watch = RedisWatch::new(Arc::new(Metrics::new()));
        // An answer on its way before the failures began is no sign Redis is back.
        let before = watch.call(RedisOperation::Ack);
        tokio::time::advance(Duration::from_millis(1)).await;
        for operation in [
            RedisOperation::Heartbeat,
            RedisOperation::Claim,
            RedisOperation::Ack,
        ] {
            watch.call(operation).failed(&unreachable(), "retrying");
        }
        before.succeeded();
        {
            let failing = watch.failing.lock().unwrap();
            assert_eq!(failing.len(), 1, "Redis unreachable is one cause");
            assert_eq!(failing[&Cause::Unreachable].calls, 3);
            assert_eq!(failing[&Cause::Unreachable].unlogged, 2);
        }
        tokio::time::advance(REPEAT_EVERY).await;
        watch
            .call(RedisOperation::Claim)
            .failed(&unreachable(), "retrying");
        assert_eq!(
            watch.failing.lock().unwrap()[&Cause::Unreachable].unlogged,
            0,
            "logged again after a minute"
        );
        // Another stage's own error is a cause of its own, and outlives Redis answering.
        watch
            .call(RedisOperation::Ack)
            .failed(&QueueError::Permission("NOPERM".into()), "retrying");
        watch.call(RedisOperation::Heartbeat).succeeded();
        assert!(watch.any_failing(), "the acknowledgement still fails");
        watch.call(RedisOperation::Ack).succeeded();
        assert!(!watch.any_failing());
    }
}
