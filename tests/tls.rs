//! TLS and credentials end to end (issue 9): an HTTPS collector with a private CA (and
//! mutual TLS), Redis over TLS (`rediss://`, CA file, client certificates), Redis ACL
//! users with a password file, and the errors each misconfiguration gives. Real
//! redis-server with `--tls-port`, certificates made by `openssl`, and the relay binary
//! run as a process.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIST: &str = "snowplow";

fn bin() -> String {
    std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_snowplow-relay").to_owned())
}

fn relay(args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(bin())
        .args(args)
        .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_INITIAL_BACKOFF_MS", "20")
        .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_MAX_BACKOFF_MS", "200")
        .env("SNOWPLOW_RELAY_LOG__LEVEL", "trace")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then the exit code and everything the relay logged.
fn stop(mut child: Child) -> (Option<i32>, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait(&mut child)
}

fn wait(child: &mut Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the relay did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    (status.code(), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_with_a_private_ca_and_mutual_tls() {
    let certs = Certs::new();
    let collector = Collector::start_tls(&certs, true).await;
    let redis = RedisServer::start();
    redis.rpush(LIST, &numbered_events(50));
    let ca = certs.path("ca.pem");
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    let child = relay(
        &[
            "--redis-url",
            &redis.url(),
            "--collector",
            &collector.https_url(),
        ],
        &[
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", ca.as_str()),
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_ONLY", "true"),
            (
                "SNOWPLOW_RELAY_COLLECTOR__TLS_CLIENT_CERT_FILE",
                cert.as_str(),
            ),
            (
                "SNOWPLOW_RELAY_COLLECTOR__TLS_CLIENT_KEY_FILE",
                key.as_str(),
            ),
        ],
    );
    wait_until("delivered over mutual TLS", Duration::from_secs(15), || {
        collector.delivered().len() == 50
    })
    .await;
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");

    // The same collector, without the client certificate: refused, retried, not sent.
    redis.rpush(LIST, &numbered_events(5));
    let child = relay(
        &[
            "--redis-url",
            &redis.url(),
            "--collector",
            &collector.https_url(),
        ],
        &[
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", ca.as_str()),
            ("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _) = stop(child);
    assert_eq!(code, Some(0));
    assert_eq!(
        collector.delivered().len(),
        50,
        "nothing more without a client certificate"
    );
    assert_eq!(redis.llen(LIST), 5, "all back in the list");

    // A collector whose certificate the relay does not trust: never delivered.
    let other = certs.path("other.pem");
    let child = relay(
        &[
            "--redis-url",
            &redis.url(),
            "--collector",
            &collector.https_url(),
        ],
        &[
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", other.as_str()),
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_ONLY", "true"),
            ("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, log) = stop(child);
    assert_eq!(code, Some(0));
    assert_eq!(redis.llen(LIST), 5);
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_ca_file_and_client_certificates() {
    let certs = Certs::new();
    let (redis, tls_port) = RedisServer::start_tls(&certs, true);
    let collector = Collector::start().await;
    redis.rpush(LIST, &numbered_events(30));
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = certs.path("ca.pem");
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    let child = relay(
        &["--redis-url", &url, "--collector", &collector.url()],
        &[
            ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str()),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", cert.as_str()),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", key.as_str()),
        ],
    );
    wait_until(
        "delivered from Redis over TLS",
        Duration::from_secs(15),
        || collector.delivered().len() == 30,
    )
    .await;
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(redis.llen(LIST), 0);

    // The dead-letter tools speak TLS too.
    let count = Command::new(bin())
        .args(["--redis-url", &url, "dead-letter", "count"])
        .env("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", &ca)
        .env("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", &cert)
        .env("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(count.status.success(), "{count:?}");
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "0");

    // A CA that did not sign Redis's certificate: every warning says it is a
    // certificate problem, naming the host and the file.
    let other = certs.path("other.pem");
    let child = relay(
        &["--redis-url", &url, "--collector", &collector.url()],
        &[
            ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", other.as_str()),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", cert.as_str()),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", key.as_str()),
        ],
    );
    redis.rpush(LIST, &numbered_events(7));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, log) = stop(child);
    let warning = log
        .lines()
        .find(|l| l.contains("cannot set up TLS with Redis"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        warning.contains("127.0.0.1") && warning.contains("other.pem"),
        "{warning}"
    );
    assert_eq!(
        redis.llen(LIST),
        7,
        "nothing claimed over an untrusted connection"
    );
    assert_eq!(collector.delivered().len(), 30);

    // Without a client certificate, against a server that requires one: refused too.
    let child = relay(
        &["--redis-url", &url, "--collector", &collector.url()],
        &[("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str())],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, log) = stop(child);
    assert!(
        log.contains("cannot set up TLS with Redis") || log.contains("cannot reach Redis"),
        "{log}"
    );
    assert_eq!(
        redis.llen(LIST),
        7,
        "nothing claimed without a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_without_client_certificates_and_a_collector_ca_added_to_the_roots() {
    let certs = Certs::new();
    let (redis, tls_port) = RedisServer::start_tls(&certs, false);
    let collector = Collector::start_tls(&certs, false).await;
    redis.rpush(LIST, &numbered_events(20));
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = certs.path("ca.pem");
    let child = relay(
        &["--redis-url", &url, "--collector", &collector.https_url()],
        &[
            ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str()),
            // Added to the system's roots (tls_ca_only is off).
            ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", ca.as_str()),
        ],
    );
    wait_until("delivered", Duration::from_secs(15), || {
        collector.delivered().len() == 20
    })
    .await;
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subcommand_and_no_failure_path_prints_a_secret_at_trace_level() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("relay")
        .arg("on")
        .arg(">redis-secret-1")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut redis.conn())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "file-secret-2\n").unwrap();
    let good_url = format!("redis://relay:redis-secret-1@127.0.0.1:{}", redis.port);
    let bad_url = format!("redis://relay:redis-secret-1@127.0.0.1:{}", free_port());
    let user_only = format!("redis://relay@127.0.0.1:{}", redis.port);
    let collector = "http://collector-user:collector-secret-3@127.0.0.1:9";
    let proxy = "http://proxy-user:proxy-secret-4@127.0.0.1:9";
    let secrets = [
        "redis-secret-1",
        "file-secret-2",
        "collector-secret-3",
        "proxy-secret-4",
        "collector-user",
        "proxy-user",
    ];
    let file_arg = file.to_str().unwrap().to_owned();
    let password_file = [("SNOWPLOW_RELAY_REDIS__PASSWORD_FILE", file_arg.as_str())];
    let admin = [("SNOWPLOW_RELAY_ADMIN__LISTEN", "127.0.0.1:9")];
    let runs: Vec<(&str, Vec<&str>, &[(&str, &str)])> = vec![
        (good_url.as_str(), vec!["check"], &[]),
        (good_url.as_str(), vec!["dead-letter", "count"], &[]),
        (good_url.as_str(), vec!["dead-letter", "list"], &[]),
        (good_url.as_str(), vec!["dead-letter", "replay"], &[]),
        (good_url.as_str(), vec!["healthcheck"], &admin),
        (bad_url.as_str(), vec!["dead-letter", "count"], &[]),
        (user_only.as_str(), vec!["check"], &password_file),
        (
            user_only.as_str(),
            vec!["dead-letter", "count"],
            &password_file,
        ),
    ];
    for (url, args, env) in runs {
        let out = Command::new(bin())
            .args(["--redis-url", url, "--collector", collector])
            .args(&args)
            .env("RUST_LOG", "trace")
            .env("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in secrets {
            assert!(
                !all.contains(secret),
                "{args:?}: `{secret}` printed:\n{all}"
            );
        }
    }
    // The daemon with Redis reachable and unreachable, the collector failing, at trace.
    redis.rpush(LIST, &numbered_events(5));
    for url in [&good_url, &bad_url] {
        let child = relay(
            &["--redis-url", url, "--collector", collector],
            &[
                ("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy),
                ("RUST_LOG", "trace"),
            ],
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (_, log) = stop(child);
        assert!(
            log.contains("TRACE") || url == &bad_url,
            "ran at trace:\n{log}"
        );
        assert!(log.contains("snowplow-relay starting"), "{log}");
        for secret in secrets {
            assert!(!log.contains(secret), "`{secret}` printed:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_and_password_files_and_refusals_that_never_show_the_password() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("relay")
        .arg("on")
        .arg(">s3cret-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut redis.conn())
        .unwrap();
    let collector = Collector::start().await;
    redis.rpush(LIST, &numbered_events(20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&file).unwrap().permissions(),
        0o644,
    );
    let file_arg = file.to_str().unwrap().to_owned();
    let child = relay(
        &["--redis-url", &redis.url(), "--collector", &collector.url()],
        &[
            ("SNOWPLOW_RELAY_REDIS__USERNAME", "relay"),
            ("SNOWPLOW_RELAY_REDIS__PASSWORD_FILE", file_arg.as_str()),
        ],
    );
    wait_until("delivered as user relay", Duration::from_secs(15), || {
        collector.delivered().len() == 20
    })
    .await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    assert!(clients.contains("user=relay"), "{clients}");
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("can be read by every user"), "{log}");
    assert!(!log.contains("s3cret-pw"), "{log}");

    // A wrong password from the environment: the warning names the user and the source.
    let child = relay(
        &["--redis-url", &redis.url(), "--collector", &collector.url()],
        &[
            ("SNOWPLOW_RELAY_REDIS__USERNAME", "relay"),
            ("SNOWPLOW_RELAY_REDIS__PASSWORD", "wrong-pw-123"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, log) = stop(child);
    let warning = log
        .lines()
        .find(|l| l.contains("cannot log in to Redis"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        warning.contains("`relay`") && warning.contains("SNOWPLOW_RELAY_REDIS__PASSWORD"),
        "{warning}"
    );
    assert!(
        !log.contains("wrong-pw-123"),
        "the password is in the log:\n{log}"
    );

    // `check` masks the inline password.
    let check = Command::new(bin())
        .args(["--collector", &collector.url(), "check"])
        .env("SNOWPLOW_RELAY_REDIS__PASSWORD", "wrong-pw-123")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        !shown.contains("wrong-pw-123") && shown.contains("password = \"****\""),
        "{shown}"
    );
}

#[test]
fn tls_settings_are_checked_at_start_up() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", "/nonexistent.pem")],
            "redis.tls_ca_file",
        ),
        (
            &[("SNOWPLOW_RELAY_REDIS__URL", "rediss://127.0.0.1:1#insecure")],
            "redis.tls_insecure_skip_verify",
        ),
        (
            &[
                ("SNOWPLOW_RELAY_REDIS__URL", "rediss://127.0.0.1:1"),
                (
                    "SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE",
                    "/etc/hostname",
                ),
            ],
            "redis.tls_client_key_file",
        ),
        (
            &[("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_ONLY", "true")],
            "collector.tls_ca_file",
        ),
        (
            &[
                ("SNOWPLOW_RELAY_REDIS__PASSWORD", "a"),
                ("SNOWPLOW_RELAY_REDIS__URL", "redis://:b@127.0.0.1:1"),
            ],
            "one password source",
        ),
        (
            &[("SNOWPLOW_RELAY_COLLECTOR__PROXY", "not a url")],
            "collector.proxy",
        ),
    ];
    for (env, expected) in cases {
        let out = Command::new(bin())
            .args(["--collector", "https://collector.example.com", "check"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{env:?}: `{stderr}` should say `{expected}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_masked_and_the_proxy_is_used() {
    let redis = RedisServer::start();
    // A "proxy" that is really a collector: it sees absolute-form requests.
    let proxy = Collector::start().await;
    redis.rpush(LIST, &numbered_events(3));
    let proxy_url = format!("http://proxyuser:proxy-pw@{}", proxy.addr);
    let child = relay(
        &[
            "--redis-url",
            &redis.url(),
            "--collector",
            "http://collector.invalid",
        ],
        &[("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy_url.as_str())],
    );
    wait_until(
        "the request went through the proxy",
        Duration::from_secs(10),
        || !proxy.requests().is_empty(),
    )
    .await;
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");
    let request = &proxy.requests()[0];
    assert!(request.headers.contains_key("proxy-authorization"));
    assert!(
        !log.contains("proxy-pw") && !log.contains("proxyuser"),
        "{log}"
    );
}
