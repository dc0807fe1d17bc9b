//! Never stuck for good: a Redis connection that stops answering, a switchover that
//! leaves connections on a demoted master, events the collector refuses on their own
//! (and, in the same test, a real outage that must dead-letter nothing), replies larger
//! than Redis lets through, and liveness that means work is attempted.

use std::time::{Duration, Instant};

use crate::support::*;

/// A relay that reaches the Redis server on `redis_port` through a [`Proxy`] (claims of
/// 100, at most 500 held, `redis.command_timeout_ms` as given) and a collector that
/// takes 5 ms a request.
async fn relay_through_a_proxy(
    redis_port: u16,
    command_timeout_ms: &str,
) -> (Proxy, Collector, Relay) {
    let proxy = Proxy::start(redis_port).await;
    let collector = Collector::start().await;
    collector.set_delay(Duration::from_millis(5));
    let overrides = [
        ("redis.command_timeout_ms", command_timeout_ms),
        ("redis.claim_batch_size", "100"),
        ("worker.max_claimed_events", "500"),
    ];
    let relay = Relay::start(config_for_urls(&proxy.url(), &collector.url(), &overrides));
    (proxy, collector, relay)
}

#[tokio::test]
async fn a_redis_connection_that_stops_answering_is_replaced() {
    let redis = RedisServer::start();
    let total = 5_000;
    redis.rpush(LIST, &numbered_events(total));
    let (proxy, collector, relay) = relay_through_a_proxy(redis.port, "500").await;
    collector.until_delivered(1_000, 20).await;
    // Every connection the relay holds now answers nothing; new ones get through.
    proxy.freeze_existing();
    let scenario = ("frozen Redis connections", total);
    let summary = stop_once_recovered(relay, scenario, (&collector, &redis), 30).await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(redis.llen(LIST), 0);
}

#[tokio::test]
async fn a_switchover_that_leaves_connections_on_the_demoted_master_is_followed() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    new.cmd(&["REPLICAOF", "127.0.0.1", &old.port.to_string()]);
    let total = 6_000;
    old.rpush(LIST, &numbered_events(total));
    wait_until("the replica is in sync", 10, async || {
        new.llen(LIST) == total
    })
    .await;
    let (proxy, collector, relay) = relay_through_a_proxy(old.port, "1000").await;
    collector.until_delivered(1_000, 20).await;
    // An orderly switchover: writes paused, the replica caught up, promoted, the old
    // master demoted, the address moved; the relay's connections stay open to the old one.
    old.cmd(&["CLIENT", "PAUSE", "5000", "WRITE"]);
    let offset = |server: &RedisServer, field: &str| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut server.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until("caught up", 10, async || {
        offset(&new, "slave_repl_offset:") >= offset(&old, "master_repl_offset:")
    })
    .await;
    new.cmd(&["REPLICAOF", "NO", "ONE"]);
    old.cmd(&["REPLICAOF", "127.0.0.1", &new.port.to_string()]);
    proxy.retarget(new.port);
    old.cmd(&["CLIENT", "UNPAUSE"]);
    let scenario = ("switchover (READONLY)", total);
    stop_once_recovered(relay, scenario, (&collector, &new), 30).await;
    assert_eq!(new.llen(LIST), 0);
}

