//! How many batches may be on the wire at once: a fixed number, or a limit that adapts to
//! what the collector's answers show (adaptive request concurrency, after Vector's ARC and
//! TCP's congestion control). Owns the limit and the count of batches in flight; the
//! batcher takes a [`Slot`] per batch (held through its retries), the sender reports each
//! answer ([`Concurrency::answered`]). Touches nothing else.
//!
//! The rule, once per window (one recent answer time long):
//! - **back-pressure** seen in the window (429, 503, 504, a timeout or a connection
//!   error), or the window's mean answer time above the recent windows' mean by more
//!   than [`DEVIATIONS`] of their mean deviation (and at least [`RISE_FLOOR`] of it): the limit falls
//!   to [`DECREASE`] of itself (at least one less, never below 1);
//! - otherwise, if the limit was reached in the window (more would have been sent):
//!   it doubles while below the slow-start threshold (from a cold start, the ceiling;
//!   after a fall, half the limit before it), else it grows by one;
//! - never above the ceiling, `collector.max_requests_in_flight`.
//!
//! Answer times are the collector's: from the request leaving on its connection to the
//! answer's head, a new connection's connect left out (a ramp that opens many
//! connections at once would otherwise read as the collector slowing down). Answers
//! that are neither success nor back-pressure (a 500 to one batch's content) move
//! nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The limit a run starts with (capped by the ceiling): today's fixed default, so that
/// a cold start is never slower than before, and slow start doubles it from there.
pub const INITIAL_LIMIT: usize = 16;

/// What the limit falls to on back-pressure or a rising answer time.
pub const DECREASE: f64 = 0.9;

/// How far above the recent windows' mean answer time, in their mean deviations, a
/// window's mean must be to count as rising (Vector's `rtt_deviation_scale`).
pub const DEVIATIONS: f64 = 2.5;

/// A window's mean must also be at least this share above the recent mean to count as
/// rising: on a collector with very steady answers, noise is not a rise.
pub const RISE_FLOOR: f64 = 0.05;

/// Weight of the newest value in the recent mean and deviation.
const ALPHA: f64 = 0.4;

/// The shortest window: answers on the loopback interface come within microseconds, and
/// a window that short would judge on a handful of answers.
const MIN_WINDOW: Duration = Duration::from_millis(10);

/// The longest window: a limit judged at least this often, however slow the answers.
const MAX_WINDOW: Duration = Duration::from_secs(2);

/// What one answer (or its absence) says about the collector's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer that shows the collector's pace: a 2xx, or a refusal of the content.
    Answered(Duration),
    /// The collector is overloaded or unreachable: 429, 503, 504, no answer in time, a
    /// connection error.
    BackPressure,
    /// Says nothing about load (a 500 to one batch, a redirect).
    Neither,
}

impl Signal {
    /// What an exchange's status (`None`: no answer) and answer time say.
    pub fn of(status: Option<u16>, answer: Option<f64>) -> Signal {
        match (status, answer) {
            (None, _) | (Some(429 | 503 | 504), _) => Signal::BackPressure,
            (Some(200..=299 | 400..=499), Some(seconds)) => {
                Signal::Answered(Duration::from_secs_f64(seconds.max(0.0)))
            }
            _ => Signal::Neither,
        }
    }
}

/// The limit on batches in flight and their count.
#[derive(Debug)]
pub struct Concurrency {
    ceiling: usize,
    adaptive: bool,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// A slot came free or the limit rose.
    changed: Notify,
    window: Mutex<Window>,
}

/// What the current window has seen, and what came before.
#[derive(Debug)]
struct Window {
    started: Instant,
    answers: u32,
    answer_sum: f64,
    back_pressure: bool,
    /// The limit was reached: a batch waited for a slot, or all slots were taken.
    reached: bool,
    /// Mean answer time of recent windows and their mean deviation from it, the newest
    /// weighted [`ALPHA`].
    recent: Option<(f64, f64)>,
    /// Below this the limit doubles; at or above it, it grows by one.
    slow_start_below: usize,
    /// The last change was a fall (a run of falls lowers the threshold once).
    falling: bool,
}

impl Concurrency {
    /// A limit that adapts up to `ceiling`, or stays at it (`adaptive` false).
    pub fn new(ceiling: usize, adaptive: bool) -> Concurrency {
        let ceiling = ceiling.max(1);
        Concurrency {
            ceiling,
            adaptive,
            limit: AtomicUsize::new(if adaptive {
                INITIAL_LIMIT.min(ceiling)
            } else {
                ceiling
            }),
            in_flight: AtomicUsize::new(0),
            changed: Notify::new(),
            window: Mutex::new(Window {
                started: Instant::now(),
                answers: 0,
                answer_sum: 0.0,
                back_pressure: false,
                reached: false,
                recent: None,
                slow_start_below: ceiling,
                falling: false,
            }),
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Batches in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The highest the limit may go.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// A slot for one batch, once one is free under the limit; held until the batch is
    /// resolved (its retries and split parts included).
    pub async fn slot(self: &std::sync::Arc<Self>) -> Slot {
        let mut waited = false;
        loop {
            // Registered before checking, so that a slot freed in between wakes it.
            let changed = self.changed.notified();
            let limit = self.limit();
            let taken = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                });
            if let Ok(before) = taken {
                if waited || before + 1 >= limit {
                    self.lock().reached = true;
                }
                return Slot {
                    concurrency: self.clone(),
                };
            }
            waited = true;
            changed.await;
        }
    }

