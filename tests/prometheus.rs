//! What Prometheus users run against the relay: `promtool check metrics` on a live
//! scrape, every labelled series present from start-up, OpenMetrics on request, and the
//! shipped alerting rules and Grafana dashboard checked by `promtool` against the metrics
//! the relay really serves.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use snowplow_relay::ops::metrics::{Format, Metrics};

use crate::support::*;

/// Runs `promtool` (Debian: `apt-get install prometheus`) with `stdin`.
fn promtool(args: &[&str], dir: &Path, stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// The metric names a scrape in the Prometheus text format declares (`# TYPE` lines).
fn declared_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_scrape_passes_promtool_and_every_series_exists_from_start_up() {
    // Before: OpenMetrics only, which `promtool check metrics` refused ("no help text"
    // for every counter), and labelled series appeared only at their first increment.
    let (redis, collector) = setup(always(200)).await;
    let (relay, addr) = RelayProcess::with_admin(&redis, &collector).await;
    let (status, content_type, text) = http_get_with(addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let lint = promtool(&["check", "metrics"], Path::new("."), &text);
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // Nothing has happened yet: every labelled series is there, at 0.
    let zeros = [
        "snowplow_relay_requests_total{class=\"2xx\",code=\"200\"} 0",
        "snowplow_relay_requests_total{class=\"4xx\",code=\"413\"} 0",
        "snowplow_relay_requests_total{class=\"4xx\",code=\"400\"} 0",
        "snowplow_relay_requests_total{class=\"3xx\",code=\"302\"} 0",
        "snowplow_relay_requests_total{class=\"5xx\",code=\"other\"} 0",
        "snowplow_relay_requests_total{class=\"transport_error\",code=\"none\"} 0",
        "snowplow_relay_redis_errors_total{operation=\"claim\"} 0",
        "snowplow_relay_redis_errors_total{operation=\"heartbeat\"} 0",
        "snowplow_relay_events_dead_lettered_total{reason=\"failed_alone\"} 0",
        "snowplow_relay_request_bytes_total 0",
        "snowplow_relay_in_flight_events 0",
        "snowplow_relay_in_flight_bytes 0",
    ];
    assert_all_present(&text.lines().collect::<Vec<_>>(), &zeros);
    // A scraper that asks for OpenMetrics gets it.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, content_type, open) = http_get_with(addr, "/metrics", &[("accept", accept)]).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE snowplow_relay_events_delivered counter"));
    assert!(open.contains("snowplow_relay_events_delivered_total 0"));

    // After traffic the counters move and the text still lints clean.
    redis.rpush(LIST, &numbered_events(20));
    collector.until_exactly_delivered(20, 20).await;
    wait_until("delivered counted", 10, async || {
        let text = http_get(addr, "/metrics").await.1;
        text.contains("snowplow_relay_events_delivered_total 20")
    })
    .await;
    let text = http_get(addr, "/metrics").await.1;
    let lint = promtool(&["check", "metrics"], Path::new("."), &text);
    assert!(lint.status.success(), "{lint:?}");
    assert!(
        !text.contains("snowplow_relay_request_bytes_total 0\n"),
        "{text}"
    );
    relay.stop_cleanly().await;
}

#[test]
fn the_alert_rules_load_and_their_unit_tests_prove_each_alert() {
    let dir = deploy("prometheus");
    let check = promtool(&["check", "rules", "alerts.yml"], &dir, "");
    assert!(check.status.success(), "{check:?}");
    let test = promtool(&["test", "rules", "alerts.test.yml"], &dir, "");
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );
    // Every alert has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let fires = tests.split("alertname: ").skip(1).any(|test| {
            test.starts_with(alert)
                && test[alert.len()..].starts_with('\n')
                && test.contains("exp_labels")
                && test.find("exp_labels") < test.find("alertname").or(Some(usize::MAX))
        });
        assert!(fires, "no test shows {alert} firing");
    }
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_the_relay_serves_in_valid_promql() {
    let served = declared_names(&Metrics::new().encode(Format::Prometheus));
    let histogram_series = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .is_some_and(|base| served.contains(base))
    };
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/snowplow-relay.json")).unwrap(),
    )
    .unwrap();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(expressions.len() >= 10);
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let names = regex_names(&format!("{rules}\n{}", expressions.join("\n")));
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(
            served.contains(name) || histogram_series(name),
            "{name} is not a metric the relay serves: {served:?}"
        );
    }
    // Each panel's query is valid PromQL: promtool parses them as recording rules (with
    // Grafana's variables given values).
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in expressions.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        file.push_str(&format!(
            "      - record: dashboard:panel{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), file).unwrap();
    let check = promtool(&["check", "rules", "dashboard.yml"], dir.path(), "");
    assert!(check.status.success(), "{check:?}");
}

/// The `snowplow_relay_…` names in `text`.
fn regex_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("snowplow_relay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Each request is counted as the collector answered it: a 204 as `class="2xx"`,
/// `code="other"` (never as 200), both requests of a cookie bounce (its 302 too), and an
/// event that was never sent (its GET URL over `collector.byte_limit`) as no request at
/// all. (On 582e716: 204 counted as 200, the 302 never counted, and the unsent event
/// counted as a failed request with a duration.)
#[tokio::test]
async fn requests_are_counted_as_the_collector_answered_them() {
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let (redis, collector) = setup(always(204)).await;
    collector.bounce_cookies("n3pc");
    let (relay, addr) = RelayProcess::with_admin(&redis, &collector).await;
    redis.rpush(LIST, &numbered_events(10));
    collector.until_exactly_delivered(10, 20).await;
    wait_until("delivered counted", 10, async || {
        let text = http_get(addr, "/metrics").await.1;
        text.contains("snowplow_relay_events_delivered_total 10")
    })
    .await;
    let text = http_get(addr, "/metrics").await.1;
    let answered_204 = collector
        .requests()
        .iter()
        .filter(|r| r.query.as_deref().is_some_and(|q| q.contains("n3pc")))
        .count() as f64;
    assert!(answered_204 >= 1.0);
    assert_eq!(
        value(
            &text,
            "snowplow_relay_requests_total{class=\"2xx\",code=\"other\"}"
        ),
        answered_204,
        "each 204 as class 2xx, code other"
    );
    assert_eq!(
        value(
            &text,
            "snowplow_relay_requests_total{class=\"2xx\",code=\"200\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "snowplow_relay_requests_total{class=\"3xx\",code=\"302\"}"
        ),
        collector.requests().len() as f64 - answered_204,
        "each bounce's 302"
    );
    relay.stop_cleanly().await;

    // An event whose GET URL would be over byte_limit is never sent: dead-lettered, and
    // no request counted.
    let (redis, collector) = setup(always(200)).await;
    let relay = RelayProcess::between(
        &redis,
        &collector,
        &[
            ("SNOWPLOW_RELAY_ADMIN__LISTEN", "127.0.0.1:0"),
            ("SNOWPLOW_RELAY_COLLECTOR__METHOD", "get"),
            ("SNOWPLOW_RELAY_COLLECTOR__BYTE_LIMIT", "300"),
        ],
    );
    let addr = relay.admin_addr().await;
    // 180 bytes as JSON, over 400 as a URL query (each é is %C3%A9).
    let wide = format!(
        r#"{{"e":"pv","p":"pc","tv":"t","eid":"wide-1","url":"{}"}}"#,
        "é".repeat(60)
    );
    redis.rpush(LIST, &[wide]);
    wait_until("dead-lettered", 20, async || redis.llen(DEAD) == 1).await;
    wait_until("counted", 10, async || {
        let text = http_get(addr, "/metrics").await.1;
        text.contains("snowplow_relay_events_dead_lettered_total{reason=\"unsendable\"} 1")
    })
    .await;
    let text = http_get(addr, "/metrics").await.1;
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("snowplow_relay_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(requests, 0.0, "no request was made:\n{text}");
    assert!(collector.requests().is_empty());
    relay.stop_cleanly().await;
}

/// Every rule links its own runbook section under the one base URL
/// (`snowplow_relay::DOCS_URL`), and so does the unit's `Documentation=`. (That each
/// section exists: `docs::every_pointer_into_the_documents_names_a_file_and_section_that_exist`.)
#[test]
fn every_alert_links_its_runbook_section_under_the_one_docs_url() {
    let rules = std::fs::read_to_string(deploy("prometheus").join("alerts.yml")).unwrap();
    let mut alert = None;
    let mut linked = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alert = Some(name);
        }
        if let Some(url) = line.strip_prefix("runbook_url: ") {
            let name = alert
                .take()
                .expect("a runbook_url inside a rule, one per rule");
            assert_eq!(
                url.trim_matches('"'),
                format!(
                    "{}operations.md#{}",
                    snowplow_relay::DOCS_URL,
                    name.to_lowercase()
                )
            );
            linked.push(name);
        }
    }
    assert_eq!(
        linked.len(),
        rules.matches("- alert: ").count(),
        "{linked:?}"
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/snowplow-relay.service"),
    )
    .unwrap();
    let documentation = unit
        .lines()
        .find_map(|line| line.strip_prefix("Documentation="))
        .unwrap();
    assert!(
        documentation.starts_with(snowplow_relay::DOCS_URL),
        "{documentation}"
    );
}

/// The value of the unlabelled series `name` in a scrape.
fn value_of(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{text}"))
        .parse()
        .unwrap()
}

/// The process's series under the names every client library uses, with values that
/// match what the kernel says of the process; and the readiness gauge following what
/// /readyz answers (0 while Redis cannot be reached, 1 once relaying).
#[tokio::test]
async fn process_series_and_readiness_are_scraped_under_their_standard_names() {
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    let nowhere = ClosedPort::new();
    let waiting = RelayProcess::start_with_settings(
        &nowhere.redis_url(),
        &collector.url(),
        &[("admin.listen", "127.0.0.1:0")],
    );
    let addr = waiting.admin_addr().await;
    let text = http_get(addr, "/metrics").await.1;
    assert_eq!(value_of(&text, "snowplow_relay_ready"), 0.0);
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    drop(waiting);

    let (relay, addr) = RelayProcess::with_admin(&redis, &collector).await;
    wait_until("ready", 20, async || {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let text = http_get(addr, "/metrics").await.1;
    assert_eq!(value_of(&text, "snowplow_relay_ready"), 1.0);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
    ] {
        value_of(&text, name);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let kernel_rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let rss = value_of(&text, "process_resident_memory_bytes");
    assert!(
        (rss / (kernel_rss_kb * 1024.0) - 1.0).abs() < 0.5,
        "{rss} bytes scraped, {kernel_rss_kb} kB in /proc"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .unwrap()
        .count() as f64;
    let open = value_of(&text, "process_open_fds");
    assert!((open - fds).abs() <= 5.0, "{open} scraped, {fds} in /proc");
    assert!(value_of(&text, "process_max_fds") >= open);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value_of(&text, "process_start_time_seconds");
    assert!(
        started <= now && started > now - 60.0,
        "{started} vs now {now}"
    );
    assert!(value_of(&text, "process_cpu_seconds_total") >= 0.0);
    relay.stop_cleanly().await;
}
