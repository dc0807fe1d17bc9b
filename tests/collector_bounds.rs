//! The local collector against clients that mean harm (issue 42): bodies of a million
//! tiny items, requests with 60 KB of headers and thousands of events, small events
//! past the store's bound, connections that declare big bodies and send nothing, and
//! schemas that are slow or broken. Each measures what matters to the operator (peak
//! RSS of the process, how long `/health` or a one-event POST waits) and prints it.
//! The binary is the one built for the tests; `RELAY_BIN` runs them against another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use crate::support::{local_collector_process as collector, raw_request as request};

const TP2: &str = "POST /com.snowplowanalytics.snowplow/tp2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";

/// A payload_data body of `items` (each already JSON).
fn body_of(items: impl Iterator<Item = String>) -> Vec<u8> {
    let items: Vec<String> = items.collect();
    format!(
        r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// Runs `load` while watching the process's peak RSS (reset first: `clear_refs` 5);
/// returns it in bytes.
async fn peak_while(pid: u32, load: impl std::future::Future<Output = ()>) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let watcher = tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(peak_rss(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(peak_rss(pid).unwrap_or(0))
    });
    load.await;
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap()
}

/// Four requests at once, each `head` + `body`; their answers' statuses join `statuses`.
async fn four_at_once(
    addr: std::net::SocketAddr,
    head: &'static str,
    body: Arc<Vec<u8>>,
    statuses: &std::sync::Mutex<Vec<u16>>,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let body = body.clone();
        set.spawn(async move { request(addr, head, &body).await });
    }
    while let Some(status) = set.join_next().await {
        statuses.lock().unwrap().push(status.unwrap());
    }
}

const MB: f64 = 1e6;

/// Memory is bounded by what the collector really holds: a body's items, a request's
/// headers copied into each of its events, and each stored event's own cost. 582e716:
/// 1,358 MB for one `[1,1,…]` body, killed at 3 GB by headers, 244–273 MB for small
/// events against a 64 MiB store.
#[tokio::test]
async fn the_local_collector_holds_within_its_bounds_whatever_a_body_or_its_headers_bring() {
    holds_within_its_bounds(5_000, 2).await;
}

#[tokio::test]
#[ignore = "soak set: the figures of docs/collector.md (20,000 events per request, 640,000 small events)"]
async fn the_local_collector_holds_within_its_bounds_at_the_documented_sizes() {
    holds_within_its_bounds(20_000, 8).await;
}

/// The three hostile loads: four `[1,1,…]` bodies; four requests of `per_request` events
/// with 60 KB of headers; `rounds` of four requests of 20,000 small events.
async fn holds_within_its_bounds(per_request: usize, rounds: usize) {
    let store_mib = 32;
    let store_bytes = (store_mib * 1024 * 1024).to_string();
    let (process, addr) = collector(&["--max-store-bytes", &store_bytes]).await;
    let pid = process.pid();
    let at_start = peak_rss(pid).unwrap_or(0);
    let statuses = std::sync::Mutex::new(Vec::new());

    // 1. Four bodies of 2 MiB that are a million tiny items each.
    let ones = Arc::new(body_of((0..1_000_000).map(|_| "1".to_owned())));
    assert!(ones.len() <= 2 * 1024 * 1024);
    let peak_ones = peak_while(pid, four_at_once(addr, TP2, ones, &statuses)).await;

    // 2. Sixty headers with 1 KB names on requests of 20,000 small events each.
    let names: String = (0..60)
        .map(|i| format!("X-{i:02}-{}: v\r\n", "n".repeat(1_000)))
        .collect();
    let head: &'static str = Box::leak(format!("{TP2}{names}").into_boxed_str());
    let small = |i: usize| format!(r#"{{"e":"pv","p":"web","tv":"t","url":"http://x/{i}"}}"#);
    let events = Arc::new(body_of((0..per_request).map(small)));
    let peak_headers = peak_while(pid, four_at_once(addr, head, events, &statuses)).await;

    // 3. Small events well past the store's bound, plain headers.
    let events = Arc::new(body_of((0..20_000).map(small)));
    let peak_small = peak_while(pid, async {
        for _ in 0..rounds {
            four_at_once(addr, TP2, events.clone(), &statuses).await;
        }
    })
    .await;
    let stats = reqwest_like_get(addr, "/micro/stats").await;
    eprintln!(
        "local collector, --max-store-bytes {store_mib} MiB: RSS at start {:.1} MB; peak during 4 × [1,1,…] of 2 MiB {:.1} MB; during 4 × {per_request} events with 60 KB of headers {:.1} MB; during {} small events {:.1} MB; {stats}",
        at_start as f64 / MB,
        peak_ones as f64 / MB,
        peak_headers as f64 / MB,
        rounds * 4 * 20_000,
        peak_small as f64 / MB,
    );
    let statuses = statuses.into_inner().unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let bound = (store_mib as u64 + 160) * 1024 * 1024;
    for (what, peak) in [
        ("[1,1,…]", peak_ones),
        ("60 KB of headers", peak_headers),
        ("small events", peak_small),
    ] {
        assert!(
            peak <= bound,
            "{what}: peak RSS {:.1} MB over {:.1} MB",
            peak as f64 / MB,
            bound as f64 / MB
        );
    }
    let status = request(addr, "GET /health HTTP/1.1\r\nHost: x\r\n", b"").await;
    assert_eq!(status, 200);
    process.stop_cleanly().await;
}

/// The answer of a GET, as text.
async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(answer)
}

