//! The relay on Redis 6.2, the oldest it supports (waiting uses BLMOVE): no
//! `redis.acl_check_cmd` (no permission check ahead) and no script flags. Debian ships
//! Redis 7, so these run in the soak set with the 6.2.14 binary `scripts/redis-6.2.sh`
//! fetches (`.ci/run` does):
//!
//!     REDIS_6_2_SERVER=$(scripts/redis-6.2.sh) cargo test --test tests redis_6_2 -- --ignored

use crate::permissions::{acl, documented_acl_rule, user_url};
use crate::support::*;

/// Redis 6.2.14, started like every test's Redis.
fn redis_6_2() -> RedisServer {
    let program = std::env::var("REDIS_6_2_SERVER").unwrap_or_else(|_| {
        panic!("REDIS_6_2_SERVER names no program; run REDIS_6_2_SERVER=$(scripts/redis-6.2.sh)")
    });
    let redis = RedisServer::start_program(&program, &[]);
    let version = match redis.cmd(&["INFO", "server"]) {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("INFO: {other:?}"),
    };
    assert!(version.contains("redis_version:6.2."), "{version}");
    redis
}

/// Under the documented least-privilege user: delivered, dead-lettered, held events
/// returned at the stop, the tools working, and the relay saying what 6.2 lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis 6.2: REDIS_6_2_SERVER=$(scripts/redis-6.2.sh)"]
async fn the_relay_and_its_tools_on_redis_6_2_under_the_documented_user() {
    let redis = redis_6_2();
    acl(&redis, &documented_acl_rule());
    let collector = Collector::start_with(refusing(&["ev-7"], 400)).await;
    redis.rpush(LIST, &numbered_events(300));
    redis.rpush(LIST, &["not json".to_owned()]);
    let relay = RelayProcess::start(
        &user_url(&redis),
        &collector.url(),
        &[("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "1")],
    );
    collector.until_exactly_delivered(299, 30).await;
    wait_until("two dead letters", 10, async || redis.llen(DEAD) == 2).await;
    // Held events go back at the stop (no allow-oom flag, no acl_check_cmd on 6.2).
    collector.respond_with(always(503));
    redis.rpush(LIST, &numbered_events(320)[300..]);
    wait_until("the relay holds the new ones", 10, async || {
        redis.llen(LIST) < 20
    })
    .await;
    let log = relay.stop_cleanly().await;
    assert!(log.contains("Redis before 7.0"), "{log}");
    assert_eq!(redis.llen(LIST), 20, "{log}");
    assert_eq!(
        redis.llen_of_lists_named("{snowplow}:inflight:"),
        0,
        "nothing left in flight"
    );
    let count = run_bin(
        &["--redis-url", &user_url(&redis), "dead-letter", "count"],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "2",
        "{count:?}"
    );
}

/// A relay killed on 6.2: another recovers its claimed events once its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis 6.2: REDIS_6_2_SERVER=$(scripts/redis-6.2.sh)"]
async fn a_dead_relays_events_are_recovered_on_redis_6_2() {
    let redis = redis_6_2();
    let collector = Collector::start().await;
    // The first relay's requests are answered only after the test ends.
    collector.set_delay(std::time::Duration::from_secs(120));
    redis.rpush(LIST, &numbered_events(200));
    let short_lease = [("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1000")];
    let mut first = RelayProcess::start(&redis.url(), &collector.url(), &short_lease);
    // Every event arrived under the long delay before the kill: a request still in the
    // socket when the delay drops would be answered 200, and the test would end before
    // the dead relay's events were recovered.
    wait_until("claimed and sent", 10, async || {
        redis.llen(LIST) == 0 && collector.arrived_eids().len() >= 200
    })
    .await;
    first.kill9();
    collector.set_delay(std::time::Duration::ZERO);
    let second = RelayProcess::start(&redis.url(), &collector.url(), &short_lease);
    collector.until_distinct(200, 30).await;
    second.stop_cleanly().await;
    assert_eq!(redis.llen_of_lists_named("{snowplow}:inflight:"), 0);
}
