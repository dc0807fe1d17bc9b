//! Upgrades and rollbacks that lose nothing: the key layout's version stored in Redis
//! (`LAYOUT_VERSION`, `src/queue/keys.rs`), a newer one refused before anything is
//! touched, an older one (or none) upgraded, and `prepare-rollback`.
//!
//! The two-build tests (soak set) run this build and 582e716 (the last build before the
//! version was stored) against one Redis: every combination of who dies and who
//! recovers, rolling restarts both ways, and the documented rollback. `.ci/run` builds
//! 582e716 from a git worktree (`scripts/build-582e716.sh`); without it they fail:
//!
//!     bash scripts/build-582e716.sh && cargo test --test tests upgrades -- --ignored
//!
//! A build that changes the layout bumps `LAYOUT_VERSION` and adds its case here.

use std::time::Duration;

use snowplow_relay::queue::LAYOUT_VERSION;

use crate::support::*;

const LAYOUT: &str = "{snowplow}:layout";

/// The stored layout version, if any.
fn stored_layout(redis: &RedisServer) -> Option<String> {
    match redis.cmd(&["HGET", LAYOUT, "version"]) {
        redis::Value::BulkString(bytes) => Some(String::from_utf8(bytes).unwrap()),
        redis::Value::Nil => None,
        other => panic!("HGET: {other:?}"),
    }
}

/// Every key with its value (`DUMP`), sorted: what "nothing touched" compares.
fn snapshot(redis: &RedisServer) -> Vec<(String, redis::Value)> {
    let mut keys = redis.keys();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let value = redis.cmd(&["DUMP", &key]);
            (key, value)
        })
        .collect()
}

/// A relay of some other build that died holding `ev-<from>..ev-<to>` in flight: its
/// instance registered, its counters, its in-flight list, no lease.
fn dead_relay_holding(redis: &RedisServer, id: &str, events: &[String]) {
    redis.cmd(&["SADD", "{snowplow}:instances", id]);
    let claimed = events.len().to_string();
    redis.cmd(&[
        "HSET",
        &format!("{{snowplow}}:instance:{id}"),
        "acked",
        "0",
        "claimed",
        &claimed,
    ]);
    redis.rpush(&format!("{{snowplow}}:inflight:{id}"), events);
}

