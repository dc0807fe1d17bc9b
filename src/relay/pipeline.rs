//! The pipeline's vocabulary: what the tasks of one run share ([`Shared`]: the queue,
//! the sender, the settings, the [`Lifecycle`] every task follows and the claim permits
//! that bound memory), what they hand each other ([`Claimed`] elements, [`Resolution`]s,
//! [`ParkedEvent`]s, [`Unsettled`] leftovers), and what outlives a run ([`Services`]).
//! Definitions only: the tasks are in their own rooms, the run in `instance`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

pub(super) use super::lifecycle::Lifecycle;
use super::sender::Sender;
use crate::config::Settings;
use crate::ops::events::Observer;
use crate::ops::health::Health;
use crate::ops::metrics::{DeadReason, Metrics};
use crate::queue::Queue;
use snowplow_relay_tracker::protocol::ParseOptions;

/// How long returning the undelivered events may take after the drain, Redis answering
/// or not. With a second signal it is [`FORCED_RELEASE_BUDGET`] instead.
pub const RELEASE_BUDGET: Duration = Duration::from_secs(2);

/// The release budget after a second signal: the relay exits within this, leaving what
/// Redis could not take back in the in-flight list for lease recovery.
pub const FORCED_RELEASE_BUDGET: Duration = Duration::from_millis(500);

/// What bounds the claimed events: permits for events and for bytes, taken by the
/// claimer and given back by the acker (and the retrier, for parked events' bytes).
#[derive(Debug)]
pub(super) struct ClaimPermits {
    pub(super) events: Semaphore,
    pub(super) bytes: Semaphore,
}

impl ClaimPermits {
    pub(super) fn give_back(&self, events: usize, bytes: usize) {
        self.events.add_permits(events);
        self.bytes.add_permits(bytes);
    }
}

/// What every task of one run shares.
pub(super) struct Shared {
    pub(super) queue: Arc<Queue>,
    pub(super) emitter: Arc<Sender>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// Where what happens is told (logged and counted in one place), every Redis call's
    /// end included.
    pub(super) events: Arc<Observer>,
    pub(super) settings: Settings,
    /// How elements are parsed, for the configured method.
    pub(super) parse: ParseOptions,
    pub(super) lifecycle: Lifecycle,
    pub(super) permits: ClaimPermits,
}

impl Shared {
    pub(super) fn new(config: &Settings, queue: Arc<Queue>, services: &Services) -> Shared {
        let settings = config.clone();
        Shared {
            permits: ClaimPermits {
                events: Semaphore::new(settings.worker.max_claimed_events),
                bytes: Semaphore::new(settings.worker.max_claimed_bytes),
            },
            parse: ParseOptions::for_method(
                settings.collector.method,
                settings.events.allow_unknown_fields,
            ),
            queue,
            emitter: services.emitter.clone(),
            metrics: services.metrics.clone(),
            health: services.health.clone(),
            events: services.events.clone(),
            settings,
            lifecycle: Lifecycle::new(services.events.clone()),
        }
    }

    /// The instance's dead-letter metadata: the metric's `reason` label and the detail.
    pub(super) fn dead_letter(
        &self,
        reason: DeadReason,
        detail: &str,
        status: Option<u16>,
    ) -> Vec<u8> {
        crate::queue::DeadLetter::new(reason.as_str(), detail, status, self.queue.instance())
            .meta_line()
    }

    /// What happened: logged and counted in one place.
    pub(super) fn emit(&self, event: impl crate::ops::events::InternalEvent) {
        self.events.emit(event);
    }
}

/// Elements claimed in one round trip, starting at `first_position`.
#[derive(Debug)]
pub(super) struct Claimed {
    pub(super) first_position: u64,
    pub(super) elements: Vec<Bytes>,
    /// The list held fewer events than the claim could take: send partial batches now.
    pub(super) ran_dry: bool,
}

/// A parked event: it left the window for the retry list and is retried on its own.
#[derive(Debug, Clone)]
pub(super) struct ParkedEvent {
    pub(super) position: u64,
    pub(super) element: Bytes,
    /// Attempts made before it was parked.
    pub(super) attempts: u32,
    pub(super) status: Option<u16>,
}

/// How some claimed events ended.
#[derive(Debug)]
pub(super) enum Resolution {
    /// The collector accepted the events at these positions (with their sizes).
    Delivered(Vec<(u64, usize)>),
    /// These positions (with the elements claimed there) go to the dead-letter list with
    /// this metadata, for this reason.
    Dead {
        reason: DeadReason,
        meta: Arc<[u8]>,
        /// What the metadata says, for the log line.
        detail: Arc<str>,
        /// The collector's status, if it answered.
        status: Option<u16>,
        events: Vec<(u64, Bytes)>,
    },
    /// These events kept failing while others succeeded: to the retry list.
    Parked(Vec<ParkedEvent>),
}

/// What the retrier resolved but could not write to Redis before the run ended: the
/// release writes it.
#[derive(Debug, Default)]
pub(super) struct Unsettled {
    pub(super) delivered: Vec<u64>,
    /// Position, metadata line, the element, and why.
    pub(super) dead: Vec<(u64, Vec<u8>, Bytes, DeadEnd)>,
}

/// Why an event went to the dead-letter list: the metric's reason, the collector's status
/// and what its entry says.
#[derive(Debug, Clone)]
pub(super) struct DeadEnd {
    pub(super) reason: DeadReason,
    pub(super) status: Option<u16>,
    pub(super) detail: Arc<str>,
}

/// What outlives one run (one registered instance): the collector client, the metrics,
/// the health, and the flush requests (SIGUSR1).
pub(crate) struct Services {
    pub(crate) emitter: Arc<Sender>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    pub(crate) events: Arc<Observer>,
    pub(crate) flush: Arc<tokio::sync::Notify>,
}

/// The error for events Redis could not take back in time: they stay in the in-flight
/// list and return by lease recovery.
pub(super) fn unreleased(queue: &Queue, why: String) -> crate::error::Error {
    crate::error::Error::Unreleased {
        inflight_key: crate::queue::shown_key(&queue.keys().inflight(queue.instance())),
        lease_ttl_secs: queue.lease_ttl().as_secs(),
        why,
    }
}
