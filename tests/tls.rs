//! TLS and credentials end to end (issue 9): an HTTPS collector with a private CA (and
//! mutual TLS), Redis over TLS (`rediss://`, CA file, client certificates), Redis ACL
//! users with a password file, and the errors each misconfiguration gives. Real
//! redis-server with `--tls-port`, certificates made by `openssl`, and the relay binary
//! run as a process.

use std::time::Duration;

use crate::support::*;

/// The binary at trace level (and the harness's fast collector retries).
fn relay(redis_url: &str, collector_url: &str, env: &[(&str, &str)]) -> RelayProcess {
    let trace = [("SNOWPLOW_RELAY_LOG__LEVEL", "trace")];
    RelayProcess::start(redis_url, collector_url, &[&trace[..], env].concat())
}

/// SIGTERM, then the exit code and everything the relay logged.
async fn stop(child: RelayProcess) -> (Option<i32>, String) {
    let finished = child.stop(Duration::from_secs(20)).await;
    (finished.status.code(), finished.log)
}

/// Waits for the relay to report a failed collector request, stops it (exit 0) and
/// returns its log.
async fn stop_after_a_failed_request(child: RelayProcess) -> String {
    child
        .log_line("collector request failed", Duration::from_secs(10))
        .await;
    let (code, log) = stop(child).await;
    assert_eq!(code, Some(0), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_with_a_private_ca_and_mutual_tls() {
    let certs = Certs::new();
    let collector = Collector::start_tls(&certs, true).await;
    let redis = RedisServer::start();
    redis.rpush(LIST, &numbered_events(50));
    let ca = certs.path("ca.pem");
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    let settings = [
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
    ];
    let child = relay(&redis.url(), &collector.https_url(), &settings);
    collector.until_exactly_delivered(50, 15).await;
    child.stop_cleanly().await;

    // The same collector, without the client certificate: refused, retried, not sent.
    redis.rpush(LIST, &numbered_events(5));
    let settings = [
        ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", ca.as_str()),
        ("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300"),
    ];
    let child = relay(&redis.url(), &collector.https_url(), &settings);
    stop_after_a_failed_request(child).await;
    assert_eq!(
        collector.delivered().len(),
        50,
        "nothing more without a client certificate"
    );
    assert_eq!(redis.llen(LIST), 5, "all back in the list");

    // A collector whose certificate the relay does not trust: never delivered.
    let other = certs.path("other.pem");
    let settings = [
        ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", other.as_str()),
        ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_ONLY", "true"),
        ("SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS", "300"),
    ];
    let child = relay(&redis.url(), &collector.https_url(), &settings);
    let log = stop_after_a_failed_request(child).await;
    assert_eq!(redis.llen(LIST), 5);
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_ca_file_and_client_certificates() {
    let certs = Certs::new();
    let redis = RedisServer::start_tls(&certs, true);
    let collector = Collector::start().await;
    redis.rpush(LIST, &numbered_events(30));
    let url = redis.tls_url();
    let ca = certs.path("ca.pem");
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    let settings = [
        ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str()),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", cert.as_str()),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", key.as_str()),
    ];
    let child = relay(&url, &collector.url(), &settings);
    collector.until_exactly_delivered(30, 15).await;
    child.stop_cleanly().await;
    assert_eq!(redis.llen(LIST), 0);

    // The dead-letter tools speak TLS too.
    let count = run_bin(
        &["--redis-url", &url, "dead-letter", "count"],
        &[
            ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", &ca),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", &cert),
            ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", &key),
        ],
    );
    assert!(count.status.success(), "{count:?}");
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "0");

    // A CA that did not sign Redis's certificate: every warning says it is a
    // certificate problem, naming the host and the file.
    let other = certs.path("other.pem");
    let settings = [
        ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", other.as_str()),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", cert.as_str()),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", key.as_str()),
    ];
    let child = relay(&url, &collector.url(), &settings);
    redis.rpush(LIST, &numbered_events(7));
    let warning = child
        .log_line("cannot set up TLS with Redis", Duration::from_secs(10))
        .await;
    stop(child).await;
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
        &url,
        &collector.url(),
        &[("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str())],
    );
    let refused = |log: &str| {
        log.contains("cannot set up TLS with Redis") || log.contains("cannot reach Redis")
    };
    wait_until("the refusal is logged", 10, async || refused(&child.log())).await;
    stop(child).await;
    assert_eq!(
        redis.llen(LIST),
        7,
        "nothing claimed without a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_without_client_certificates_and_a_collector_ca_added_to_the_roots() {
    let certs = Certs::new();
    let redis = RedisServer::start_tls(&certs, false);
    let collector = Collector::start_tls(&certs, false).await;
    redis.rpush(LIST, &numbered_events(20));
    let url = redis.tls_url();
    let ca = certs.path("ca.pem");
    let settings = [
        ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str()),
        // Added to the system's roots (tls_ca_only is off).
        ("SNOWPLOW_RELAY_COLLECTOR__TLS_CA_FILE", ca.as_str()),
    ];
    let child = relay(&url, &collector.https_url(), &settings);
    collector.until_exactly_delivered(20, 15).await;
    child.stop_cleanly().await;

    // A machine without a CA bundle (a minimal image, a fresh chroot): the CA files
    // given are still trusted, for Redis and for the collector.
    redis.rpush(LIST, &numbered_events(5));
    let empty = tempfile::tempdir().unwrap();
    let bundle = empty.path().join("ca-certificates.crt");
    std::fs::write(&bundle, "").unwrap();
    let no_system_roots = [
        ("SSL_CERT_FILE", bundle.to_str().unwrap()),
        ("SSL_CERT_DIR", empty.path().to_str().unwrap()),
    ];
    let child = relay(
        &url,
        &collector.https_url(),
        &[&settings[..], &no_system_roots].concat(),
    );
    collector.until_exactly_delivered(25, 15).await;
    child.stop_cleanly().await;

    // No CA file for Redis, certificate checks off: Redis's certificate (from a CA no
    // one trusts) is accepted, by claims and every other call alike.
    redis.rpush(LIST, &numbered_events(5));
    let insecure = [
        ("SNOWPLOW_RELAY_REDIS__TLS_INSECURE_SKIP_VERIFY", "true"),
        settings[1],
    ];
    let child = relay(&url, &collector.https_url(), &insecure);
    collector.until_exactly_delivered(30, 15).await;
    child.stop_cleanly().await;
    assert_eq!(redis.llen(LIST), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subcommand_and_no_failure_path_prints_a_secret_at_trace_level() {
    let redis = RedisServer::start();
    redis.add_user("relay", "redis-secret-1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "file-secret-2\n").unwrap();
    // Nothing answers on this port: Redis, collector, proxy and admin listener there
    // are all refused.
    let closed = ClosedPort::new();
    let good_url = format!("redis://relay:redis-secret-1@127.0.0.1:{}", redis.port);
    let bad_url = format!("redis://relay:redis-secret-1@127.0.0.1:{}", closed.port);
    let user_only = format!("redis://relay@127.0.0.1:{}", redis.port);
    let collector = &format!(
        "http://collector-user:collector-secret-3@127.0.0.1:{}",
        closed.port
    );
    let proxy = &format!("http://proxy-user:proxy-secret-4@127.0.0.1:{}", closed.port);
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
    let admin_listen = format!("127.0.0.1:{}", closed.port);
    let admin = [("SNOWPLOW_RELAY_ADMIN__LISTEN", admin_listen.as_str())];
    /// One subcommand run: the Redis URL, the arguments, more environment.
    struct Run<'a> {
        url: &'a str,
        args: &'a [&'a str],
        env: &'a [(&'a str, &'a str)],
    }
    let runs = [
        Run {
            url: &good_url,
            args: &["check"],
            env: &[],
        },
        Run {
            url: &good_url,
            args: &["dead-letter", "count"],
            env: &[],
        },
        Run {
            url: &good_url,
            args: &["dead-letter", "list"],
            env: &[],
        },
        Run {
            url: &good_url,
            args: &["dead-letter", "replay"],
            env: &[],
        },
        Run {
            url: &good_url,
            args: &["healthcheck"],
            env: &admin,
        },
        Run {
            url: &bad_url,
            args: &["dead-letter", "count"],
            env: &[],
        },
        Run {
            url: &user_only,
            args: &["check"],
            env: &password_file,
        },
        Run {
            url: &user_only,
            args: &["dead-letter", "count"],
            env: &password_file,
        },
    ];
    for Run { url, args, env } in runs {
        let trace = [
            ("RUST_LOG", "trace"),
            ("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy),
        ];
        let out = run_bin(
            &[&["--redis-url", url, "--collector", collector], args].concat(),
            &[&trace[..], env].concat(),
        );
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
        let settings: [(&str, &str); 2] = [
            ("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy),
            ("RUST_LOG", "trace"),
        ];
        let child = relay(url, collector, &settings);
        // Redis reachable: the collector fails; unreachable: Redis does.
        let failing = if url == &bad_url {
            "cannot reach Redis"
        } else {
            "collector request failed"
        };
        child.log_line(failing, Duration::from_secs(10)).await;
        let (_, log) = stop(child).await;
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
    redis.add_user("relay", "s3cret-pw");
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
    let settings = [
        ("SNOWPLOW_RELAY_REDIS__USERNAME", "relay"),
        ("SNOWPLOW_RELAY_REDIS__PASSWORD_FILE", file_arg.as_str()),
    ];
    let child = relay(&redis.url(), &collector.url(), &settings);
    collector.until_exactly_delivered(20, 15).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    assert!(clients.contains("user=relay"), "{clients}");
    let log = child.stop_cleanly().await;
    assert!(log.contains("can be read by every user"), "{log}");
    assert!(!log.contains("s3cret-pw"), "{log}");

    // A wrong password from the environment at start-up: a configuration error (exit 2,
    // not retried for ever), naming the user and the source.
    let settings = [
        ("SNOWPLOW_RELAY_REDIS__USERNAME", "relay"),
        ("SNOWPLOW_RELAY_REDIS__PASSWORD", "wrong-pw-123"),
    ];
    let child = relay(&redis.url(), &collector.url(), &settings);
    let Finished { status, log, .. } = child.finish(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    let error = log
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        error.contains("`relay`") && error.contains("SNOWPLOW_RELAY_REDIS__PASSWORD"),
        "{error}"
    );
    assert!(
        !log.contains("wrong-pw-123"),
        "the password is in the log:\n{log}"
    );

    // `check` masks the inline password.
    let check = run_bin(
        &["--collector", &collector.url(), "check"],
        &[("SNOWPLOW_RELAY_REDIS__PASSWORD", "wrong-pw-123")],
    );
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        !shown.contains("wrong-pw-123") && shown.contains("password = \"****\""),
        "{shown}"
    );
}

#[test]
fn tls_settings_are_checked_at_start_up() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
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
        let out = run_bin(
            &["--collector", "https://collector.example.com", "check"],
            env,
        );
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
    // The collector's own user and password go in `Authorization`, never in the request
    // line the proxy reads (hyper wrote them there).
    let child = relay(
        &redis.url(),
        "http://relay:relay-pw@collector.invalid",
        &[("SNOWPLOW_RELAY_COLLECTOR__PROXY", proxy_url.as_str())],
    );
    proxy.until_requests(1, 10).await;
    let log = child.stop_cleanly().await;
    let request = &proxy.requests()[0];
    assert!(request.headers.contains_key("proxy-authorization"));
    assert_eq!(
        request.headers["authorization"],
        "Basic cmVsYXk6cmVsYXktcHc="
    );
    assert!(
        request
            .target
            .starts_with("http://collector.invalid/com.snowplowanalytics.snowplow/tp2"),
        "{}",
        request.target
    );
    for secret in ["proxy-pw", "proxyuser", "relay-pw"] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_variables_and_a_user_in_the_collector_url_are_honoured() {
    // A proxy variable that applies, NO_PROXY, a user and password in the URL.
    let redis = RedisServer::start();
    let proxy = Collector::start().await;
    let collector = Collector::start().await;
    let proxy_url = format!("http://{}", proxy.addr);
    let through_proxy = [("HTTP_PROXY", proxy_url.as_str())];
    let no_proxy = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("NO_PROXY", "127.0.0.1"),
    ];
    let with_user = collector.url().replace("http://", "http://relay:pw@");
    let direct = collector.url();
    /// The collector URL, the environment, who receives, how many it has received then.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a Collector, usize);
    let cases: [Case; 3] = [
        ("http://collector.invalid", &through_proxy, &proxy, 3),
        (&direct, &no_proxy, &collector, 3),
        (&with_user, &[], &collector, 6),
    ];
    for (url, env, receiver, total) in cases {
        redis.rpush(LIST, &numbered_events(3));
        let child = relay(&redis.url(), url, env);
        receiver.until_exactly_delivered(total, 10).await;
        child.stop_cleanly().await;
    }
    assert_eq!(
        proxy.delivered_count(),
        3,
        "NO_PROXY: nothing more through the proxy"
    );
    // A user and password in the URL: sent as Basic authorization.
    let last = collector.requests().pop().unwrap();
    assert_eq!(last.headers["authorization"], "Basic cmVsYXk6cHc=");
}

#[test]
fn check_warns_about_every_secret_file_every_user_can_read() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let readable_copy = |name: &str| {
        let copy = dir.path().join(name);
        std::fs::copy(certs.path("client.key"), &copy).unwrap();
        copy.to_str().unwrap().to_owned()
    };
    let (redis_key, collector_key) = (readable_copy("redis.key"), readable_copy("collector.key"));
    let chmod = |mode: u32| {
        for file in [password.to_str().unwrap(), &redis_key, &collector_key] {
            let permissions = std::os::unix::fs::PermissionsExt::from_mode(mode);
            std::fs::set_permissions(file, permissions).unwrap();
        }
    };
    chmod(0o644);
    let client_cert = certs.path("client.pem");
    let env = [
        ("SNOWPLOW_RELAY_REDIS__URL", "rediss://127.0.0.1:1"),
        (
            "SNOWPLOW_RELAY_REDIS__PASSWORD_FILE",
            password.to_str().unwrap(),
        ),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_CERT_FILE", &client_cert),
        ("SNOWPLOW_RELAY_REDIS__TLS_CLIENT_KEY_FILE", &redis_key),
        (
            "SNOWPLOW_RELAY_COLLECTOR__TLS_CLIENT_CERT_FILE",
            &client_cert,
        ),
        (
            "SNOWPLOW_RELAY_COLLECTOR__TLS_CLIENT_KEY_FILE",
            &collector_key,
        ),
    ];
    let output = run_bin(
        &["--collector", "https://collector.example.com", "check"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for key in [
        "redis.password_file",
        "redis.tls_client_key_file",
        "collector.tls_client_key_file",
    ] {
        assert!(
            stderr.contains(&format!("{key} ")) && stderr.contains("can be read by every user"),
            "no warning for {key}: {stderr}"
        );
    }
    assert_eq!(
        stderr.matches("can be read by every user").count(),
        3,
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");

    // chmod 600: no warning.
    chmod(0o600);
    let output = run_bin(
        &["--collector", "https://collector.example.com", "check"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("can be read by every user"), "{stderr}");
}
