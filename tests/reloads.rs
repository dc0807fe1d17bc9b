//! Every setting a reload applies, reloaded into a running relay (a process, its file
//! rewritten, SIGHUP) and observed by its effect on what the relay does, not by its log
//! line: the settings applied at once (`Reload::Now` in `src/config/keys.rs`: the retry
//! backoff, `park_after_failures`, `isolated_failure_limit`; `log.level` in
//! `process::sighup_reloads_the_log_level_and_retry_settings_and_names_what_needs_a_restart`)
//! and the Redis credentials (`Reload::Credentials`: user, password and TLS files here,
//! the password file in `process::a_reload_rotates_the_redis_password_the_file_names`).
//! The log line only tells the test when the reload has happened.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// A relay process reading its settings from a file the test rewrites.
struct Reloadable {
    _dir: tempfile::TempDir,
    file: PathBuf,
    child: RelayProcess,
}

impl Reloadable {
    /// A relay started with `toml`.
    fn start(toml: &str) -> Reloadable {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, toml).unwrap();
        let mut command = bin_command();
        command.args(["--config", file.to_str().unwrap()]);
        Reloadable {
            _dir: dir,
            child: RelayProcess::spawn(command),
            file,
        }
    }

    /// Rewrites the file with `toml`, sends SIGHUP and waits for the reload's line;
    /// returns it (what was applied, what needs a restart).
    async fn reload(&self, toml: &str) -> String {
        std::fs::write(&self.file, toml).unwrap();
        let n = self.child.count_log_lines("configuration reloaded");
        self.child.signal(libc::SIGHUP);
        self.child
            .nth_log_line("configuration reloaded", n, Duration::from_secs(10))
            .await
    }
}

/// A configuration file: the Redis and collector URLs, then each section's lines.
fn toml(redis: &str, collector: &str, redis_lines: &str, collector_lines: &str) -> String {
    format!(
        "[redis]\nurl = \"{redis}\"\n{redis_lines}\n[collector]\nurl = \"{collector}\"\n{collector_lines}\n"
    )
}