    /// What one answer said; at the end of a window, the limit moves.
    pub fn answered(&self, signal: Signal) -> Option<usize> {
        if !self.adaptive || signal == Signal::Neither {
            return None;
        }
        let now = Instant::now();
        let mut window = self.lock();
        match signal {
            Signal::Answered(took) => {
                window.answers += 1;
                window.answer_sum += took.as_secs_f64();
            }
            Signal::BackPressure => window.back_pressure = true,
            Signal::Neither => {}
        }
        let length = window
            .recent
            .map_or(MIN_WINDOW, |(mean, _)| Duration::from_secs_f64(mean))
            .clamp(MIN_WINDOW, MAX_WINDOW);
        if now.duration_since(window.started) < length {
            return None;
        }
        let limit = self.limit();
        let next = window.judge(limit, self.ceiling);
        window.fold();
        window.started = now;
        window.reached = self.in_flight() >= next;
        drop(window);
        if next == limit {
            return None;
        }
        self.limit.store(next, Ordering::Relaxed);
        if next > limit {
            self.changed.notify_waiters();
        }
        Some(next)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window holds no invariant a panic could break half-way.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Window {
    /// The limit after this window.
    fn judge(&mut self, limit: usize, ceiling: usize) -> usize {
        let mean = (self.answers > 0).then(|| self.answer_sum / f64::from(self.answers));
        let rising = match (mean, self.recent) {
            (Some(now), Some((recent, deviation))) => {
                now > recent + (DEVIATIONS * deviation).max(RISE_FLOOR * recent)
            }
            _ => false,
        };
        if self.back_pressure || rising {
            if !self.falling {
                // The first fall of a run: slow start later stops at half of where
                // trouble began.
                self.slow_start_below = (limit / 2).max(1);
                self.falling = true;
            }
            let lower = ((limit as f64 * DECREASE) as usize).min(limit - 1);
            return lower.max(1);
        }
        if self.reached && limit < ceiling {
            self.falling = false;
            let higher = if limit < self.slow_start_below {
                (limit * 2).min(self.slow_start_below.max(limit + 1))
            } else {
                limit + 1
            };
            return higher.min(ceiling);
        }
        limit
    }

    /// Folds this window's answers into the recent mean and deviation, and starts afresh.
    fn fold(&mut self) {
        if self.answers > 0 {
            let mean = self.answer_sum / f64::from(self.answers);
            self.recent = Some(match self.recent {
                None => (mean, mean / 10.0),
                Some((recent, deviation)) => (
                    recent + ALPHA * (mean - recent),
                    deviation + ALPHA * ((mean - recent).abs() - deviation),
                ),
            });
        }
        self.answers = 0;
        self.answer_sum = 0.0;
        self.back_pressure = false;
    }
}

/// One batch's place on the wire; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    concurrency: std::sync::Arc<Concurrency>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.concurrency.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.concurrency.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    /// One round of a collector answering every request in `took`, while the relay keeps
    /// every slot the limit allows busy (more batches waiting): the slots' answers come
    /// spread over the round. Returns the limit after it.
    async fn busy_window(concurrency: &Arc<Concurrency>, took: Duration, signal: Signal) -> usize {
        let mut slots = Vec::new();
        for _ in 0..concurrency.limit() {
            slots.push(concurrency.slot().await);
        }
        let step = took / slots.len() as u32;
        for slot in slots {
            advance(step).await;
            concurrency.answered(signal);
            drop(slot);
        }
        concurrency.limit()
    }

    fn answered(ms: u64) -> Signal {
        Signal::Answered(Duration::from_millis(ms))
    }

    #[tokio::test(start_paused = true)]
    async fn against_a_steady_collector_the_limit_doubles_to_the_ceiling_and_stays() {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        assert_eq!(concurrency.limit(), INITIAL_LIMIT);
        let mut limits = Vec::new();
        for _ in 0..8 {
            limits.push(busy_window(&concurrency, Duration::from_millis(100), answered(100)).await);
        }
        // The first window only learns the answer time; then one doubling per window.
        assert_eq!(limits, [32, 64, 128, 256, 512, 1_000, 1_000, 1_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_does_not_raise_its_limit() {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        for _ in 0..20 {
            // One batch at a time: far below the limit.
            let slot = concurrency.slot().await;
            advance(Duration::from_millis(100)).await;
            concurrency.answered(answered(100));
            drop(slot);
        }
        assert_eq!(concurrency.limit(), INITIAL_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn back_pressure_makes_it_fall_by_a_tenth_per_window_and_recovery_is_quick_then_careful()
    {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        for _ in 0..4 {
            busy_window(&concurrency, Duration::from_millis(100), answered(100)).await;
        }
        assert_eq!(concurrency.limit(), 256);
        // The collector answers 503 to everything: down by a tenth each window, to 1.
        let mut falling = Vec::new();
        for _ in 0..3 {
            falling.push(
                busy_window(
                    &concurrency,
                    Duration::from_millis(100),
                    Signal::BackPressure,
                )
                .await,
            );
        }
        assert_eq!(falling, [230, 207, 186]);
        for _ in 0..100 {
            busy_window(
                &concurrency,
                Duration::from_millis(100),
                Signal::BackPressure,
            )
            .await;
        }
        assert_eq!(concurrency.limit(), 1, "never below one");
        // It answers again: doubling back to half of where the trouble began (128),
        // then at most one more per window.
        let mut rising = Vec::new();
        for _ in 0..10 {
            rising.push(busy_window(&concurrency, Duration::from_millis(100), answered(100)).await);
        }
        assert_eq!(rising[..7], [2, 4, 8, 16, 32, 64, 128]);
        assert!(rising.windows(2).all(|w| w[1] >= w[0]), "{rising:?}");
        assert!((129..=131).contains(&rising[9]), "{rising:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rising_answer_times_make_it_fall_and_a_steady_rate_holds_it() {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        for _ in 0..4 {
            busy_window(&concurrency, Duration::from_millis(100), answered(100)).await;
        }
        assert_eq!(concurrency.limit(), 256);
        // The collector saturates: answers take 150 ms. The limit falls...
        let mut limits = Vec::new();
        for _ in 0..2 {
            limits.push(busy_window(&concurrency, Duration::from_millis(150), answered(150)).await);
        }
        assert!(limits.iter().all(|&limit| limit < 256), "{limits:?}");
        // ... and once they are steady again (a few percent of jitter is no rise), it
        // grows by at most one per window: slow start is over.
        let fallen = *limits.last().unwrap();
        let mut steady = Vec::new();
        for took in [152, 148, 151, 149, 150, 152, 148, 150] {
            steady
                .push(busy_window(&concurrency, Duration::from_millis(150), answered(took)).await);
        }
        assert!(steady.last().unwrap() > &fallen, "{steady:?}");
        assert!(
            *steady.last().unwrap() <= fallen + steady.len(),
            "{steady:?}"
        );
        assert!(
            steady.windows(2).all(|w| w[1] >= w[0] && w[1] <= w[0] + 1),
            "{steady:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_say_nothing_about_load_move_nothing_and_fixed_never_moves() {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        for _ in 0..5 {
            busy_window(&concurrency, Duration::from_millis(100), Signal::Neither).await;
        }
        assert_eq!(concurrency.limit(), INITIAL_LIMIT);
        let fixed = Arc::new(Concurrency::new(40, false));
        for signal in [
            answered(100),
            Signal::BackPressure,
            answered(100),
            answered(900),
        ] {
            busy_window(&fixed, Duration::from_millis(100), signal).await;
            assert_eq!(fixed.limit(), 40);
        }
        // A ceiling below the initial limit is where it starts.
        assert_eq!(Concurrency::new(4, true).limit(), 4);
    }

    #[test]
    fn what_each_answer_signals() {
        assert_eq!(Signal::of(Some(200), Some(0.1)), answered(100));
        assert_eq!(Signal::of(Some(400), Some(0.1)), answered(100));
        for status in [429, 503, 504] {
            assert_eq!(Signal::of(Some(status), Some(0.1)), Signal::BackPressure);
        }
        assert_eq!(
            Signal::of(None, None),
            Signal::BackPressure,
            "timeout, refused"
        );
        assert_eq!(Signal::of(Some(500), Some(0.1)), Signal::Neither);
        assert_eq!(Signal::of(Some(302), Some(0.1)), Signal::Neither);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_at_the_limit_until_a_slot_frees_or_the_limit_rises() {
        let concurrency = Arc::new(Concurrency::new(1_000, true));
        let mut slots = Vec::new();
        for _ in 0..INITIAL_LIMIT {
            slots.push(concurrency.slot().await);
        }
        assert_eq!(concurrency.in_flight(), INITIAL_LIMIT);
        let waiting = tokio::spawn({
            let concurrency = concurrency.clone();
            async move { concurrency.slot().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "at the limit");
        drop(slots.pop());
        let slot = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the freed slot")
            .unwrap();
        assert_eq!(concurrency.in_flight(), INITIAL_LIMIT);
        slots.push(slot);
        // At the limit again: a rise lets the next one through.
        let waiting = tokio::spawn({
            let concurrency = concurrency.clone();
            async move { concurrency.slot().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The first answer learns the answer time (and, the limit reached, doubles it).
        advance(Duration::from_millis(100)).await;
        assert_eq!(concurrency.answered(answered(100)), Some(2 * INITIAL_LIMIT));
        let _slot = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the rise")
            .unwrap();
        assert_eq!(concurrency.in_flight(), INITIAL_LIMIT + 1);
    }
}
