//! The events' way through the relay: claimed, acknowledged, dead-lettered, parked,
//! returned to the list, recovered from relays that died.

use super::{InternalEvent, Observer};
use crate::ops::metrics::DeadReason;

/// Events claimed from the list.
#[derive(Debug)]
pub struct EventsClaimed {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl InternalEvent for EventsClaimed {
    fn emit(self, to: &Observer) {
        to.metrics.claimed(self.count, self.bytes);
    }
}

/// Events left this relay's hands in Redis (acknowledged, or parked events settled):
/// `count` events and `bytes` bytes are no longer held.
#[derive(Debug)]
pub struct EventsSettled {
    /// Events no longer in flight (0 for parked events: they left the window already).
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl InternalEvent for EventsSettled {
    fn emit(self, to: &Observer) {
        if self.count > 0 {
            tracing::debug!(acked = self.count, "acknowledged");
        }
        to.metrics.settled(self.count, self.bytes);
    }
}

/// Events written to the dead-letter list (their entries are in Redis), all for one
/// reason. Said at once, then once a minute per reason with the events it stands for.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    /// The metrics' `reason` label.
    pub reason: DeadReason,
    /// How many events.
    pub count: u64,
    /// The collector's status, if it answered.
    pub status: Option<u16>,
    /// What the first one's entry says.
    pub detail: &'a str,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self, to: &Observer) {
        if self.count == 0 {
            return;
        }
        to.metrics.dead_lettered(self.reason, self.count);
        match to.limited("dead-lettered", self.reason.as_str(), self.count) {
            Some(repeats) => tracing::warn!(
                reason = self.reason.as_str(),
                events = repeats.count,
                status = self.status,
                detail = %self.detail,
                "events went to the dead-letter list (snowplow-relay dead-letter list shows \
                 them)"
            ),
            None => tracing::debug!(
                reason = self.reason.as_str(),
                events = self.count,
                detail = %self.detail,
                "more events went to the dead-letter list"
            ),
        }
    }
}

/// Dead-lettered events counted by reason, emitted as one [`DeadLettered`] per reason.
#[derive(Debug, Default)]
pub struct DeadLetterTally {
    by_reason: Vec<(DeadReason, u64, Option<u16>, String)>,
}

impl DeadLetterTally {
    /// One more event for `reason`; the first of each reason gives the detail shown.
    pub fn add(&mut self, reason: DeadReason, status: Option<u16>, detail: &str) {
        match self.by_reason.iter_mut().find(|(r, ..)| *r == reason) {
            Some((_, count, ..)) => *count += 1,
            None => self.by_reason.push((reason, 1, status, detail.to_owned())),
        }
    }

    /// Emits what was counted.
    pub fn emit(self, to: &Observer) {
        for (reason, count, status, detail) in self.by_reason {
            to.emit(DeadLettered {
                reason,
                count,
                status,
                detail: &detail,
            });
        }
    }
}

/// Events parked: in this relay's retry list, each retried on its own.
#[derive(Debug)]
pub struct EventsParked {
    /// How many.
    pub count: u64,
}

impl InternalEvent for EventsParked {
    fn emit(self, to: &Observer) {
        if self.count > 0 {
            to.metrics.parked(self.count);
        }
    }
}

/// Parked events settled (delivered or dead-lettered) and removed from the retry list.
#[derive(Debug)]
pub struct ParkedSettled {
    /// How many.
    pub count: u64,
    /// Their bytes, no longer held.
    pub bytes: u64,
}

impl InternalEvent for ParkedSettled {
    fn emit(self, to: &Observer) {
        to.metrics.unparked(self.count);
        to.metrics.settled(0, self.bytes);
    }
}

/// A parked event kept failing on its own while other requests succeeded; it goes to the
/// dead-letter list (counted there, as [`DeadLettered`]).
#[derive(Debug)]
pub struct ParkedEventGivenUp {
    /// The last status.
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
}

impl InternalEvent for ParkedEventGivenUp {
    fn emit(self, _to: &Observer) {
        tracing::debug!(
            status = self.status,
            attempts = self.attempts,
            "an event keeps failing on its own while other requests succeed; dead-lettering it"
        );
    }
}

/// What the relay held went back to the head of the list (a stop, a lost lease).
#[derive(Debug)]
pub struct EventsReturned<'a> {
    /// Events returned.
    pub requeued: u64,
    /// The list, as shown in logs.
    pub list: &'a str,
    /// Redis had lost writes: everything went back, delivered events too.
    pub after_lost_writes: bool,
}

impl InternalEvent for EventsReturned<'_> {
    fn emit(self, to: &Observer) {
        to.metrics.requeued(self.requeued);
        to.metrics.nothing_in_flight();
        if self.after_lost_writes {
            tracing::warn!(
                requeued = self.requeued,
                "Redis had lost writes: every event this relay held went back to the list, \
                 delivered ones too (they will arrive twice)"
            );
        } else if self.requeued > 0 {
            tracing::info!(
                requeued = self.requeued,
                list = %self.list,
                "returned undelivered events to the head of the list"
            );
        }
    }
}

/// Returning the held events failed; tried again within the release's budget.
#[derive(Debug)]
pub struct ReturnRetrying<'a> {
    /// Why.
    pub error: &'a str,
    /// Attempts so far.
    pub attempt: u32,
}

impl InternalEvent for ReturnRetrying<'_> {
    fn emit(self, _to: &Observer) {
        tracing::warn!(
            error = %self.error,
            attempt = self.attempt,
            "cannot return events to the list yet; retrying"
        );
    }
}

/// After a state mismatch (Redis lost writes), everything the instance held was returned
/// (`Some`), or could not be now (`None`: it goes back when the lease expires).
#[derive(Debug)]
pub struct EverythingReturned {
    /// Events returned, if the return succeeded.
    pub returned: Option<u64>,
}

impl InternalEvent for EverythingReturned {
    fn emit(self, to: &Observer) {
        to.metrics.state_mismatch();
        match self.returned {
            Some(returned) => tracing::warn!(
                returned,
                "returned everything this relay held to the list; events it had delivered \
                 will arrive twice"
            ),
            None => tracing::warn!(
                "could not return what this relay held now; it goes back when this \
                 instance's lease expires"
            ),
        }
    }
}

/// The events of relays whose lease expired went back to the list.
#[derive(Debug)]
pub struct ExpiredLeasesRecovered {
    /// Relays recovered.
    pub instances: u64,
    /// Events returned.
    pub events: u64,
}

impl InternalEvent for ExpiredLeasesRecovered {
    fn emit(self, to: &Observer) {
        if self.instances == 0 {
            return;
        }
        to.metrics.redelivered(self.events);
        tracing::warn!(
            instances = self.instances,
            events = self.events,
            "returned the events of relays whose lease expired; those they had delivered \
             will arrive twice"
        );
    }
}
