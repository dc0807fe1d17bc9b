//! The binary as an operator runs it (issue 7): every signal, bounded shutdown with a
//! frozen Redis, exit codes, what the logs and `check` may show, the eviction warning,
//! and memory with elements near a megabyte.

use std::time::{Duration, Instant};

use crate::support::*;

/// The binary with a short lease (and the harness's fast collector retries).
fn relay(redis_url: &str, collector_url: &str, env: &[(&str, &str)]) -> RelayProcess {
    let lease = [("SNOWPLOW_RELAY_REDIS__LEASE_TTL_MS", "1000")];
    RelayProcess::start(redis_url, collector_url, &[&lease[..], env].concat())
}

#[tokio::test]
async fn sigint_and_sigquit_stop_gracefully_like_sigterm() {
    for (name, signal) in [
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("TERM", libc::SIGTERM),
    ] {
        let (redis, collector) = setup_holding(always(503), 50).await;
        let child = relay(
            &redis.url(),
            &collector.url(),
            &[("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300")],
        );
        collector.until_requests(1, 10).await;
        child.signal(signal);
        let (status, stderr) = child.finish(Duration::from_secs(15)).await.parts();
        assert_eq!(status.code(), Some(0), "SIG{name}: {stderr}");
        assert_eq!(redis.llen(LIST), 50, "SIG{name}: every event back");
        assert_eq!(instances(&redis), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_stop_while_redis_is_down_is_clean_when_the_relay_holds_nothing() {
    // Before: exit 1 ("could not return undelivered events"), so systemd recorded a
    // failure for a relay that held nothing.
    let (mut redis, collector) = setup(always(200)).await;
    redis.rpush(LIST, &numbered_events(100));
    let child = relay(&redis.url(), &collector.url(), &[]);
    collector.until_exactly_delivered(100, 20).await;
    wait_until("everything acknowledged", 10, async || {
        held_by_relays(&redis) == 0
    })
    .await;
    redis.kill();
    let Finished { status, log, .. } = child.stop(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("held no event"), "{log}");
}

#[tokio::test]
async fn a_frozen_redis_cannot_hold_up_shutdown_and_nothing_is_lost() {
    // Before: drain + uncancellable claim/ack + 5 release attempts of ~5 s each.
    let total = 3000;
    let (redis, collector) = setup_holding(always(200), total).await;
    collector.set_delay(Duration::from_millis(100));
    let child = relay(
        &redis.url(),
        &collector.url(),
        &[("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "1000")],
    );
    collector.until_delivered(100, 20).await;
    redis.signal(libc::SIGSTOP);
    child.signal(libc::SIGTERM);
    let Finished {
        status,
        log: stderr,
        took,
        ..
    } = child.finish(Duration::from_secs(20)).await;
    redis.signal(libc::SIGCONT);
    // drain_timeout_ms (1 s) + the release budget (2 s) + process start-up slack.
    eprintln!("SIGTERM with Redis frozen (drain_timeout_ms 1000): exit after {took:?}");
    assert!(
        took < Duration::from_millis(4_000),
        "exit took {took:?}\n{stderr}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "the release failed: exit 1\n{stderr}"
    );
    assert!(stderr.contains("lease expires"), "{stderr}");

    // A second signal with Redis frozen exits within a second.
    let before = instances(&redis);
    let child = relay(&redis.url(), &collector.url(), &[]);
    wait_until("registered", 10, async || {
        instances(&redis).iter().any(|id| !before.contains(id))
    })
    .await;
    redis.signal(libc::SIGSTOP);
    child.signal(libc::SIGTERM);
    // A second signal counts from 250 ms after the first (one signal can come twice).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Instant::now();
    child.signal(libc::SIGTERM);
    let Finished { log: stderr, .. } = child.finish(Duration::from_secs(20)).await;
    let took = second.elapsed();
    eprintln!("second SIGTERM with Redis frozen: exit after {took:?}");
    redis.signal(libc::SIGCONT);
    // The forced release's budget, and a margin for the process's teardown on a busy
    // two-core machine.
    let bound = snowplow_relay::relay::FORCED_RELEASE_BUDGET + Duration::from_millis(1_000);
    assert!(
        took < bound,
        "exit took {took:?} after the second signal\n{stderr}"
    );

    // What the stopped relays held comes back by lease recovery: nothing lost. (Some of
    // it was delivered before and comes again: wait until the stopped relays are
    // recovered, the list is drained and the new relay holds nothing: recovered copies
    // it claimed but has not sent yet would go back to the list at its stop.)
    let child = relay(&redis.url(), &collector.url(), &[]);
    wait_until("every event delivered", 60, async || {
        collector.distinct_delivered() == total
            && instances(&redis).len() == 1
            && redis.llen(LIST) == 0
            && held_by_relays(&redis) == 0
    })
    .await;
    child.stop_cleanly().await;
    assert_eq!(redis.llen(LIST), 0);
}

#[tokio::test]
async fn logs_and_check_carry_no_secret_and_no_event_data() {
    let redis = RedisServer::start();
    // Connections refused: every request fails, and is logged.
    let closed = ClosedPort::new();
    let collector_url = format!("http://collector-user:hunter2@127.0.0.1:{}", closed.port);
    let events: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"e":"pv","p":"pc","tv":"t","eid":"ev-{i}","uid":"secret-uid-{i}","url":"http://shop/?token=tok-{i}"}}"#
            )
        })
        .collect();
    redis.rpush(LIST, &events);
    let name = "leaky".repeat(20_000);
    redis.rpush(
        LIST,
        &[format!(
            r#"{{"e":"pv","p":"pc","tv":"t","{name}":"v","{name}":"w"}}"#
        )],
    );
    // A user whose password is in the URL (the relay logs in and claims).
    redis.cmd(&[
        "ACL",
        "SETUSER",
        "relay",
        "on",
        ">redis-pass",
        "~*",
        "&*",
        "+@all",
    ]);
    for method in ["get", "post"] {
        let settings = [
            ("SNOWPLOW_RELAY_COLLECTOR__METHOD", method),
            ("SNOWPLOW_RELAY_LOG__LEVEL", "trace"),
        ];
        let child = relay(
            &redis.url().replace("redis://", "redis://relay:redis-pass@"),
            &collector_url,
            &settings,
        );
        child
            .log_line("collector requests are failing", Duration::from_secs(10))
            .await;
        wait_until("everything claimed", 10, async || redis.llen(LIST) == 0).await;
        child.signal(libc::SIGTERM);
        let Finished { log: stderr, .. } = child.finish(Duration::from_secs(15)).await;
        assert!(!stderr.is_empty());
        for secret in [
            "hunter2",
            "collector-user",
            "secret-uid",
            "tok-",
            "redis-pass",
            "leakyleakyleaky",
        ] {
            assert!(
                !stderr.contains(secret),
                "{method}: `{secret}` in the log:\n{stderr}"
            );
        }
        // Failures are logged when the collector starts failing, not per event.
        let warnings = stderr.lines().filter(|l| l.contains("WARN")).count();
        assert!(warnings < 20, "{method}: {warnings} warnings:\n{stderr}");
    }

    let check = run_bin(
        &[
            "--collector",
            &collector_url,
            "--redis-url",
            "redis://user:redis-pass@10.0.0.1:6379",
            "check",
        ],
        &[],
    );
    let shown = String::from_utf8(check.stdout).unwrap();
    assert!(check.status.success());
    for secret in ["hunter2", "collector-user", "redis-pass"] {
        assert!(!shown.contains(secret), "`{secret}` in check:\n{shown}");
    }
    assert!(shown.contains("http://****:****@127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn an_evicting_redis_is_warned_about() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let collector = Collector::start().await;
    let child = relay(&redis.url(), &collector.url(), &[]);
    wait_until("registered", 10, async || instances(&redis).len() == 1).await;
    child.signal(libc::SIGTERM);
    let (status, stderr) = child.finish(Duration::from_secs(15)).await.parts();
    assert_eq!(status.code(), Some(0));
    assert!(
        stderr.contains("maxmemory_policy") && stderr.contains("volatile-lru"),
        "{stderr}"
    );

    let redis = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let child = relay(&redis.url(), &collector.url(), &[]);
    wait_until("registered", 10, async || instances(&redis).len() == 1).await;
    child.signal(libc::SIGTERM);
    let Finished { log: stderr, .. } = child.finish(Duration::from_secs(15)).await;
    assert!(!stderr.contains("maxmemory_policy"), "{stderr}");
}

#[tokio::test]
async fn elements_near_a_megabyte_keep_relay_and_redis_memory_flat() {
    // Before: one claim of 500 such elements made a ~450 MB reply; a timed-out claim
    // was retried and sent the whole in-flight list again, until Redis was OOM-killed.
    let (redis, collector) = setup(always(503)).await;
    let count = 300;
    let padding = "x".repeat(900_000);
    let events: Vec<String> = (0..count)
        .map(|i| format!(r#"{{"e":"pv","p":"pc","tv":"t","eid":"big-{i}","url":"{padding}"}}"#))
        .collect();
    for chunk in events.chunks(20) {
        redis.rpush(LIST, chunk);
    }
    let baseline = redis.info_number("memory", "used_memory");
    let child = relay(&redis.url(), &collector.url(), &[]);
    let pid = child.pid();
    let (mut redis_peak, mut relay_peak_kb) = (baseline, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        redis_peak = redis_peak.max(redis.info_number("memory", "used_memory"));
        relay_peak_kb = relay_peak_kb.max(peak_rss(pid).unwrap_or(0) / 1024);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !collector.requests().is_empty(),
        "the relay claimed and tried to send"
    );
    child.stop_cleanly().await;
    let growth_mb = (redis_peak - baseline) as f64 / 1e6;
    let relay_mb = relay_peak_kb as f64 / 1e3;
    eprintln!(
        "{count} elements of 900 KB ({:.0} MB in Redis), collector down: Redis grew by at most \
         {growth_mb:.1} MB, relay peak RSS {relay_mb:.1} MB",
        baseline as f64 / 1e6
    );
    // Bounds: one claim (4 MiB) and its reply in Redis; 32 MiB of claimed events plus
    // one request body and the runtime in the relay.
    assert!(growth_mb < 32.0, "Redis grew by {growth_mb:.1} MB");
    assert!(relay_mb < 100.0, "relay peak RSS {relay_mb:.1} MB");
    assert_eq!(redis.llen(LIST), count, "every element back in the list");
}

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("`{series}` not in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_match_what_the_collector_and_redis_saw() {
    let redis = RedisServer::start();
    // Every batch holding an eid ending in 7 is refused: 400, dead-lettered.
    let collector = Collector::start_with(refusing_eids_ending_in('7', 400)).await;
    let total = 2000;
    let mut events = numbered_events(total);
    for bad in events.iter_mut().step_by(100) {
        *bad = "not json".to_owned(); // 20 malformed
    }
    redis.rpush(LIST, &events);
    let settings = [
        ("SNOWPLOW_RELAY_ADMIN__LISTEN", "127.0.0.1:0"),
        ("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "1"),
    ];
    let child = relay(&redis.url(), &collector.url(), &settings);
    let addr = child.admin_addr().await;
    wait_until("every event resolved", 30, async || {
        redis.llen(LIST) == 0 && redis.llen(DEAD) > 0
    })
    .await;
    // Until the acknowledgements are in, the counters may trail the collector.
    let mut text = String::new();
    wait_until("the counters settle", 10, async || {
        let (status, scraped) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        text = scraped;
        let dead = sample(
            &text,
            "snowplow_relay_events_dead_lettered_total{reason=\"rejected\"}",
        ) + sample(
            &text,
            "snowplow_relay_events_dead_lettered_total{reason=\"malformed\"}",
        );
        dead as usize == redis.llen(DEAD) && sample(&text, "snowplow_relay_in_flight_events") == 0.0
    })
    .await;
    // The metric's `reason` label is in each entry: metric and list join.
    for reason in ["rejected", "malformed"] {
        let counted = run_bin(
            &[
                "dead-letter",
                "count",
                "--reason",
                reason,
                "--redis-url",
                &redis.url(),
            ],
            &[],
        );
        let listed: f64 = String::from_utf8_lossy(&counted.stdout)
            .trim()
            .parse()
            .unwrap();
        let metric = format!("snowplow_relay_events_dead_lettered_total{{reason=\"{reason}\"}}");
        assert_eq!(listed, sample(&text, &metric), "{reason}");
        assert!(listed > 0.0, "{reason}");
    }
    let delivered = collector.delivered().len() as f64;
    let refused = collector
        .requests()
        .iter()
        .filter(|r| r.status == 400)
        .count() as f64;
    assert_eq!(
        sample(&text, "snowplow_relay_events_claimed_total"),
        total as f64
    );
    assert_eq!(
        sample(&text, "snowplow_relay_events_delivered_total"),
        delivered
    );
    assert_eq!(
        sample(
            &text,
            "snowplow_relay_events_dead_lettered_total{reason=\"malformed\"}"
        ),
        20.0
    );
    assert_eq!(
        sample(
            &text,
            "snowplow_relay_events_dead_lettered_total{reason=\"rejected\"}"
        ),
        refused
    );
    assert_eq!(delivered + refused + 20.0, total as f64);
    assert_eq!(
        sample(
            &text,
            "snowplow_relay_requests_total{class=\"2xx\",code=\"200\"}"
        ),
        delivered
    );
    assert_eq!(
        sample(
            &text,
            "snowplow_relay_requests_total{class=\"4xx\",code=\"400\"}"
        ),
        refused
    );
    assert!(text.contains("snowplow_relay_build_info{version=\""));
    assert!(sample(&text, "snowplow_relay_request_bytes_total") > 0.0);
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    let admin = addr.to_string();
    let probe = run_bin(&["--admin-listen", &admin, "healthcheck", "--ready"], &[]);
    assert!(probe.status.success(), "{probe:?}");
    // The sampler reads the list lengths every 5 s.
    wait_until("sampled lengths", 8, async || {
        let text = http_get(addr, "/metrics").await.1;
        sample(&text, "snowplow_relay_dead_letter_length") == redis.llen(DEAD) as f64
    })
    .await;

    // A failing collector makes the relay not ready, with the reason.
    collector.respond_with(always(503));
    redis.rpush(LIST, &numbered_events(200));
    wait_until("not ready", 10, async || {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    let (_, why) = http_get(addr, "/readyz").await;
    assert!(why.contains("collector"), "{why}");
    child.stop_cleanly().await;
    let refused_probe = run_bin(&["--admin-listen", &admin, "healthcheck"], &[]);
    assert_eq!(
        refused_probe.status.code(),
        Some(1),
        "nothing listens any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_only_once_registered_then_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = messages.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.recv(&mut buffer) {
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    let seen = |what: &str| messages.lock().unwrap().iter().any(|m| m.contains(what));
    let collector = Collector::start().await;
    // Redis appears later behind this address.
    let proxy = Proxy::start_unrouted().await;
    let socket_env = socket_path.to_str().unwrap().to_owned();
    let settings = [
        ("NOTIFY_SOCKET", socket_env.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let child = relay(&proxy.url(), &collector.url(), &settings);
    // Redis is not there: status says so, the watchdog is fed (the process is fine),
    // and READY never comes.
    wait_until("waiting status and watchdog pings", 10, async || {
        seen("STATUS=waiting for Redis")
            && messages
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.contains("WATCHDOG=1"))
                .count()
                >= 3
    })
    .await;
    assert!(!seen("READY=1"), "READY while Redis is unreachable");
    let redis = RedisServer::start();
    proxy.retarget(redis.port);
    wait_until("READY once registered", 40, async || seen("READY=1")).await;
    assert_eq!(instances(&redis).len(), 1, "READY came after registration");
    wait_until("relaying status", 5, async || seen("STATUS=relaying")).await;
    // The waiting status said where and how it failed.
    assert!(seen("attempt "), "{:?}", messages.lock().unwrap());
    // A failing collector shows in STATUS= as in /readyz (before: "relaying" alone).
    collector.respond_with(always(503));
    redis.rpush(LIST, &numbered_events(200));
    wait_until("failing collector in STATUS", 20, async || {
        seen("STATUS=relaying; not ready: collector requests failing")
    })
    .await;
    collector.respond_with(always(200));
    collector.until_distinct(200, 40).await;
    child.stop_cleanly().await;
    wait_until("STOPPING", 2, async || seen("STOPPING=1")).await;
    let log = messages.lock().unwrap().clone();
    let ready = log.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = log.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping, "{log:?}");
}

/// Redis on a unix socket (`unix:///path`), with an ACL user and a password file: the
/// relay, `check` and the dead-letter tools reach it; credentials in the URL's query
/// (which nothing would mask) are refused. (582e716 refused every unix:// URL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let redis = RedisServer::start_with(&[
        "--unixsocket",
        socket.to_str().unwrap(),
        "--unixsocketperm",
        "700",
    ]);
    redis.add_user("relay", "socket-secret");
    let password = dir.path().join("password");
    std::fs::write(&password, "socket-secret\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let url = format!("unix://{}", socket.display());
    let credentials = [
        ("SNOWPLOW_RELAY_REDIS__USERNAME", "relay"),
        (
            "SNOWPLOW_RELAY_REDIS__PASSWORD_FILE",
            password.to_str().unwrap(),
        ),
    ];
    let collector = Collector::start_with(refusing(&["ev-3"], 400)).await;
    redis.rpush(LIST, &numbered_events(40));
    let one_per_request = [("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "1")];
    let relay = RelayProcess::start(
        &url,
        &collector.url(),
        &[&credentials[..], &one_per_request].concat(),
    );
    collector.until_exactly_delivered(39, 15).await;
    let log = relay.stop_cleanly().await;
    assert!(log.contains(&url), "the log names the socket: {log}");
    let count = run_bin(&["--redis-url", &url, "dead-letter", "count"], &credentials);
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "1",
        "{count:?}"
    );

    let with_password = format!("{url}?db=0&pass=socket-secret");
    let refused = run_bin(&["--redis-url", &with_password, "check"], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis.password_file"), "{stderr}");
    assert!(!stderr.contains("socket-secret"), "{stderr}");
}

#[tokio::test]
async fn a_host_without_ca_certificates_relays_over_http_and_says_what_https_needs() {
    // Before: "cannot build the HTTP client: builder error", even for an http collector.
    let (redis, collector) = setup_holding(always(200), 20).await;
    let no_roots = [
        ("SSL_CERT_FILE", "/nonexistent"),
        ("SSL_CERT_DIR", "/nonexistent"),
    ];
    let child = relay(&redis.url(), &collector.url(), &no_roots);
    collector.until_exactly_delivered(20, 10).await;
    child.stop_cleanly().await;

    let child = relay(&redis.url(), "https://collector.invalid", &no_roots);
    let (status, stderr) = child.finish(Duration::from_secs(15)).await.parts();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("ca-certificates"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_flushes_a_partial_batch_at_once() {
    // The flush timer is 10 minutes away: only SIGUSR1 sends.
    let (redis, collector) = setup_holding(always(200), 1000).await;
    let timer = [
        ("collector.flush_interval_ms", "600000"),
        ("redis.lease_ttl_ms", "1000"),
    ];
    let settings = [&BATCHES_NEVER_FILL[..], &timer].concat();
    let child = RelayProcess::start_with_settings(&redis.url(), &collector.url(), &settings);
    wait_until("claimed", 10, async || redis.llen(LIST) < 1000).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        collector.requests().is_empty(),
        "nothing is sent without a flush"
    );
    child.signal(libc::SIGUSR1);
    wait_until("the flushed batch", 5, async || {
        !collector.requests().is_empty()
    })
    .await;
    let sent = collector.delivered().len();
    assert!(sent > 0 && sent < 500, "one partial batch: {sent}");
    let stderr = child.stop_cleanly().await;
    assert!(stderr.contains("flush requested"), "{stderr}");
    let delivered: std::collections::HashSet<String> =
        collector.delivered_eids().into_iter().collect();
    assert_eq!(
        delivered.len(),
        collector.delivered().len(),
        "nothing twice"
    );
    assert_eq!(redis.llen(LIST) + delivered.len(), 1000, "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_log_level_and_retry_settings_and_names_what_needs_a_restart() {
    let (redis, collector) = setup(always(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let write = |level: &str, initial_ms: u64, max_ms: u64, key: &str| {
        let toml = format!(
            "[redis]\nurl = \"{}\"\nkey = \"{key}\"\n[collector]\nurl = \"{}\"\nbuffer_size = 100\n\
             retry_initial_backoff_ms = {initial_ms}\nretry_max_backoff_ms = {max_ms}\n[log]\nlevel = \"{level}\"\n",
            redis.url(),
            collector.url()
        );
        std::fs::write(&file, toml).unwrap();
    };
    // One batch of 100, retried every 100 to 200 ms.
    write("warn", 20, 200, LIST);
    redis.rpush(LIST, &numbered_events(100));
    // Without the harness's retry variables: they would override the file.
    let mut command = bin_command();
    command.args(["--config", file.to_str().unwrap()]);
    let child = RelayProcess::spawn(command);
    collector.until_requests(5, 10).await;
    std::fs::write(&file, "not toml [").unwrap();
    child.signal(libc::SIGHUP);
    child
        .log_line("the new configuration is invalid", Duration::from_secs(10))
        .await;
    // Retries every 1 to 2 s from the next failure on.
    write("debug", 1000, 2000, "other-list");
    child.signal(libc::SIGHUP);
    child
        .log_line("configuration reloaded", Duration::from_secs(10))
        .await;
    let reloaded_at = collector.requests().len();
    wait_until("four retries after the reload", 20, async || {
        collector.requests().len() >= reloaded_at + 4
    })
    .await;
    // The gaps between one batch's attempts (a batch that failed alone for a while is
    // split in halves, each retried on its own): a batch is its first event and size.
    let gaps = |requests: &[Received]| -> Vec<Duration> {
        let mut last: std::collections::HashMap<(String, usize), Instant> = Default::default();
        let mut gaps = Vec::new();
        for request in requests {
            let events = request.events();
            let batch = (events[0]["eid"].to_string(), events.len());
            if let Some(previous) = last.insert(batch, request.at) {
                gaps.push(request.at - previous);
            }
        }
        gaps
    };
    let requests = collector.requests();
    let before = gaps(&requests[..reloaded_at]);
    // The first wait of each batch after the reload was already scheduled with the old
    // backoff: gaps after it count from each batch's first request after the reload.
    let after = gaps(&requests[reloaded_at..]);
    // Before: delays of at most 200 ms; after: at least half of 1 s (the jitter's floor,
    // less 50 ms for where the collector takes its timestamps), which no busy machine can
    // shorten. Every gap before is shorter than every gap after.
    assert!(
        after.iter().all(|gap| *gap >= Duration::from_millis(450)),
        "the reloaded backoff slows the retries: {after:?}"
    );
    assert!(
        before.iter().max() < after.iter().min(),
        "retries before the reload {before:?} are faster than after it {after:?}"
    );
    collector.respond_with(always(200));
    collector.until_delivered(100, 20).await;
    let stderr = child.stop_cleanly().await;
    assert!(
        stderr.contains("the new configuration is invalid"),
        "{stderr}"
    );
    let reloaded = stderr
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{stderr}"));
    assert!(reloaded.contains("log.level"), "{reloaded}");
    assert!(
        reloaded.contains("collector.retry_initial_backoff_ms")
            && reloaded.contains("collector.retry_max_backoff_ms"),
        "{reloaded}"
    );
    let need_restart = reloaded.split("need_restart=").nth(1).unwrap_or_default();
    assert!(need_restart.contains("\"redis.key\""), "{reloaded}");
    assert!(!need_restart.contains("log.level"), "{reloaded}");
    // log.level's effect: debug lines (each delivered batch's) come after the reload
    // and never before it.
    let (before_reload, _) =
        stderr.split_at(stderr.find("the new configuration is invalid").unwrap());
    let (_, after_reload) = stderr.split_at(stderr.find("configuration reloaded").unwrap());
    assert!(!before_reload.contains("DEBUG"), "{before_reload}");
    assert!(
        after_reload
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("batch delivered")),
        "debug lines after the reload:\n{after_reload}"
    );
    assert_eq!(collector.delivered().len(), 100, "each event once");
    assert_eq!(
        redis.llen(LIST),
        0,
        "the relay kept its list until a restart"
    );
}

/// A password rotated as ACL users rotate it: the new one added, the file rewritten in
/// place, a reload, the old one removed. The reload re-reads the file and moves the
/// relay's connections to the new password at once; new connections use it. A password
/// Redis refuses is not taken: the relay says so and keeps the one that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_redis_password_the_file_names() {
    let redis = RedisServer::start();
    redis.add_user("relay", "old-pw-1");
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis-password");
    let write_password = |text: &str| {
        std::fs::write(&password, format!("{text}\n")).unwrap();
        std::fs::set_permissions(
            &password,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    };
    write_password("old-pw-1");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "[redis]\nurl = \"{}\"\nusername = \"relay\"\npassword_file = \"{}\"\n\
             [collector]\nurl = \"{}\"\n",
            redis.url(),
            password.display(),
            collector.url()
        ),
    )
    .unwrap();
    let mut command = bin_command();
    command.args(["--config", file.to_str().unwrap()]);
    let child = RelayProcess::spawn(command);
    let events = numbered_events(30);
    redis.rpush(LIST, &events[..10]);
    collector.until_exactly_delivered(10, 20).await;

    redis.cmd(&["ACL", "SETUSER", "relay", ">new-pw-2"]);
    write_password("new-pw-2");
    child.signal(libc::SIGHUP);
    let reloaded = child
        .log_line("configuration reloaded", Duration::from_secs(10))
        .await;
    let applied = reloaded.split("need_restart=").next().unwrap();
    assert!(applied.contains("redis.password_file"), "{reloaded}");
    redis.cmd(&["ACL", "SETUSER", "relay", "<old-pw-1"]);
    // Every connection of the relay's dropped: new ones log in with the new password.
    redis.cmd(&["CLIENT", "KILL", "USER", "relay"]);
    redis.rpush(LIST, &events[10..20]);
    collector.until_exactly_delivered(20, 20).await;

    // A password Redis refuses: the relay says so and keeps the working one.
    write_password("wrong-pw-3");
    child.signal(libc::SIGHUP);
    child
        .log_line(
            "the reloaded Redis credentials do not work",
            Duration::from_secs(10),
        )
        .await;
    redis.cmd(&["CLIENT", "KILL", "USER", "relay"]);
    redis.rpush(LIST, &events[20..]);
    collector.until_exactly_delivered(30, 20).await;
    let log = child.stop_cleanly().await;
    for secret in ["old-pw-1", "new-pw-2", "wrong-pw-3"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// The relay's memory holds the Redis password: it marks itself non-dumpable, so no core
/// file is written and no other process of its user can read its memory or environment.
/// (Run as root, the relay runs as `nobody`: the files in a non-dumpable process's
/// /proc directory belong to root, not to its user. Otherwise its environment cannot be
/// read by its own user.)
#[tokio::test]
async fn the_relay_is_not_dumpable() {
    let (redis, collector) = setup(always(200)).await;
    let mut command = bin_command();
    command.args(["--redis-url", &redis.url(), "--collector", &collector.url()]);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::process::CommandExt::uid(&mut command, 65534);
        std::os::unix::process::CommandExt::gid(&mut command, 65534);
    }
    let child = RelayProcess::spawn(command);
    wait_until("registered", 10, async || instances(&redis).len() == 1).await;
    let proc_dir = format!("/proc/{}", child.pid());
    if root {
        let environ = std::fs::metadata(format!("{proc_dir}/environ")).unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&environ);
        assert_eq!(
            owner, 0,
            "a dumpable process's /proc files belong to its user (65534)"
        );
    } else {
        let environ = std::fs::read(format!("{proc_dir}/environ"));
        assert!(
            environ.is_err(),
            "a non-dumpable process's environment cannot be read by its user"
        );
    }
    child.stop_cleanly().await;
}

/// An open-file limit below what `collector.max_requests_in_flight` connections need is
/// raised as far as the hard limit allows, and said at start-up when that is not enough
/// (issue 40: the ceiling is 1,024 connections by default).
#[tokio::test]
async fn an_open_file_limit_too_low_for_the_request_ceiling_is_raised_or_said() {
    let (redis, collector) = setup(always(200)).await;
    let relay = bin();
    for (nofile, said) in [("--nofile=300:300", true), ("--nofile=300:2048", false)] {
        let args = [
            nofile,
            relay.as_str(),
            "--redis-url",
            &redis.url(),
            "--collector",
            &collector.url(),
        ];
        let child = RelayProcess::start_program("prlimit", &args, &[]);
        child
            .log_line("connected; relaying", Duration::from_secs(10))
            .await;
        let log = child.stop_cleanly().await;
        let warned = log.contains("the open-file limit (300) is below the 1280");
        assert_eq!(warned, said, "prlimit {nofile}:\n{log}");
    }
}
