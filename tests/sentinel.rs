//! The relay behind Redis Sentinel (real processes: a master, a replica and three
//! sentinels, `tests/support/sentinel.rs`): it asks the sentinels for the master, and
//! follows each failover without waiting for a lease or a restart. Every scenario
//! accounts for every event (printed for the notes: in, delivered, duplicates, left,
//! vanished, and the time from the failover to delivery resuming).

use std::time::{Duration, Instant};

use crate::support::sentinel::{MASTER, SentinelSet};
use crate::support::*;

/// Events numbered from `from`, with eids of their own per scenario.
fn events(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            with_eid(
                &fixture_events()[i % fixture_events().len()],
                &format!("{prefix}-{i}"),
            )
        })
        .collect()
}

/// The relay as a process, following the set's sentinels, with its admin listener.
async fn relay_for(
    set: &SentinelSet,
    collector: &Collector,
) -> (RelayProcess, std::net::SocketAddr) {
    let endpoints = set.endpoints();
    let relay = RelayProcess::start_with(
        &[
            "--collector",
            &collector.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            // The URL's host and port are not used with sentinels.
            ("SNOWPLOW_RELAY_REDIS__URL", "redis://127.0.0.1:1"),
            ("SNOWPLOW_RELAY_REDIS__SENTINELS", &endpoints),
            ("SNOWPLOW_RELAY_REDIS__SENTINEL_MASTER", MASTER),
            ("SNOWPLOW_RELAY_COLLECTOR__RETRY_INITIAL_BACKOFF_MS", "20"),
            ("SNOWPLOW_RELAY_COLLECTOR__RETRY_MAX_BACKOFF_MS", "200"),
        ],
    );
    let addr = relay.admin_addr().await;
    (relay, addr)
}

/// Whether a scenario's failover may lose the relay's last writes (see [`account`]).
#[derive(Clone, Copy, PartialEq)]
enum LostWrites {
    /// The relay ran on the new master long enough to see any: nothing may be left.
    Seen,
    /// The relay may have delivered everything on the old master before the replica was
    /// promoted, and then had nothing more to do.
    Possible,
}

/// What became of `total` events: delivered (distinct), duplicates, left in Redis at
/// the master (in the list or an in-flight list), vanished; printed for the notes, and
/// checked: none vanished, and nothing undelivered is left.
///
/// Replication is asynchronous: when the relay claims, delivers and acknowledges on the
/// old master while the sentinels promote its replica, the new master may have the claim
/// and not the acknowledgements. The events are then in the instance's in-flight list
/// there although delivered; a relay that runs no claim on the new master (the list is
/// empty) cannot tell, and they arrive again when the instance's lease is recovered:
/// duplicates, never a loss. With [`LostWrites::Possible`], such delivered events left in
/// Redis are allowed; anything undelivered left in Redis is not, in any scenario.
fn account(
    scenario: &str,
    set: &SentinelSet,
    collector: &Collector,
    total: usize,
    resumed: &[Duration],
    lost_writes: LostWrites,
) {
    let distinct_eids = collector.distinct_eids();
    let distinct = distinct_eids.len();
    let delivered = collector.delivered_eids().len();
    let master = set.master();
    let mut held = master.lrange(LIST);
    for key in master.keys() {
        if key.starts_with("{snowplow}:inflight:") {
            held.extend(master.lrange(&key));
        }
    }
    let left = held.len();
    let (held_delivered, held_undelivered): (Vec<_>, Vec<_>) = held
        .iter()
        .map(|element| eid_of(element).expect("held elements are the test's events"))
        .partition(|eid| distinct_eids.contains(eid));
    let vanished = total - distinct - held_undelivered.len();
    eprintln!(
        "{scenario}: events in {total}, delivered {distinct}, duplicates {}, left in Redis {left} \
         (of them delivered already {}), vanished {vanished}, failover to delivery resuming \
         {resumed:.1?}",
        delivered - distinct,
        held_delivered.len()
    );
    assert_eq!(vanished, 0, "{scenario}: every event accounted for");
    assert_eq!(
        held_undelivered.len(),
        0,
        "{scenario}: nothing undelivered left in Redis"
    );
    if lost_writes == LostWrites::Seen {
        assert_eq!(left, 0, "{scenario}: nothing left in Redis");
    }
    // At most what one claim holds may arrive twice (it was in flight at the failover).
    assert!(
        delivered - distinct <= 500,
        "{scenario}: {} duplicates",
        delivered - distinct
    );
}

