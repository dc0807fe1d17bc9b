//! Redis: each call's end, and what the relay learns of Redis (its memory, its eviction
//! policy, its reply limit).
//!
//! Every stage reports each Redis call's end to the [`RedisWatch`]; an operator reading
//! the log sees one line when calls start failing, at most one line a minute while they
//! go on (with how many failed meanwhile), and one line when they succeed again, however
//! many stages retry how often.
//!
//! Failures are grouped by cause: Redis unreachable (a refused or dropped connection, a
//! missed deadline, a server that cannot take writes) is one cause whichever stage met
//! it, and ends with any call that succeeds; any other error (a refused permission, a
//! full Redis, a script error) is a cause of its stage, and ends when that stage's call
//! succeeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::ops::metrics::{Metrics, RedisOperation};
use crate::queue::QueueError;

use super::{InternalEvent, Observer, REPEAT_EVERY};

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
    pub(super) fn new(metrics: Arc<Metrics>) -> RedisWatch {
        RedisWatch {
            metrics,
            failing: Mutex::default(),
        }
    }

    /// A call of `operation` starts now; say how it ended with [`RedisCall::succeeded`]
    /// or [`RedisCall::failed`].
    pub(super) fn call(&self, operation: RedisOperation) -> RedisCall<'_> {
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
    pub(super) fn any_failing(&self) -> bool {
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

/// With Redis Sentinel, the relay now writes to another master than before: it followed
/// a failover.
#[derive(Debug)]
pub struct FollowedFailover<'a> {
    /// The master's name.
    pub master: &'a str,
    /// Where it was.
    pub from: &'a str,
    /// Where it is now.
    pub to: &'a str,
}

impl InternalEvent for FollowedFailover<'_> {
    fn emit(self, to: &Observer) {
        to.health.set_status(format!(
            "relaying; followed a failover: master {} now at {}",
            self.master, self.to
        ));
        tracing::warn!(
            master = self.master,
            from = self.from,
            to = self.to,
            "followed a failover: the sentinels name a new master; relaying to it"
        );
    }
}

/// The lists sampled: their lengths and the head event's age.
#[derive(Debug)]
pub struct ListsSampled {
    /// The list's length.
    pub list: u64,
    /// The dead-letter list's length.
    pub dead: u64,
    /// The head event's age, in seconds (0 when unknown).
    pub oldest_age_seconds: f64,
}

impl InternalEvent for ListsSampled {
    fn emit(self, to: &Observer) {
        to.metrics
            .sampled(self.list, self.dead, self.oldest_age_seconds);
    }
}

/// Redis reached `maxmemory` (`full`), or has memory again: it refuses producers'
/// pushes while full.
#[derive(Debug)]
pub struct RedisMemory {
    /// Whether it is full now.
    pub full: bool,
    /// `used_memory`.
    pub used: u64,
    /// `maxmemory`.
    pub max: u64,
}

impl InternalEvent for RedisMemory {
    fn emit(self, _to: &Observer) {
        if self.full {
            tracing::warn!(
                used_memory = self.used,
                maxmemory = self.max,
                "Redis is out of memory (used_memory reached maxmemory): it refuses producers' \
                 pushes; the relay keeps draining the list, which frees memory"
            );
        } else {
            tracing::info!(
                used_memory = self.used,
                maxmemory = self.max,
                "Redis has memory again"
            );
        }
    }
}

/// What the relay found out about Redis at connect time that an operator should know.
#[derive(Debug)]
pub enum RedisChecked<'a> {
    /// Before 7.0: no permission check ahead, scripts refused at maxmemory.
    Before7,
    /// `maxmemory-policy` evicts keys.
    Evicting {
        /// The policy.
        policy: &'a str,
    },
    /// A check the relay could not make: Redis refused (ACL, a managed service) or does
    /// not know (renamed) the command it needs.
    NotMade {
        /// What goes unchecked.
        check: &'static str,
        /// The command it needs.
        command: &'static str,
        /// Redis's answer.
        why: String,
    },
    /// The key layout's version stored in Redis was older (or absent) and was brought to
    /// this build's.
    LayoutUpgraded {
        /// The version found (0: none stored, a build before versions were stored).
        from: u64,
        /// This build's version.
        to: u64,
    },
}

