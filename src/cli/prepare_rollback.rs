//! `snowplow-relay prepare-rollback`: makes a list safe for an older build of the relay
//! (docs/operations.md#upgrading). An older build cannot be taught a newer key layout, so
//! this build leaves nothing it would misread: every stopped relay's held events (in
//! flight and parked) back in the list, no relay registered, and no layout version
//! stored. It refuses, changing nothing beyond those recoveries, while a relay still runs.

use std::process::ExitCode;

use snowplow_relay::config::RedisSettings;
use snowplow_relay::queue::{LAYOUT_VERSION, Queue, QueueError};

use super::{RelayFlags, runtime};

pub(super) fn prepare_rollback(flags: RelayFlags) -> ExitCode {
    let settings = match flags.tool_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(prepare(&settings.redis)) {
        Ok(code) => code,
        Err(error @ QueueError::NewerLayout { .. }) => {
            eprintln!("snowplow-relay: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("snowplow-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn prepare(redis: &RedisSettings) -> Result<ExitCode, QueueError> {
    let queue = Queue::connect(redis).await?;
    // A layout newer than this build's is refused here too: prepare with the newest build.
    queue.check_layout().await?;
    let recovered = queue.recover_expired().await?;
    if recovered.instances > 0 {
        eprintln!(
            "returned {} events held by {} stopped relays to the list",
            recovered.events, recovered.instances
        );
    }
    let left = queue.unversion().await?;
    if left.is_empty() {
        println!(
            "ready for an older build: no relay registered on {}, nothing held in flight or \
             parked, key layout version {LAYOUT_VERSION} removed. Start the older build now; \
             starting this one again stores the version again.",
            snowplow_relay::queue::shown_key(&queue.keys().list)
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "snowplow-relay: {} relays are still registered on this list; stop each one (SIGTERM \
         returns what it holds) and keep its supervisor from starting it again, or wait \
         redis.lease_ttl_ms for one that was killed, then run this again:",
        left.len()
    );
    for instance in &left {
        eprintln!(
            "  {} (host {}, pid {}): {}",
            instance.id,
            instance.host,
            instance.pid,
            if instance.live {
                "running (its lease is live)"
            } else {
                "stopped, lease expired"
            }
        );
    }
    Ok(ExitCode::FAILURE)
}
