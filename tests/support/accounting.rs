//! Where every event went: delivered (by its `eid`, counted), still in the list, or in
//! the dead-letter list with a reason. The tests built on [`super::numbered_events`]
//! (`ev-0` … `ev-<n-1>`) prove that none vanished.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use snowplow_relay::queue::DeadLetter;

use super::collector::Collector;
use super::redis_server::RedisServer;
use super::{DEAD, LIST, wait_until};

/// What became of `ev-0` … `ev-<total-1>`.
#[derive(Debug)]
pub struct Account {
    /// Distinct events delivered.
    pub delivered: usize,
    /// Deliveries beyond the first of each event.
    pub duplicates: usize,
    /// Distinct events still in the list.
    pub listed: usize,
    /// Distinct events in the dead-letter list.
    pub dead: usize,
}

/// How many times each eid was delivered.
pub fn eid_counts(collector: &Collector) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for eid in collector.delivered_eids() {
        *counts.entry(eid).or_insert(0) += 1;
    }
    counts
}

/// The eid of a list element, if it has one.
pub fn eid_of(element: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(element).ok()?;
    value.get("eid")?.as_str().map(str::to_owned)
}

/// Events still in the list, by eid, in list order.
pub fn list_eids(redis: &RedisServer) -> Vec<String> {
    redis
        .lrange(LIST)
        .iter()
        .map(|e| eid_of(e).expect("an element with an eid"))
        .collect()
}

/// The number in `ev-<n>`.
pub fn index_of(eid: &str) -> usize {
    eid.strip_prefix("ev-").unwrap().parse().unwrap()
}

/// Dead-letter entries as (metadata, original element).
pub fn dead_letters(redis: &RedisServer) -> Vec<(DeadLetter, String)> {
    redis
        .lrange(DEAD)
        .iter()
        .map(|entry| {
            let (meta, element) = DeadLetter::decode(entry).expect("a dead-letter entry");
            (meta, String::from_utf8_lossy(element).into_owned())
        })
        .collect()
}

/// Waits (up to `seconds`) until at least `delivered` events reached the collector and
/// exactly `dead` elements were dead-lettered, then stops the relay and returns its summary.
pub async fn stop_once_delivered_and_dead(
    relay: super::Relay,
    (collector, redis): (&Collector, &RedisServer),
    (delivered, dead): (usize, usize),
    seconds: u64,
) -> snowplow_relay::Summary {
    super::wait_until("delivered and dead-lettered", seconds, async || {
        collector.delivered_count() >= delivered && redis.llen(DEAD) == dead
    })
    .await;
    relay.stop().await
}

/// Every key the relay leaves behind besides the main and dead-letter lists and the key
/// layout's version (`{snowplow}:layout`, which stays by design).
pub fn leftover_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .keys()
        .into_iter()
        .filter(|k| k != LIST && k != DEAD && k != "{snowplow}:layout")
        .collect()
}

/// Asserts that every `ev-<i>` below `total` was delivered, is in the list, or is in the
/// dead-letter list, and says how many are where.
pub fn account(collector: &Collector, redis: &RedisServer, total: usize) -> Account {
    let delivered = eid_counts(collector);
    let listed: HashSet<String> = redis
        .lrange(LIST)
        .iter()
        .filter_map(|e| eid_of(e))
        .collect();
    let dead: HashSet<String> = redis
        .lrange(DEAD)
        .iter()
        .filter_map(|entry| DeadLetter::decode(entry).and_then(|(_, original)| eid_of(original)))
        .collect();
    let vanished: Vec<String> = (0..total)
        .map(|i| format!("ev-{i}"))
        .filter(|eid| !delivered.contains_key(eid) && !listed.contains(eid) && !dead.contains(eid))
        .collect();
    assert!(
        vanished.is_empty(),
        "{} vanished, e.g. {:?}",
        vanished.len(),
        &vanished[..vanished.len().min(5)]
    );
    Account {
        delivered: delivered.len(),
        duplicates: delivered.values().map(|n| n - 1).sum(),
        listed: listed.len(),
        dead: dead.len(),
    }
}

/// Asserts that every `ev-<i>` below `total` was delivered and nothing is left in either
/// list; returns the number of duplicate deliveries.
pub fn all_delivered(collector: &Collector, redis: &RedisServer, total: usize) -> usize {
    let account = account(collector, redis, total);
    assert_eq!(account.delivered, total, "{account:?}");
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(redis.llen(DEAD), 0);
    account.duplicates
}

/// Waits until the list and every in-flight and retry list are empty: every event was
/// resolved.
/// Polls Redis, which is cheap, rather than re-reading every recorded request.
pub async fn wait_until_all_resolved(redis: &RedisServer) {
    // Read at one instant (a script): read apart, a recovery between the two readings
    // could move events from an in-flight list to the list after the list was read.
    wait_until("the list and every in-flight list empty", 120, async || {
        let held: usize = redis::cmd("EVAL")
            .arg(
                "local n = redis.call('LLEN', KEYS[1]) \
                 return n + #redis.call('KEYS', '*:inflight:*') + #redis.call('KEYS', '*:retry:*')",
            )
            .arg(1)
            .arg(LIST)
            .query(&mut redis.conn())
            .unwrap();
        held == 0
    })
    .await;
}

/// Prints one line for the closing note: what became of a scenario's events, and how
/// long it took from the fault to full recovery (when there was one).
pub fn report(
    (scenario, total): (&str, usize),
    (collector, redis): (&Collector, &RedisServer),
    recovery: Option<Duration>,
) {
    let distinct = collector.distinct_delivered();
    let delivered = collector.delivered_eids().len();
    let dead = redis.llen(DEAD);
    let left = redis.llen(LIST);
    let recovery = recovery
        .map(|took| format!(", fault to full recovery {took:.1?}"))
        .unwrap_or_default();
    eprintln!(
        "{scenario}: events in {total}, delivered {distinct}, duplicates {}, dead-lettered {dead}, left in Redis {left}, vanished {}{recovery}",
        delivered - distinct,
        total - distinct - dead - left,
    );
}

/// The end of a fault scenario whose fault has just ended: waits until `total` distinct
/// events were delivered (within `seconds`), stops the relay, prints [`report`] with the
/// time since the call, and returns the relay's summary.
pub async fn stop_once_recovered(
    relay: super::Relay,
    scenario: (&str, usize),
    handles: (&Collector, &RedisServer),
    seconds: u64,
) -> snowplow_relay::Summary {
    stop_once_recovered_since(std::time::Instant::now(), relay, scenario, handles, seconds).await
}

/// [`stop_once_recovered`], with the recovery time measured from `since`.
pub async fn stop_once_recovered_since(
    since: std::time::Instant,
    relay: super::Relay,
    (scenario, total): (&str, usize),
    (collector, redis): (&Collector, &RedisServer),
    seconds: u64,
) -> snowplow_relay::Summary {
    collector.until_distinct(total, seconds).await;
    let took = since.elapsed();
    let summary = relay.stop().await;
    report((scenario, total), (collector, redis), Some(took));
    summary
}
