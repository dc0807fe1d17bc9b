//! End to end: a real redis-server, a real HTTP collector, the relay in-process.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use snowplow_relay::queue::DeadLetter;

use crate::support::*;

fn by_eid(events: &[String]) -> HashMap<String, serde_json::Map<String, serde_json::Value>> {
    events
        .iter()
        .map(|e| {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(e).unwrap();
            (map["eid"].as_str().unwrap().to_owned(), map)
        })
        .collect()
}

/// Each delivered event carries every original field as a string, plus `stm`.
fn assert_same_fields(
    sent: &serde_json::Map<String, serde_json::Value>,
    received: &serde_json::Map<String, serde_json::Value>,
) {
    for (name, value) in sent {
        let expected = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(
            received[name],
            serde_json::Value::String(expected),
            "field {name}"
        );
    }
    let stm: u64 = received["stm"].as_str().unwrap().parse().unwrap();
    assert!(stm > 1_700_000_000_000, "stm is epoch milliseconds");
    assert_eq!(received.len(), sent.len() + 1, "nothing added but stm");
}

#[tokio::test]
async fn post_delivers_every_fixture_event_with_every_field() {
    let (redis, collector) = setup(always(200)).await;
    let events = numbered_events(360);
    redis.rpush(LIST, &events);
    let relay = Relay::with(&redis, &collector, &[]);

    collector.until_delivered(360, 20).await;
    let summary = relay.stop().await;

    let sent = by_eid(&events);
    let delivered = collector.delivered();
    assert_eq!(delivered.len(), 360, "no duplicates");
    for event in &delivered {
        assert_same_fields(&sent[event["eid"].as_str().unwrap()], event);
    }
    for request in collector.requests() {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/com.snowplowanalytics.snowplow/tp2");
        assert_eq!(
            request.headers["content-type"],
            "application/json; charset=utf-8"
        );
        assert!(
            request.headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("snowplow-relay/")
        );
        assert!(request.headers.get("cookie").is_none());
        assert!(request.headers.get("sp-anonymous").is_none());
        assert!(
            request.events().len() <= snowplow_relay::config::DEFAULT_POST_BUFFER_SIZE,
            "default buffer_size for POST"
        );
        assert_valid_payload_data(&request.body);
    }
    assert_eq!(summary.delivered, 360);
    assert_eq!(summary.claimed, 360);
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(redis.llen(DEAD), 0);
    assert_eq!(
        leftover_keys(&redis),
        Vec::<String>::new(),
        "in-flight keys removed at shutdown"
    );
}

#[tokio::test]
async fn get_delivers_every_event_one_per_request() {
    let (redis, collector) = setup(always(200)).await;
    let events = numbered_events(120);
    redis.rpush(LIST, &events);
    let relay = Relay::with(
        &redis,
        &collector,
        &[("collector.method", "get"), ("collector.anonymous", "true")],
    );

    collector.until_delivered(120, 20).await;
    relay.stop().await;

    let sent = by_eid(&events);
    let requests = collector.requests();
    assert_eq!(requests.len(), 120, "one request per event, none repeated");
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/i");
        assert_eq!(request.headers["sp-anonymous"], "*");
        let event = &request.events()[0];
        assert_same_fields(&sent[event["eid"].as_str().unwrap()], event);
    }
}

/// Against a collector that answers after 100 ms, the requests in flight grow past the
/// 16 a relay starts with (slow start) up to their ceiling and never beyond it; with
/// adaptive concurrency off they stay at the fixed number. Nothing is sent twice.
#[tokio::test]
async fn requests_in_flight_rise_against_a_slow_collector_up_to_their_ceiling() {
    for (adaptive, ceiling, count) in [("true", 48, 2_000), ("false", 16, 320)] {
        let (redis, collector) = setup(always(200)).await;
        collector.set_delay(Duration::from_millis(100));
        redis.rpush(LIST, &numbered_events(count));
        let relay = Relay::with(
            &redis,
            &collector,
            &[
                ("collector.method", "get"),
                ("collector.adaptive_concurrency", adaptive),
                ("collector.max_requests_in_flight", &ceiling.to_string()),
            ],
        );
        collector.until_delivered(count, 40).await;
        relay.stop().await;
        let peak = collector.peak_pending();
        eprintln!("adaptive {adaptive}, ceiling {ceiling}: {peak} requests at once");
        assert!(peak <= ceiling, "adaptive {adaptive}: {peak} at once");
        if adaptive == "true" {
            assert!(
                peak >= 32,
                "slow start doubled the 16 at least once: {peak}"
            );
        } else {
            assert_eq!(peak, ceiling, "fixed: always the ceiling when events wait");
        }
        assert_eq!(collector.delivered_count(), count, "none sent twice");
    }
}