impl InternalEvent for RedisChecked<'_> {
    fn emit(self, _to: &Observer) {
        match self {
            RedisChecked::Before7 => tracing::info!(
                "Redis before 7.0: permissions are not checked ahead, and a Redis at maxmemory \
                 refuses the relay's scripts until memory is freed"
            ),
            RedisChecked::Evicting { policy } => tracing::warn!(
                maxmemory_policy = policy,
                "Redis may evict keys (maxmemory-policy is not noeviction): under memory \
                 pressure it can drop events, and volatile-* policies evict exactly the relay's \
                 lease keys, making live relays look dead; set maxmemory-policy noeviction"
            ),
            RedisChecked::NotMade {
                check,
                command,
                why,
            } => tracing::info!(
                command,
                answer = %why,
                "cannot check {check}: Redis refused {command} (or does not know it); the relay \
                 works without the check (docs/operations.md#redis-permissions)"
            ),
            RedisChecked::LayoutUpgraded { from, to } => tracing::info!(
                from,
                to,
                "key layout version {to} stored in Redis (found {}); an older build meeting \
                 it needs `snowplow-relay prepare-rollback` first (docs/operations.md#upgrading)",
                if from == 0 {
                    "none".to_owned()
                } else {
                    from.to_string()
                }
            ),
        }
    }
}

/// Redis's reply limit (`client-output-buffer-limit normal`) cannot send elements of
/// `events.max_element_bytes`: larger ones are dead-lettered.
#[derive(Debug)]
pub struct ReplyLimitTooSmall {
    /// The limit.
    pub reply_limit_bytes: u64,
    /// The largest element relayed now.
    pub max_element_bytes: usize,
}

impl InternalEvent for ReplyLimitTooSmall {
    fn emit(self, _to: &Observer) {
        tracing::warn!(
            reply_limit_bytes = self.reply_limit_bytes,
            max_element_bytes = self.max_element_bytes,
            "Redis's client-output-buffer-limit (normal class) cannot send elements of \
             events.max_element_bytes in one reply: elements over half the limit go to the \
             dead-letter list; raise the limit to relay them"
        );
    }
}

/// The claim's byte budget changed: halved after Redis twice closed the connection while
/// sending a claim's reply (`error`), or doubled again after claims succeeded a while.
pub struct ClaimBudgetChanged<'a> {
    /// The budget now.
    pub claim_max_bytes: usize,
    /// Why it shrank; `None`: it grew back.
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl InternalEvent for ClaimBudgetChanged<'_> {
    fn emit(self, to: &Observer) {
        match self.error {
            Some(error) => {
                to.metrics.redis_error(RedisOperation::Claim);
                tracing::warn!(
                    %error,
                    claim_max_bytes = self.claim_max_bytes,
                    "Redis closed the connection twice while sending a claim's reply, and \
                     answered other calls in between: its reply limit \
                     (client-output-buffer-limit normal) is the likely cause; claiming at most \
                     half as many bytes (raise the limit, or redis.claim_max_bytes, to claim \
                     more at once)"
                );
            }
            None => tracing::info!(
                claim_max_bytes = self.claim_max_bytes,
                "claims succeed at the smaller size; trying larger claims again"
            ),
        }
    }
}

/// The lease was renewed, or found lost.
#[derive(Debug)]
pub struct Lease {
    /// Renewed (else lost).
    pub renewed: bool,
}

impl InternalEvent for Lease {
    fn emit(self, to: &Observer) {
        if self.renewed {
            to.health.lease_renewed();
            to.metrics.lease_renewed();
        } else {
            to.metrics.lease_lost();
            to.health.unregistered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
