//! The relay under a least-privilege Redis user, a user missing one permission, and a
//! Redis that is full: it must say what is wrong, back off, and never lose an event.

use std::time::{Duration, Instant};

use crate::support::*;

/// The least-privilege rule `docs/operations.md#redis-permissions` gives, for user
/// `relay` with password `pw`.
pub(crate) fn documented_acl_rule() -> Vec<String> {
    let operations = include_str!("../docs/operations.md");
    let line = operations
        .lines()
        .find(|l| l.starts_with("ACL SETUSER relay "))
        .expect("docs/operations.md gives the relay user's ACL rule");
    line.split_whitespace()
        .map(|word| word.replace(">PASSWORD", ">pw"))
        .collect()
}

pub(crate) fn acl(redis: &RedisServer, rule: &[String]) {
    let mut command = redis::cmd(&rule[0]);
    for word in &rule[1..] {
        command.arg(word);
    }
    let _: () = command.query(&mut redis.conn()).unwrap();
}

pub(crate) fn user_url(redis: &RedisServer) -> String {
    format!("redis://relay:pw@127.0.0.1:{}", redis.port)
}

#[tokio::test]
async fn the_documented_acl_rule_is_all_the_relay_and_its_tools_need() {
    let redis = RedisServer::start();
    acl(&redis, &documented_acl_rule());
    let collector = Collector::start_with(refusing(&["ev-7"], 400)).await;
    // A dead relay's events to recover, as the default user left them.
    redis.rpush(LIST, &numbered_events(300));
    let relay = RelayProcess::start(
        &user_url(&redis),
        &collector.url(),
        &[("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "1")],
    );
    collector.until_exactly_delivered(299, 30).await;
    assert_eq!(redis.llen(DEAD), 1);
    // Its connections carry its name (HELLO 2 SETNAME, which this user may run).
    let name = format!("name=snowplow-relay:{}:{} ", hostname(), relay.pid());
    let clients = match redis.cmd(&["CLIENT", "LIST"]) {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("CLIENT LIST: {other:?}"),
    };
    let named = clients.lines().filter(|l| l.contains(&name)).count();
    assert!(
        named >= 2,
        "two connections or more named {name}:\n{clients}"
    );
    // Held events go back at shutdown, as that user.
    collector.respond_with(always(503));
    redis.rpush(LIST, &numbered_events(320)[300..]);
    wait_until("the relay holds the new ones", 10, async || {
        redis.llen(LIST) < 20
    })
    .await;
    let log = relay.stop_cleanly().await;
    assert!(
        !log.lines()
            .any(|line| line.contains("NOPERM") && !line.contains("cannot check")),
        "{log}"
    );
    assert_eq!(redis.llen(LIST), 20, "{log}");
    // The optional checks it could not make without +config|get and +info, said once
    // each at start-up (582e716 said nothing).
    for check in [
        "cannot check the eviction policy",
        "cannot check the reply size limit",
        "cannot check whether Redis is out of memory",
    ] {
        assert_eq!(log.matches(check).count(), 1, "{check}:\n{log}");
    }
    // The dead-letter tools, as that user.
    let tool = |args: &[&str]| {
        let out = run_bin(
            &[&["--redis-url", &user_url(&redis), "dead-letter"], args].concat(),
            &[],
        );
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(tool(&["count"]).trim(), "1");
    assert!(tool(&["list"]).contains("ev-7"));
    assert!(tool(&["list", "--newest", "--reason", "rejected"]).contains("ev-7"));
    assert_eq!(tool(&["count", "--status", "400"]).trim(), "1");
    assert_eq!(
        tool(&["drop", "--dry-run", "--reason", "rejected"]).trim(),
        "1"
    );
    let exported = tool(&["export"]);
    assert_eq!(tool(&["drop", "--relay", "no-such-host"]).trim(), "0");
    assert_eq!(tool(&["drop"]).trim(), "1");
    let file = TempFile::new("dead.jsonl", &exported);
    assert_eq!(tool(&["import", &file.path]).trim(), "1");
    assert_eq!(tool(&["replay", "--reason", "rejected"]).trim(), "1");
    assert_eq!(redis.llen(LIST), 21);
}

#[tokio::test]
async fn a_user_missing_a_permission_stops_start_up_naming_it_and_loses_nothing() {
    let redis = RedisServer::start();
    redis.rpush(LIST, &numbered_events(100));
    let collector = Collector::start().await;
    // Everything but RPUSH: the claim would pop the events and fail to keep them.
    redis.cmd(&[
        "ACL", "SETUSER", "relay", "on", ">pw", "~*", "&*", "+@all", "-rpush",
    ]);
    let relay = RelayProcess::start(&user_url(&redis), &collector.url(), &[]);
    let (status, log) = relay.finish(Duration::from_secs(20)).await.parts();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("RPUSH {snowplow}:inflight:") && log.contains("RPUSH {snowplow}:dead"),
        "{log}"
    );
    assert!(
        log.contains("docs/operations.md#redis-permissions"),
        "{log}"
    );
    assert_eq!(redis.llen(LIST), 100, "nothing taken");
    assert_eq!(redis.keys(), vec![LIST.to_owned()], "nothing written");
    assert!(collector.requests().is_empty());

    // Without EVALSHA nothing can run at all: said just as plainly.
    redis.cmd(&[
        "ACL", "SETUSER", "relay", "reset", "on", ">pw", "~*", "+@all", "-evalsha",
    ]);
    let relay = RelayProcess::start(&user_url(&redis), &collector.url(), &[]);
    let (status, log) = relay.finish(Duration::from_secs(20)).await.parts();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.to_ascii_lowercase().contains("evalsha"), "{log}");
}

#[tokio::test]
async fn a_permission_revoked_while_running_is_named_and_backs_off() {
    let redis = RedisServer::start();
    acl(&redis, &documented_acl_rule());
    let collector = Collector::start().await;
    let relay = RelayProcess::start(&user_url(&redis), &collector.url(), &[]);
    redis.rpush(LIST, &numbered_events(50));
    collector.until_exactly_delivered(50, 20).await;
    // The list runs dry, so the relay waits with BLMOVE; take that away. (The wait in
    // progress ends within 5 s; the next one is refused.)
    redis.cmd(&["ACL", "SETUSER", "relay", "-blmove"]);
    let refused = |log: &str| {
        log.lines()
            .filter(|l| l.contains("cannot wait on the Redis list"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_until("the refusal is logged", 10, async || {
        !refused(&relay.log()).is_empty()
    })
    .await;
    let first = refused(&relay.log()).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warnings = refused(&relay.log());
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("Redis refused a command") && w.to_lowercase().contains("blmove")),
        "said as a permission problem, naming the command: {warnings:?}"
    );
    // Backoff: 0.1, 0.2, 0.4 … 5 s. Before, each successful claim reset it: 13 lines a
    // second.
    let more = warnings.len() - first;
    assert!(more <= 7, "{more} more warnings in 5 s: {warnings:?}");
    // A claim as that user goes on working, and so do new events.
    redis.rpush(LIST, &numbered_events(60)[50..]);
    collector.until_exactly_delivered(60, 20).await;
    relay.stop_cleanly().await;
}

#[tokio::test]
async fn a_full_redis_is_drained_and_said_to_be_full() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let total = 20_000;
    redis.rpush(LIST, &numbered_events(total));
    let used = redis.info_number("memory", "used_memory");
    let limit = (used - 2 * 1024 * 1024).to_string();
    redis.cmd(&["CONFIG", "SET", "maxmemory", &limit]);
    let producer = redis::cmd("RPUSH")
        .arg(LIST)
        .arg("x")
        .query::<i64>(&mut redis.conn());
    assert!(
        producer.unwrap_err().to_string().contains("OOM"),
        "Redis is full: producers are refused"
    );
    let collector = Collector::start().await;
    let relay = RelayProcess::between(&redis, &collector, &[]);
    collector.until_delivered(total, 60).await;
    let log = relay.stop_cleanly().await;
    all_delivered(&collector, &redis, total);
    assert!(log.contains("Redis is out of memory"), "{log}");
    report(("full Redis", total), (&collector, &redis), None);
    assert!(!log.contains("cannot reach Redis"), "{log}");
}

#[tokio::test]
async fn the_lease_survives_a_storm_of_killed_connections() {
    let (redis, collector) = setup(always(200)).await;
    let relay = RelayProcess::between(
        &redis,
        &collector,
        &[("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1500")],
    );
    wait_until("registered", 10, async || instances(&redis).len() == 1).await;
    let instance = instances(&redis)[0].clone();
    // Kill every other client every 150 ms for 6 s (four lease lifetimes).
    let storm = Instant::now();
    let mut conn = redis.conn();
    while storm.elapsed() < Duration::from_secs(6) {
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut conn);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    redis.rpush(LIST, &numbered_events(100));
    collector.until_exactly_delivered(100, 20).await;
    let log = relay.stop_cleanly().await;
    assert!(!log.contains("lease expired"), "{log}");
    assert!(!log.contains("registering again"), "{log}");
    assert!(log.contains(&instance), "the same instance throughout");
}

#[tokio::test]
async fn a_lone_relay_keeps_its_own_claims_through_a_redis_stall_longer_than_its_lease() {
    let (redis, collector) = setup(always(200)).await;
    collector.set_delay(Duration::from_millis(300));
    let relay = RelayProcess::between(
        &redis,
        &collector,
        &[("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1500")],
    );
    let total = 2_000;
    redis.rpush(LIST, &numbered_events(total));
    wait_until("some delivered", 20, async || {
        !collector.delivered().is_empty()
    })
    .await;
    redis.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await; // two lease lifetimes
    redis.signal(libc::SIGCONT);
    collector.until_distinct(total, 60).await;
    let log = relay.stop_cleanly().await;
    let delivered = collector.delivered_eids().len();
    assert!(
        delivered - total <= 50,
        "{} duplicates: it recovered its own claims\n{log}",
        delivered - total
    );
    assert!(!log.contains("relays whose lease expired"), "{log}");
}

#[tokio::test]
async fn clean_stops_log_no_error_even_when_the_heartbeat_is_due() {
    let (redis, collector) = setup(always(200)).await;
    for round in 0..8 {
        let settings = [
            ("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1000"),
            ("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "0"),
        ];
        let relay = RelayProcess::between(&redis, &collector, &settings);
        wait_until("registered", 10, async || instances(&redis).len() == 1).await;
        // Redis holds the release back while a heartbeat (every 333 ms) falls due and
        // queues up behind it.
        redis.signal(libc::SIGSTOP);
        relay.terminate();
        tokio::time::sleep(Duration::from_millis(250 + 40 * round)).await;
        redis.signal(libc::SIGCONT);
        let (status, log) = relay.finish(Duration::from_secs(20)).await.parts();
        assert_eq!(status.code(), Some(0), "round {round}: {log}");
        assert!(!log.contains("ERROR"), "round {round}: {log}");
    }
}

#[tokio::test]
async fn every_log_record_is_one_line_whatever_a_key_holds() {
    let (redis, collector) = setup(always(200)).await;
    // A list name with a newline, an escape sequence and 100 KB of text.
    let key = format!("evil\n\u{1b}[31mFAKE ERROR line{}", "k".repeat(100_000));
    let relay = RelayProcess::between(
        &redis,
        &collector,
        &[("SNOWPLOW_RELAY_REDIS__KEY", key.as_str())],
    );
    wait_until("registered", 10, async || {
        redis.keys().iter().any(|k| k.ends_with(":instances"))
    })
    .await;
    relay.terminate();
    let (status, log) = relay.finish(Duration::from_secs(20)).await.parts();
    assert_eq!(status.code(), Some(0), "{}", &log[..log.len().min(2000)]);
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.contains('Z'),
            "each line is a record of its own: {}",
            &line[..line.len().min(200)]
        );
        assert!(!line.contains('\u{1b}'), "no raw escape sequence");
        assert!(line.len() < 40_000, "a line of {} bytes", line.len());
    }
}
