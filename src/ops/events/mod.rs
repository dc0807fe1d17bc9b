//! One place per happening, as Vector's `internal_events`: each thing the relay does or
//! meets that an operator may want to see (a collector request, events dead-lettered, a
//! Redis call failing, a reload) is a type here, and its [`InternalEvent::emit`] is the
//! one place that writes its log line, at its level, and moves the counters and health
//! it moves. The relay's tasks say what happened (`events.emit(DeadLettered { .. })`);
//! they do not call `tracing` or the metrics for it themselves.
//!
//! A warning that can repeat is limited ([`Limiter`]) to one line per cause a minute:
//! the first at once, then at most one a minute, each carrying how many occurrences (and
//! events) it stands for. Redis calls have their own rule ([`redis::RedisWatch`]): one
//! line when a cause starts failing, one a minute while it goes on, one when it ends.
//!
//! The rooms: [`collector`] (requests and what the relay makes of their answers),
//! [`pipeline`] (events claimed, acknowledged, dead-lettered, parked, returned),
//! [`redis`] (Redis calls and what the relay learns of Redis), [`lifecycle`] (start,
//! reload, stop).
//!
//! It may touch: [`crate::ops::metrics`], [`crate::ops::health`] and `tracing`; nothing
//! else, and nothing here calls back into the relay.

pub mod collector;
pub mod lifecycle;
pub mod pipeline;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, RedisOperation};

/// How often a repeated warning of one cause is logged.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Something that happened: its `emit` logs it and counts it.
pub trait InternalEvent {
    /// Writes the log line (if any) and moves the metrics and health.
    fn emit(self, to: &Observer);
}

/// Where events are emitted: the metrics and health they move, the limiter of repeated
/// warnings, and the watch of Redis calls.
#[derive(Debug)]
pub struct Observer {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The process's health.
    pub health: Arc<Health>,
    redis: redis::RedisWatch,
    limiter: Limiter,
}

impl Observer {
    /// Events counted into `metrics` and `health`.
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Observer {
        Observer {
            redis: redis::RedisWatch::new(metrics.clone()),
            metrics,
            health,
            limiter: Limiter::default(),
        }
    }

    /// `event` happened.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }

    /// A Redis call of `operation` starts now; say how it ended with
    /// [`redis::RedisCall::succeeded`] or [`redis::RedisCall::failed`].
    pub fn redis_call(&self, operation: RedisOperation) -> redis::RedisCall<'_> {
        self.redis.call(operation)
    }

    /// Whether some Redis calls are failing now.
    pub fn redis_failing(&self) -> bool {
        self.redis.any_failing()
    }

    /// Whether a warning of `cause` (of the event `what`) is logged now; `count` is what
    /// this occurrence stands for (events, say). See [`Limiter`].
    fn limited(&self, what: &'static str, cause: &str, count: u64) -> Option<Repeats> {
        self.limiter.check(what, cause, count)
    }
}

/// What a limited warning stands for when it is logged: this occurrence and the ones
/// not logged since the previous line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    /// Occurrences, this one included.
    pub times: u64,
    /// Their counts added up (events, requests), this one's included.
    pub count: u64,
}

/// Limits a repeated warning to one line per cause a minute: the first at once; later
/// ones within the minute are counted, and the next line says how many it stands for.
#[derive(Debug, Default)]
pub struct Limiter {
    causes: Mutex<HashMap<(&'static str, String), Window>>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    times: u64,
    count: u64,
}

impl Limiter {
    /// One occurrence of `cause` standing for `count`: `Some` when it is to be logged
    /// (with what the line stands for), `None` when a line of this cause was written less
    /// than [`REPEAT_EVERY`] ago.
    pub fn check(&self, what: &'static str, cause: &str, count: u64) -> Option<Repeats> {
        let now = Instant::now();
        let Ok(mut causes) = self.causes.lock() else {
            return Some(Repeats { times: 1, count });
        };
        // Causes quiet for a while are forgotten, so the map holds only the recent ones.
        if causes.len() > 64 {
            causes.retain(|_, window| now.duration_since(window.logged_at) < REPEAT_EVERY);
        }
        let key = (what, cause.to_owned());
        match causes.get_mut(&key) {
            Some(window) if now.duration_since(window.logged_at) < REPEAT_EVERY => {
                window.times += 1;
                window.count += count;
                None
            }
            Some(window) => {
                let repeats = Repeats {
                    times: window.times + 1,
                    count: window.count + count,
                };
                *window = Window {
                    logged_at: now,
                    times: 0,
                    count: 0,
                };
                Some(repeats)
            }
            None => {
                causes.insert(
                    key,
                    Window {
                        logged_at: now,
                        times: 0,
                        count: 0,
                    },
                );
                Some(Repeats { times: 1, count })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_repeated_warning_is_one_line_a_minute_carrying_its_repeats() {
        let limiter = Limiter::default();
        assert_eq!(
            limiter.check("dead", "malformed", 3),
            Some(Repeats { times: 1, count: 3 }),
            "the first at once"
        );
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(limiter.check("dead", "malformed", 2), None);
        }
        // Another cause, or another event with the same cause, has its own minute.
        assert!(limiter.check("dead", "oversized", 1).is_some());
        assert!(limiter.check("parked", "malformed", 1).is_some());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            limiter.check("dead", "malformed", 5),
            Some(Repeats {
                times: 5,
                count: 13
            }),
            "a minute after the first line: the four held back and this one"
        );
        assert_eq!(limiter.check("dead", "malformed", 1), None);
    }
}