/// Both halves are needed: events the collector refuses on their own are parked, retried
/// alone and dead-lettered while the rest flows; and an outage that refuses everything
/// dead-letters nothing, however long it lasts against these short retry delays.
#[tokio::test]
async fn one_refused_event_never_holds_back_the_others_and_an_outage_dead_letters_nothing() {
    let settings: &[(&'static str, &str)] = &[
        ("redis.claim_batch_size", "200"),
        ("worker.max_claimed_events", "1000"),
        ("collector.park_after_failures", "3"),
        ("collector.isolated_failure_limit", "5"),
    ];
    // Two events the collector answers 500 to, with every batch that holds them.
    let redis = RedisServer::start();
    let poisoned = ["ev-100", "ev-5000"];
    let collector = Collector::start_with(Box::new(move |request| {
        if request
            .events()
            .iter()
            .any(|e| poisoned.contains(&e["eid"].as_str().unwrap_or_default()))
        {
            500
        } else {
            200
        }
    }))
    .await;
    let total = 10_000;
    redis.rpush(LIST, &numbered_events(total));
    let relay = Relay::with(&redis, &collector, settings);
    let started = Instant::now();
    collector.until_distinct(total - 2, 60).await;
    // The list is quiet now: nothing shows the collector accepting requests, so the two
    // stay parked (an outage looks the same), holding back nothing.
    wait_until("the two parked", 20, async || {
        redis.llen_of_lists_named("{snowplow}:retry:") == 2 && redis.llen(LIST) == 0
    })
    .await;
    assert_eq!(redis.llen(DEAD), 0);
    // Traffic again: other events accepted between their attempts show them failing alone.
    let trickle = {
        let redis = redis.url();
        tokio::spawn(async move {
            let mut conn = redis::Client::open(redis)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for round in 0.. {
                let events: Vec<String> = (0..10)
                    .map(|i| with_eid(&numbered_events(1)[0], &format!("tr-{round}-{i}")))
                    .collect();
                let _: i64 = redis::cmd("RPUSH")
                    .arg(LIST)
                    .arg(&events)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_until("the two dead-lettered", 120, async || redis.llen(DEAD) == 2).await;
    trickle.abort();
    let took = started.elapsed();
    wait_until("the trickle delivered", 20, async || {
        redis.llen(LIST) == 0 && redis.llen_of_lists_named("{snowplow}:inflight:") == 0
    })
    .await;
    let summary = relay.stop().await;
    let trickled = collector
        .distinct_eids()
        .iter()
        .filter(|e| e.starts_with("tr-"))
        .count();
    report(
        ("two events refused alone", total + trickled),
        (&collector, &redis),
        Some(took),
    );
    assert_eq!(summary.dead_lettered, 2);
    for entry in redis.lrange(DEAD) {
        let (meta, element) = snowplow_relay::queue::DeadLetter::decode(&entry).unwrap();
        assert_eq!(meta.status, Some(500));
        assert!(meta.detail().contains("attempts"), "{}", meta.detail());
        let element = String::from_utf8_lossy(element);
        assert!(poisoned.iter().any(|p| element.contains(p)));
    }
    assert!(
        !collector
            .distinct_eids()
            .iter()
            .any(|e| poisoned.contains(&e.as_str()))
    );
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(
        leftover_keys(&redis),
        Vec::<String>::new(),
        "nothing left parked"
    );

    // A real outage: every request refused for 8 s (40 times the longest retry delay).
    let total = 20_000;
    let (redis, collector) = setup_holding(always(503), total).await;
    let relay = Relay::with(&redis, &collector, settings);
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage's length
    assert!(collector.delivered().is_empty());
    assert_eq!(redis.llen(DEAD), 0, "an outage dead-letters nothing");
    collector.respond_with(always(200));
    let scenario = ("8 s outage (time after it ended)", total);
    let summary = stop_once_recovered(relay, scenario, (&collector, &redis), 60).await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(redis.llen(DEAD), 0);
    assert_eq!(redis.llen(LIST), 0);
}

/// One refused event in a batch, and nothing else on the list: no other traffic can
/// show the batch, not the collector, to be at fault. The batch is split and its halves
/// sent at once, so the good half gets through and shows the other failing alone; the
/// good events are delivered within seconds and the refused one is parked, holding back
/// nothing. (Without the split the batch was retried whole for ever.)
#[tokio::test]
async fn one_refused_event_on_a_quiet_list_holds_back_nothing() {
    let (redis, collector) = setup(refusing(&["ev-7"], 500)).await;
    redis.rpush(LIST, &numbered_events(50));
    let relay = Relay::with(&redis, &collector, &[("collector.buffer_size", "50")]);
    let started = Instant::now();
    collector.until_distinct(49, 20).await;
    let took = started.elapsed();
    wait_until("the refused event parked", 20, async || {
        redis.llen_of_lists_named("{snowplow}:retry:") == 1
    })
    .await;
    eprintln!("one refused event of 50 on a quiet list: the other 49 delivered in {took:?}");
    assert_eq!(redis.llen(DEAD), 0, "nothing shows it failing alone yet");
    let summary = relay.stop().await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(
        redis.llen(LIST),
        1,
        "the refused event is back in the list at the stop"
    );
    assert!(!collector.distinct_eids().contains("ev-7"));
}

/// A collector that degrades: it fails half its requests at random for a while, then
/// every request, then recovers. Nothing is refused for good, so nothing may be
/// dead-lettered: a failure counts against a parked event only if other requests were
/// accepted since its previous attempt and next to none failed.
#[tokio::test]
async fn a_degrading_collector_dead_letters_nothing() {
    let (redis, collector) = setup(Box::new(|_| if fastrand::bool() { 200 } else { 503 })).await;
    let total = 3_000;
    redis.rpush(LIST, &numbered_events(total));
    let relay = Relay::with(
        &redis,
        &collector,
        &[
            ("collector.park_after_failures", "2"),
            ("collector.isolated_failure_limit", "2"),
        ],
    );
    // Half the requests fail until the list is drained (some batches get parked).
    wait_until("the list drained", 60, async || redis.llen(LIST) == 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Then everything fails for 5 s (25 times the longest retry delay), then nothing.
    collector.respond_with(always(503));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        redis.llen(DEAD),
        0,
        "a degrading collector dead-letters nothing"
    );
    collector.respond_with(always(200));
    let scenario = ("half failing, then all failing for 5 s", total);
    let summary = stop_once_recovered(relay, scenario, (&collector, &redis), 60).await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(redis.llen(DEAD), 0);
}

/// With `client-output-buffer-limit normal 1mb`, a claim reply of 500 events of 8 KB
/// makes Redis close the connection. Read the limit where CONFIG is allowed; shrink the
/// claim after such a disconnect where it is not; and resend a lost reply within the
/// same bound.
#[tokio::test]
async fn claims_fit_the_largest_reply_redis_allows() {
    let big_events = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"e":"pv","p":"pc","tv":"t","eid":"ev-{i}","url":"{}"}}"#,
                    "u".repeat(8_000)
                )
            })
            .collect()
    };
    for config_allowed in [true, false] {
        let redis = RedisServer::start_with(&["--client-output-buffer-limit", "normal 1mb 0 0"]);
        let url = if config_allowed {
            redis.url()
        } else {
            redis.cmd(&[
                "ACL", "SETUSER", "relay", "on", ">pw", "~*", "&*", "+@all", "-config",
            ]);
            format!("redis://relay:pw@127.0.0.1:{}", redis.port)
        };
        let collector = Collector::start().await;
        let total = 2_000;
        redis.rpush(LIST, &big_events(total));
        let started = Instant::now();
        let relay = Relay::start(config_for_urls(&url, &collector.url(), &[]));
        let scenario =
            format!("1 MB reply limit, CONFIG allowed {config_allowed} (time from start)");
        let summary =
            stop_once_recovered_since(started, relay, (&scenario, total), (&collector, &redis), 45)
                .await;
        assert_eq!(summary.dead_lettered, 0, "CONFIG allowed: {config_allowed}");
        assert_eq!(redis.llen(LIST), 0);
    }
}

