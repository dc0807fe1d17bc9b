//! One relay run on a registered instance: the tasks joining the queue and the emitter,
//! and the graceful drain. An event travels in one direction:
//!
//! ```text
//! claimer --Claimed--> batcher --Batch--> senders --Resolution--> acker --Parked--> retrier
//!    ^                   (parse, batch, flush timer)                 |                |
//!    |                                                              (ack script)    (settle script)
//!    +---- claim permits (events, bytes), given back on acknowledgement or settlement
//! heartbeat: renews the lease and recovers dead relays' events; sampler: list lengths
//! ```
//!
//! - `claimer` claims while it holds claim permits (the memory bound) and the collector
//!   accepts requests; while the collector fails it claims one probe batch at a time.
//! - `batcher` parses elements, fills batches by count and bytes, and runs one sender
//!   per batch (at most `max_requests_in_flight`). A sender retries its batch until it is
//!   delivered, rejected, split (413) or parked (it kept failing while others succeeded).
//! - `acker` keeps the window of claimed events in claim order and acknowledges the
//!   resolved prefix in one script call, writing dead-letter and retry-list entries.
//! - `retrier` retries parked events one by one and dead-letters those that keep
//!   failing while other requests succeed.
//! - `heartbeat` renews the lease and samples the lists for the metrics.
//!
//! Every task follows one `Lifecycle`: *running* → *draining* (shutdown asked or a
//! fatal error: claiming stops, batches are sent) → *abandoning* (drain deadline, second
//! signal or fatal error: requests are dropped). Then, in one script, every resolution
//! received is acknowledged and every unresolved event, in flight or parked, goes back to
//! the head of the list in claim order ([`Queue::release`]). A task that panics or ends
//! unexpectedly is a fatal error (exit 1), never swallowed: what it held stays in Redis.
//!
//! `daemon` wraps the runs: what outlives an instance (metrics, health, the admin
//! listener, the collector client, reloads), connecting and registering with retry.
//!
//! It may touch: [`crate::queue`], [`crate::config`], [`crate::ops`] (it reports into
//! metrics and health; they never call back), and the tracker's protocol, HTTP client
//! and retry. One place decides a dead-letter reason: the task that resolves the event
//! (`acker` for batches, `retrier` for parked events) from the sender's outcome.

mod acker;
mod batcher;
mod claimer;
mod daemon;
mod heartbeat;
mod retrier;
mod sender;

pub use daemon::{Controls, changed_keys, run, run_with_controls};
pub use sender::Sender;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::ops::events::Observer;
use crate::ops::events::lifecycle::{Fatal, NotDeregistered, RelayStopped, Stopping};
use crate::ops::events::pipeline::EverythingReturned;
use crate::ops::health::Health;
use crate::ops::metrics::{DeadReason, Metrics, Summary};
use crate::queue::{Queue, QueueError};
use snowplow_relay_tracker::protocol::ParseOptions;

pub(crate) use heartbeat::recover_expired;

/// How long returning the undelivered events may take after the drain, Redis answering
/// or not. With a second signal it is [`FORCED_RELEASE_BUDGET`] instead.
pub const RELEASE_BUDGET: Duration = Duration::from_secs(2);

/// The release budget after a second signal: the relay exits within this, leaving what
/// Redis could not take back in the in-flight list for lease recovery.
pub const FORCED_RELEASE_BUDGET: Duration = Duration::from_millis(500);

/// Where the run is in its life. It only moves forward, and every task watches it.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// Shutdown asked, a fatal error or a lost instance: claim nothing more; send and
    /// acknowledge what is held.
    draining: CancellationToken,
    /// Drain deadline, second signal or fatal error: drop requests in flight; what is
    /// unresolved goes back to the list.
    abandoning: CancellationToken,
    /// When a stop's drain will be cut short: no request starts that would still be
    /// waiting for its answer then.
    drain_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// Why the run ended other than by a stop: the first fatal error, or what made
    /// this instance end (a lost lease), returned when the run returns.
    fatal: Mutex<Option<crate::error::Error>>,
    /// Where a fatal error is told.
    events: Arc<Observer>,
}

impl Lifecycle {
    fn new(events: Arc<Observer>) -> Lifecycle {
        Lifecycle {
            draining: CancellationToken::new(),
            abandoning: CancellationToken::new(),
            drain_deadline: std::sync::OnceLock::new(),
            fatal: Mutex::new(None),
            events,
        }
    }

