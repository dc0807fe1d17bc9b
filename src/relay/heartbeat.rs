//! The heartbeat renews this instance's lease every third of its lifetime (retrying
//! within the period when a renewal fails) and returns the events of relays whose lease
//! expired; the sampler reads the list lengths, the head event's age and Redis's memory
//! for the metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::pipeline::Shared;
use crate::ops::events::Observer;
use crate::ops::events::pipeline::ExpiredLeasesRecovered;
use crate::ops::events::redis::{FollowedFailover, Lease, ListsSampled, RedisMemory};
use crate::ops::health::Stage;
use crate::ops::metrics::RedisOperation;
use crate::queue::{Queue, QueueError};
use snowplow_relay_tracker::retry::Retry;

pub(super) struct Heartbeat {
    shared: Arc<Shared>,
}

impl Heartbeat {
    pub(super) fn new(shared: Arc<Shared>) -> Heartbeat {
        Heartbeat { shared }
    }

    /// Renews the lease until the run ends; a lost lease ends the instance (through the
    /// lifecycle) and this task.
    pub(super) async fn run(self) -> Result<(), QueueError> {
        let shared = &self.shared;
        let period = shared.queue.lease_ttl() / 3;
        shared.health.lease_renewed(); // registered just before the run started
        let mut next = Instant::now() + period;
        loop {
            shared.health.loop_turned();
            tokio::time::sleep_until(next).await;
            next += period;
            if let Err(lost) = self.renew(next).await {
                shared.lifecycle.lost_instance(lost);
                return Ok(());
            }
            let call = shared.events.redis_call(RedisOperation::Heartbeat);
            match recover_expired(&shared.queue, &shared.events).await {
                Ok(()) => call.succeeded(),
                Err(error) => call.failed(
                    &error,
                    "cannot check for expired relays; checking again at the next heartbeat",
                ),
            }
        }
    }

    /// Renews the lease, retrying with backoff until it succeeds or `until` (the next
    /// period) comes: a connection broken now and then must not cost the lease.
    async fn renew(&self, until: Instant) -> Result<(), QueueError> {
        let shared = &self.shared;
        let mut retry = Retry::new(crate::queue::REDIS_BACKOFF);
        loop {
            shared.health.loop_turned();
            shared.health.call_started(Stage::Heartbeat);
            let call = shared.events.redis_call(RedisOperation::Heartbeat);
            match shared.queue.heartbeat().await {
                Ok(()) => {
                    shared.health.call_ended(Stage::Heartbeat, Ok(()));
                    shared.emit(Lease { renewed: true });
                    call.succeeded();
                    return Ok(());
                }
                Err(lost) if lost.needs_new_instance() => {
                    shared.health.call_ended(Stage::Heartbeat, Err(lost.kind()));
                    shared.emit(Lease { renewed: false });
                    return Err(lost);
                }
                Err(error) => {
                    shared
                        .health
                        .call_ended(Stage::Heartbeat, Err(error.kind()));
                    call.failed(
                        &error,
                        "cannot renew the lease; retrying within the lease's lifetime",
                    );
                    let delay = retry.failed();
                    if Instant::now() + delay >= until {
                        return Ok(());
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// How often the list lengths, the head event's age and Redis's memory are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples the list, the dead-letter list, the head event's age and Redis's memory for
/// the metrics; says when Redis reaches and leaves `maxmemory`.
pub(super) async fn sample(shared: Arc<Shared>) {
    let mut full = false;
    let mut memory_readable = true;
    let mut master = shared.queue.master_address();
    loop {
        let now_master = shared.queue.master_address();
        if let (Some(from), Some(to), Some(sentinel)) =
            (&master, &now_master, &shared.settings.redis.sentinel)
            && from != to
        {
            shared.emit(FollowedFailover {
                master: &sentinel.master,
                from,
                to,
            });
        }
        master = now_master.or(master);
        let call = shared.events.redis_call(RedisOperation::Sample);
        match shared.queue.sample().await {
            Ok(sample) => {
                let age = sample.head_dtm_millis.map_or(0.0, |dtm| {
                    (snowplow_relay_tracker::protocol::now_millis().saturating_sub(dtm)) as f64
                        / 1e3
                });
                shared.emit(ListsSampled {
                    list: sample.list,
                    dead: sample.dead,
                    oldest_age_seconds: age,
                });
                call.succeeded();
            }
            Err(error) => call.failed(
                &error,
                "cannot sample the list lengths; sampling again in 5 s",
            ),
        }
        if memory_readable {
            match shared.queue.memory().await {
                Ok((used, max)) => {
                    let now_full = max > 0 && used >= max;
                    if now_full != full {
                        shared.emit(RedisMemory {
                            full: now_full,
                            used,
                            max,
                        });
                    }
                    full = now_full;
                }
                // INFO refused (ACL, managed Redis): stop asking.
                Err(QueueError::Permission(_)) => memory_readable = false,
                Err(_) => {}
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Returns the events of relays whose lease expired to the list, and counts them as
/// redelivered.
pub(crate) async fn recover_expired(queue: &Queue, events: &Observer) -> Result<(), QueueError> {
    let recovered = queue.recover_expired().await?;
    events.emit(ExpiredLeasesRecovered {
        instances: recovered.instances,
        events: recovered.events,
    });
    Ok(())
}