/// Alive means work is attempted: Redis answering the heartbeat while every claim is
/// refused is not alive; a collector refusing everything for longer than the bound is
/// (attempts go on), but not ready. The three scenarios run side by side (each has its
/// own Redis, collector and relay): each waits out the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_on_a_wedged_stage_and_not_on_an_outage() {
    let settings: &[(&str, &str)] = &[
        ("redis.lease_ttl_ms", "3000"),
        ("collector.request_timeout_ms", "1000"),
        ("admin.listen", "127.0.0.1:0"),
    ];
    // stuck_after = max(3 s, 0.2 s + 1 s) + 10 s = 13 s.
    let bound = Duration::from_secs(13);
    let get = |addr: std::net::SocketAddr, path: &'static str| async move {
        snowplow_relay::ops::admin::probe(addr, path, Duration::from_secs(2)).await
    };
    // Waits until `path` answers other than 200; returns why.
    let refused = async |addr, path, within: Duration| {
        let mut why = String::new();
        wait_until(&format!("{path} refuses"), within.as_secs(), async || {
            get(addr, path).await.map_err(|w| why = w).is_err()
        })
        .await;
        why
    };

    // Claims refused (this user may no longer write the in-flight list) while the
    // heartbeat is answered: a wedge.
    let claims_refused = async {
        let redis = RedisServer::start();
        redis.add_user("relay", "pw");
        let collector = Collector::start().await;
        let relay = RelayProcess::start_with_settings(
            &format!("redis://relay:pw@127.0.0.1:{}", redis.port),
            &collector.url(),
            settings,
        );
        let addr = relay.admin_addr().await;
        wait_until("ready", 10, async || instances(&redis).len() == 1).await;
        redis.cmd(&[
            "ACL", "SETUSER", "relay", "reset", "on", ">pw", "~*", "&*", "+@all", "-rpush",
        ]);
        redis.rpush(LIST, &numbered_events(10));
        let wedged = Instant::now();
        let why = refused(addr, "/readyz", Duration::from_secs(5)).await;
        assert!(
            why.contains("claim failing"),
            "/readyz says so at once: {why}"
        );
        let why = refused(addr, "/healthz", bound + Duration::from_secs(5)).await;
        assert!(wedged.elapsed() >= bound - Duration::from_secs(1), "{why}");
        assert!(
            why.contains("while Redis answers the lease renewal"),
            "{why}"
        );
        eprintln!("claims refused: /healthz 503 after {:?}", wedged.elapsed());
        relay.stop_cleanly().await;
        assert_eq!(redis.llen(LIST), 10, "nothing lost");
    };

    // One event refused on its own, with parking effectively off (as before parking
    // existed): it holds the window, claiming waits while the collector accepts other
    // requests. A wedge.
    let window_blocked = async {
        let (redis, collector) = setup_holding(refusing(&["ev-5"], 500), 2_000).await;
        let no_parking = [
            ("collector.park_after_failures", "1000"),
            ("worker.max_claimed_events", "500"),
            ("worker.drain_timeout_ms", "0"),
        ];
        let relay = RelayProcess::start_with_settings(
            &redis.url(),
            &collector.url(),
            &[settings, &no_parking].concat(),
        );
        let addr = relay.admin_addr().await;
        let blocked = Instant::now();
        let why = refused(addr, "/healthz", bound + Duration::from_secs(5)).await;
        assert!(
            why.contains("window is blocked") || why.contains("other requests succeed"),
            "{why}"
        );
        eprintln!(
            "a refused event holding the window: /healthz 503 after {:?}",
            blocked.elapsed()
        );
        relay.stop_cleanly().await;
    };

    // The collector refuses everything for the bound and 5 s more: alive all along.
    let outage_alive = async {
        let (redis, collector) = setup_holding(always(503), 2_000).await;
        let relay = RelayProcess::start_with_settings(&redis.url(), &collector.url(), settings);
        let addr = relay.admin_addr().await;
        let outage = Instant::now();
        let mut not_ready = false;
        while outage.elapsed() < bound + Duration::from_secs(5) {
            if let Err(why) = get(addr, "/healthz").await {
                panic!("an outage is alive, but /healthz said: {why}");
            }
            not_ready |= get(addr, "/readyz")
                .await
                .is_err_and(|why| why.contains("collector requests failing"));
            tokio::time::sleep(Duration::from_millis(250)).await; // between probes
        }
        assert!(not_ready, "/readyz says the collector is failing");
        collector.respond_with(always(200));
        collector.until_distinct(2_000, 30).await;
        relay.stop_cleanly().await;
    };
    tokio::join!(claims_refused, window_blocked, outage_alive);
}