/// Connections that declare 2 MiB bodies and send nothing hold no share of the body
/// budget: a one-event POST is answered at once (582e716: 9.5 s).
#[tokio::test]
async fn bodies_that_never_come_hold_up_no_one() {
    let (process, addr) = collector(&[]).await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{TP2}Content-Length: {}\r\n\r\n", 2 * 1024 * 1024);
        stream.write_all(head.as_bytes()).await.unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one = body_of(std::iter::once(
        r#"{"e":"pv","p":"web","tv":"t"}"#.to_owned(),
    ));
    let asked = Instant::now();
    let status = request(addr, TP2, &one).await;
    let took = asked.elapsed();
    eprintln!(
        "local collector: a one-event POST beside 64 connections that declared 2 MiB and sent nothing: answered {status} after {took:?}"
    );
    assert_eq!(status, 200);
    // A liveness bound for a busy two-core machine: the body timeout (10 s) is what it
    // waited before.
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(idle);
    process.stop_cleanly().await;
}

/// Validation runs beside `/health`, not in front of it: two POSTs of events naming a
/// schema whose pattern backtracks, and of events naming a schema that does not
/// compile; `/health` answers meanwhile (582e716: held 28–58 s).
#[tokio::test]
async fn health_answers_while_slow_schemas_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("echo", r#""type":"string","pattern":"^(a|a)*\\1b""#),
        ("broken", r#""type":"string","pattern":"(""#),
    ] {
        let folder = dir
            .path()
            .join(format!("schemas/com.acme/{name}/jsonschema"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("1-0-0"),
            format!(
                r#"{{"self":{{"vendor":"com.acme","name":"{name}","format":"jsonschema","version":"1-0-0"}},{body}}}"#
            ),
        )
        .unwrap();
    }
    let (process, addr) = collector(&["--iglu-dir", dir.path().to_str().unwrap()]).await;
    let event = |schema: &str, data: &str| {
        let envelope = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{{"schema":"iglu:com.acme/{schema}/jsonschema/1-0-0","data":"{data}"}}}}"#
        );
        serde_json::json!({"e": "ue", "p": "web", "tv": "t", "ue_pr": envelope}).to_string()
    };
    let slow = Arc::new(body_of(
        (0..300).map(|_| event("echo", &format!("{}!", "a".repeat(20)))),
    ));
    let broken = Arc::new(body_of((0..300).map(|_| event("broken", "x"))));
    let started = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    for body in [slow.clone(), slow, broken.clone(), broken] {
        posts.spawn(async move { request(addr, TP2, &body).await });
    }
    let mut slowest = Duration::ZERO;
    let mut asked_while_busy = 0;
    while !posts.is_empty() && started.elapsed() < Duration::from_secs(120) {
        let asked = Instant::now();
        let status = request(addr, "GET /health HTTP/1.1\r\nHost: x\r\n", b"").await;
        assert_eq!(status, 200);
        slowest = slowest.max(asked.elapsed());
        asked_while_busy += 1;
        while let Some(done) = posts.try_join_next() {
            assert_eq!(done.unwrap(), 200);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    eprintln!(
        "local collector: 4 POSTs of 300 events naming a backtracking or a broken schema took {took:?}; /health asked {asked_while_busy} times meanwhile, slowest {slowest:?}"
    );
    assert!(posts.is_empty(), "the POSTs did not finish in 120 s");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    let all = reqwest_like_get(addr, "/micro/all").await;
    assert!(all.contains(r#""bad":1200"#), "{all}");
    process.stop_cleanly().await;
}
