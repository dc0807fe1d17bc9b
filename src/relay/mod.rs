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
//!   per batch, as many at once as `concurrency` allows (a limit that adapts to the
//!   collector's answers, at most `max_requests_in_flight`). A sender retries its batch until it is
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
//! The rooms: `pipeline` holds the vocabulary the tasks share and hand each other;
//! `instance` runs one registered instance (start the tasks, wait, drain, return what is
//! held); `daemon` wraps the runs: what outlives an instance (metrics, health, the admin
//! listener, the collector client, reloads), connecting and registering with retry. What
//! the tasks do that an operator sees is told through [`crate::ops::events`].
//!
//! It may touch: [`crate::queue`], [`crate::config`], [`crate::ops`] (it reports into
//! metrics and health; they never call back), and the tracker's protocol, HTTP client
//! and retry. One place decides a dead-letter reason: the task that resolves the event
//! (`acker` for batches, `retrier` for parked events) from the sender's outcome.

mod acker;
mod batcher;
mod claimer;
mod concurrency;
mod daemon;
mod heartbeat;
mod instance;
mod lifecycle;
mod pipeline;
mod retrier;
mod sender;

pub use daemon::{Controls, changed_keys, run, run_with_controls};
pub use pipeline::{FORCED_RELEASE_BUDGET, RELEASE_BUDGET};
pub use sender::{Sender, collector_client};