/// Waits until `/readyz` answers 200.
async fn ready(addr: std::net::SocketAddr, seconds: u64) {
    wait_until("/readyz 200", seconds, async || {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
}

/// A switchover (`SENTINEL FAILOVER`) while relaying, then a second one back, one
/// sentinel down for the second: delivery resumes within 10 s of the sentinels naming
/// the new master, `/readyz` returns to 200, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_two_switchovers_there_and_back() {
    let mut set = SentinelSet::start().await;
    let collector = Collector::start().await;
    let (relay, admin) = relay_for(&set, &collector).await;
    set.push(LIST, &events("sw", 0..300));
    collector.until_distinct(300, 20).await;
    ready(admin, 10).await;
    let mut resumed = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // A sentinel down: the others still answer (and still have a quorum of 2).
            set.sentinels[0].kill();
        }
        set.wait_synced().await;
        let from = set.master_port();
        set.failover();
        let (to, switched_at) = set.wait_switched(from).await;
        assert_ne!(to, from);
        let start = 300 * (round + 1);
        let pushed_at = Instant::now();
        set.push_now(to, LIST, &events("sw", start..start + 300));
        collector.until_distinct(start + 300, 20).await;
        let took = switched_at.elapsed();
        let first = collector
            .requests()
            .iter()
            .filter(|r| {
                r.events()
                    .iter()
                    .any(|e| e["eid"].as_str() == Some(format!("sw-{start}").as_str()))
            })
            .map(|r| r.at)
            .min();
        eprintln!(
            "switchover {round}: pushed to the new master {:?} after the switch, first delivered \
             {:?} after the push",
            pushed_at - switched_at,
            first.map(|f| f - pushed_at)
        );
        assert!(
            took < Duration::from_secs(10),
            "round {round}: delivery resumed {took:?} after the switch:\n{}",
            relay.log()
        );
        resumed.push(took);
        ready(admin, 10).await;
    }
    let log = relay.stop_cleanly().await;
    assert!(log.contains("followed a failover"), "{log}");
    account(
        "two switchovers, one sentinel down for the second",
        &set,
        &collector,
        900,
        &resumed,
        LostWrites::Seen,
    );
}