/// The settings of every relay here: a 1 s lease, small batches, fast retries.
const SETTINGS: &[(&str, &str)] = &[
    ("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1000"),
    ("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "5"),
];

/// `program` between `redis` and `collector` with [`SETTINGS`].
fn relay_of(program: &str, redis: &RedisServer, collector: &Collector) -> RelayProcess {
    RelayProcess::start_program(
        program,
        &["--redis-url", &redis.url(), "--collector", &collector.url()],
        SETTINGS,
    )
}

/// `snowplow-relay prepare-rollback` of `program`: its exit code and both streams.
fn prepare_rollback(program: &str, redis: &RedisServer) -> (Option<i32>, String) {
    let output = program_command(program)
        .args(["--redis-url", &redis.url(), "prepare-rollback"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the relay binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// A relay meeting a newer layout (or one it cannot read) exits 2 naming both versions,
/// and leaves every key as it was: the newer build's dead relay is not half-recovered.
#[tokio::test]
async fn a_newer_key_layout_is_refused_before_anything_is_touched() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    let events = numbered_events(8);
    dead_relay_holding(&redis, "newer-host:1:aaaa", &events[..3]);
    redis.rpush(LIST, &events[3..]);
    let newer = (LAYOUT_VERSION + 1).to_string();
    for stored in [newer.as_str(), "two"] {
        redis.cmd(&["HSET", LAYOUT, "version", stored]);
        let before = snapshot(&redis);
        let finished = RelayProcess::between(&redis, &collector, &[])
            .finish(Duration::from_secs(30))
            .await;
        assert_eq!(finished.status.code(), Some(2), "{}", finished.log);
        assert!(
            finished
                .log
                .contains(&format!("key layout version {stored} for this list"))
                && finished
                    .log
                    .contains(&format!("this build knows version {LAYOUT_VERSION}"))
                && finished.log.contains("prepare-rollback"),
            "{}",
            finished.log
        );
        assert_eq!(snapshot(&redis), before, "nothing touched");
        assert_eq!(collector.request_count(), 0);
        // The rollback tool of this build refuses it too.
        let (code, said) = prepare_rollback(&bin(), &redis);
        assert_eq!(code, Some(2), "{said}");
        assert_eq!(snapshot(&redis), before, "nothing touched");
    }
}

/// A Redis no build versioned (582e716 and before) is upgraded at start-up: the version
/// stored, said once, and the earlier build's dead relay recovered (layout 1 has no retry
/// lists; the in-flight list, counters and membership are the same).
#[tokio::test]
async fn a_redis_without_a_layout_version_is_upgraded_and_its_dead_relays_recovered() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    let events = numbered_events(10);
    dead_relay_holding(&redis, "older-host:1:bbbb", &events[..3]);
    redis.rpush(LIST, &events[3..]);
    let relay = RelayProcess::between(&redis, &collector, SETTINGS);
    collector.until_distinct(10, 30).await;
    assert_eq!(stored_layout(&redis), Some(LAYOUT_VERSION.to_string()));
    let log = relay.stop_cleanly().await;
    assert!(
        log.contains(&format!(
            "key layout version {LAYOUT_VERSION} stored in Redis (found none)"
        )),
        "{log}"
    );
    assert_eq!(all_delivered(&collector, &redis, 10), 0);
    assert_eq!(
        leftover_keys(&redis),
        vec!["{snowplow}:recovered:older-host:1:bbbb".to_owned()],
        "only the day-long marker of the recovery"
    );
    // Started again on its own layout: nothing said.
    let relay = RelayProcess::between(&redis, &collector, SETTINGS);
    relay.log_line("relaying", Duration::from_secs(20)).await;
    let log = relay.stop_cleanly().await;
    assert!(!log.contains("key layout version"), "{log}");
}

/// `prepare-rollback` refuses while a relay runs (naming it, changing nothing); once the
/// relay is gone it returns what it held, parked and in flight, and removes the version.
#[tokio::test]
async fn prepare_rollback_returns_every_held_event_and_refuses_while_a_relay_runs() {
    let redis = RedisServer::start();
    let collector = Collector::start_with(refusing(&["ev-3", "ev-7"], 500)).await;
    let events = numbered_events(40);
    redis.rpush(LIST, &events[..20]);
    let mut relay = RelayProcess::between(&redis, &collector, SETTINGS);
    wait_until("18 delivered, two parked", 30, async || {
        collector.distinct_delivered() == 18 && redis.llen_of_lists_named("{snowplow}:retry:") == 2
    })
    .await;
    // An outage: the next events stay in flight.
    collector.respond_with(always(503));
    redis.rpush(LIST, &events[20..]);
    wait_until("events in flight", 30, async || {
        redis.llen_of_lists_named("{snowplow}:inflight:") > 0
    })
    .await;

    let (code, said) = prepare_rollback(&bin(), &redis);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("still registered") && said.contains("running (its lease is live)"),
        "{said}"
    );
    assert_eq!(stored_layout(&redis), Some(LAYOUT_VERSION.to_string()));

    relay.kill9();
    collector.respond_with(always(200));
    // Within the 1 s lease the killed relay still counts as running.
    let mut said = String::new();
    wait_until("prepare-rollback succeeds", 20, async || {
        let (code, text) = prepare_rollback(&bin(), &redis);
        said = text;
        code == Some(0)
    })
    .await;
    assert!(said.contains("ready for an older build"), "{said}");
    assert!(said.contains("returned"), "{said}");
    assert_eq!(stored_layout(&redis), None);
    assert_eq!(
        leftover_keys(&redis)
            .into_iter()
            .filter(|k| !k.starts_with("{snowplow}:recovered:"))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "nothing held, nobody registered"
    );
    // Every event delivered or back in the list (one the killed relay sent may be both:
    // the collector read it after the kill).
    let account = account(&collector, &redis, 40);
    let listed = list_eids(&redis);
    assert!(
        listed.contains(&"ev-3".to_owned()) && listed.contains(&"ev-7".to_owned()),
        "the parked ones are back: {account:?} {listed:?}"
    );

    // Any build now finds every event in the list.
    let relay = RelayProcess::between(&redis, &collector, SETTINGS);
    collector.until_distinct(40, 30).await;
    relay.stop_cleanly().await;
    all_delivered(&collector, &redis, 40);
}

// --- Two builds against one Redis (soak set) ---

/// The build of 582e716, the last before the layout version (`scripts/build-582e716.sh`).
fn build_582e716() -> String {
    let path = std::env::var("SNOWPLOW_RELAY_582E716").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/builds/582e716/snowplow-relay"
        )
        .to_owned()
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: build 582e716 with `bash scripts/build-582e716.sh` (.ci/run does)"
    );
    path
}

