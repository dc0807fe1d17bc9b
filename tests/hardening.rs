//! The relay against hostile input, odd settings, odd collectors and Redis rollbacks
//! (issue 7): real redis-server, real HTTP collector, the relay in-process. Each test
//! names the failure it rules out.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use snowplow_relay_tracker::protocol::{Element, Method, ParseOptions};

use snowplow_relay::queue::{Queue, QueueError};

use crate::support::*;

/// `{"e":"pv",…,"eid":"<eid>"}` with `url` set to the raw JSON text `url_json`.
fn element(eid: &str, url_json: &str) -> String {
    format!(r#"{{"e":"pv","p":"pc","tv":"t","eid":"{eid}","url":{url_json}}}"#)
}

#[tokio::test]
async fn a_lone_surrogate_in_get_mode_is_dead_lettered_and_the_rest_keeps_flowing() {
    // Before: the GET encoder panicked, the event was never resolved, and once
    // max_claimed_events were claimed the relay delivered nothing more.
    let (redis, collector) = setup(always(200)).await;
    let mut events = numbered_events(600);
    events[10] = element("bad-surrogate", r#""http://x/\ud800""#);
    redis.rpush(LIST, &events);
    let settings = [
        ("collector.method", "get"),
        ("redis.claim_batch_size", "50"),
        ("worker.max_claimed_events", "100"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_delivered(599, 30).await;
    relay.stop().await;
    let dead = dead_letters(&redis);
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].0.detail().contains("surrogate"),
        "{}",
        dead[0].0.detail()
    );
    assert_eq!(dead[0].1, events[10], "the original, byte for byte");
    assert!(!eid_counts(&collector).contains_key("bad-surrogate"));
}

#[tokio::test]
async fn redirects_are_not_followed_and_nothing_counts_as_delivered_meanwhile() {
    // Before: a 301 to a POST was followed as a GET without a body; its 200 made the
    // batch count as delivered and the events were lost.
    let redis = RedisServer::start();
    let collector =
        Collector::start_with(Box::new(|r| if r.method == "POST" { 301 } else { 200 })).await;
    collector.set_location(Some(format!("{}/moved?uid=secret", collector.url())));
    redis.rpush(LIST, &numbered_events(20));
    let relay = Relay::with(&redis, &collector, &[]);
    collector.until_requests(4, 10).await;
    assert!(
        collector.requests().iter().all(|r| r.method == "POST"),
        "the redirect was followed"
    );
    collector.set_location(None);
    collector.respond_with(always(200));
    collector.until_delivered(20, 10).await;
    let summary = relay.stop().await;
    assert_eq!(summary.delivered, 20);
    assert_eq!(collector.delivered().len(), 20, "each once");
    assert_eq!(redis.llen(DEAD), 0);
}

#[tokio::test]
async fn a_collectors_cookie_bounce_is_followed_once_for_get_and_post() {
    // Before: the collector's 302 to the same URL plus `n3pc=true` was never followed;
    // the batch was retried forever and claiming stalled.
    for method in ["get", "post"] {
        let (redis, collector) = setup(always(200)).await;
        collector.bounce_cookies("n3pc");
        redis.rpush(LIST, &numbered_events(30));
        let relay = Relay::with(&redis, &collector, &[("collector.method", method)]);
        collector.until_exactly_delivered(30, 20).await;
        let summary = relay.stop().await;
        assert_eq!(summary.delivered, 30, "{method}");
        assert_eq!(redis.llen(DEAD), 0, "{method}");
        let requests = collector.requests();
        let bounced = requests.iter().filter(|r| r.status == 302).count();
        let accepted: Vec<_> = requests.iter().filter(|r| r.status == 200).collect();
        assert_eq!(bounced, accepted.len(), "{method}: one bounce per request");
        assert!(
            accepted
                .iter()
                .all(|r| r.query.as_deref().unwrap_or("").ends_with("n3pc=true")),
            "{method}"
        );
        if method == "post" {
            assert!(
                accepted
                    .iter()
                    .all(|r| r.method == "POST" && !r.body.is_empty())
            );
        }
    }
}

#[tokio::test]
async fn a_413_splits_the_batch_down_to_the_one_event_that_cannot_pass() {
    // Before: a 413 was retried forever and the acknowledgement window stopped there.
    let redis = RedisServer::start();
    let collector = Collector::start_with(Box::new(|r| {
        let events = r.events();
        let poisoned = events.iter().any(|e| e["eid"] == "ev-13");
        if events.len() > 3 || poisoned {
            413
        } else {
            200
        }
    }))
    .await;
    let events = numbered_events(100);
    redis.rpush(LIST, &events);
    let relay = Relay::with(&redis, &collector, &[]);
    collector.until_delivered(99, 20).await;
    wait_until("one dead letter", 5, async || redis.llen(DEAD) == 1).await;
    relay.stop().await;
    let dead = dead_letters(&redis);
    assert_eq!(dead[0].0.status, Some(413));
    assert_eq!(dead[0].1, events[13]);
    let counts = eid_counts(&collector);
    assert_eq!(counts.len(), 99);
    assert!(counts.values().all(|&n| n == 1), "no duplicates");
}

#[tokio::test]
async fn a_batch_failing_while_others_succeed_is_split_then_dead_lettered() {
    // Before: one batch answered 500 forever stalled every acknowledgement behind it.
    let (redis, collector) = setup(refusing(&["ev-7"], 500)).await;
    let events = numbered_events(300);
    redis.rpush(LIST, &events);
    let relay = Relay::with(
        &redis,
        &collector,
        &[("collector.isolated_failure_limit", "2")],
    );
    // Other traffic keeps flowing (as it does in production): that is what tells a
    // failing batch from a failing collector. A lone failing batch with no other traffic
    // is retried like an outage.
    let mut pushed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while redis.llen(DEAD) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "ev-7 never dead-lettered"
        );
        let more: Vec<String> = (pushed..pushed + 10)
            .map(|i| with_eid(&events[i % 300], &format!("more-{i}")))
            .collect();
        redis.rpush(LIST, &more);
        pushed += 10;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("every other event delivered", 10, async || {
        eid_counts(&collector).len() == 299 + pushed
    })
    .await;
    relay.stop().await;
    let dead = dead_letters(&redis);
    assert_eq!(dead[0].0.status, Some(500));
    assert!(
        dead[0].0.detail().contains("attempts"),
        "{}",
        dead[0].0.detail()
    );
    assert_eq!(dead[0].1, events[7]);
    assert_eq!(dead.len(), 1);
}

#[tokio::test]
async fn a_collector_failing_everything_is_an_outage_nothing_is_dead_lettered() {
    let (redis, collector) = setup_holding(always(500), 500).await;
    let relay = Relay::with(
        &redis,
        &collector,
        &[("collector.isolated_failure_limit", "1")],
    );
    collector.until_requests(60, 20).await;
    let summary = relay.stop().await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(redis.llen(DEAD), 0);
    assert_eq!(redis.llen(LIST), 500, "everything back in the list");
}

#[tokio::test]
async fn a_partial_batch_is_sent_by_the_flush_timer_when_the_list_never_runs_dry() {
    let (redis, collector) = setup_holding(always(200), 1000).await;
    let timer = [("collector.flush_interval_ms", "50")];
    let settings = [&BATCHES_NEVER_FILL[..], &timer].concat();
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_delivered(1000, 30).await;
    relay.stop().await;
    let largest = collector.requests().iter().map(|r| r.events().len()).max();
    assert!(largest < Some(500), "batches were partial: {largest:?}");
    assert_eq!(eid_counts(&collector).len(), 1000);
}

#[tokio::test]
async fn get_urls_over_the_limit_and_unknown_fields_in_get_mode() {
    let (redis, collector) = setup(always(200)).await;
    let long = format!("\"http://x/{}\"", "é".repeat(600)); // 1.2 KB raw, 3.6 KB encoded
    let events = vec![
        element("too-long", &long),
        r#"{"e":"pv","p":"pc","tv":"t","eid":"custom","my_field":"kept"}"#.to_owned(),
    ];
    redis.rpush(LIST, &events);
    let settings = [
        ("collector.method", "get"),
        ("collector.byte_limit", "2000"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    stop_once_delivered_and_dead(relay, (&collector, &redis), (1, 1), 10).await;
    assert!(
        dead_letters(&redis)[0]
            .0
            .detail()
            .contains("GET request URL")
    );
    assert_eq!(
        collector.delivered()[0]["my_field"],
        "kept",
        "GET passes unknown names"
    );
}

#[tokio::test]
async fn endpoint_and_port_and_a_url_path_prefix_reach_the_collector() {
    let (redis, collector) = setup_holding(always(200), 5).await;
    let port = collector.addr.port().to_string();
    let with_endpoint = {
        let mut overrides = snowplow_relay::config::Overrides::default();
        overrides.set("redis.url", Some(redis.url()));
        overrides.set("collector.endpoint", Some("127.0.0.1"));
        overrides.set("collector.protocol", Some("http"));
        overrides.set("collector.port", Some(port));
        snowplow_relay::config::Settings::load(None, &overrides, Some(&Default::default())).unwrap()
    };
    let relay = Relay::start(with_endpoint);
    collector.until_exactly_delivered(5, 10).await;
    relay.stop().await;

    redis.rpush(LIST, &numbered_events(5));
    let prefixed = format!("{}/prefix/", collector.url());
    let relay = Relay::start(config_for_urls(&redis.url(), &prefixed, &[]));
    collector.until_exactly_delivered(10, 10).await;
    relay.stop().await;
    let paths: HashSet<String> = collector
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        HashSet::from([
            "/com.snowplowanalytics.snowplow/tp2".to_owned(),
            "/prefix/com.snowplowanalytics.snowplow/tp2".to_owned()
        ])
    );
}

#[tokio::test]
async fn timeouts_408_and_429_are_retried_until_accepted() {
    let redis = RedisServer::start();
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answers.clone();
    let collector = Collector::start_with(Box::new(move |_| {
        match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => 408,
            1 => 429,
            _ => 200,
        }
    }))
    .await;
    // The first answers also come too late for the request timeout, even as it grows
    // (to 8 times 200 ms at most).
    collector.set_delay(Duration::from_millis(2_000));
    redis.rpush(LIST, &numbered_events(30));
    let relay = Relay::with(
        &redis,
        &collector,
        &[("collector.request_timeout_ms", "200")],
    );
    // Answers come after the timeout: the collector never finishes a request (hyper
    // drops it with the connection), so there is no state to wait on but time.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(collector.requests().len(), 0, "no answer arrived in time");
    assert_eq!(
        redis.llen(LIST) + redis.llen(DEAD),
        0,
        "all claimed, none dead-lettered"
    );
    collector.set_delay(Duration::ZERO);
    wait_until("every event delivered", 10, async || {
        eid_counts(&collector).len() == 30
    })
    .await;
    let summary = relay.stop().await;
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(redis.llen(LIST), 0);
}

#[tokio::test]
async fn a_graceful_stop_with_everything_healthy_causes_no_duplicates() {
    // Before: resolutions received during the drain were not acknowledged before the
    // release, so delivered events went back to the list and were sent again.
    let (redis, collector) = setup(always(200)).await;
    collector.set_delay(Duration::from_millis(30));
    redis.rpush(LIST, &numbered_events(3000));
    let relay = Relay::with(&redis, &collector, &[]);
    collector.until_delivered(300, 20).await;
    relay.stop().await;
    let relay = Relay::with(&redis, &collector, &[]);
    wait_until("the rest delivered", 30, async || {
        eid_counts(&collector).len() == 3000
    })
    .await;
    relay.stop().await;
    let counts = eid_counts(&collector);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
}

/// A healthy but slow collector (1.5 s an answer, under the 5 s timeout) and a 2 s
/// drain: the requests in flight at the stop finish; no new one starts that the deadline
/// would cut (the collector would take it in and the relay return its events to the
/// list: a copy each). Every event that reached the collector is acknowledged.
#[tokio::test]
async fn a_graceful_stop_with_a_slow_collector_starts_no_request_it_would_cut() {
    let (redis, collector) = setup(always(200)).await;
    collector.set_delay(Duration::from_millis(1_500));
    let total = 3_000;
    redis.rpush(LIST, &numbered_events(total));
    let relay = Relay::with(&redis, &collector, &[("worker.drain_timeout_ms", "2000")]);
    // One wave answered (the relay has seen how long answers take), the next in flight.
    collector.until_delivered(50, 20).await;
    collector.until_arrived(2, 20).await;
    relay.stop().await;
    let arrived = collector.arrived_eids();
    let listed: std::collections::HashSet<String> = redis
        .lrange(LIST)
        .iter()
        .filter_map(|e| {
            let event: serde_json::Value = serde_json::from_slice(e).ok()?;
            Some(event["eid"].as_str()?.to_owned())
        })
        .collect();
    let both: Vec<&String> = arrived.iter().filter(|eid| listed.contains(*eid)).collect();
    assert!(
        both.is_empty(),
        "{} events reached the collector and went back to the list too",
        both.len()
    );
    assert_eq!(
        arrived.len() + listed.len(),
        total,
        "every event delivered or listed"
    );
}

/// A list full of elements over the element limit: each claim reads at most its byte
/// budget of them (each counts, dead-lettered or not) plus one, so Redis's memory (its
/// peak RSS, the Lua heap included) grows by less than twice the claim budget plus one
/// element, and no script runs long. (On 582e716 oversized elements counted as 0 bytes:
/// one claim read every one of them into the script.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_oversized_elements_keeps_claims_within_their_budget() {
    let (redis, collector) = setup(always(200)).await;
    let (count, size, budget) = (400, 250_000, 1024 * 1024);
    let padding = "x".repeat(size);
    let events: Vec<String> = (0..count)
        .map(|i| format!(r#"{{"e":"pv","p":"pc","tv":"t","eid":"big-{i}","url":"{padding}"}}"#))
        .collect();
    for chunk in events.chunks(20) {
        redis.rpush(LIST, chunk);
    }
    redis.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "200000"]);
    redis.cmd(&["SLOWLOG", "RESET"]);
    // The peak of the server's resident memory from now on (clear_refs 5 resets it).
    std::fs::write(format!("/proc/{}/clear_refs", redis.pid()), "5").unwrap();
    let before = peak_rss(redis.pid()).unwrap();
    let budget_text = budget.to_string();
    let relay = Relay::with(
        &redis,
        &collector,
        &[
            ("events.max_element_bytes", "102400"),
            ("redis.claim_max_bytes", &budget_text),
        ],
    );
    wait_until("every element dead-lettered", 60, async || {
        redis.llen(DEAD) == count
    })
    .await;
    relay.stop().await;
    let growth = peak_rss(redis.pid()).unwrap().saturating_sub(before);
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .query(&mut redis.conn())
        .unwrap();
    eprintln!(
        "{count} elements of {size} bytes over a 100 KB limit, claims of {budget} bytes: \
         Redis's peak RSS grew by {:.1} MB; {} script runs over 200 ms",
        growth as f64 / 1e6,
        slow.len()
    );
    assert!(
        growth < (2 * budget + size) as u64,
        "Redis grew by {growth} bytes"
    );
    assert!(slow.is_empty(), "scripts over 200 ms: {slow:?}");
    assert!(collector.requests().is_empty());
}