    fn drain(&self) {
        self.draining.cancel();
    }

    fn abandon(&self) {
        self.draining.cancel();
        self.abandoning.cancel();
    }

    /// Records a fatal error (the first one wins) and stops everything.
    fn fail(&self, error: crate::error::Error) {
        self.events.emit(Fatal { error: &error });
        self.record(error);
        self.abandon();
    }

    /// This instance must end and the relay register again (its lease was lost, or Redis
    /// no longer holds what it left): records why (unless an error came first) and
    /// stops every task. The task that found it then ends as it does on a stop, so no
    /// task's ending can hide it.
    fn lost_instance(&self, error: QueueError) {
        self.record(error.into());
        self.abandon();
    }

    fn record(&self, error: crate::error::Error) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(error);
        }
    }

    fn take_fatal(&self) -> Option<crate::error::Error> {
        self.fatal.lock().ok().and_then(|mut fatal| fatal.take())
    }
}

/// What bounds the claimed events: permits for events and for bytes, taken by the
/// claimer and given back by the acker (and the retrier, for parked events' bytes).
#[derive(Debug)]
struct ClaimPermits {
    events: Semaphore,
    bytes: Semaphore,
}

impl ClaimPermits {
    fn give_back(&self, events: usize, bytes: usize) {
        self.events.add_permits(events);
        self.bytes.add_permits(bytes);
    }
}

/// What every task of one run shares.
struct Shared {
    queue: Arc<Queue>,
    emitter: Arc<Sender>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Where what happens is told (logged and counted in one place), every Redis call's
    /// end included.
    events: Arc<Observer>,
    settings: Settings,
    /// How elements are parsed, for the configured method.
    parse: ParseOptions,
    lifecycle: Lifecycle,
    permits: ClaimPermits,
}

