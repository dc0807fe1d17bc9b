//! End-to-end throughput: preload N events into a private redis-server, run the release
//! binary against a counting collector on 127.0.0.1, report events per second.
//!
//! `cargo bench --bench relay -- [--events N] [--method get|post] [--buffer-size N]
//!  [--byte-limit BYTES] [--max-requests-in-flight N]`
//!
//! A benchmark, not a test: it prints numbers and fails only if events go missing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Counts events: one `"stm":"` per POST item, one request per GET.
async fn counting_collector(count: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let is_get = request.method() == hyper::Method::GET;
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let events = if is_get {
                            1
                        } else {
                            body.windows(7).filter(|w| w == b"\"stm\":\"").count() as u64
                        };
                        count.fetch_add(events, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: usize = arg(&args, "--events").map_or(100_000, |v| v.parse().unwrap());
    let method = arg(&args, "--method").unwrap_or_else(|| "post".into());
    let buffer_size = arg(&args, "--buffer-size");
    let byte_limit = arg(&args, "--byte-limit");
    let in_flight = arg(&args, "--max-requests-in-flight");

    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "snowplow-relay"])
        .status()
        .unwrap();
    assert!(status.success());
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/snowplow-relay");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = common::RedisServer::start();
        let count = Arc::new(AtomicU64::new(0));
        let collector = counting_collector(count.clone()).await;
        redis.rpush("snowplow", &common::numbered_events(events));

        let mut command = Command::new(binary);
        command
            .args([
                "--redis-url",
                &redis.url(),
                "--collector",
                &format!("http://{collector}"),
                "--method",
                &method,
            ])
            .args(["--log-level", "warn"])
            .stderr(Stdio::inherit());
        if let Some(n) = &buffer_size {
            command.args(["--buffer-size", n]);
        }
        if let Some(n) = &byte_limit {
            command.args(["--byte-limit", n]);
        }
        if let Some(n) = &in_flight {
            command.env("SNOWPLOW_RELAY_COLLECTOR__MAX_REQUESTS_IN_FLIGHT", n);
        }
        let started = Instant::now();
        let mut child = command.spawn().unwrap();
        let deadline = started + Duration::from_secs(600);
        while count.load(Ordering::Relaxed) < events as u64 {
            assert!(
                Instant::now() < deadline,
                "only {} of {events} arrived",
                count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let rate = events as f64 / elapsed.as_secs_f64();
        println!(
            "method={method} buffer_size={} events={events} seconds={:.3} events_per_second={:.0}",
            buffer_size.as_deref().unwrap_or("default"),
            elapsed.as_secs_f64(),
            rate
        );
        assert_eq!(redis.llen("snowplow"), 0);
    });
}
