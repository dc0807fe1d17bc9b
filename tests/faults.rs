//! Fault injection with the real binary: SIGKILL at random moments, several instances.
//! Every event is accounted for by its eid: delivered (at least once), still in the list,
//! or dead-lettered. Run with `--nocapture` to see the counts.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_snowplow-relay");

fn spawn_relay(redis: &RedisServer, collector: &Collector) -> Child {
    Command::new(BIN)
        .args([
            "--redis-url",
            &redis.url(),
            "--collector",
            &collector.url(),
            "--log-level",
            "warn",
        ])
        .env("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1000")
        .env("SNOWPLOW_RELAY_REDIS__CLAIM_BATCH_SIZE", "200")
        .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_INITIAL_BACKOFF_MS", "20")
        .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_MAX_BACKOFF_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn sigterm(child: &mut Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Waits until every eid arrived and no in-flight list is left (every dead relay's
/// events were recovered and acknowledged).
async fn wait_until_all_delivered(collector: &Collector, redis: &RedisServer, total: usize) {
    wait_until("every event delivered", Duration::from_secs(60), || {
        collector
            .delivered_eids()
            .into_iter()
            .collect::<HashSet<_>>()
            .len()
            >= total
    })
    .await;
    wait_until("no in-flight list left", Duration::from_secs(10), || {
        redis.keys().iter().all(|k| !k.contains("inflight"))
    })
    .await;
}

/// Asserts every event was delivered, and returns how many deliveries were duplicates.
fn account(collector: &Collector, redis: &RedisServer, total: usize) -> usize {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for eid in collector.delivered_eids() {
        *seen.entry(eid).or_default() += 1;
    }
    let vanished: Vec<String> = (0..total)
        .map(|i| format!("ev-{i}"))
        .filter(|eid| !seen.contains_key(eid))
        .collect();
    assert!(
        vanished.is_empty(),
        "{} vanished, e.g. {:?}",
        vanished.len(),
        &vanished[..vanished.len().min(5)]
    );
    assert_eq!(redis.llen("snowplow"), 0);
    assert_eq!(redis.llen("{snowplow}:dead"), 0);
    seen.values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    // At most 16 requests of 10 events per 50 ms: the kills land mid-stream.
    collector.set_delay(Duration::from_millis(50));
    let total = 20_000;
    redis.rpush("snowplow", &numbered_events(total));
    let rounds = 12;
    let mut progress = Vec::new();
    for _ in 0..rounds {
        let mut relay = spawn_relay(&redis, &collector);
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..300))).await;
        kill9(&mut relay);
        progress.push(collector.delivered().len());
    }
    let delivered_before_last = collector.delivered().len();
    eprintln!("delivered after each SIGKILL: {progress:?}");
    assert!(
        delivered_before_last < total,
        "the kills landed while events were in flight"
    );
    let mut relay = spawn_relay(&redis, &collector);
    wait_until_all_delivered(&collector, &redis, total).await;
    sigterm(&mut relay);
    let duplicates = account(&collector, &redis, total);
    eprintln!(
        "sigkill x{rounds}: sent {total}, delivered {} ({delivered_before_last} before the last start), duplicates {duplicates}, vanished 0",
        collector.delivered().len()
    );
    assert!(delivered_before_last > 0, "the killed relays made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_list_and_one_takes_over_when_the_other_dies() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    collector.set_delay(Duration::from_millis(5));
    let total = 6000;
    redis.rpush("snowplow", &numbered_events(total));
    let mut first = spawn_relay(&redis, &collector);
    let mut second = spawn_relay(&redis, &collector);
    wait_until("both working", Duration::from_secs(20), || {
        collector.delivered().len() >= 1000
    })
    .await;
    kill9(&mut first);
    wait_until_all_delivered(&collector, &redis, total).await;
    sigterm(&mut second);
    let duplicates = account(&collector, &redis, total);
    eprintln!(
        "two instances, one SIGKILLed: sent {total}, delivered {}, duplicates {duplicates}, vanished 0",
        collector.delivered().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_normal_operation_deliver_each_event_once() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    let total = 6000;
    redis.rpush("snowplow", &numbered_events(total));
    let mut first = spawn_relay(&redis, &collector);
    let mut second = spawn_relay(&redis, &collector);
    wait_until("every event delivered", Duration::from_secs(60), || {
        collector.delivered().len() >= total
    })
    .await;
    sigterm(&mut first);
    sigterm(&mut second);
    let duplicates = account(&collector, &redis, total);
    assert_eq!(duplicates, 0, "no duplicates without failures");
    assert_eq!(redis.keys(), Vec::<String>::new(), "both relays cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let persistent = ["--appendonly", "yes", "--dir", dir_arg.as_str()];
    let port = free_port();
    let mut redis = RedisServer::start_on(port, &persistent);
    let collector = Collector::start().await;
    collector.set_delay(Duration::from_millis(20));
    let total = 10_000;
    redis.rpush("snowplow", &numbered_events(total));
    let mut relay = spawn_relay(&redis, &collector);
    wait_until("some delivered", Duration::from_secs(20), || {
        collector.delivered().len() >= 1000
    })
    .await;
    redis.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis = RedisServer::start_on(port, &persistent);
    wait_until_all_delivered(&collector, &redis, total).await;
    sigterm(&mut relay);
    let duplicates = account(&collector, &redis, total);
    eprintln!(
        "redis restart: sent {total}, delivered {}, duplicates {duplicates}, vanished 0",
        collector.delivered().len()
    );
}
