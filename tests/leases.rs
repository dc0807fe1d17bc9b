//! Every way a relay loses its lease, with the real binary: frozen (SIGSTOP) while another
//! relay recovers its events, cut off from Redis by a partition, a Redis restarted
//! without its data, a `FLUSHALL`. The relay carries on as a new instance: it says why in
//! one warning, never exits on its own, is ready again (no "stopping"), and every event
//! is delivered; only what it held when its lease went can arrive twice.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;

/// A relay with a 1 s lease (renewed every 333 ms), an admin port and small batches.
fn relay_with_short_lease(redis_url: &str, collector: &Collector) -> RelayProcess {
    RelayProcess::start_with_settings(
        redis_url,
        &collector.url(),
        &[
            ("redis.lease_ttl_ms", "1000"),
            ("redis.command_timeout_ms", "500"),
            ("collector.buffer_size", "10"),
            ("worker.max_claimed_events", "500"),
            ("admin.listen", "127.0.0.1:0"),
        ],
    )
}

/// What a relay that lost its lease must show afterwards: one warning naming `cause`,
/// a new registration, `/readyz` 200 again, and the process still running.
async fn carries_on(relay: &mut RelayProcess, admin: SocketAddr, cause: &str) {
    relay
        .log_line(
            "registering again as a new instance",
            Duration::from_secs(20),
        )
        .await;
    let ready_within = Instant::now() + Duration::from_secs(20);
    while let Err(why) =
        snowplow_relay::ops::admin::probe(admin, "/readyz", Duration::from_secs(2)).await
    {
        assert!(
            Instant::now() < ready_within,
            "not ready again after the lost lease: {why}\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = relay.log();
    let lost = log
        .lines()
        .find(|l| l.contains("registering again as a new instance"))
        .unwrap();
    assert!(lost.contains("WARN") && lost.contains(cause), "{lost}");
    assert!(!log.contains("stopping"), "{log}");
    assert!(relay.running(), "the relay went on running:\n{log}");
}

/// Stops `relay` with SIGTERM: it must exit 0.
async fn stop_with_exit_0(relay: RelayProcess) -> String {
    let finished = relay.stop(Duration::from_secs(30)).await;
    assert_eq!(finished.status.code(), Some(0), "{}", finished.log);
    finished.log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_frozen_while_another_recovers_its_events_carries_on() {
    let total = 3_000;
    let (redis, collector) = setup_holding(always(200), total).await;
    collector.set_delay(Duration::from_millis(20));
    let mut frozen = relay_with_short_lease(&redis.url(), &collector);
    let admin = frozen.admin_addr().await;
    collector.until_delivered(200, 20).await;
    let before = instances(&redis);
    frozen.signal(libc::SIGSTOP);
    let other = relay_with_short_lease(&redis.url(), &collector);
    wait_until("the frozen relay recovered by the other", 20, async || {
        instances(&redis).iter().all(|id| !before.contains(id))
    })
    .await;
    let lost_at = Instant::now();
    frozen.signal(libc::SIGCONT);
    carries_on(&mut frozen, admin, "lease expired").await;
    eprintln!(
        "frozen relay: ready again {:?} after SIGCONT",
        lost_at.elapsed()
    );
    // Both relays go on: more events, delivered by either.
    redis.rpush(LIST, &numbered_events(total + 1_000)[total..]);
    wait_until_all_resolved(&redis).await;
    stop_with_exit_0(frozen).await;
    stop_with_exit_0(other).await;
    report(
        ("frozen 1 s past its lease", total + 1_000),
        (&collector, &redis),
        None,
    );
    let duplicates = all_delivered(&collector, &redis, total + 1_000);
    assert!(
        duplicates <= 500,
        "{duplicates} duplicates: more than one relay held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_redis_by_a_partition_carries_on() {
    let total = 3_000;
    let (redis, collector) = setup_holding(always(200), total).await;
    collector.set_delay(Duration::from_millis(20));
    let proxy = Proxy::start(redis.port).await;
    let mut cut_off = relay_with_short_lease(&proxy.url(), &collector);
    let admin = cut_off.admin_addr().await;
    collector.until_delivered(200, 20).await;
    let before = instances(&redis);
    proxy.partition();
    let other = relay_with_short_lease(&redis.url(), &collector);
    wait_until("the cut-off relay recovered by the other", 20, async || {
        instances(&redis).iter().all(|id| !before.contains(id))
    })
    .await;
    proxy.heal();
    carries_on(&mut cut_off, admin, "lease expired").await;
    redis.rpush(LIST, &numbered_events(total + 1_000)[total..]);
    wait_until_all_resolved(&redis).await;
    stop_with_exit_0(cut_off).await;
    stop_with_exit_0(other).await;
    report(
        ("partitioned past its lease", total + 1_000),
        (&collector, &redis),
        None,
    );
    let duplicates = all_delivered(&collector, &redis, total + 1_000);
    assert!(
        duplicates <= 500,
        "{duplicates} duplicates: more than one relay held"
    );
}

/// Redis forgets the relay: what it held in Redis is gone with the rest, which no relay
/// can help. The relay says what happened (not that another relay recovered it),
/// registers again and relays what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_its_data_or_flushed_is_said_and_relaying_goes_on() {
    let collector = Collector::start().await;
    let first = RedisServer::start();
    let proxy = Proxy::start(first.port).await;
    let mut relay = relay_with_short_lease(&proxy.url(), &collector);
    let admin = relay.admin_addr().await;
    first.rpush(LIST, &numbered_events(100));
    collector.until_exactly_delivered(100, 20).await;
    // A new, empty server behind the same address.
    let second = RedisServer::start();
    proxy.retarget(second.port);
    drop(first);
    carries_on(&mut relay, admin, "Redis no longer knows this relay").await;
    let events = numbered_events(300);
    second.rpush(LIST, &events[100..200]);
    wait_until("delivered after the restart", 20, async || {
        collector.distinct_delivered() == 200
    })
    .await;
    // FLUSHALL: the same.
    let mark = relay.log().len();
    second.cmd(&["FLUSHALL"]);
    wait_until("registered again after FLUSHALL", 20, async || {
        relay.log()[mark..].contains("registering again as a new instance")
    })
    .await;
    assert!(
        relay.log()[mark..].contains("Redis no longer knows this relay"),
        "{}",
        relay.log()
    );
    second.rpush(LIST, &events[200..]);
    wait_until("delivered after FLUSHALL", 20, async || {
        collector.distinct_delivered() == 300
    })
    .await;
    let log = stop_with_exit_0(relay).await;
    assert!(
        !log.contains("another relay"),
        "no other relay ran, and none is blamed:\n{log}"
    );
    assert_eq!(collector.delivered_count(), 300, "nothing twice");
}