/// A queue handle of its own, registered, on the default list.
async fn queue(redis: &RedisServer) -> Queue {
    let queue = connect_queue(&redis.url()).await;
    queue.register().await.unwrap();
    queue
}

#[tokio::test]
async fn claims_are_bounded_in_bytes_and_a_lost_reply_is_resent_not_repeated() {
    let redis = RedisServer::start();
    let big: Vec<String> = (0..20)
        .map(|i| element(&format!("big-{i}"), &format!("\"{}\"", "x".repeat(100_000))))
        .collect();
    redis.rpush(LIST, &big);
    let queue = queue(&redis).await;
    let inflight = queue.keys().inflight(queue.instance());
    // 350 KB budget, elements up to 110 KB: at most 3 per claim, whatever was asked.
    let claim = queue.claim(0, 500, 110_000, 350_000).await.unwrap();
    assert_eq!(claim.elements.len(), 3);
    assert!(!claim.ran_dry);
    // The reply was "lost": the same claim again returns the same events, takes none.
    let again = queue.claim(0, 500, 110_000, 350_000).await.unwrap();
    assert_eq!(again.elements, claim.elements);
    assert_eq!(redis.llen(LIST), 17);
    assert_eq!(redis.llen(&inflight), 3);
    // The next position claims new ones.
    let next = queue.claim(3, 500, 110_000, 350_000).await.unwrap();
    assert_eq!(next.elements.len(), 3);
    assert_ne!(next.elements[0], claim.elements[0]);
}

