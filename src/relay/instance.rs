//! One relay run on a registered instance: starts the tasks, waits for a stop, drains,
//! returns what is held to the list and says what the run did. Every task follows the
//! one [`Lifecycle`]; a task that ends before the stop is a fatal error, never swallowed.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use super::pipeline::{
    FORCED_RELEASE_BUDGET, Lifecycle, RELEASE_BUDGET, Services, Shared, Unsettled, unreleased,
};
use super::{acker, batcher, claimer, heartbeat, retrier};
use crate::config::Settings;
use crate::ops::events::lifecycle::{NotDeregistered, RelayStopped, Stopping};
use crate::ops::events::pipeline::EverythingReturned;
use crate::ops::metrics::Summary;
use crate::queue::{Queue, QueueError};

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
    } else if let (Ended::With(window), Ended::With(position), false) =
        (&tasks.window, &tasks.position, needs_new_instance)
    {
        let position = *position;
        let unsettled = match std::mem::replace(&mut tasks.unsettled, Ended::Failed) {
            Ended::With(unsettled) => unsettled,
            Ended::Running | Ended::Failed => Unsettled::default(),
        };
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
    /// The claimer's position: how many events it claimed.
    position: Ended<u64>,
    /// The acker's window of unacknowledged events.
    window: Ended<acker::Window>,
    /// What the retrier resolved but could not write.
    unsettled: Ended<Unsettled>,
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
            position: Ended::Running,
            window: Ended::Running,
            unsettled: Ended::Running,
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
                self.position = check(lifecycle, "claimer", joined);
                "claimer"
            }
            joined = wait(&mut self.batcher) => {
                check(lifecycle, "batcher", joined.map(Ok));
                "batcher"
            }
            joined = wait(&mut self.acker) => {
                self.window = check(lifecycle, "acker", joined);
                "acker"
            }
            joined = wait(&mut self.retrier) => {
                self.unsettled = check(lifecycle, "retrier", joined);
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

/// What a task of the run came to.
enum Ended<T> {
    /// It has not ended yet.
    Running,
    /// It ended and returned this.
    With(T),
    /// It failed or panicked (a fatal error was recorded).
    Failed,
}

/// Turns a task's end into a fatal error if it panicked or failed.
fn check<T>(
    lifecycle: &Lifecycle,
    task: &'static str,
    joined: Result<Result<T, QueueError>, JoinError>,
) -> Ended<T> {
    match joined {
        Ok(Ok(value)) => Ended::With(value),
        Ok(Err(error)) => {
            lifecycle.fail(error.into());
            Ended::Failed
        }
        Err(error) => {
            lifecycle.fail(crate::error::Error::TaskFailed {
                task,
                message: error.to_string(),
            });
            Ended::Failed
        }
    }
}
