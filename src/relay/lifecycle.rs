//! Where a run is in its life: *running* → *draining* (shutdown asked or a fatal error:
//! claiming stops, batches are sent) → *abandoning* (drain deadline, second signal or
//! fatal error: requests are dropped). It only moves forward, and every task watches it.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::ops::events::Observer;
use crate::ops::events::lifecycle::Fatal;
use crate::queue::QueueError;

/// Where the run is in its life. It only moves forward, and every task watches it.
#[derive(Debug)]
pub(super) struct Lifecycle {
    /// Shutdown asked, a fatal error or a lost instance: claim nothing more; send and
    /// acknowledge what is held.
    pub(super) draining: CancellationToken,
    /// Drain deadline, second signal or fatal error: drop requests in flight; what is
    /// unresolved goes back to the list.
    pub(super) abandoning: CancellationToken,
    /// When a stop's drain will be cut short: no request starts that would still be
    /// waiting for its answer then.
    pub(super) drain_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// Why the run ended other than by a stop: the first fatal error, or what made
    /// this instance end (a lost lease), returned when the run returns.
    pub(super) fatal: Mutex<Option<crate::error::Error>>,
    /// Where a fatal error is told.
    pub(super) events: Arc<Observer>,
}

impl Lifecycle {
    pub(super) fn new(events: Arc<Observer>) -> Lifecycle {
        Lifecycle {
            draining: CancellationToken::new(),
            abandoning: CancellationToken::new(),
            drain_deadline: std::sync::OnceLock::new(),
            fatal: Mutex::new(None),
            events,
        }
    }

    pub(super) fn drain(&self) {
        self.draining.cancel();
    }

    pub(super) fn abandon(&self) {
        self.draining.cancel();
        self.abandoning.cancel();
    }

    /// Records a fatal error (the first one wins) and stops everything.
    pub(super) fn fail(&self, error: crate::error::Error) {
        self.events.emit(Fatal { error: &error });
        self.record(error);
        self.abandon();
    }

    /// This instance must end and the relay register again (its lease was lost, or Redis
    /// no longer holds what it left): records why (unless an error came first) and
    /// stops every task. The task that found it then ends as it does on a stop, so no
    /// task's ending can hide it.
    pub(super) fn lost_instance(&self, error: QueueError) {
        self.record(error.into());
        self.abandon();
    }

    pub(super) fn record(&self, error: crate::error::Error) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(error);
        }
    }

    pub(super) fn take_fatal(&self) -> Option<crate::error::Error> {
        self.fatal.lock().ok().and_then(|mut fatal| fatal.take())
    }
}
