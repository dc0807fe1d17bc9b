//! The collector's side: each request and its answer, and what the relay makes of a
//! batch's attempts (retried, parked, split, delivered).

use snowplow_relay_tracker::http::Exchange;

use super::{InternalEvent, Observer};

/// One request to the collector and its answer, as the collector gave it (a 204 is
/// counted as 204's label says: `code="other"` in class `2xx`, see `Metrics::request`).
/// Never emitted for a batch that could not be sent at all.
#[derive(Debug, Clone, Copy)]
pub struct CollectorRequest {
    /// What the request was and what came back.
    pub exchange: Exchange,
    /// Events it carried.
    pub events: usize,
}

impl InternalEvent for CollectorRequest {
    fn emit(self, to: &Observer) {
        to.metrics.request(
            self.exchange.status,
            self.exchange.seconds,
            self.events,
            self.exchange.bytes,
        );
    }
}

/// Two or more batches are failing: the collector is failing as a whole.
pub struct CollectorFailing<'a> {
    /// The last attempt's error.
    pub error: &'a dyn std::fmt::Display,
    /// The collector's URL, credentials masked.
    pub collector: &'a str,
}

impl InternalEvent for CollectorFailing<'_> {
    fn emit(self, to: &Observer) {
        to.health.set_collector_failing(true);
        tracing::warn!(
            error = %self.error,
            collector = %self.collector,
            "collector requests are failing; claiming paused (one probe batch at a time), \
             retrying with backoff"
        );
    }
}

/// A failing collector accepted a batch again.
#[derive(Debug)]
pub struct CollectorRecovered;

impl InternalEvent for CollectorRecovered {
    fn emit(self, to: &Observer) {
        to.health.set_collector_failing(false);
        tracing::info!("collector requests succeed again; claiming resumed");
    }
}

/// Fewer than two batches are failing now, none of them seen delivered (parked,
/// dead-lettered or abandoned): the collector has not been seen to recover.
#[derive(Debug)]
pub struct CollectorFailuresEnded;

impl InternalEvent for CollectorFailuresEnded {
    fn emit(self, to: &Observer) {
        to.health.set_collector_failing(false);
        tracing::debug!("fewer than two batches are failing now");
    }
}

/// The adaptive limit on requests in flight moved (see `relay::concurrency`).
#[derive(Debug)]
pub struct ConcurrencyChanged {
    /// The limit now.
    pub limit: usize,
    /// `collector.max_requests_in_flight`, the most it may be.
    pub ceiling: usize,
}

impl InternalEvent for ConcurrencyChanged {
    fn emit(self, to: &Observer) {
        to.metrics.concurrency_limit(self.limit);
        tracing::debug!(
            limit = self.limit,
            ceiling = self.ceiling,
            "requests in flight: limit now {}",
            self.limit
        );
    }
}

/// A batch was delivered.
#[derive(Debug)]
pub struct BatchDelivered {
    /// Its events.
    pub events: usize,
    /// Its body's bytes.
    pub bytes: usize,
    /// Attempts it took.
    pub attempts: u32,
}

impl InternalEvent for BatchDelivered {
    fn emit(self, to: &Observer) {
        to.metrics.delivered(self.events as u64);
        tracing::debug!(
            events = self.events,
            bytes = self.bytes,
            attempts = self.attempts,
            "batch delivered"
        );
    }
}

/// A batch's attempt failed and will be retried after `retry_in_ms`.
pub struct BatchRetrying<'a> {
    /// Its events.
    pub events: usize,
    /// Attempts so far.
    pub attempts: u32,
    /// The wait before the next attempt.
    pub retry_in_ms: u64,
    /// Why it failed.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for BatchRetrying<'_> {
    fn emit(self, to: &Observer) {
        to.metrics.retry();
        tracing::debug!(
            events = self.events,
            attempts = self.attempts,
            retry_in_ms = self.retry_in_ms,
            error = %self.error,
            "collector request failed; will retry"
        );
    }
}