#[tokio::test]
async fn readyz_turns_within_a_heartbeat_and_a_command_timeout_of_a_frozen_redis() {
    // Before: with redis-server frozen (SIGSTOP) /readyz stayed 200 until a call's
    // failure was recorded, after a reconnection's timeout too (18 s measured with the
    // defaults), or for the whole lease.
    let (redis, collector) = setup(always(200)).await;
    let (relay, addr) = RelayProcess::with_admin(&redis, &collector).await;
    wait_until("ready", 10, async || {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    // Freeze right after a lease renewal: the next heartbeat is a whole interval away,
    // the worst case for the bound.
    let lease = redis
        .keys()
        .into_iter()
        .find(|key| key.contains(":lease:"))
        .expect("a lease");
    let lease_ttl_ms = 30_000;
    wait_until("a fresh renewal", 15, async || {
        let pttl = redis.cmd(&["PTTL", &lease]);
        matches!(pttl, redis::Value::Int(ms) if ms > lease_ttl_ms - 300)
    })
    .await;
    redis.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    // One heartbeat interval (a third of the lease) plus the command timeout (5 s).
    let bound = Duration::from_millis(lease_ttl_ms as u64 / 3 + 5_000);
    let mut answer = String::new();
    wait_until("not ready", bound.as_secs() + 10, async || {
        let (status, body) = http_get(addr, "/readyz").await;
        answer = body;
        status == 503
    })
    .await;
    let took = frozen.elapsed();
    eprintln!(
        "frozen Redis: /readyz 503 after {took:?}: {}",
        answer.trim()
    );
    assert!(took <= bound + Duration::from_secs(1), "{took:?}: {answer}");
    // A Redis outage is not a wedged relay: still alive.
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    redis.signal(libc::SIGCONT);
    wait_until("ready again", 30, async || {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    relay.stop_cleanly().await;
}

/// One deadline per Redis call, whatever it waits for: with the connection gone and new
/// ones hanging (a partition), five calls at once each give up after the command
/// timeout, not one after another (the fifth after five of them).
#[tokio::test]
async fn every_redis_call_has_one_deadline_however_many_wait_for_a_connection() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let timeout = Duration::from_millis(500);
    let settings = config_for_urls(
        &proxy.url(),
        "http://127.0.0.1:9",
        &[("redis.command_timeout_ms", "500")],
    );
    let queue = std::sync::Arc::new(
        snowplow_relay::queue::Queue::connect(&settings.redis)
            .await
            .unwrap(),
    );
    queue.register().await.unwrap();
    proxy.partition();
    // The first call misses its deadline and drops the connection.
    assert!(queue.sample().await.is_err());
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let asked = Instant::now();
                let result = queue.sample().await;
                (asked.elapsed(), result.is_err())
            })
        })
        .collect();
    for call in calls {
        let (took, failed) = call.await.unwrap();
        assert!(failed);
        // The deadline, and a margin for a busy two-core machine.
        assert!(took < timeout * 2, "a call gave up after {took:?}");
    }
}