/// The master killed (SIGKILL) while events are in flight to a slow collector: the
/// sentinels promote the replica, and the relay carries on there with what it held (its
/// in-flight list was replicated), without waiting for its lease; events pushed to the new
/// master after the switch are delivered within 10 s of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_killed_while_relaying() {
    let mut set = SentinelSet::start().await;
    let collector = Collector::start().await;
    collector.set_delay(Duration::from_millis(500));
    let (relay, admin) = relay_for(&set, &collector).await;
    set.push(LIST, &events("kill", 0..4000));
    wait_until("200 delivered", 20, async || {
        collector.distinct_delivered() >= 200
    })
    .await;
    set.wait_synced().await;
    let from = set.master_port();
    let killed_at = Instant::now();
    set.kill_server(from);
    let in_flight_at_kill = 4000 - collector.distinct_delivered();
    let (to, switched_at) = set.wait_switched(from).await;
    collector.set_delay(Duration::ZERO);
    set.push_now(to, LIST, &events("after", 0..300));
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector
        .distinct_eids()
        .iter()
        .filter(|e| e.starts_with("after-"))
        .count()
        < 300
    {
        assert!(
            Instant::now() < deadline,
            "delivery did not resume:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = switched_at.elapsed();
    assert!(
        resumed < Duration::from_secs(10),
        "resumed {resumed:?} after the switch"
    );
    collector.until_distinct(4300, 60).await;
    ready(admin, 10).await;
    relay.stop_cleanly().await;
    eprintln!(
        "master killed: {in_flight_at_kill} events not yet delivered at the kill; the sentinels \
         switched {:.1?} after it",
        switched_at - killed_at
    );
    account(
        "the master killed while relaying",
        &set,
        &collector,
        4300,
        &[resumed],
        LostWrites::Seen,
    );
}

/// The relay started while a failover is in progress: it finds the master the
/// sentinels name once it is done, and relays what waits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_during_a_failover() {
    let set = SentinelSet::start().await;
    let collector = Collector::start().await;
    set.push(LIST, &events("start", 0..500));
    set.wait_synced().await;
    let from = set.master_port();
    set.failover();
    let (relay, admin) = relay_for(&set, &collector).await;
    let (_, switched_at) = set.wait_switched(from).await;
    collector.until_distinct(500, 20).await;
    let resumed = switched_at.elapsed();
    ready(admin, 10).await;
    relay.stop_cleanly().await;

    // The tools reach the new master through the sentinels too: track writes there, and
    // dead-letter count reads there.
    let endpoints = set.endpoints();
    let through_sentinels = [
        ("SNOWPLOW_RELAY_REDIS__URL", "redis://127.0.0.1:1"),
        ("SNOWPLOW_RELAY_REDIS__SENTINELS", endpoints.as_str()),
        ("SNOWPLOW_RELAY_REDIS__SENTINEL_MASTER", MASTER),
    ];
    // (The list may hold events the new master never saw acknowledged: see `account`.)
    let before = set.master().llen(LIST);
    let tracked = run_bin(
        &["track", "page-view", "--url", "https://a.example/"],
        &through_sentinels,
    );
    assert!(
        tracked.status.success(),
        "{}",
        String::from_utf8_lossy(&tracked.stderr)
    );
    assert_eq!(
        set.master().llen(LIST),
        before + 1,
        "track wrote to the new master"
    );
    set.master()
        .rpush("{snowplow}:dead", &["{\"reason\":\"test\"}\n{}".to_owned()]);
    let counted = run_bin(&["dead-letter", "count"], &through_sentinels);
    assert!(
        counted.status.success(),
        "{}",
        String::from_utf8_lossy(&counted.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        "1",
        "{counted:?}"
    );
    // The tracked event, at the tail.
    set.master().cmd(&["RPOP", LIST]);
    account(
        "started during a failover",
        &set,
        &collector,
        500,
        &[resumed],
        LostWrites::Possible,
    );
}

/// No sentinel answers: the relay says so where an operator looks (`/readyz` and the
/// log) and stays up, asking again (the switchover test covers a sentinel coming and
/// going while others answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sentinel_answers_is_said_and_waited_out() {
    let collector = Collector::start().await;
    let port = ClosedPort::new();
    let relay = RelayProcess::start_with(
        &[
            "--collector",
            &collector.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("SNOWPLOW_RELAY_REDIS__URL", "redis://127.0.0.1:1"),
            (
                "SNOWPLOW_RELAY_REDIS__SENTINELS",
                &format!("127.0.0.1:{}", port.port),
            ),
            ("SNOWPLOW_RELAY_REDIS__SENTINEL_MASTER", MASTER),
        ],
    );
    let admin = relay.admin_addr().await;
    let line = relay
        .log_line("no sentinel answers", Duration::from_secs(10))
        .await;
    assert!(line.contains(MASTER), "{line}");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("no sentinel answers"), "{body}");
    relay.stop_cleanly().await;
}