/// The collector answered a redirect that is no cookie bounce: a misconfiguration
/// (`collector.url` names the wrong place), retried. Said at once, then once a minute per
/// status and location, with how many redirects the line stands for.
pub struct CollectorRedirects<'a> {
    /// The redirect, with its (masked) Location.
    pub error: &'a dyn std::fmt::Display,
    /// Attempts of this batch so far.
    pub attempts: u32,
    /// Its events.
    pub events: usize,
}

impl InternalEvent for CollectorRedirects<'_> {
    fn emit(self, to: &Observer) {
        to.metrics.retry();
        let cause = self.error.to_string();
        match to.limited("redirect", &cause, 1) {
            Some(repeats) => tracing::warn!(
                error = %cause,
                attempts = self.attempts,
                redirects = repeats.times,
                "collector redirects; not following (check collector.url)"
            ),
            None => tracing::debug!(
                error = %cause,
                attempts = self.attempts,
                events = self.events,
                "collector redirects again; not following"
            ),
        }
    }
}

/// A batch kept failing while other requests succeeded: parked (it leaves the window for
/// the retry list, and each of its events is retried on its own).
pub struct BatchParking<'a> {
    /// Its events.
    pub events: usize,
    /// The last status, if the collector answered.
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for BatchParking<'_> {
    fn emit(self, to: &Observer) {
        let cause = self
            .status
            .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        match to.limited("parking", &cause, self.events as u64) {
            Some(repeats) => tracing::warn!(
                events = repeats.count,
                batches = repeats.times,
                status = self.status,
                error = %self.error,
                attempts = self.attempts,
                "a batch keeps failing while other requests to the collector succeed; parking \
                 it in Redis and retrying each of its events on its own"
            ),
            None => tracing::debug!(
                events = self.events,
                status = self.status,
                attempts = self.attempts,
                "parking another batch"
            ),
        }
    }
}

/// A batch kept failing and nothing else was sent: its halves go at once, to find out
/// which events are at fault.
pub struct BatchIsolating<'a> {
    /// Its events.
    pub events: usize,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for BatchIsolating<'_> {
    fn emit(self, _to: &Observer) {
        tracing::debug!(
            events = self.events,
            error = %self.error,
            attempts = self.attempts,
            "a batch keeps failing and nothing else was sent; sending its halves at once to \
             find out which events are at fault"
        );
    }
}

/// The collector answered 413 to a batch: each half is sent on its own.
#[derive(Debug)]
pub struct BatchTooLarge {
    /// Its events.
    pub events: usize,
    /// The status.
    pub status: Option<u16>,
}

impl InternalEvent for BatchTooLarge {
    fn emit(self, to: &Observer) {
        match to.limited("too large", "413", self.events as u64) {
            Some(repeats) => tracing::warn!(
                events = self.events,
                splits = repeats.times,
                status = self.status,
                "a batch is too large for the collector; sending each half on its own \
                 (lower collector.byte_limit or buffer_size)"
            ),
            None => tracing::debug!(events = self.events, "splitting another batch"),
        }
    }
}

/// A parked event failed again and stays parked.
pub struct ParkedEventFailed<'a> {
    /// Its position in the claim order.
    pub position: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Why.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ParkedEventFailed<'_> {
    fn emit(self, _to: &Observer) {
        tracing::debug!(
            position = self.position,
            error = %self.error,
            attempts = self.attempts,
            "parked event failed again"
        );
    }
}

/// A parked event was delivered.
#[derive(Debug)]
pub struct ParkedEventDelivered;

impl InternalEvent for ParkedEventDelivered {
    fn emit(self, to: &Observer) {
        to.metrics.delivered(1);
    }
}

/// A flush (SIGUSR1) sent the partial batch.
#[derive(Debug)]
pub struct FlushRequested {
    /// Events it held.
    pub events: usize,
}

impl InternalEvent for FlushRequested {
    fn emit(self, _to: &Observer) {
        tracing::info!(events = self.events, "flush requested: partial batch sent");
    }
}