#[tokio::test]
async fn a_rolled_back_in_flight_list_is_detected_and_nothing_is_lost() {
    let redis = RedisServer::start();
    redis.rpush(LIST, &numbered_events(30));
    let queue = queue(&redis).await;
    let inflight = queue.keys().inflight(queue.instance());
    let meta = queue.keys().meta(queue.instance());
    let claimed = queue.claim(0, 10, 100_000, 4_000_000).await.unwrap();
    assert_eq!(claimed.elements.len(), 10);
    // Roll the last claim back by half, as a lost write would: the in-flight list and
    // the counter shrink, the events are back at the head of the list.
    let mut conn = redis.conn();
    let tail: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&inflight)
        .arg(5)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("LTRIM")
        .arg(&inflight)
        .arg(0)
        .arg(4)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("claimed")
        .arg(5)
        .query(&mut conn)
        .unwrap();
    for item in tail.iter().rev() {
        let _: () = redis::cmd("LPUSH")
            .arg(LIST)
            .arg(item)
            .query(&mut conn)
            .unwrap();
    }
    // Acknowledging all 10 (as the relay believes it may) must not trim anything.
    let ack = queue.ack(0, 10, &[]).await;
    assert!(matches!(ack, Err(QueueError::StateMismatch(_))), "{ack:?}");
    assert_eq!(redis.llen(&inflight), 5, "nothing trimmed");
    // Neither may a claim at the relay's position.
    let claim = queue.claim(10, 10, 100_000, 4_000_000).await;
    assert!(
        matches!(claim, Err(QueueError::StateMismatch(_))),
        "{claim:?}"
    );
    // The relay gives everything back and nothing is missing.
    assert_eq!(queue.abandon().await.unwrap(), 5);
    let listed: HashSet<Vec<u8>> = redis.lrange(LIST).into_iter().collect();
    assert_eq!(listed.len(), 30, "all 30 events are in the list again");

    // An acknowledgement that was itself rolled back is detected too.
    let queue = self::queue(&redis).await;
    let meta = queue.keys().meta(queue.instance());
    queue.claim(0, 10, 100_000, 4_000_000).await.unwrap();
    queue.ack(0, 4, &[]).await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("acked")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("claimed")
        .arg(6)
        .query(&mut conn)
        .unwrap();
    let ack = queue.ack(4, 8, &[]).await;
    assert!(matches!(ack, Err(QueueError::StateMismatch(_))), "{ack:?}");
}