#[tokio::test]
async fn batches_split_by_count_and_by_bytes() {
    let (redis, collector) = setup_holding(always(200), 200).await;
    let relay = Relay::with(&redis, &collector, &[("collector.buffer_size", "7")]);
    collector.until_delivered(200, 20).await;
    relay.stop().await;
    let sizes: Vec<usize> = collector
        .requests()
        .iter()
        .map(|r| r.events().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 7), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&n| n == 7).count() >= 20,
        "batches fill up: {sizes:?}"
    );

    let (redis, collector) = setup_holding(always(200), 200).await;
    let limit = 6_000;
    let settings = [
        ("collector.buffer_size", "100"),
        ("collector.byte_limit", "6000"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_delivered(200, 20).await;
    relay.stop().await;
    let requests = collector.requests();
    for request in &requests {
        assert!(
            request.body.len() <= limit,
            "body of {} bytes",
            request.body.len()
        );
        assert_valid_payload_data(&request.body);
    }
    let largest = requests.iter().map(|r| r.body.len()).max().unwrap();
    assert!(
        largest > limit / 2,
        "bodies fill towards the limit ({largest})"
    );
    assert!(
        requests.len() > 10,
        "the byte limit split 2 batches of 100 into {}",
        requests.len()
    );
}

#[tokio::test]
async fn a_lone_event_is_sent_at_once() {
    let (redis, collector) = setup(always(200)).await;
    let relay = Relay::with(
        &redis,
        &collector, // The flush timer is far off: only "the list ran dry" can send at once.
        &[
            ("collector.buffer_size", "100"),
            ("collector.flush_interval_ms", "10000"),
        ],
    );
    wait_until("the relay blocks on the empty list", 10, async || {
        redis.blocked_clients() == 1
    })
    .await;
    let pushed = Instant::now();
    redis.rpush(LIST, &numbered_events(1));
    collector.until_exactly_delivered(1, 5).await;
    let latency = pushed.elapsed();
    relay.stop().await;
    // A relay that waited for a full batch or for the flush timer (10 s) would take the
    // timer's period; only "the list ran dry" sends it well within a quarter of it.
    let flush_interval = Duration::from_secs(10);
    assert!(latency < flush_interval / 4, "took {latency:?}");
}

/// Claims run on a connection of their own (src/queue/reader.rs), which loads the claim
/// script itself when Redis no longer has it (`SCRIPT FLUSH`, a restarted or failed-over
/// server), and names itself as the relay's other connections do.
#[tokio::test]
async fn claims_load_their_script_again_after_a_script_flush() {
    let (redis, collector) = setup(always(200)).await;
    redis.rpush(LIST, &numbered_events(10));
    let relay = Relay::with(&redis, &collector, &[]);
    collector.until_exactly_delivered(10, 10).await;
    wait_until("the relay blocks on the empty list", 10, async || {
        redis.blocked_clients() == 1
    })
    .await;
    // Every connection but this test's own is the relay's, and named: three (calls,
    // the blocking wait, claims).
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    let relays: Vec<&str> = clients
        .lines()
        .filter(|line| !line.contains("cmd=client|list"))
        .collect();
    assert_eq!(relays.len(), 3, "{clients}");
    assert!(
        relays
            .iter()
            .all(|line| line.contains("name=snowplow-relay:")),
        "{clients}"
    );
    for round in 1..=3 {
        redis.cmd(&["SCRIPT", "FLUSH"]);
        redis.rpush(LIST, &numbered_events(10 * round + 10)[10 * round..]);
        collector.until_exactly_delivered(10 * round + 10, 10).await;
    }
    relay.stop().await;
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(redis.llen(DEAD), 0);
}

#[tokio::test]
async fn server_errors_are_retried_until_accepted_with_nothing_lost_or_duplicated() {
    let redis = RedisServer::start();
    let mut answered = 0;
    let collector = Collector::start_with(Box::new(move |_| {
        answered += 1;
        // Every third request fails until 30 have failed.
        if answered % 3 != 0 && answered < 45 {
            503
        } else {
            200
        }
    }))
    .await;
    let events = numbered_events(300);
    redis.rpush(LIST, &events);
    // Batches of 10: 30 requests or more, so that 30 failures fall among them.
    let relay = Relay::with(&redis, &collector, &[("collector.buffer_size", "10")]);
    collector.until_delivered(300, 30).await;
    relay.stop().await;

    let eids = collector.delivered_eids();
    let unique: HashSet<&String> = eids.iter().collect();
    assert_eq!(eids.len(), 300, "no duplicates");
    assert_eq!(unique.len(), 300, "every event");
    assert!(
        collector
            .requests()
            .iter()
            .filter(|r| r.status == 503)
            .count()
            >= 20
    );
    assert_eq!(redis.llen(DEAD), 0);
}

#[tokio::test]
async fn a_400_sends_the_batch_to_the_dead_letter_list_byte_for_byte() {
    let redis = RedisServer::start();
    let collector = Collector::start_with(Box::new(|request| {
        let body = String::from_utf8_lossy(&request.body);
        if body.contains("\"ev-7\"") { 400 } else { 200 }
    }))
    .await;
    let events = numbered_events(20);
    redis.rpush(LIST, &events);
    let relay = Relay::with(&redis, &collector, &[("collector.buffer_size", "1")]);
    let summary = stop_once_delivered_and_dead(relay, (&collector, &redis), (19, 1), 20).await;

    let dead = redis.lrange(DEAD);
    let (meta, original) = DeadLetter::decode(&dead[0]).unwrap();
    assert_eq!(
        original,
        events[7].as_bytes(),
        "original element, byte for byte"
    );
    assert_eq!(meta.status, Some(400));
    assert!(meta.detail().contains("400"), "{}", meta.detail());
    assert_eq!(meta.reason, "rejected", "the metric's label");
    assert!(meta.failed_at.ends_with('Z'));
    assert_eq!(summary.dead_lettered, 1);
    assert!(!collector.delivered_eids().contains(&"ev-7".to_owned()));
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(
        collector
            .requests()
            .iter()
            .filter(|r| r.status == 400)
            .count(),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn malformed_elements_are_dead_lettered_and_the_rest_delivered() {
    let (redis, collector) = setup(always(200)).await;
    let good = numbered_events(30);
    let bad: Vec<(&[u8], &str)> = vec![
        (b"not json at all", "not valid JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (b"{}", "empty event"),
        (
            b"{\"e\":\"pv\",\"tv\":\"t\",\"p\":\"pc\",\"url\":\"\xff\"}",
            "not valid JSON",
        ),
        (
            b"{\"e\":\"pv\",\"tv\":\"t\",\"p\":\"pc\",\"extra\":\"x\"}",
            "`extra` is not in payload_data",
        ),
        (
            b"{\"e\":\"pv\",\"tv\":\"t\",\"p\":\"pc\",\"co\":{\"schema\":\"x\"}}",
            "field `co` holds an object",
        ),
        (
            b"{\"e\":\"pv\",\"tv\":\"t\"}",
            "required field `p` is missing",
        ),
    ];
    for (i, event) in good.iter().enumerate() {
        redis.rpush(LIST, std::slice::from_ref(event));
        if let Some((element, _)) = bad.get(i) {
            redis.rpush_bytes(LIST, element);
        }
    }
    let relay = Relay::with(&redis, &collector, &[]);
    stop_once_delivered_and_dead(relay, (&collector, &redis), (30, bad.len()), 20).await;

    assert_eq!(collector.delivered().len(), 30);
    let dead = redis.lrange(DEAD);
    for ((element, reason), entry) in bad.iter().zip(&dead) {
        let (meta, original) = DeadLetter::decode(entry).unwrap();
        assert_eq!(original, *element);
        assert!(
            meta.detail().contains(reason),
            "`{}` should say `{reason}`",
            meta.detail()
        );
        assert_eq!(meta.reason, "malformed", "the metric's label");
        assert_eq!(meta.status, None);
    }
    for request in collector.requests() {
        assert_valid_payload_data(&request.body);
    }
}

#[tokio::test]
async fn shutdown_mid_stream_delivers_or_returns_every_event_in_order() {
    let (redis, collector) = setup(always(200)).await;
    collector.set_delay(Duration::from_millis(50));
    let events = numbered_events(3000);
    redis.rpush(LIST, &events);
    // Few small batches at a time, so most events are still held after the first 200
    // are delivered (at the defaults, 15 batches of 200 could all be on the wire at once).
    let settings = [
        ("worker.drain_timeout_ms", "200"),
        ("collector.buffer_size", "50"),
        ("collector.max_requests_in_flight", "2"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_delivered(200, 20).await;
    // From now on the collector hangs: the drain deadline has to cut requests short.
    collector.set_delay(Duration::from_secs(3));
    let summary = relay.stop().await;

    let delivered: HashSet<String> = collector.delivered_eids().into_iter().collect();
    let remaining = list_eids(&redis);
    assert!(
        summary.requeued > 0,
        "some events were held when the relay stopped"
    );
    for eid in &remaining {
        assert!(
            !delivered.contains(eid),
            "{eid} both delivered and requeued"
        );
    }
    let accounted: HashSet<&String> = delivered.iter().chain(&remaining).collect();
    assert_eq!(
        accounted.len(),
        3000,
        "every event delivered or back in the list"
    );
    let order: Vec<usize> = remaining.iter().map(|e| index_of(e)).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "original order kept at the head"
    );
    assert_eq!(leftover_keys(&redis), Vec::<String>::new());
}

#[tokio::test]
async fn shutdown_during_an_outage_returns_everything_in_order() {
    let (redis, collector) = setup(always(503)).await;
    let events = numbered_events(3000);
    redis.rpush(LIST, &events);
    let settings = [
        ("worker.drain_timeout_ms", "300"),
        ("redis.claim_batch_size", "100"),
        ("worker.max_claimed_events", "1000"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_requests(5, 10).await;
    let backlog = redis.llen(LIST);
    assert!(
        backlog >= 2000,
        "at most max_claimed_events leave Redis ({backlog} left)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the observation window
    // While the collector fails, at most one probe batch (buffer_size events) is claimed
    // at a time, and a failing probe stops the next one.
    let probed = backlog - redis.llen(LIST);
    assert!(
        probed <= snowplow_relay::config::DEFAULT_POST_BUFFER_SIZE,
        "no claims but one probe batch while the collector fails ({probed} claimed)"
    );
    let summary = relay.stop().await;
    assert_eq!(summary.delivered, 0);
    let remaining = list_eids(&redis);
    let expected: Vec<String> = (0..3000).map(|i| format!("ev-{i}")).collect();
    assert_eq!(remaining, expected, "all back, in the original order");
    assert_eq!(redis.lrange(LIST)[0], events[0].as_bytes(), "byte for byte");
}

#[tokio::test]
async fn a_second_signal_skips_the_drain() {
    let (redis, collector) = setup(always(200)).await;
    collector.set_delay(Duration::from_secs(20));
    redis.rpush(LIST, &numbered_events(50));
    let relay = Relay::with(&redis, &collector, &[("worker.drain_timeout_ms", "20000")]);
    // A request in flight: its events were claimed and counted (waiting only for the
    // list to shrink raced with the relay reading the claim's reply).
    collector.until_arrived(1, 10).await;
    let started = Instant::now();
    let summary = relay.stop_now().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(summary.requeued, summary.claimed);
    assert_eq!(redis.llen(LIST), 50);
}

#[tokio::test]
async fn collector_down_then_up_loses_nothing() {
    let redis = RedisServer::start();
    // A port reserved with nothing listening: connections are refused.
    let port = ClosedPort::new();
    let events = numbered_events(2000);
    redis.rpush(LIST, &events);
    let overrides = [
        ("redis.claim_batch_size", "100"),
        ("worker.max_claimed_events", "500"),
    ];
    let settings = config_for_urls(&redis.url(), &port.http_url(), &overrides);
    let relay = Relay::start(settings);
    // Wait until the relay claimed (and so tried to send), then watch for 300 ms
    // whether it wrongly keeps claiming.
    wait_until("first claim", 10, async || redis.llen(LIST) < 2000).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the observation window
    assert!(
        redis.llen(LIST) >= 2000 - 500,
        "the backlog stays in Redis while the collector is down (at most \
         worker.max_claimed_events claimed)"
    );
    let collector = Collector::start_on(port);
    collector.until_delivered(2000, 20).await;
    relay.stop().await;
    let unique: HashSet<String> = collector.delivered_eids().into_iter().collect();
    assert_eq!(unique.len(), 2000);
}

#[tokio::test]
async fn redis_down_at_start_is_waited_for() {
    // Redis appears later behind this address.
    let proxy = Proxy::start_unrouted().await;
    let collector = Collector::start().await;
    let settings = config_for_urls(&proxy.url(), &collector.url(), &[]);
    let relay = Relay::start(settings);
    wait_until("the relay tried Redis twice", 10, async || {
        proxy.connections() >= 2
    })
    .await;
    let redis = RedisServer::start();
    proxy.retarget(redis.port);
    redis.rpush(LIST, &numbered_events(10));
    collector.until_delivered(10, 40).await;
    relay.stop().await;
}

#[tokio::test]
async fn oversized_elements_go_to_the_dead_letter_list_from_redis() {
    let (redis, collector) = setup(always(200)).await;
    let events = numbered_events(10);
    let huge = format!(
        r#"{{"e":"pv","tv":"t","p":"pc","url":"{}"}}"#,
        "x".repeat(50_000)
    );
    redis.rpush(LIST, &events[..5]);
    redis.rpush(LIST, std::slice::from_ref(&huge));
    redis.rpush(LIST, &events[5..]);
    let relay = Relay::with(&redis, &collector, &[("events.max_element_bytes", "20000")]);
    let summary = stop_once_delivered_and_dead(relay, (&collector, &redis), (10, 1), 20).await;
    let dead = redis.lrange(DEAD);
    let (meta, original) = DeadLetter::decode(&dead[0]).unwrap();
    assert_eq!(original, huge.as_bytes());
    assert!(
        meta.detail().contains("larger than the 20000-byte limit"),
        "{}",
        meta.detail()
    );
    assert_eq!(meta.reason, "oversized", "the metric's label");
    let exact = DeadLetter {
        reason: meta.reason.clone(),
        detail: meta.detail.clone(),
        status: None,
        failed_at: meta.failed_at.clone(),
        relay: meta.relay.clone(),
    };
    assert_eq!(
        dead[0],
        exact.encode(huge.as_bytes()),
        "written by the script as the relay writes entries, byte for byte"
    );
    assert_eq!(
        summary.claimed, 10,
        "the oversized element never reached the relay"
    );
    assert_eq!(summary.dead_lettered, 1);
}

#[tokio::test]
async fn a_dead_relays_in_flight_events_are_recovered_at_start_up_in_order() {
    let (redis, collector) = setup(always(200)).await;
    let events = numbered_events(30);
    // A relay that died holding ev-0..ev-9: registered, in-flight list, no lease.
    let mut conn = redis.conn();
    redis::cmd("SADD")
        .arg("{snowplow}:instances")
        .arg("ghost")
        .query::<i64>(&mut conn)
        .unwrap();
    redis.rpush("{snowplow}:inflight:ghost", &events[..10]);
    redis.rpush(LIST, &events[10..]);
    // The same, but still alive (its lease runs): its events must stay where they are.
    redis::cmd("SADD")
        .arg("{snowplow}:instances")
        .arg("alive")
        .query::<i64>(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg("{snowplow}:lease:alive")
        .arg("1")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut conn)
        .unwrap();
    redis.rpush("{snowplow}:inflight:alive", &numbered_events(35)[30..]);

    let settings = [
        ("collector.buffer_size", "1"),
        ("collector.max_requests_in_flight", "1"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_delivered(30, 20).await;
    let summary = relay.stop().await;
    assert_eq!(summary.redelivered, 10);
    let order: Vec<usize> = collector
        .delivered_eids()
        .iter()
        .map(|e| index_of(e))
        .collect();
    assert_eq!(
        order,
        (0..30).collect::<Vec<_>>(),
        "recovered events went back to the head, in order"
    );
    assert_eq!(
        redis.llen("{snowplow}:inflight:alive"),
        5,
        "a live relay's events are left alone"
    );
    assert_eq!(redis.llen("{snowplow}:inflight:ghost"), 0);
}

#[tokio::test]
async fn a_relay_whose_lease_was_taken_registers_again_and_goes_on() {
    let (redis, collector) = setup(always(200)).await;
    let events = numbered_events(20);
    redis.rpush(LIST, &events[..10]);
    let relay = Relay::with(&redis, &collector, &[]);
    collector.until_delivered(10, 20).await;
    // As the recover script does when it finds this relay's lease expired (its in-flight
    // list is empty: everything was delivered).
    let mut conn = redis.conn();
    for key in redis.keys() {
        if key.starts_with("{snowplow}:") && key != DEAD {
            redis::cmd("DEL").arg(&key).query::<i64>(&mut conn).unwrap();
        }
    }
    redis.rpush(LIST, &events[10..]);
    collector.until_delivered(20, 20).await;
    relay.stop().await;
    let unique: HashSet<String> = collector.delivered_eids().into_iter().collect();
    assert_eq!(unique.len(), 20);
    assert_eq!(leftover_keys(&redis), Vec::<String>::new());
}