/// Good events pushed onto the list every 50 ms until aborted: the collector accepting
/// other requests is what tells an event failing alone from an outage.
fn trickle(redis: &RedisServer) -> tokio::task::JoinHandle<()> {
    let url = redis.url();
    tokio::spawn(async move {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for round in 0.. {
            let events: Vec<String> = (0..5)
                .map(|i| with_eid(&numbered_events(1)[0], &format!("tr-{round}-{i}")))
                .collect();
            let _: i64 = redis::cmd("RPUSH")
                .arg(LIST)
                .arg(&events)
                .query_async(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// How many requests carrying `eid` have reached the collector.
fn attempts_of(collector: &Collector, eid: &str) -> usize {
    collector
        .arrived_eids()
        .iter()
        .filter(|e| *e == eid)
        .count()
}

/// `collector.isolated_failure_limit` reloaded from 1000 to 1: a parked event failing
/// alone is dead-lettered at the new limit. (On 582e716 the retrier kept the limit it
/// started with: nothing was dead-lettered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_isolated_failure_limit_dead_letters_at_the_new_limit() {
    let (redis, collector) = setup(refusing(&["bad-1"], 500)).await;
    let file = |limit: u32| {
        toml(
            &redis.url(),
            &collector.url(),
            "",
            &format!(
                "buffer_size = 1\npark_after_failures = 1\nisolated_failure_limit = {limit}\n\
                 retry_initial_backoff_ms = 20\nretry_max_backoff_ms = 100\n"
            ),
        )
    };
    let relay = Reloadable::start(&file(1000));
    let trickle = trickle(&redis);
    redis.rpush(LIST, &[with_eid(&numbered_events(1)[0], "bad-1")]);
    // Parked and failing alone again and again under the limit of 1000.
    wait_until("the refused event retried ten times", 30, async || {
        attempts_of(&collector, "bad-1") >= 10
    })
    .await;
    assert_eq!(redis.llen(DEAD), 0, "under a limit of 1000");
    let applied = relay.reload(&file(1)).await;
    assert!(
        applied.contains("collector.isolated_failure_limit"),
        "{applied}"
    );
    wait_until("dead-lettered at the reloaded limit", 10, async || {
        redis.llen(DEAD) == 1
    })
    .await;
    trickle.abort();
    let entry = &redis.lrange(DEAD)[0];
    let (meta, element) = snowplow_relay::queue::DeadLetter::decode(entry).unwrap();
    assert_eq!(meta.status, Some(500));
    assert!(String::from_utf8_lossy(element).contains("bad-1"));
    relay.child.stop_cleanly().await;
}

/// `collector.park_after_failures` reloaded from 1000 to 1: a batch holding an event
/// the collector refuses is parked at once, and the events that shared its batch are
/// delivered; before the reload they waited with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_park_after_failures_parks_at_the_new_count() {
    let (redis, collector) = setup(refusing(&["bad-1"], 500)).await;
    let file = |count: u32| {
        toml(
            &redis.url(),
            &collector.url(),
            "",
            &format!(
                "buffer_size = 10\npark_after_failures = {count}\n\
                 retry_initial_backoff_ms = 20\nretry_max_backoff_ms = 100\n"
            ),
        )
    };
    let relay = Reloadable::start(&file(1000));
    let trickle = trickle(&redis);
    let mut batch = vec![with_eid(&numbered_events(1)[0], "bad-1")];
    batch.extend((0..9).map(|i| with_eid(&numbered_events(1)[0], &format!("mate-{i}"))));
    redis.rpush(LIST, &batch);
    wait_until("the refused batch retried ten times", 30, async || {
        attempts_of(&collector, "bad-1") >= 10
    })
    .await;
    // The events that travel with bad-1: held back with it, none parked.
    let mates: Vec<String> = collector
        .requests()
        .iter()
        .map(|r| r.events())
        .find(|events| events.iter().any(|e| e["eid"] == "bad-1"))
        .unwrap()
        .iter()
        .filter_map(|e| e["eid"].as_str().map(str::to_owned))
        .filter(|eid| eid != "bad-1")
        .collect();
    assert!(!mates.is_empty());
    let delivered = collector.distinct_eids();
    assert!(
        mates.iter().all(|mate| !delivered.contains(mate)),
        "held back with the refused event"
    );
    assert_eq!(
        redis.llen_of_lists_named("{snowplow}:retry:"),
        0,
        "none parked"
    );
    let applied = relay.reload(&file(1)).await;
    assert!(
        applied.contains("collector.park_after_failures"),
        "{applied}"
    );
    wait_until(
        "its batch-mates delivered once it is parked",
        10,
        async || {
            let delivered = collector.distinct_eids();
            mates.iter().all(|mate| delivered.contains(mate))
        },
    )
    .await;
    trickle.abort();
    relay.child.stop_cleanly().await;
}

/// How many times the collector saw `eid` within `window` from now (it answers 503).
async fn attempts_within(collector: &Collector, eid: &str, window: Duration) -> usize {
    tokio::time::sleep(window).await;
    attempts_of(collector, eid)
}

/// `collector.retry_initial_backoff_ms` reloaded from 20 s to 50 ms: the next failing
/// request is retried within a second, not after ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_initial_backoff_paces_the_next_retries() {
    let (redis, collector) = setup(always(200)).await;
    let file = |initial: u64| {
        toml(
            &redis.url(),
            &collector.url(),
            "",
            &format!(
                "buffer_size = 1\nretry_initial_backoff_ms = {initial}\n\
                 retry_max_backoff_ms = 20000\n"
            ),
        )
    };
    let relay = Reloadable::start(&file(20_000));
    redis.rpush(LIST, &numbered_events(1));
    collector.until_delivered(1, 20).await;
    let applied = relay.reload(&file(50)).await;
    assert!(
        applied.contains("collector.retry_initial_backoff_ms"),
        "{applied}"
    );
    collector.respond_with(always(503));
    redis.rpush(LIST, &[with_eid(&numbered_events(1)[0], "slow-1")]);
    // 20 s: one attempt within 3 s (the first retry waits 10 to 20 s). 50 ms: the first
    // five retries wait at most 50+100+200+400+800 ms.
    let attempts = attempts_within(&collector, "slow-1", Duration::from_secs(3)).await;
    assert!(attempts >= 4, "{attempts} attempts in 3 s");
    collector.respond_with(always(200));
    collector.until_delivered(2, 20).await;
    relay.child.stop_cleanly().await;
}

/// `collector.retry_max_backoff_ms` reloaded from 20 s to 60 ms: retries come at most
/// 60 ms apart, where they would have spread to seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_max_backoff_caps_the_next_retries() {
    let (redis, collector) = setup(always(200)).await;
    let file = |max: u64| {
        toml(
            &redis.url(),
            &collector.url(),
            "",
            &format!(
                "buffer_size = 1\nretry_initial_backoff_ms = 50\nretry_max_backoff_ms = {max}\n"
            ),
        )
    };
    let relay = Reloadable::start(&file(20_000));
    redis.rpush(LIST, &numbered_events(1));
    collector.until_delivered(1, 20).await;
    let applied = relay.reload(&file(60)).await;
    assert!(
        applied.contains("collector.retry_max_backoff_ms"),
        "{applied}"
    );
    collector.respond_with(always(503));
    redis.rpush(LIST, &[with_eid(&numbered_events(1)[0], "capped-1")]);
    // 20 s: the waits double from 25-50 ms, so the seventh retry is due 1.6 s at the
    // earliest and the eighth more than 3 s in; 60 ms: fifty in 3 s.
    let attempts = attempts_within(&collector, "capped-1", Duration::from_secs(3)).await;
    assert!(attempts >= 20, "{attempts} attempts in 3 s");
    collector.respond_with(always(200));
    collector.until_delivered(2, 20).await;
    relay.child.stop_cleanly().await;
}

/// `redis.username` and `redis.password` reloaded: the relay moves to another ACL user
/// once Redis takes it, keeps relaying when the old user is deleted, and keeps the
/// working credentials when Redis refuses reloaded ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_user_and_password_move_the_relay_to_them() {
    let (redis, collector) = setup(always(200)).await;
    redis.add_user("relay-1", "pw-one");
    redis.add_user("relay-2", "pw-two");
    let file = |user: &str, password: &str| {
        toml(
            &redis.url(),
            &collector.url(),
            &format!("username = \"{user}\"\npassword = \"{password}\"\n"),
            "",
        )
    };
    let relay = Reloadable::start(&file("relay-1", "pw-one"));
    let events = numbered_events(30);
    redis.rpush(LIST, &events[..10]);
    collector.until_exactly_delivered(10, 20).await;

    let applied = relay.reload(&file("relay-2", "pw-two")).await;
    let applied = applied.split("need_restart=").next().unwrap().to_owned();
    assert!(
        applied.contains("redis.username") && applied.contains("redis.password"),
        "{applied}"
    );
    // The old user gone (its connections with it): the relay carries on as the new one.
    redis.cmd(&["ACL", "DELUSER", "relay-1"]);
    redis.rpush(LIST, &events[10..20]);
    collector.until_exactly_delivered(20, 20).await;
    let clients = match redis.cmd(&["CLIENT", "LIST"]) {
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(clients.contains("user=relay-2"), "{clients}");
    assert!(!clients.contains("user=relay-1"), "{clients}");

    // A password Redis refuses: the relay says so and keeps the one that works.
    std::fs::write(&relay.file, file("relay-2", "wrong-pw")).unwrap();
    relay.child.signal(libc::SIGHUP);
    relay
        .child
        .log_line(
            "the reloaded Redis credentials do not work",
            Duration::from_secs(10),
        )
        .await;
    redis.cmd(&["CLIENT", "KILL", "USER", "relay-2"]);
    redis.rpush(LIST, &events[20..]);
    collector.until_exactly_delivered(30, 20).await;
    let log = relay.child.stop_cleanly().await;
    for secret in ["pw-one", "pw-two", "wrong-pw"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// `redis.tls_ca_file`, `tls_client_cert_file` and `tls_client_key_file` reloaded, as a
/// certificate rotation goes: files naming a new CA and client certificate are refused
/// while Redis still presents the old ones (the relay keeps its working files); once
/// Redis has moved to the new certificates, a reload moves the relay too, and it
/// reconnects with them after Redis dropped every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_tls_files_are_taken_once_redis_presents_the_new_certificates() {
    let (old, new) = (Certs::new(), Certs::new());
    let redis = RedisServer::start_tls(&old, true);
    let collector = Collector::start().await;
    let file = |certs: &Certs| {
        toml(
            &redis.tls_url(),
            &collector.url(),
            &format!(
                "tls_ca_file = \"{}\"\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
                certs.path("ca.pem"),
                certs.path("client.pem"),
                certs.path("client.key")
            ),
            "",
        )
    };
    let relay = Reloadable::start(&file(&old));
    let events = numbered_events(30);
    redis.rpush(LIST, &events[..10]);
    collector.until_exactly_delivered(10, 20).await;

    // Too early: Redis still presents the old certificate.
    std::fs::write(&relay.file, file(&new)).unwrap();
    relay.child.signal(libc::SIGHUP);
    relay
        .child
        .log_line(
            "the reloaded Redis credentials do not work",
            Duration::from_secs(10),
        )
        .await;
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    redis.rpush(LIST, &events[10..20]);
    collector.until_exactly_delivered(20, 20).await;

    // Redis rotated: the reload takes the new files.
    redis.cmd(&[
        "CONFIG",
        "SET",
        "tls-cert-file",
        &new.path("server.pem"),
        "tls-key-file",
        &new.path("server.key"),
        "tls-ca-cert-file",
        &new.path("ca.pem"),
    ]);
    let applied = relay.reload(&file(&new)).await;
    let applied = applied.split("need_restart=").next().unwrap().to_owned();
    for key in [
        "redis.tls_ca_file",
        "redis.tls_client_cert_file",
        "redis.tls_client_key_file",
    ] {
        assert!(applied.contains(key), "{key}: {applied}");
    }
    // Every old connection dropped: the relay reconnects with the new files only.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    redis.rpush(LIST, &events[20..]);
    collector.until_exactly_delivered(30, 20).await;
    relay.child.stop_cleanly().await;
}