#[tokio::test]
async fn the_relay_recovers_from_a_rollback_between_claim_and_ack_without_loss() {
    // Before: after a rolled-back claim, the next claim's first events landed at
    // positions the relay had already seen, were never sent, and were trimmed by the
    // next acknowledgement: lost.
    let total = 400;
    let (redis, collector) = setup_holding(always(200), total).await;
    collector.set_delay(Duration::from_millis(300));
    let settings = [
        ("redis.claim_batch_size", "50"),
        ("worker.max_claimed_events", "100"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    wait_until("a claim in flight", 10, async || {
        instances(&redis).len() == 1 && redis.llen(LIST) < total
    })
    .await;
    let instance = instances(&redis).remove(0);
    let inflight = format!("{{snowplow}}:inflight:{instance}");
    let meta = format!("{{snowplow}}:instance:{instance}");
    let mut conn = redis.conn();
    // Take back the last 5 claimed events as a rollback would (one script, atomic).
    let _: () = redis::cmd("EVAL")
        .arg(
            "local items = redis.call('LRANGE', KEYS[1], -5, -1) \
             redis.call('LTRIM', KEYS[1], 0, -6) \
             redis.call('HINCRBY', KEYS[2], 'claimed', -#items) \
             for i = #items, 1, -1 do redis.call('LPUSH', KEYS[3], items[i]) end",
        )
        .arg(3)
        .arg(&inflight)
        .arg(&meta)
        .arg(LIST)
        .query(&mut conn)
        .unwrap();
    wait_until("every event delivered", 60, async || {
        eid_counts(&collector).len() == total
    })
    .await;
    relay.stop().await;
    assert_eq!(redis.llen(LIST), 0);
    assert_eq!(redis.llen(DEAD), 0);
}

#[tokio::test]
async fn seventy_five_thousand_fields_and_a_huge_name_are_handled_in_linear_time() {
    // The parse is linear in the number of fields (duplicates checked among them too):
    // eight times the fields take about eight times as long (up to about twelve where
    // the larger set no longer fits the caches), never sixty-four. The best of five runs
    // of each size is compared, the sizes taking turns, each timed by this thread's own
    // CPU time: the suite runs other tests beside this one, and wall-clock time counted
    // the time this thread waited for a core (4x the fields once measured 10.6x by the
    // wall clock in CI, with 3 tests on 2 cores).
    let element = |fields: usize| -> Bytes {
        let many: String = (0..fields).map(|i| format!(",\"f{i}\":\"v\"")).collect();
        Bytes::from(format!(
            r#"{{"e":"pv","p":"pc","tv":"t","eid":"wide"{many}}}"#
        ))
    };
    let options = ParseOptions::for_method(Method::Post, true);
    let timed = |element: &Bytes| {
        let started = thread_cpu_time();
        Element::parse(element.clone(), options).expect("a valid element");
        thread_cpu_time() - started
    };
    let (once, eight_times) = (element(37_500), element(300_000));
    let (mut best_once, mut best_eight) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        best_once = best_once.min(timed(&once));
        best_eight = best_eight.min(timed(&eight_times));
    }
    let ratio = best_eight.as_secs_f64() / best_once.as_secs_f64();
    assert!(ratio < 24.0, "8x the fields took {ratio:.1}x as long");
    let once = element(75_000);

    // End to end: the wide event is delivered; a duplicate 100 KB name is dead-lettered
    // with a short reason.
    let (redis, collector) = setup(always(200)).await;
    let wide = String::from_utf8(once.to_vec()).unwrap();
    let name = "n".repeat(100_000);
    let long_name = format!(r#"{{"e":"pv","p":"pc","tv":"t","{name}":"a","{name}":"b"}}"#);
    redis.rpush(LIST, &[wide, long_name]);
    let settings = [
        ("events.allow_unknown_fields", "true"),
        ("collector.byte_limit", "1048576"),
    ];
    let relay = Relay::with(&redis, &collector, &settings);
    collector.until_exactly_delivered(1, 30).await;
    let summary = relay.stop().await;
    assert_eq!(summary.dead_lettered, 1, "the duplicate 100 KB name");
    let dead = dead_letters(&redis);
    assert!(
        dead[0].0.detail().contains("appears twice"),
        "{}",
        dead[0].0.detail()
    );
    assert!(
        dead[0].0.detail().len() < 200,
        "reason of {} bytes",
        dead[0].0.detail().len()
    );
}

/// The CPU time this thread has used (not the time it waited for a core).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