impl Shared {
    fn new(config: &Settings, queue: Arc<Queue>, services: &Services) -> Shared {
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

    /// The instance's dead-letter metadata for `reason`.
    fn dead_letter(&self, reason: impl Into<String>, status: Option<u16>) -> Vec<u8> {
        crate::queue::DeadLetter::new(reason, status, self.queue.instance()).meta_line()
    }

    /// What happened: logged and counted in one place.
    fn emit(&self, event: impl crate::ops::events::InternalEvent) {
        self.events.emit(event);
    }
}

/// Elements claimed in one round trip, starting at `first_position`.
#[derive(Debug)]
struct Claimed {
    first_position: u64,
    elements: Vec<Bytes>,
    /// The list held fewer events than the claim could take: send partial batches now.
    ran_dry: bool,
}

/// A parked event: it left the window for the retry list and is retried on its own.
#[derive(Debug, Clone)]
struct ParkedEvent {
    position: u64,
    element: Bytes,
    /// Attempts made before it was parked.
    attempts: u32,
    status: Option<u16>,
}

/// How some claimed events ended.
#[derive(Debug)]
enum Resolution {
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
struct Unsettled {
    delivered: Vec<u64>,
    /// Position, metadata line, the element, and why.
    dead: Vec<(u64, Vec<u8>, Bytes, DeadEnd)>,
}

/// Why an event went to the dead-letter list: the metric's reason, the collector's status
/// and what its entry says.
#[derive(Debug, Clone)]
struct DeadEnd {
    reason: DeadReason,
    status: Option<u16>,
    detail: Arc<str>,
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

/// Runs the relay on a registered queue until `shutdown` is cancelled, then drains;
/// `force` cuts the drain short. Returns what was done.
pub(crate) async fn run_instance(
    config: &Settings,
    queue: Arc<Queue>,
    services: &Services,
    shutdown: CancellationToken,
    force: CancellationToken,
) -> Result<Summary, crate::error::Error> {
    let shared = Arc::new(Shared::new(config, queue, services));
    shared.health.instance_started();
    let mut tasks = Tasks::start(&shared, services.flush.clone());
    shared.health.set_status("relaying");
    run_until_stopped(&shared, &mut tasks, &shutdown).await;
    let forced = drain(&shared, &mut tasks, &force, shutdown.is_cancelled()).await;
    // Nothing renews the lease from here on: the release ends the instance.
    if let Some(heartbeat) = tasks.heartbeat.take() {
        heartbeat.abort();
    }
    tasks.sampler.abort();
    shared
        .health
        .stage_idle(crate::ops::health::Stage::Heartbeat);
    let fatal = return_what_is_held(&shared, &mut tasks, forced, &force).await;
    finish(&shared, fatal)
}

/// Waits for shutdown, a fatal error or a lost instance (a task that ends before then is
/// a fatal error).
async fn run_until_stopped(shared: &Shared, tasks: &mut Tasks, shutdown: &CancellationToken) {
    let lifecycle = &shared.lifecycle;
    tokio::select! {
        () = shutdown.cancelled() => shared.emit(Stopping::Draining {
            drain_timeout_ms: shared.settings.worker.drain_timeout.as_millis() as u64,
        }),
        () = lifecycle.draining.cancelled() => {}
        task = tasks.first_to_end(shared) => {
            if !lifecycle.draining.is_cancelled() {
                lifecycle.fail(crate::error::Error::TaskFailed {
                    task,
                    message: "ended unexpectedly".into(),
                });
            }
        }
    }
}

/// Drains until every task is done, the deadline passes or a second signal (`force`)
/// comes. Returns whether a second signal came. Only a stop (`stopping`) makes the relay
/// say it is stopping: an instance that ended for another reason is followed by a new
/// one, or by the process's exit with the error.
async fn drain(
    shared: &Shared,
    tasks: &mut Tasks,
    force: &CancellationToken,
    stopping: bool,
) -> bool {
    let lifecycle = &shared.lifecycle;
    lifecycle.drain();
    if stopping {
        shared.health.stopping();
        shared
            .health
            .set_status("draining: sending what is held, then returning the rest to the list");
    }
    let deadline = tokio::time::Instant::now() + shared.settings.worker.drain_timeout;
    if stopping {
        let _ = lifecycle.drain_deadline.set(deadline);
    }
    let drain_deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(drain_deadline);
    let mut forced = false;
    while !tasks.drained() {
        tokio::select! {
            _ = tasks.first_to_end(shared) => {}
            () = &mut drain_deadline, if !lifecycle.abandoning.is_cancelled() => {
                shared.emit(Stopping::DeadlinePassed);
                lifecycle.abandon();
            }
            () = force.cancelled(), if !forced => {
                forced = true;
                shared.emit(Stopping::SecondSignal);
                lifecycle.abandon();
            }
        }
    }
    forced
}

/// Returns what the instance still holds to the list: everything (the in-flight state
/// is not to be trusted after a state mismatch), or what is unresolved from the claim
/// position and window the tasks left. Returns the run's fatal error, if any.
async fn return_what_is_held(
    shared: &Shared,
    tasks: &mut Tasks,
    forced: bool,
    force: &CancellationToken,
) -> Option<crate::error::Error> {
    let mut fatal = shared.lifecycle.take_fatal();
    let needs_new_instance =
        matches!(&fatal, Some(crate::error::Error::Queue(e)) if e.needs_new_instance());
    if let Some(crate::error::Error::Queue(QueueError::StateMismatch(_))) = &fatal {
        let returned = tokio::time::timeout(RELEASE_BUDGET, shared.queue.abandon()).await;
        shared.emit(EverythingReturned {
            returned: returned.ok().and_then(Result::ok),
        });
    } else if let (Some(Some(window)), Some(Some(position)), false) =
        (&tasks.window, tasks.position, needs_new_instance)
    {
        let unsettled = tasks.unsettled.take().flatten().unwrap_or_default();
        let holds_nothing = window.is_empty()
            && unsettled.delivered.is_empty()
            && unsettled.dead.is_empty()
            && shared.metrics.parked_now() == 0;
        let budget = if forced {
            FORCED_RELEASE_BUDGET
        } else {
            RELEASE_BUDGET
        };
        // A second signal during the release shortens what is left of its budget; a
        // release Redis answers at once still completes (nothing is given up for nothing).
        let release = acker::release(shared, window, position, &unsettled, budget);
        tokio::pin!(release);
        let released = tokio::select! {
            released = &mut release => released,
            () = force.cancelled(), if !forced => {
                tokio::time::timeout(FORCED_RELEASE_BUDGET, &mut release)
                    .await
                    .unwrap_or_else(|_| Err(unreleased(&shared.queue, "second signal".into())))
            }
        };
        match released {
            // Redis down at a stop, and nothing to return: a clean stop. Only the
            // registration is left in Redis, and it expires with the lease.
            Err(error) if holds_nothing && fatal.is_none() => {
                shared.emit(NotDeregistered { error: &error })
            }
            Err(error) => {
                fatal.get_or_insert(error);
            }
            Ok(()) => {}
        }
    }
    if needs_new_instance {
        shared.metrics.nothing_in_flight();
    }
    fatal
}

/// Marks the instance gone, logs the run's totals and returns them (or the fatal error).
fn finish(
    shared: &Shared,
    fatal: Option<crate::error::Error>,
) -> Result<Summary, crate::error::Error> {
    let summary = shared.metrics.summary();
    shared.emit(RelayStopped { summary });
    match fatal {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// The run's tasks and what the ones that ended returned.
struct Tasks {
    claimer: Option<JoinHandle<Result<u64, QueueError>>>,
    batcher: Option<JoinHandle<()>>,
    acker: Option<JoinHandle<Result<acker::Window, QueueError>>>,
    retrier: Option<JoinHandle<Result<Unsettled, QueueError>>>,
    heartbeat: Option<JoinHandle<Result<(), QueueError>>>,
    sampler: JoinHandle<()>,
    /// `Some(None)`: the task ended without a result (it failed).
    position: Option<Option<u64>>,
    window: Option<Option<acker::Window>>,
    unsettled: Option<Option<Unsettled>>,
}

impl Tasks {
    /// Spawns the run's tasks, wired to each other by channels.
    fn start(shared: &Arc<Shared>, flush: Arc<tokio::sync::Notify>) -> Tasks {
        let (claimed_tx, claimed_rx) = mpsc::channel(2);
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        let (parked_tx, parked_rx) = mpsc::unbounded_channel();
        Tasks {
            claimer: Some(tokio::spawn(
                claimer::Claimer::new(shared.clone(), claimed_tx).run(),
            )),
            batcher: Some(tokio::spawn(
                batcher::Batcher::new(shared.clone(), claimed_rx, resolved_tx, flush).run(),
            )),
            acker: Some(tokio::spawn(
                acker::Acker::new(shared.clone(), resolved_rx, parked_tx).run(),
            )),
            retrier: Some(tokio::spawn(
                retrier::Retrier::new(shared.clone(), parked_rx).run(),
            )),
            heartbeat: Some(tokio::spawn(
                heartbeat::Heartbeat::new(shared.clone()).run(),
            )),
            sampler: tokio::spawn(heartbeat::sample(shared.clone())),
            position: None,
            window: None,
            unsettled: None,
        }
    }

    fn drained(&self) -> bool {
        self.claimer.is_none()
            && self.batcher.is_none()
            && self.acker.is_none()
            && self.retrier.is_none()
    }

    /// Waits for the next of the pipeline's tasks (or the heartbeat) to end, records what
    /// it returned, turns a failure into a fatal error, and names it.
    async fn first_to_end(&mut self, shared: &Shared) -> &'static str {
        let lifecycle = &shared.lifecycle;
        tokio::select! {
            joined = wait(&mut self.claimer) => {
                self.position = Some(check(lifecycle, "claimer", joined));
                "claimer"
            }
            joined = wait(&mut self.batcher) => {
                check(lifecycle, "batcher", joined.map(Ok));
                "batcher"
            }
            joined = wait(&mut self.acker) => {
                self.window = Some(check(lifecycle, "acker", joined));
                "acker"
            }
            joined = wait(&mut self.retrier) => {
                self.unsettled = Some(check(lifecycle, "retrier", joined));
                "retrier"
            }
            joined = wait(&mut self.heartbeat) => {
                check(lifecycle, "heartbeat", joined);
                "heartbeat"
            }
        }
    }
}

/// Waits for a task still held in `slot`, then empties the slot; pending forever once
/// it is empty.
async fn wait<T>(slot: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match slot.as_mut() {
        Some(handle) => {
            let joined = handle.await;
            *slot = None;
            joined
        }
        None => std::future::pending().await,
    }
}

/// Turns a task's end into a fatal error if it panicked or failed.
fn check<T>(
    lifecycle: &Lifecycle,
    task: &'static str,
    joined: Result<Result<T, QueueError>, JoinError>,
) -> Option<T> {
    match joined {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            lifecycle.fail(error.into());
            None
        }
        Err(error) => {
            lifecycle.fail(crate::error::Error::TaskFailed {
                task,
                message: error.to_string(),
            });
            None
        }
    }
}

fn unreleased(queue: &Queue, why: String) -> crate::error::Error {
    crate::error::Error::Unreleased {
        inflight_key: crate::queue::shown_key(&queue.keys().inflight(queue.instance())),
        lease_ttl_secs: queue.lease_ttl().as_secs(),
        why,
    }
}
