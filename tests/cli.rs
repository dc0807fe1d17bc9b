//! The real binary: configuration errors, `check`, and signals.

use snowplow_relay::queue::DeadLetter;
use std::time::Duration;

use crate::support::*;

/// A start-up that must fail: a configuration file, flags and environment, and the key
/// the error must name.
struct Refused {
    file: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    names: &'static str,
}

#[test]
fn bad_config_values_stop_start_up_with_exit_code_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let cases = [
        Refused {
            file: "[collector]\nurl = \"http://x\"\nbuffer_size = 0\n",
            args: &[],
            env: &[],
            names: "collector.buffer_size",
        },
        Refused {
            file: "[collector]\nurl = \"http://x\"\nmax_requests_in_flight = -1\n",
            args: &[],
            env: &[],
            names: "collector.max_requests_in_flight",
        },
        Refused {
            file: "[collector]\nurl = \"http://x\"\nbufer_size = 5\n",
            args: &[],
            env: &[],
            names: "bufer_size",
        },
        Refused {
            file: "",
            args: &["--collector", "http://x", "--byte-limit", "5000000"],
            env: &[],
            names: "collector.byte_limit",
        },
        Refused {
            file: "",
            args: &["--collector", "http://x"],
            env: &[("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "soon")],
            names: "worker.drain_timeout_ms",
        },
        Refused {
            file: "",
            args: &[],
            env: &[],
            names: "collector.url",
        },
        Refused {
            file: "[collector\n",
            args: &[],
            env: &[],
            names: "relay.toml",
        },
        // The request path pasted onto the collector's URL: posted to …/tp2/…/tp2 on
        // 582e716, a 404 retried for ever as if the collector were down.
        Refused {
            file: "",
            args: &[
                "--collector",
                "https://c.example.com/com.snowplowanalytics.snowplow/tp2",
            ],
            env: &[],
            names: "collector.url",
        },
        Refused {
            file: "[collector]\nurl = \"https://c.example.com/i\"\nmethod = \"get\"\n",
            args: &[],
            env: &[],
            names: "collector.url",
        },
        // A proxy the relay cannot speak to: refused by check (and start-up), not met by
        // every request.
        Refused {
            file: "[collector]\nurl = \"http://x\"\nproxy = \"socks5://127.0.0.1:1080\"\n",
            args: &[],
            env: &[],
            names: "collector.proxy",
        },
    ];
    let path = file.to_str().unwrap();
    for case in &cases {
        std::fs::write(&file, case.file).unwrap();
        let args = [&["--config", path][..], case.args, &["check"]].concat();
        let output = run_bin(&args, case.env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let key = case.names;
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "`{stderr}` should name `{key}`");
    }
    let output = run_bin(&["--method", "put", "check"], &[]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap rejects a bad flag value"
    );
    // A socks5 proxy from the environment: start-up stops (exit 2), naming the variables.
    let output = run_bin(
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--collector",
            "http://x",
        ],
        &[("HTTP_PROXY", "socks5://127.0.0.1:1080")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HTTP_PROXY"), "{stderr}");
}

#[test]
fn check_prints_the_effective_configuration_with_the_password_masked() {
    let output = run_bin(
        &[
            "--redis-url",
            "redis://:hunter2@127.0.0.1:6380/1",
            "--collector",
            "https://c.example.com",
            "check",
        ],
        &[("SNOWPLOW_RELAY_COLLECTOR__BUFFER_SIZE", "50")],
    );
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("redis.url was given as a flag with a password"),
        "a password in a flag is readable by every user: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("redis://:****@127.0.0.1:6380/1"),
        "{stdout}"
    );
    assert!(stdout.contains("buffer_size = 50"), "{stdout}");
    assert!(stdout.contains("byte_limit = 1000000"), "{stdout}");
    // What `check` prints is itself a valid configuration file that says the same.
    let file = TempFile::new("effective.toml", &stdout.replace("****", "hunter2"));
    let again = run_bin(&["--config", &file.path, "check"], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The same settings; only the sources differ (the file, now).
    let settings = |text: &str| -> String {
        text.lines()
            .map(|line| line.split("  # ").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let again = String::from_utf8(again.stdout).unwrap();
    assert_eq!(settings(&again), settings(&stdout));
    assert!(stdout.contains("url = \"redis://:****@127.0.0.1:6380/1\"  # flag --redis-url"));
    assert!(again.contains("url = \"redis://:****@127.0.0.1:6380/1\"  # file "));
}

#[tokio::test]
async fn sigterm_drains_requeues_and_exits_0() {
    let (redis, collector) = setup_holding(always(503), 100).await;
    let (redis_url, collector_url) = (redis.url(), collector.url());
    let relay = RelayProcess::start_with(
        &[
            "--redis-url",
            &redis_url,
            "--collector",
            &collector_url,
            "--log-format",
            "json",
        ],
        &[("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300")],
    );
    collector.until_requests(1, 10).await;
    let (status, stderr) = relay.stop(Duration::from_secs(20)).await.parts();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(redis.llen(LIST), 100, "every event back in the list");
    // JSON logs: every line is an object; the start-up line carries the settings.
    for line in stderr.lines() {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert!(stderr.contains("snowplow-relay starting"));
    assert!(stderr.contains("returned undelivered events"));
}

#[tokio::test]
async fn dead_letter_count_list_and_replay() {
    let (redis, collector) = setup(always(400)).await;
    let events = numbered_events(5);
    redis.rpush(LIST, &events);
    redis.rpush_bytes(LIST, b"not json");
    let relay = Relay::with(&redis, &collector, &[("collector.buffer_size", "1")]);
    wait_until("all dead-lettered", 20, async || redis.llen(DEAD) == 6).await;
    relay.stop().await;

    // The flags after the leaf subcommand, as people type them (`count --redis-url`).
    let tool = |args: &[&str]| {
        let output = run_bin(
            &[&["dead-letter"], args, &["--redis-url", &redis.url()]].concat(),
            &[],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(tool(&["count"]).trim(), "6");
    // Or before the subcommand.
    let before = run_bin(&["--redis-url", &redis.url(), "dead-letter", "count"], &[]);
    assert_eq!(String::from_utf8_lossy(&before.stdout).trim(), "6");
    let listed: Vec<serde_json::Value> = tool(&["list", "--limit", "10"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().filter(|e| e["status"] == 400).count() == 5);
    assert!(listed.iter().any(|e| e["element"] == "not json"
        && e["reason"] == "malformed"
        && e["detail"].as_str().unwrap().contains("not valid JSON")));

    // Replay the first two, then the rest: originals, byte for byte, in order.
    assert_eq!(tool(&["replay", "--limit", "2"]).trim(), "2");
    assert_eq!(redis.llen(DEAD), 4);
    assert_eq!(tool(&["replay"]).trim(), "4");
    let list = redis.lrange(LIST);
    let dead_order: Vec<Vec<u8>> = listed
        .iter()
        .map(|e| e["element"].as_str().unwrap().as_bytes().to_vec())
        .collect();
    assert_eq!(
        list, dead_order,
        "replayed in dead-letter order, original bytes"
    );
    assert_eq!(redis.llen(DEAD), 0);
    assert_eq!(tool(&["count"]).trim(), "0");
}

/// The dead-letter tools as an operator works with them (issue 39): entries a running
/// relay wrote for each reason, one of a relay before the metric's label was stored, one
/// nobody's tool wrote; filtered, paged, counted, dropped, replayed, exported and
/// imported back byte for byte. 582e716 had `count`, `list --limit` and `replay --limit`
/// only, and its entries did not carry the metric's label.
#[tokio::test]
async fn dead_letters_are_filtered_paged_dropped_and_exported_and_imported_byte_for_byte() {
    let (redis, collector) = setup(refusing(&["ev-2", "ev-5"], 400)).await;
    let legacy: &[u8] = b"{\"reason\":\"collector answered 400\",\"status\":400,\"failed_at\":\
        \"2026-01-01T00:00:00.000Z\",\"relay\":\"old-host:1:aa\"}\n{\"e\":\"pv\",\"eid\":\"legacy\"}";
    redis.rpush_bytes(DEAD, legacy);
    redis.rpush_bytes(DEAD, b"foreign \xff entry");
    redis.rpush(LIST, &numbered_events(8));
    redis.rpush_bytes(LIST, b"not json");
    redis.rpush_bytes(LIST, b"\xff\xfe not utf-8");
    let huge = format!(
        r#"{{"e":"pv","eid":"huge","url":"{}"}}"#,
        "x".repeat(30_000)
    );
    redis.rpush(LIST, std::slice::from_ref(&huge));
    let relay = Relay::with(
        &redis,
        &collector,
        &[
            ("collector.buffer_size", "1"),
            ("events.max_element_bytes", "20000"),
        ],
    );
    wait_until("all resolved", 20, async || redis.llen(DEAD) == 7).await;
    relay.stop().await;

    let url = redis.url();
    let run = |args: &[&str]| {
        run_bin(
            &[&["dead-letter"], args, &["--redis-url", &url]].concat(),
            &[],
        )
    };
    let tool = |args: &[&str]| {
        let output = run(args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let count =
        |args: &[&str]| -> u64 { tool(&[&["count"], args].concat()).trim().parse().unwrap() };
    let lines = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = lines(tool(&["list"]));
    assert_eq!(all.len(), 7);
    let host = all
        .iter()
        .find(|e| e["reason"] == "rejected")
        .map(|e| {
            e["relay"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .unwrap();

    // The metric's labels, and each filter.
    assert_eq!(count(&[]), 7);
    assert_eq!(count(&["--reason", "rejected"]), 2);
    assert_eq!(count(&["--reason", "malformed"]), 2);
    assert_eq!(count(&["--reason", "oversized"]), 1);
    assert_eq!(
        count(&["--reason", "unlabelled"]),
        1,
        "the older relay's entry"
    );
    assert_eq!(count(&["--reason", "rejected", "--reason", "oversized"]), 3);
    assert_eq!(count(&["--status", "400"]), 3);
    assert_eq!(count(&["--status", "400", "--reason", "rejected"]), 2);
    assert_eq!(count(&["--relay", "old-host"]), 1);
    assert_eq!(count(&["--relay", &host]), 5);
    assert_eq!(count(&["--relay", "old"]), 0, "a prefix ends at a colon");
    assert_eq!(count(&["--since", "2026-06-01T00:00:00Z"]), 5);
    assert_eq!(count(&["--through", "2026-06-01T00:00:00Z"]), 1);
    assert_eq!(count(&["--since", "1h"]), 5, "a time ago");
    let refused = run(&["count", "--reason", "bad"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("expected one of malformed"));

    // Pages: newest first, offsets.
    let newest = lines(tool(&["list", "--newest", "--limit", "2"]));
    assert_eq!(newest, [all[6].clone(), all[5].clone()]);
    assert_eq!(lines(tool(&["list", "--offset", "5"])), all[5..]);
    assert_eq!(
        lines(tool(&[
            "list",
            "--reason",
            "malformed",
            "--newest",
            "--offset",
            "1"
        ]))
        .len(),
        1
    );
    let rejected = lines(tool(&["list", "--reason", "rejected"]));
    assert!(
        rejected
            .iter()
            .all(|e| e["status"] == 400 && e["detail"].as_str().unwrap().contains("400"))
    );
    let binary = all
        .iter()
        .find(|e| e["element_base64"].is_string())
        .unwrap();
    assert_eq!(binary["reason"], "malformed");
    assert!(
        all.iter().any(|e| e["entry_base64"].is_string()),
        "the foreign entry"
    );

    // Export, then the raw list to compare with after the import.
    let exported = tool(&["export"]);
    let raw = redis.lrange(DEAD);

    // A dry run writes nothing; a drop takes what the filter takes, at most --limit.
    let before = redis.snapshot();
    assert_eq!(
        tool(&["drop", "--reason", "malformed", "--dry-run"]).trim(),
        "2"
    );
    assert!(before == redis.snapshot(), "the dry run wrote something");
    assert_eq!(
        tool(&["drop", "--reason", "malformed", "--limit", "1"]).trim(),
        "1"
    );
    assert_eq!(tool(&["drop", "--reason", "malformed"]).trim(), "1");
    assert_eq!(count(&["--reason", "malformed"]), 0);
    assert_eq!(count(&[]), 5);

    // A filtered replay: the two rejected events back, byte for byte; the rest stays.
    assert_eq!(tool(&["replay", "--reason", "rejected"]).trim(), "2");
    let replayed: Vec<serde_json::Value> = redis
        .lrange(LIST)
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect();
    let mut eids: Vec<&str> = replayed
        .iter()
        .map(|e| e["eid"].as_str().unwrap())
        .collect();
    eids.sort();
    assert_eq!(eids, ["ev-2", "ev-5"]);
    assert_eq!(count(&[]), 3);

    // Import what was exported into an empty list: every entry back byte for byte (the
    // older relay's metadata rewritten in today's form, its element unchanged), and the
    // same export again.
    redis.cmd(&["DEL", DEAD]);
    let file = TempFile::new("dead.jsonl", &exported);
    assert_eq!(tool(&["import", &file.path]).trim(), "7");
    let back = redis.lrange(DEAD);
    assert_eq!(back.len(), raw.len());
    for (back, raw) in back.iter().zip(&raw) {
        if raw.as_slice() == legacy {
            let (meta, element) = DeadLetter::decode(back).unwrap();
            assert_eq!(
                (meta.reason.as_str(), element),
                (
                    "unlabelled",
                    &legacy[legacy.iter().position(|&b| b == b'\n').unwrap() + 1..]
                )
            );
        } else {
            assert_eq!(back, raw, "{}", String::from_utf8_lossy(raw));
        }
    }
    assert_eq!(tool(&["export"]), exported);

    // Fixed by hand (as with jq) and imported straight onto the list.
    let fixed = exported
        .lines()
        .find(|l| l.contains("not json"))
        .unwrap()
        .replace(
            "\"element\":\"not json\"",
            "\"element\":\"{\\\"e\\\":\\\"pv\\\",\\\"eid\\\":\\\"fixed\\\"}\"",
        );
    let file = TempFile::new("fixed.jsonl", &fixed);
    redis.cmd(&["DEL", LIST]);
    assert_eq!(tool(&["import", "--replay", &file.path]).trim(), "1");
    assert_eq!(
        redis.lrange(LIST),
        [b"{\"e\":\"pv\",\"eid\":\"fixed\"}".to_vec()]
    );

    // A bad line stops the import before anything is written, naming the line.
    let file = TempFile::new("bad.jsonl", &format!("{fixed}\n{{\"elemnt\":\"x\"}}\n"));
    let before = redis.snapshot();
    let refused = run(&["import", &file.path]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("line 2") && said.contains("elemnt"), "{said}");
    assert!(
        before == redis.snapshot(),
        "a refused import wrote something"
    );
}

/// `dead-letter parked` shows the events a running relay holds parked, which no other
/// tool shows: the relay holding each, its status, the element; and writes nothing.
#[tokio::test]
async fn dead_letter_parked_shows_what_a_running_relay_holds_parked() {
    let redis = RedisServer::start();
    let collector = Collector::start_with(refusing(&["ev-3", "ev-7"], 500)).await;
    redis.rpush(LIST, &numbered_events(20));
    let relay = RelayProcess::start_with_settings(
        &redis.url(),
        &collector.url(),
        &[("collector.buffer_size", "5")],
    );
    wait_until("two parked", 30, async || {
        redis.llen_of_lists_named("{snowplow}:retry:") == 2
    })
    .await;
    let before = redis.lrange(
        &redis
            .keys()
            .into_iter()
            .find(|k| k.contains(":retry:"))
            .unwrap(),
    );
    let output = run_bin(&["dead-letter", "parked", "--redis-url", &redis.url()], &[]);
    assert!(output.status.success(), "{output:?}");
    let parked: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut eids: Vec<String> = parked
        .iter()
        .map(|p| {
            let element: serde_json::Value =
                serde_json::from_str(p["element"].as_str().unwrap()).unwrap();
            element["eid"].as_str().unwrap().to_owned()
        })
        .collect();
    eids.sort();
    assert_eq!(eids, ["ev-3", "ev-7"], "{parked:?}");
    for p in &parked {
        assert_eq!(p["status"], 500, "{p}");
        assert!(p["instance"].as_str().unwrap().contains(':'), "{p}");
        assert!(p["parked_at"].as_str().unwrap().ends_with('Z'), "{p}");
    }
    let retry = redis
        .keys()
        .into_iter()
        .find(|k| k.contains(":retry:"))
        .unwrap();
    assert_eq!(redis.lrange(&retry), before, "nothing written");
    relay.stop_cleanly().await;
}

#[test]
fn the_image_and_the_unit_set_no_setting_by_environment_so_the_operators_file_wins() {
    // Before: the Dockerfile set SNOWPLOW_RELAY_LOG__FORMAT and ..._ADMIN__LISTEN and the
    // unit set ..._LOG__FORMAT, so a mounted file saying otherwise was silently beaten.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let trimmed = line.trim_start();
        in_env = trimmed.starts_with("ENV ") || (in_env && !trimmed.is_empty());
        assert!(
            !(in_env && trimmed.contains("SNOWPLOW_RELAY_")),
            "the Dockerfile sets a setting by environment: {line}"
        );
        in_env &= trimmed.ends_with('\\');
    }
    let unit = std::fs::read_to_string(root.join("systemd/snowplow-relay.service")).unwrap();
    for line in unit.lines().filter(|l| l.starts_with("Environment=")) {
        assert!(
            !line.contains("SNOWPLOW_RELAY_"),
            "the unit sets a setting by environment: {line}"
        );
    }
    // The image's defaults come from its file, and `check` says so.
    let image_file = root.join("config/container.toml");
    let output = run_bin(
        &["--config", image_file.to_str().unwrap(), "check"],
        &[("SNOWPLOW_RELAY_COLLECTOR__URL", "https://c.example.com")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("format = \"json\"  # file ")
            && stdout.contains("listen = \"0.0.0.0:9187\"  # file "),
        "{stdout}"
    );
    // An operator's file in its place decides alone; the environment still overrides.
    let mounted = TempFile::new(
        "config.toml",
        "[log]\nformat = \"text\"\n[admin]\nlisten = \"127.0.0.1:9300\"\n",
    );
    let output = run_bin(
        &["--config", &mounted.path, "check"],
        &[
            ("SNOWPLOW_RELAY_COLLECTOR__URL", "https://c.example.com"),
            ("SNOWPLOW_RELAY_LOG__LEVEL", "debug"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("format = \"text\""), "{stdout}");
    assert!(
        stdout.contains("listen = \"127.0.0.1:9300\"  # file "),
        "{stdout}"
    );
    assert!(
        stdout.contains("level = \"debug\"  # environment SNOWPLOW_RELAY_LOG__LEVEL"),
        "{stdout}"
    );
}

#[test]
fn the_config_variable_quiet_checks_and_flags_per_subcommand() {
    let file = TempFile::new(
        "relay.toml",
        "[collector]\nurl = \"https://c.example.com\"\n[worker]\nthreads = 2\n",
    );
    let file = file.path.as_str();
    // SNOWPLOW_RELAY_CONFIG names the file, as VECTOR_CONFIG does for Vector.
    let output = run_bin(&["check"], &[("SNOWPLOW_RELAY_CONFIG", file)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains(&format!("threads = 2  # file {file}")),
        "{stdout}"
    );
    // Unattended (the unit's ExecStartPre/ExecReload): nothing on success...
    let output = run_bin(&["check", "--quiet"], &[("SNOWPLOW_RELAY_CONFIG", file)]);
    assert!(output.status.success());
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "{output:?}"
    );
    // ... and the error, naming the key, on failure.
    let output = run_bin(
        &["check", "--quiet"],
        &[
            ("SNOWPLOW_RELAY_CONFIG", file),
            ("SNOWPLOW_RELAY_WORKER__THREADS", "0"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("worker.threads"));
    // A subcommand lists only the flags it uses.
    let help = run_bin(&["healthcheck", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--admin-listen") && help.contains("--ready"),
        "{help}"
    );
    for unused in ["--collector", "--redis-url", "--key", "--buffer-size"] {
        assert!(
            !help.contains(unused),
            "healthcheck lists {unused}:\n{help}"
        );
    }
    let help = run_bin(&["dead-letter", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--redis-url") && !help.contains("--collector"),
        "{help}"
    );
}

/// `check --connect` reaches Redis and the collector as the relay would: exit 0 when
/// both are right, 2 when connecting proves the configuration wrong (refused
/// credentials, a missing permission, a key of the wrong type), 1 when one cannot be
/// reached; it claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_says_what_it_found_and_exits_by_what_it_proved() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    redis.rpush(LIST, &numbered_events(3));
    let check = |url: &str, collector: &str| {
        let output = run_bin(
            &[
                "--redis-url",
                url,
                "--collector",
                collector,
                "check",
                "-q",
                "--connect",
            ],
            &[],
        );
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), stdout)
    };
    let (code, out) = check(&redis.url(), &collector.url());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("redis: connected to"), "{out}");
    assert!(out.contains("permissions: every command"), "{out}");
    assert!(out.contains("answers GET /health"), "{out}");
    assert_eq!(redis.llen(LIST), 3, "check claims nothing");
    assert!(instances(&redis).is_empty(), "check registers no instance");

    // Refused credentials.
    redis.add_user("relay", "right");
    let wrong = format!("redis://relay:wrong@127.0.0.1:{}", redis.port);
    let (code, out) = check(&wrong, &collector.url());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("refused the credentials of user `relay`"),
        "{out}"
    );
    assert!(!out.contains("wrong@"), "{out}");

    // A user missing a permission.
    redis.cmd(&["ACL", "SETUSER", "relay", "-lrem"]);
    let right = format!("redis://relay:right@127.0.0.1:{}", redis.port);
    let (code, out) = check(&right, &collector.url());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("may not run: LREM"), "{out}");

    // The dead-letter list is not a list.
    redis.cmd(&["SET", DEAD, "x"]);
    let (code, out) = check(&redis.url(), &collector.url());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not lists"), "{out}");
    redis.cmd(&["DEL", DEAD]);

    // Unreachable: Redis, then the collector.
    let closed = ClosedPort::new();
    let (code, out) = check(
        &format!("redis://127.0.0.1:{}", closed.port),
        &collector.url(),
    );
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = check(&redis.url(), &format!("http://127.0.0.1:{}", closed.port));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("collector: FAILED to reach"), "{out}");
}

/// `--version` names the version and the commit the build comes from (`build.rs`).
#[test]
fn version_names_the_commit() {
    let output = run_bin(&["--version"], &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    let version = env!("CARGO_PKG_VERSION");
    let commit = text
        .trim()
        .strip_prefix(&format!("snowplow-relay {version} ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`{text}`"));
    assert!(
        commit == "unknown" || (commit.len() == 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "`{text}`"
    );
}