/// A relay of `dies` holding parked and in-flight events is killed; a relay of
/// `recovers` delivers everything. One line per combination for the note.
async fn one_dies_the_other_recovers(scenario: &str, dies: &str, recovers: &str) {
    let redis = RedisServer::start();
    let collector = Collector::start_with(refusing(&["ev-3", "ev-7"], 500)).await;
    let total = 300;
    let events = numbered_events(total);
    redis.rpush(LIST, &events[..200]);
    let mut first = relay_of(dies, &redis, &collector);
    wait_until("198 delivered, two parked", 60, async || {
        collector.distinct_delivered() == 198 && redis.llen_of_lists_named("{snowplow}:retry:") == 2
    })
    .await;
    collector.respond_with(always(503));
    redis.rpush(LIST, &events[200..]);
    wait_until("events in flight", 30, async || {
        redis.llen_of_lists_named("{snowplow}:inflight:") > 0
    })
    .await;
    first.kill9();
    collector.respond_with(always(200));
    let second = relay_of(recovers, &redis, &collector);
    collector.until_distinct(total, 60).await;
    second.stop_cleanly().await;
    report((scenario, total), (&collector, &redis), None);
    let account = account(&collector, &redis, total);
    assert_eq!(account.delivered, total, "{account:?}");
    assert_eq!(redis.llen(LIST), 0);
    // Every key of the dead relay (in flight, retry, instance, lease) is gone.
    assert_eq!(
        leftover_keys(&redis)
            .into_iter()
            .filter(|k| !k.starts_with("{snowplow}:recovered:"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
}

#[tokio::test]
#[ignore = "soak set: needs the build of 582e716 (scripts/build-582e716.sh)"]
async fn a_582e716_relay_dies_and_this_build_recovers_it() {
    let old = build_582e716();
    one_dies_the_other_recovers("582e716 killed, this build recovers", &old, &bin()).await;
}

#[tokio::test]
#[ignore = "soak set: needs the build of 582e716 (scripts/build-582e716.sh)"]
async fn a_relay_of_this_build_dies_and_582e716_recovers_it() {
    let old = build_582e716();
    one_dies_the_other_recovers("this build killed, 582e716 recovers", &bin(), &old).await;
}

/// Both builds relay the same list at once; the first is stopped (SIGTERM) while
/// requests are slow, the second delivers the rest.
async fn rolling_restart(scenario: &str, from: &str, to: &str) {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    collector.set_delay(Duration::from_millis(50));
    let total = 4_000;
    redis.rpush(LIST, &numbered_events(total));
    let first = relay_of(from, &redis, &collector);
    collector.until_delivered(200, 30).await;
    let second = relay_of(to, &redis, &collector);
    collector.until_delivered(600, 30).await;
    first.stop_cleanly().await;
    collector.set_delay(Duration::ZERO);
    collector.until_distinct(total, 60).await;
    second.stop_cleanly().await;
    report((scenario, total), (&collector, &redis), None);
    all_delivered(&collector, &redis, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak set: needs the build of 582e716 (scripts/build-582e716.sh)"]
async fn a_rolling_restart_from_582e716_to_this_build_loses_nothing() {
    let old = build_582e716();
    rolling_restart("rolling 582e716 -> this build", &old, &bin()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak set: needs the build of 582e716 (scripts/build-582e716.sh)"]
async fn a_rolling_restart_from_this_build_to_582e716_loses_nothing() {
    let old = build_582e716();
    rolling_restart("rolling this build -> 582e716", &bin(), &old).await;
}

/// The documented rollback: this build's relay dies holding parked and in-flight
/// events, `prepare-rollback`, then 582e716 alone delivers everything and leaves no key.
#[tokio::test]
#[ignore = "soak set: needs the build of 582e716 (scripts/build-582e716.sh)"]
async fn a_rollback_to_582e716_after_prepare_rollback_loses_nothing() {
    let old = build_582e716();
    let redis = RedisServer::start();
    let collector = Collector::start_with(refusing(&["ev-3", "ev-7"], 500)).await;
    let total = 300;
    let events = numbered_events(total);
    redis.rpush(LIST, &events[..200]);
    let mut relay = relay_of(&bin(), &redis, &collector);
    wait_until("198 delivered, two parked", 60, async || {
        collector.distinct_delivered() == 198 && redis.llen_of_lists_named("{snowplow}:retry:") == 2
    })
    .await;
    collector.respond_with(always(503));
    redis.rpush(LIST, &events[200..]);
    wait_until("events in flight", 30, async || {
        redis.llen_of_lists_named("{snowplow}:inflight:") > 0
    })
    .await;
    relay.kill9();
    wait_until("prepare-rollback succeeds", 20, async || {
        prepare_rollback(&bin(), &redis).0 == Some(0)
    })
    .await;
    collector.respond_with(always(200));
    let relay = relay_of(&old, &redis, &collector);
    collector.until_distinct(total, 60).await;
    relay.stop_cleanly().await;
    report(
        ("rollback to 582e716 after prepare-rollback", total),
        (&collector, &redis),
        None,
    );
    all_delivered(&collector, &redis, total);
    assert_eq!(stored_layout(&redis), None);
}
