//! When to try again: capped exponential backoff with jitter ([`Backoff`]) and the count
//! of consecutive failures that drives it ([`Retry`]). Every retry in the relay, Redis
//! and HTTP alike, goes through one [`Retry`] per operation, so that one operation's
//! success never resets another's backoff. *Whether* to retry is the caller's question
//! (see `http::classify` for the collector's answers).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff with jitter: attempt `n` waits between half and all of
/// `min(max, initial * 2^(n-1))`, so retries spread out but never hammer the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay ceiling of the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// The consecutive failures of one operation.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
}

impl Retry {
    /// No failure yet.
    pub fn new(backoff: Backoff) -> Retry {
        Retry {
            backoff,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures)
    }

    /// The operation succeeded: the next failure waits the shortest delay again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Uses `backoff` from the next failure on (a reloaded setting).
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// Counts a failure and sleeps the delay; `false` if `cancel` fired first.
    pub async fn pause(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.failed();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 1..=40 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(attempt.min(20) - 1))
                .min(Duration::from_secs(5));
            let delays: Vec<Duration> = (0..50).map(|_| backoff.delay(attempt)).collect();
            for delay in &delays {
                assert!(
                    *delay >= ceiling / 2 && *delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "jitter at attempt {attempt}"
            );
        }
    }

    #[test]
    fn each_retry_counts_its_own_failures() {
        let mut claim = Retry::new(REDIS);
        let mut wait = Retry::new(REDIS);
        for _ in 0..6 {
            claim.failed();
        }
        wait.failed();
        wait.succeeded();
        assert_eq!(
            claim.failures(),
            6,
            "another operation's success resets nothing"
        );
        assert_eq!(wait.failures(), 0);
        assert!(claim.failed() >= Duration::from_millis(1_600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut retry = Retry::new(Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
        });
        cancel.cancel();
        assert!(!retry.pause(&cancel).await);
        let mut retry = Retry::new(REDIS);
        assert!(retry.pause(&CancellationToken::new()).await);
    }
}
