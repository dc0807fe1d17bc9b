//! `snowplow-relay dead-letter count|list|parked|replay`: the dead-letter list, as an
//! operator reads and empties it once the cause is fixed, and the events relays hold
//! parked (which no other tool shows).

use std::process::ExitCode;

use clap::Subcommand;
use snowplow_relay::config::RedisSettings;
use snowplow_relay::queue::{DeadLetter, Parked, Queue, QueueError};

use super::{RelayFlags, runtime};

#[derive(Debug, Subcommand)]
pub(super) enum Action {
    /// Print how many entries the dead-letter list holds.
    Count,
    /// Print entries, oldest first, one JSON object per line (metadata + element).
    List {
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the events relays hold parked (they kept failing while other requests
    /// passed, and are retried one by one), one JSON object per line: the relay holding
    /// it, its claim position, when it was parked, the last status, the attempts before
    /// it was parked, the element. Writes nothing.
    Parked {
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move entries, oldest first, back to the tail of the list. Each step of up to 500
    /// is atomic: an interrupted replay loses and duplicates nothing.
    Replay {
        /// At most this many entries (default: all).
        #[arg(long)]
        limit: Option<u64>,
    },
}

pub(super) fn dead_letter(flags: RelayFlags, action: Action) -> ExitCode {
    let settings = match flags.tool_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(act(&settings.redis, action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("snowplow-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn act(redis: &RedisSettings, action: Action) -> Result<(), QueueError> {
    let queue = Queue::connect(redis).await?;
    match action {
        Action::Count => println!("{}", queue.dead_letter_count().await?),
        Action::List { limit } => {
            for entry in queue.dead_letters(limit).await? {
                let line = match DeadLetter::decode(&entry) {
                    Some((meta, element)) => serde_json::json!({
                        "reason": meta.reason,
                        "status": meta.status,
                        "failed_at": meta.failed_at,
                        "relay": meta.relay,
                        "element": String::from_utf8_lossy(element),
                    }),
                    None => serde_json::json!({ "element": String::from_utf8_lossy(&entry) }),
                };
                println!("{line}");
            }
        }
        Action::Parked { limit } => {
            for (instance, entry) in queue.parked(limit).await? {
                let newline = entry.iter().position(|&b| b == b'\n');
                let meta =
                    newline.and_then(|at| serde_json::from_slice::<Parked>(&entry[..at]).ok());
                let line = match (meta, newline) {
                    (Some(meta), Some(at)) => serde_json::json!({
                        "instance": instance,
                        "position": meta.position,
                        "parked_at": meta.parked_at,
                        "status": meta.status,
                        "attempts_before_parking": meta.attempts,
                        "element": String::from_utf8_lossy(&entry[at + 1..]),
                    }),
                    _ => serde_json::json!({
                        "instance": instance,
                        "element": String::from_utf8_lossy(&entry),
                    }),
                };
                println!("{line}");
            }
        }
        Action::Replay { limit } => {
            let total = queue.dead_letter_count().await?;
            let target = limit.map_or(total, |limit| limit.min(total));
            let mut moved = 0;
            while moved < target {
                let step = (target - moved).min(500) as usize;
                let done = queue.replay_dead_letters(step).await?;
                if done == 0 {
                    break;
                }
                moved += done;
                eprintln!("replayed {moved}/{target}");
            }
            println!("{moved}");
        }
    }
    Ok(())
}
