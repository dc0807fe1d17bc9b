//! The relay benchmark: one run, one table.
//!
//! Starts a private `redis-server` and a counting HTTP collector on 127.0.0.1, preloads
//! realistic events (the Python tracker fixtures between 400 and 1,200 bytes: page views,
//! structured, self-describing and ecommerce events, with and without contexts, numeric
//! values) and measures, against the release binary:
//!
//! - a. raw drain: the relay's own claim + acknowledge scripts with no HTTP (events/s);
//! - b. end to end, events/s: POST tuned, POST with the default configuration, GET;
//! - c. latency RPUSH → collector at a steady 1,000 events/s (p50, p99);
//! - d. peak RSS at full speed, and with a 1,000,000-event backlog while the collector is
//!   down; what that backlog costs Redis per event (its `used_memory`);
//! - e. relay CPU seconds per 100,000 events;
//! - f. POST tuned / raw drain, and with `--python` the Python tracker's RedisWorker
//!   (`snowplow-tracker[redis]==0.15.0` in a venv this creates) measured the same way;
//! - j. at a distance: the collector answers after 0, 20, 100 and 200 ms (± 10 %
//!   jitter) behind a proxy that holds each new connection as long before connecting it
//!   through (the handshakes of a collector that far; this kernel has no netem). Each
//!   row runs from a cold start for up to `--distance-seconds` (30) or until its events
//!   are delivered: events/s over the run, the most requests the collector held at once,
//!   relay CPU per 100,000 events and peak RSS, by POST (defaults) and GET (defaults);
//! - i. instructions per event: the relay and redis-server each run under valgrind's
//!   callgrind, which counts the user-space instructions they execute (the same count for
//!   the same binary and input, whatever else the machine does, where CPU seconds vary
//!   ±25 % here). Counting starts when the events are published and ends when the relay
//!   has exited (redis-server: when its counters are dumped after that), for 2,000 and
//!   then 10,000 events; the difference divided by 8,000 is the marginal cost of one
//!   event, so start-up and shutdown cancel out.
//! - k. what a producer costs Redis per event, by how it writes: one `RPUSH` per event
//!   (the Python tracker's `RedisEmitter`), one `RPUSH` of 100, or 100 pipelined:
//!   redis-server's instructions (callgrind, marginal as in i.), and natively, for up to
//!   100,000 events, redis-server's CPU and the producing thread's user and system CPU;
//! - l. redis-server's CPU per 100,000 events in the end-to-end runs, and the events per
//!   second one Redis core carries at that cost (one list lives on one core);
//! - n. claim primitives: what claiming and acknowledging one event costs redis-server
//!   (callgrind, marginal as in i.; claims of 500, one client, no relay) for each way a
//!   claim could take events off the list: `LPOP` (the floor), moved through a Lua
//!   script (today's shape), `SORT … STORE` to a claim key, and a range of the list
//!   recorded as claimed and read with a plain `LRANGE` (the list as a log);
//! - m. the HTTP/1.1 floor under j.'s GET rows: hyper's client connections alone (no
//!   Redis, no events), in a process of their own, CPU per 100,000 requests with one
//!   connection at 0 ms and 1,024 at 100 ms (what the relay reaches there).
//!
//! ```text
//! cargo bench --bench relay -- [--events N] [--backlog N] [--python] [--spaced] [--only NAME]
//! (NAME, or several separated by commas: raw, post-tuned, post-default, get, scaling,
//! tls, latency, backlog, instructions, distance, producers, claims, http-floor) [--case PREFIX] [--distance-seconds S]
//! [--distance-ms 0,20,100,200]
//! ```
//!
//! `--spaced` writes the events as Python's `json.dumps` does (`", "` and `": "`, what the
//! Python tracker's `RedisEmitter` pushes) instead of compact JSON.
//!
//! `--case` keeps only the instruction and distance rows whose name starts with PREFIX
//! (`GET`, `POST default`, `POST tuned`; `POST`, `GET`).
//!
//! `RELAY_BIN=/path/to/snowplow-relay` measures another build (an older one, to compare);
//! `CALLGRIND_KEEP=DIR` keeps the callgrind files of `instructions` there, for
//! `callgrind_annotate --inclusive=yes DIR/relay-<flags>-10000.out`.
//!
//! Throughput runs start timing when the preloaded events appear under the relay's key
//! (an atomic RENAME of a staging list), so process start-up is not counted. A benchmark,
//! not a test: it fails only if events go missing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use snowplow_relay::ops::listener::{Body, full, serve_http};

const LIST: &str = "snowplow";
const STAGING: &str = "bench-staging";
const BINARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/snowplow-relay");

/// The binary measured: `RELAY_BIN`, or this checkout's release build.
fn binary() -> String {
    std::env::var("RELAY_BIN").unwrap_or_else(|_| BINARY.to_owned())
}

/// A collector that only counts: one `"stm"` key per POST item, one event per GET. In
/// latency mode it also notes when each eid arrived.
#[derive(Clone, Default)]
struct CountingCollector {
    events: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    record_arrivals: Arc<AtomicBool>,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    /// Milliseconds each answer waits (± 10 %): the collector's distance.
    delay_ms: Arc<AtomicU64>,
    /// Requests being answered now, and the most at once since [`Self::reset_peak`].
    open: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
}

impl CountingCollector {
    async fn start() -> (CountingCollector, String) {
        let collector = CountingCollector::default();
        collector.status.store(200, Ordering::Relaxed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = collector.clone();
        let answer = move |request| {
            let state = state.clone();
            async move { state.handle(request).await }
        };
        tokio::spawn(serve_http(
            listener,
            support::collector::LIMITS,
            answer,
            std::future::pending(),
        ));
        (collector, url)
    }

    fn reset_peak(&self) {
        self.peak.store(0, Ordering::Relaxed);
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        let response = self.answer(request).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
        response
    }

    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Body> {
        let arrived = Instant::now();
        let query = request.uri().query().map(str::to_owned);
        let is_get = request.method() == hyper::Method::GET;
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            let jitter = fastrand::u64(0..=delay / 5);
            let wait = delay - delay / 10 + jitter;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let status = self.status.load(Ordering::Relaxed);
        if status == 200 {
            let count = if is_get {
                1
            } else {
                // One `"stm"` key per item, whatever the JSON spacing (Python writes `": "`).
                body.windows(5).filter(|w| w == b"\"stm\"").count() as u64
            };
            if self.record_arrivals.load(Ordering::Relaxed) {
                let mut arrivals = self.arrivals.lock().unwrap();
                if is_get {
                    let query = query.unwrap_or_default();
                    if let Some((_, eid)) =
                        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "eid")
                    {
                        arrivals.entry(eid.into_owned()).or_insert(arrived);
                    }
                } else {
                    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    for item in value["data"].as_array().unwrap() {
                        let eid = item["eid"].as_str().unwrap().to_owned();
                        arrivals.entry(eid).or_insert(arrived);
                    }
                }
            }
            self.events.fetch_add(count, Ordering::Relaxed);
        }
        Response::builder()
            .status(status)
            .body(full(Bytes::from_static(b"ok")))
            .unwrap()
    }
}

/// `--spaced`: events written as Python's `json.dumps` writes them.
static SPACED: AtomicBool = AtomicBool::new(false);

/// Events 400 to 1,200 bytes long (as the fixtures are written), each with a unique eid:
/// compact JSON (the project's own `RedisEmitter`, and every row the docs quote), or with
/// `--spaced` as Python's `json.dumps` writes them (`", "` and `": "`, about 7 % longer),
/// what the Python tracker's `RedisEmitter` pushes.
fn realistic_events(n: usize, prefix: &str) -> Vec<String> {
    let fixtures: Vec<String> = support::fixture_events()
        .into_iter()
        .filter(|e| (400..=1200).contains(&e.len()))
        .collect();
    let spaced = SPACED.load(Ordering::Relaxed);
    (0..n)
        .map(|i| support::with_eid(&fixtures[i % fixtures.len()], &format!("{prefix}-{i}")))
        .map(|event| match spaced {
            true => snowplow_relay_tracker::python_dumps(
                &serde_json::from_str::<serde_json::Value>(&event).unwrap(),
            ),
            false => event,
        })
        .collect()
}

/// Preloads `events` into a staging list; [`publish`] makes them appear at once.
fn stage(redis: &support::RedisServer, events: &[String]) {
    redis.cmd(&["DEL", STAGING]);
    redis.rpush(STAGING, events);
}

fn publish(redis: &support::RedisServer) {
    redis::cmd("RENAME")
        .arg(STAGING)
        .arg(LIST)
        .query::<()>(&mut redis.conn())
        .unwrap();
}

/// `RELAY_WRAPPER="perf record -e cpu-clock -g -o /tmp/perf.data --"` runs the relay
/// under a profiler (CPU and RSS figures then describe the wrapper, not the relay).
fn spawn_relay(
    redis: &support::RedisServer,
    collector_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let wrapper = std::env::var("RELAY_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(binary());
            command
        }
        None => Command::new(binary()),
    };
    // The Redis URL from `env` (e.g. rediss://) wins over the plain one.
    if !env
        .iter()
        .any(|(key, _)| *key == "SNOWPLOW_RELAY_REDIS__URL")
    {
        command.args(["--redis-url", &redis.url()]);
    }
    command
        .args(["--collector", collector_url, "--log-level", "error"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// CPU seconds (user + system) and peak RSS (kB) of a running process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (ticks as f64 / clock_ticks_per_second(), peak_kb)
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// User and system CPU seconds of this thread (`RUSAGE_THREAD`) or process
/// (`RUSAGE_SELF`) so far.
fn rusage(who: libc::c_int) -> (f64, f64) {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(who, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

async fn wait_for_count(counter: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while counter.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {target} arrived",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One end-to-end throughput run.
struct Throughput {
    events_per_second: f64,
    cpu_seconds_per_100k: f64,
    peak_rss_kb: u64,
    /// redis-server's CPU seconds (user + system) per 100,000 events over the same run.
    redis_cpu_seconds_per_100k: f64,
}

async fn throughput(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    n: usize,
    args: &[&str],
    env: &[(&str, &str)],
) -> Throughput {
    throughput_of(redis, collector, url, n, 1, args, env).await
}

/// `copies` relays on one list: events/s of the group and relay CPU (all copies) per
/// 100,000 events; peak RSS is the largest copy's.
async fn throughput_of(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    n: usize,
    copies: usize,
    args: &[&str],
    env: &[(&str, &str)],
) -> Throughput {
    stage(redis, &realistic_events(n, "tp"));
    let relays: Vec<Child> = (0..copies)
        .map(|_| spawn_relay(redis, url, args, env))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await; // started and blocked on the empty list
    let cpu_before: f64 = relays.iter().map(|r| usage(r.id()).0).sum();
    let redis_before = usage(redis.pid()).0;
    let before = collector.events.load(Ordering::Relaxed);
    let started = Instant::now();
    publish(redis);
    wait_for_count(&collector.events, before + n as u64, "throughput").await;
    let elapsed = started.elapsed();
    let redis_after = usage(redis.pid()).0;
    let after: Vec<(f64, u64)> = relays.iter().map(|r| usage(r.id())).collect();
    let cpu_after: f64 = after.iter().map(|(cpu, _)| cpu).sum();
    let peak_rss_kb = after.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    for relay in relays {
        terminate(relay);
    }
    assert_eq!(redis.llen(LIST), 0);
    Throughput {
        events_per_second: n as f64 / elapsed.as_secs_f64(),
        cpu_seconds_per_100k: (cpu_after - cpu_before) / n as f64 * 100_000.0,
        peak_rss_kb,
        redis_cpu_seconds_per_100k: (redis_after - redis_before) / n as f64 * 100_000.0,
    }
}

/// The rows every end-to-end run adds about Redis: its CPU per 100,000 events and the
/// events per second one Redis core could carry at that cost (one list is served by one
/// core, whatever the number of relays).
fn redis_core_row(t: &Throughput) -> String {
    format!(
        "{:.3} / {:.0}",
        t.redis_cpu_seconds_per_100k,
        100_000.0 / t.redis_cpu_seconds_per_100k.max(1e-9)
    )
}

/// A TCP proxy on 127.0.0.1 in front of `target` that holds each new connection for
/// `delay` before connecting it through: a collector's handshakes at that distance.
/// Returns its URL.
async fn delaying_proxy(target: std::net::SocketAddr, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                // Without, Nagle and delayed acknowledgements add their own 40 ms.
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    url
}

/// One row at a distance: from a cold start, until `n` events arrived or `cap` passed.
struct AtDistance {
    events_per_second: f64,
    peak_requests: u64,
    cpu_seconds_per_100k: f64,
    peak_rss_kb: u64,
}

async fn at_distance(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    (delay_ms, n, cap): (u64, usize, Duration),
    args: &[&str],
) -> AtDistance {
    let target: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let proxy = delaying_proxy(target, Duration::from_millis(delay_ms)).await;
    collector.delay_ms.store(delay_ms, Ordering::Relaxed);
    stage(redis, &realistic_events(n, "far"));
    let relay = spawn_relay(redis, &proxy, args, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await; // started and blocked on the empty list
    let (cpu_before, _) = usage(relay.id());
    collector.reset_peak();
    let before = collector.events.load(Ordering::Relaxed);
    let started = Instant::now();
    publish(redis);
    while collector.events.load(Ordering::Relaxed) < before + n as u64 && started.elapsed() < cap {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let delivered = collector.events.load(Ordering::Relaxed) - before;
    let (cpu_after, peak_rss_kb) = usage(relay.id());
    let peak_requests = collector.peak.load(Ordering::Relaxed);
    terminate(relay);
    // Whatever was not delivered went back to the list at the stop: nothing missing.
    let after_stop = collector.events.load(Ordering::Relaxed) - before;
    let returned = redis.llen(LIST);
    assert!(
        after_stop + returned as u64 >= n as u64,
        "{delay_ms} ms: {after_stop} delivered and {returned} back in Redis of {n}"
    );
    redis.cmd(&["DEL", LIST]);
    collector.delay_ms.store(0, Ordering::Relaxed);
    AtDistance {
        events_per_second: delivered as f64 / elapsed.as_secs_f64(),
        peak_requests,
        cpu_seconds_per_100k: (cpu_after - cpu_before) / delivered.max(1) as f64 * 100_000.0,
        peak_rss_kb,
    }
}

/// The claim + acknowledge path alone: what Redis and the scripts allow.
async fn raw_drain(redis: &support::RedisServer, n: usize) -> f64 {
    stage(redis, &realistic_events(n, "raw"));
    publish(redis);
    let mut overrides = snowplow_relay::config::Overrides::default();
    overrides.set("redis.url", Some(redis.url()));
    overrides.set("collector.url", Some("http://127.0.0.1:9"));
    let settings =
        snowplow_relay::config::Settings::load(None, &overrides, Some(&Default::default()))
            .unwrap();
    let queue = snowplow_relay::queue::Queue::connect(&settings.redis)
        .await
        .unwrap();
    queue.register().await.unwrap();
    let started = Instant::now();
    let mut position = 0u64;
    // The relay's defaults: elements up to 999,890 bytes, claims up to 4 MiB.
    loop {
        let claim = queue
            .claim(position, 500, 999_890, 4 * 1024 * 1024)
            .await
            .unwrap();
        if claim.elements.is_empty() {
            break;
        }
        let from = position;
        position += claim.elements.len() as u64;
        queue.ack(from, position, &[]).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(position as usize, n);
    queue
        .release(position, &[], position, &[], &[])
        .await
        .unwrap();
    n as f64 / elapsed.as_secs_f64()
}

/// p50 and p99 (ms) from RPUSH to arrival, at a steady 1,000 events/s for `seconds`.
async fn latency(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    rate: usize,
    seconds: u64,
) -> (f64, f64) {
    let relay = spawn_relay(redis, url, &[], &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    collector.arrivals.lock().unwrap().clear();
    collector.record_arrivals.store(true, Ordering::Relaxed);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // `rate` events/s as rate/1000 events every millisecond (one RPUSH per tick).
    let per_tick = (rate / 1000).max(1);
    let events = realistic_events(seconds as usize * rate, &format!("lat{rate}"));
    let mut pushed = HashMap::with_capacity(events.len());
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (tick, chunk) in events.chunks(per_tick).enumerate() {
        ticker.tick().await;
        let now = Instant::now();
        for i in 0..chunk.len() {
            pushed.insert(format!("lat{rate}-{}", tick * per_tick + i), now);
        }
        redis::cmd("RPUSH")
            .arg(LIST)
            .arg(chunk)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.arrivals.lock().unwrap().len() < events.len() {
        assert!(Instant::now() < deadline, "latency events missing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    collector.record_arrivals.store(false, Ordering::Relaxed);
    terminate(relay);
    let arrivals = collector.arrivals.lock().unwrap();
    let mut millis: Vec<f64> = pushed
        .iter()
        .map(|(eid, at)| arrivals[eid].saturating_duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    millis.sort_by(f64::total_cmp);
    let pick = |q: f64| millis[((millis.len() as f64 * q) as usize).min(millis.len() - 1)];
    (pick(0.50), pick(0.99))
}

/// Peak RSS (kB) with a large backlog while the collector answers 503.
async fn backlog_rss(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    n: usize,
) -> (u64, f64, f64) {
    let events = realistic_events(n, "backlog");
    let mean_element = events.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    let before = redis.info_number("memory", "used_memory");
    stage(redis, &events);
    drop(events);
    publish(redis);
    // What a backlog costs Redis: its used_memory per waiting event.
    let per_event = (redis.info_number("memory", "used_memory") - before) as f64 / n as f64;
    collector.status.store(503, Ordering::Relaxed);
    let relay = spawn_relay(redis, url, &[], &[]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, peak_kb) = usage(relay.id());
    terminate(relay);
    collector.status.store(200, Ordering::Relaxed);
    redis::cmd("DEL")
        .arg(LIST)
        .query::<i64>(&mut redis.conn())
        .unwrap();
    (peak_kb, per_event, mean_element)
}

/// The Python tracker's RedisWorker with an AsyncEmitter, timed the same way.
async fn python_worker(
    redis: &support::RedisServer,
    collector: &CountingCollector,
    url: &str,
    n: usize,
    method: &str,
    batch: usize,
) -> f64 {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-python-venv");
    if !venv.join("bin/python").exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "snowplow-tracker[redis]==0.15.0"])
                .status()
                .unwrap()
                .success();
        assert!(ok, "could not create the Python venv");
    }
    let port = url.rsplit(':').next().unwrap();
    let script = format!(
        r#"
import redis
from snowplow_tracker import AsyncEmitter
from snowplow_tracker.redis import RedisWorker
emitter = AsyncEmitter("127.0.0.1", protocol="http", port={port}, method="{method}", batch_size={batch})
RedisWorker(emitter, rdb=redis.StrictRedis(port={redis_port}), key="{LIST}").run()
"#,
        redis_port = redis.port
    );
    // The worker sleeps 5 s whenever it finds the list empty, so the events are in place
    // before it starts, and its start-up (well under a second) counts against it.
    stage(redis, &realistic_events(n, "py"));
    publish(redis);
    let before = collector.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut worker = Command::new(venv.join("bin/python"))
        .args(["-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_count(&collector.events, before + n as u64, "python").await;
    let elapsed = started.elapsed();
    let _ = worker.kill();
    let _ = worker.wait();
    n as f64 / elapsed.as_secs_f64()
}

/// The total instructions of a callgrind output file: its `totals:` line. (`summary:`
/// is written at start-up and is wrong once instrumentation is switched on later, as
/// `--instr-atstart=no` and `callgrind_control -i on` do.)
fn callgrind_total(path: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `totals:` line in {}", path.display()))
}

/// The instructions spent in `function` and everything it called (callgrind_annotate's
/// inclusive count; 0 if it never ran).
fn callgrind_inclusive(path: &std::path::Path, function: &str) -> u64 {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(path)
        .output()
        .expect("callgrind_annotate runs");
    let suffix = format!(":{function}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.split_whitespace().any(|word| word.ends_with(&suffix)))
        .and_then(|line| {
            line.split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The file `callgrind_control -d` wrote in `dir` for the process whose
/// `--callgrind-out-file` began with `prefix`.
fn callgrind_dump(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no callgrind dump {prefix}* in {}", dir.display()))
}

/// redis-server's instructions in a dump, without its timer (serverCron, about 1.2 M
/// instructions a second: paid by time, not by event). `--toggle-collect=serverCron`
/// cannot take it out: with instrumentation switched on mid-run, callgrind loses track
/// of the toggles.
fn redis_instructions(dump: &std::path::Path) -> u64 {
    callgrind_total(dump) - callgrind_inclusive(dump, "serverCron")
}

fn callgrind_control(args: &[&str]) {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "callgrind_control {args:?}");
}

/// Marginal user-space instructions per event of the relay and of redis-server, counted
/// by callgrind between 2,000 and 10,000 events (see the header).
async fn instructions(
    collector: &CountingCollector,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut totals = Vec::new();
    for n in [2_000usize, 10_000] {
        let redis_out = dir.path().join(format!("redis-{n}"));
        let relay_out = dir.path().join(format!("relay-{n}"));
        let redis_flag = format!("--callgrind-out-file={}", redis_out.display());
        let redis = support::RedisServer::start_under(
            &[
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                &redis_flag,
            ],
            &[],
        );
        stage(&redis, &realistic_events(n, &format!("ins{n}")));
        let relay_flag = format!("--callgrind-out-file={}", relay_out.display());
        let mut command = Command::new("valgrind");
        command
            .args(["--tool=callgrind", "--instr-atstart=no", &relay_flag])
            .arg(binary())
            .args([
                "--redis-url",
                &redis.url(),
                "--collector",
                url,
                "--log-level",
                "error",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::null());
        let relay = command.spawn().unwrap();
        let registered = Instant::now();
        while support::instances(&redis).is_empty() {
            assert!(
                registered.elapsed() < Duration::from_secs(120),
                "the relay did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (relay_pid, redis_pid) = (relay.id().to_string(), redis.pid().to_string());
        callgrind_control(&["-i", "on", &relay_pid]);
        callgrind_control(&["-i", "on", &redis_pid]);
        let before = collector.events.load(Ordering::Relaxed);
        publish(&redis);
        wait_for_count(&collector.events, before + n as u64, "instructions").await;
        terminate(relay);
        callgrind_control(&["-d", &redis_pid]);
        let dumped = callgrind_dump(dir.path(), &format!("redis-{n}."));
        if let Ok(keep) = std::env::var("CALLGRIND_KEEP") {
            // For `callgrind_annotate`: where the instructions go, by function.
            std::fs::create_dir_all(&keep).unwrap();
            let case = args.join("").replace('-', "");
            for (from, who) in [(&relay_out, "relay"), (&dumped, "redis")] {
                let to = std::path::Path::new(&keep).join(format!("{who}-{case}-{n}.out"));
                std::fs::copy(from, to).unwrap();
            }
        }
        totals.push((callgrind_total(&relay_out), redis_instructions(&dumped)));
    }
    let per_event = |big: u64, small: u64| (big as f64 - small as f64) / 8_000.0;
    (
        per_event(totals[1].0, totals[0].0),
        per_event(totals[1].1, totals[0].1),
    )
}

/// How a producer writes its events to the list.
#[derive(Clone, Copy)]
enum Producer {
    /// One `RPUSH` per event, each waiting for its reply: the Python `RedisEmitter`.
    OnePerEvent,
    /// One `RPUSH` of 100 events: the project's own `RedisEmitter`.
    Batched,
    /// 100 one-event `RPUSH`es in a pipeline (redis-py's `pipeline(transaction=False)`).
    Pipelined,
}

/// Pushes `events` to `key` as `how` says; returns the producing thread's CPU seconds
/// (user, system).
fn produce(
    redis: &support::RedisServer,
    key: &str,
    events: &[String],
    how: Producer,
) -> (f64, f64) {
    let mut conn = redis.conn();
    let before = rusage(libc::RUSAGE_THREAD);
    match how {
        Producer::OnePerEvent => {
            for event in events {
                redis::cmd("RPUSH")
                    .arg(key)
                    .arg(event)
                    .query::<i64>(&mut conn)
                    .unwrap();
            }
        }
        Producer::Batched => {
            for chunk in events.chunks(100) {
                redis::cmd("RPUSH")
                    .arg(key)
                    .arg(chunk)
                    .query::<i64>(&mut conn)
                    .unwrap();
            }
        }
        Producer::Pipelined => {
            for chunk in events.chunks(100) {
                let mut pipe = redis::pipe();
                for event in chunk {
                    pipe.cmd("RPUSH").arg(key).arg(event).ignore();
                }
                pipe.query::<()>(&mut conn).unwrap();
            }
        }
    }
    let after = rusage(libc::RUSAGE_THREAD);
    (after.0 - before.0, after.1 - before.1)
}

/// What writing one event costs, by how it is written: redis-server's instructions
/// (callgrind, marginal between 2,000 and 10,000 events), and natively, for `n` events,
/// redis-server's CPU and the producing thread's user and system CPU, in µs per event.
fn producer_costs(how: Producer, n: usize) -> (f64, f64, f64, f64) {
    let instructions = redis_instructions_per_event(
        "producer",
        |_, _| {},
        |redis, events| {
            std::thread::scope(|s| {
                s.spawn(|| produce(redis, LIST, events, how))
                    .join()
                    .unwrap()
            });
        },
    );
    let redis = support::RedisServer::start();
    let events = realistic_events(n, "producer");
    let redis_before = usage(redis.pid()).0;
    let (user, system) = std::thread::scope(|s| {
        s.spawn(|| produce(&redis, LIST, &events, how))
            .join()
            .unwrap()
    });
    let redis_cpu = usage(redis.pid()).0 - redis_before;
    assert_eq!(redis.llen(LIST), n);
    let micros = |seconds: f64| seconds / n as f64 * 1e6;
    (
        instructions,
        micros(redis_cpu),
        micros(user),
        micros(system),
    )
}

/// A way to take events off the list in claims of [`CLAIM`], measured by
/// [`claim_primitive_cost`]: the Redis side of a claim design, nothing else.
#[derive(Clone, Copy)]
enum ClaimPrimitive {
    /// `LPOP key 500`: events leave the list and nothing records them (no lease, no
    /// recovery). The floor.
    Pop,
    /// A script that reads the events (`LRANGE`), copies them to an in-flight list
    /// (`RPUSH`), trims the list and returns them; acknowledged by trimming the
    /// in-flight list. Today's claim without its checks: every event passes through Lua.
    MoveThroughLua,
    /// A script that copies the events to a claim key inside Redis (`SORT … BY nosort
    /// LIMIT 0 500 STORE`) and trims the list; the client reads the claim key with a
    /// plain `LRANGE` and acknowledges with `DEL`. No event in Lua, but `SORT` is
    /// `@dangerous`.
    SortStore,
    /// The list as a log: a script records the next range as claimed (two hash
    /// fields) and returns where it is; the client reads it with a plain `LRANGE`
    /// (pipelined with a read of the head, to see that no trim moved it) and
    /// acknowledges with a script that trims the head and counts it. Both scripts
    /// first compare the list's first element with the fingerprint recorded for it,
    /// and the acknowledgement the last element it trims with the one the client read.
    Range,
    /// [`ClaimPrimitive::Range`], the range read in pages of this many events, all
    /// pipelined (a bound on what one `LRANGE` makes Redis hold in its reply buffer).
    RangeInPages(usize),
}

/// Events per claim in [`claim_primitive_cost`].
const CLAIM: usize = 500;

/// Drains `LIST` with `primitive`, one claim after another, checking that every event
/// arrives once and in order.
fn drain_with(conn: &mut redis::Connection, primitive: ClaimPrimitive, expected: &[String]) {
    let mut received: Vec<Vec<u8>> = Vec::with_capacity(expected.len());
    let move_through_lua = redis::Script::new(
        "local c = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1) \
         if #c > 0 then redis.call('RPUSH', KEYS[2], unpack(c)) \
         redis.call('LTRIM', KEYS[1], #c, -1) end return c",
    );
    let sort_store = redis::Script::new(
        "local n = redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', 0, ARGV[1], \
         'STORE', KEYS[2]) if n > 0 then redis.call('LTRIM', KEYS[1], n, -1) end return n",
    );
    // Both range scripts first check that nobody else moved the head: the element at the
    // list's first index against the fingerprint recorded for it (the design's check).
    const HEAD_UNMOVED: &str = "local function head_unmoved() \
         local first = redis.call('LINDEX', KEYS[1], 0) \
         local recorded = redis.call('HGET', KEYS[2], 'head_fp') \
         if not first or not recorded then return true end \
         return redis.sha1hex(first) == recorded end \
         if not head_unmoved() then return redis.error_reply('head moved') end ";
    let range_claim = redis::Script::new(&format!(
        "{HEAD_UNMOVED} \
         local head = tonumber(redis.call('HGET', KEYS[2], 'head') or 0) \
         local next = tonumber(redis.call('HGET', KEYS[2], 'next') or 0) \
         local n = math.min(tonumber(ARGV[1]), head + redis.call('LLEN', KEYS[1]) - next) \
         if n > 0 then redis.call('HSET', KEYS[2], 'next', next + n) end \
         if n > 0 and not redis.call('HGET', KEYS[2], 'head_fp') then \
           redis.call('HSET', KEYS[2], 'head_fp', redis.sha1hex(redis.call('LINDEX', KEYS[1], 0))) end \
         return {{next - head, n, head}}"
    ));
    // The acknowledgement also checks the last element it trims against the fingerprint
    // the reader computed, then records the new head's.
    let range_ack = redis::Script::new(&format!(
        "{HEAD_UNMOVED} \
         local n = tonumber(ARGV[1]) \
         if redis.sha1hex(redis.call('LINDEX', KEYS[1], n - 1)) ~= ARGV[2] then \
           return redis.error_reply('boundary moved') end \
         redis.call('LTRIM', KEYS[1], n, -1) \
         local first = redis.call('LINDEX', KEYS[1], 0) \
         if first then redis.call('HSET', KEYS[2], 'head_fp', redis.sha1hex(first)) \
         else redis.call('HDEL', KEYS[2], 'head_fp') end \
         return redis.call('HINCRBY', KEYS[2], 'head', n)"
    ));
    const INFLIGHT: &str = "bench-inflight";
    const META: &str = "bench-meta";
    loop {
        let claimed: Vec<Vec<u8>> = match primitive {
            ClaimPrimitive::Pop => redis::cmd("LPOP")
                .arg(LIST)
                .arg(CLAIM)
                .query::<Option<Vec<Vec<u8>>>>(conn)
                .unwrap()
                .unwrap_or_default(),
            ClaimPrimitive::MoveThroughLua => {
                let claimed: Vec<Vec<u8>> = move_through_lua
                    .key(LIST)
                    .key(INFLIGHT)
                    .arg(CLAIM)
                    .invoke(conn)
                    .unwrap();
                redis::cmd("LTRIM")
                    .arg(INFLIGHT)
                    .arg(claimed.len())
                    .arg(-1)
                    .query::<()>(conn)
                    .unwrap();
                claimed
            }
            ClaimPrimitive::SortStore => {
                let n: usize = sort_store
                    .key(LIST)
                    .key(INFLIGHT)
                    .arg(CLAIM)
                    .invoke(conn)
                    .unwrap();
                if n == 0 {
                    Vec::new()
                } else {
                    let (claimed,): (Vec<Vec<u8>>,) = redis::pipe()
                        .cmd("LRANGE")
                        .arg(INFLIGHT)
                        .arg(0)
                        .arg(-1)
                        .cmd("DEL")
                        .arg(INFLIGHT)
                        .ignore()
                        .query(conn)
                        .unwrap();
                    claimed
                }
            }
            ClaimPrimitive::Range | ClaimPrimitive::RangeInPages(_) => {
                let page = match primitive {
                    ClaimPrimitive::RangeInPages(page) => page as i64,
                    _ => CLAIM as i64,
                };
                let (at, n, head): (i64, i64, i64) = range_claim
                    .key(LIST)
                    .key(META)
                    .arg(CLAIM)
                    .invoke(conn)
                    .unwrap();
                if n == 0 {
                    Vec::new()
                } else {
                    let mut pipe = redis::pipe();
                    for from in (at..at + n).step_by(page as usize) {
                        pipe.cmd("LRANGE")
                            .arg(LIST)
                            .arg(from)
                            .arg((from + page).min(at + n) - 1);
                    }
                    pipe.cmd("HGET").arg(META).arg("head");
                    let mut replies: Vec<redis::Value> = pipe.query(conn).unwrap();
                    let head_after: Option<i64> =
                        redis::from_redis_value(replies.pop().unwrap()).unwrap();
                    assert_eq!(
                        head_after.unwrap_or(0),
                        head,
                        "nothing else trims the list here"
                    );
                    let claimed: Vec<Vec<u8>> = replies
                        .into_iter()
                        .flat_map(|page| redis::from_redis_value::<Vec<Vec<u8>>>(page).unwrap())
                        .collect();
                    let last = sha1_smol::Sha1::from(claimed.last().expect("n > 0"))
                        .digest()
                        .to_string();
                    let _: i64 = range_ack
                        .key(LIST)
                        .key(META)
                        .arg(n)
                        .arg(last)
                        .invoke(conn)
                        .unwrap();
                    claimed
                }
            }
        };
        if claimed.is_empty() {
            break;
        }
        received.extend(claimed);
    }
    assert_eq!(received.len(), expected.len(), "every event claimed once");
    assert!(
        received
            .iter()
            .zip(expected)
            .all(|(got, sent)| got == sent.as_bytes()),
        "events arrive as they were written, in order"
    );
}

/// What claiming and acknowledging one event costs redis-server, by `primitive`
/// (callgrind, marginal between 2,000 and 10,000 events, claims of [`CLAIM`]).
fn claim_primitive_cost(primitive: ClaimPrimitive) -> f64 {
    let preload = |redis: &support::RedisServer, events: &[String]| redis.rpush(LIST, events);
    redis_instructions_per_event("claim", preload, |redis, events| {
        let mut conn = redis.conn();
        drain_with(&mut conn, primitive, events);
    })
}

/// redis-server's instructions per event for `work` (callgrind, marginal between 2,000
/// and 10,000 events, as the `i.` rows): each time a fresh redis-server under callgrind,
/// `count` realistic events named `prefix-<i>` handed to `prepare` (not counted), then
/// counting only while `work` runs on them.
fn redis_instructions_per_event(
    prefix: &str,
    prepare: impl Fn(&support::RedisServer, &[String]),
    work: impl Fn(&support::RedisServer, &[String]),
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut totals = Vec::new();
    for count in [2_000usize, 10_000] {
        let out = dir.path().join(format!("redis-{count}"));
        let flag = format!("--callgrind-out-file={}", out.display());
        let redis = support::RedisServer::start_under(
            &["valgrind", "--tool=callgrind", "--instr-atstart=no", &flag],
            &[],
        );
        let events = realistic_events(count, prefix);
        prepare(&redis, &events);
        let pid = redis.pid().to_string();
        callgrind_control(&["-i", "on", &pid]);
        work(&redis, &events);
        callgrind_control(&["-d", &pid]);
        let dumped = callgrind_dump(dir.path(), &format!("redis-{count}."));
        totals.push(redis_instructions(&dumped));
    }
    (totals[1] as f64 - totals[0] as f64) / 8_000.0
}

/// The HTTP floor under GET at a distance: hyper's HTTP/1.1 client connections alone (no
/// Redis, no parsing, one fixed 1,000-byte query), `connections` of them each sending
/// requests one after another until `n` were answered (each with a deadline, as the
/// relay's), in a process of their own with the relay's runtime (one worker thread per
/// core). Prints the process's CPU seconds, connects included. What the relay cannot go
/// below with HTTP/1.1 keep-alive connections, whatever it does around the request.
fn http_floor_child(url: &str, n: u64, connections: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu = || {
        let (user, system) = rusage(libc::RUSAGE_SELF);
        user + system
    };
    let address = url.trim_start_matches("http://").to_owned();
    let query = format!(
        "/i?e=pv&tv=py-0.15.0&p=pc&aid=bench&url=https%3A%2F%2Fshop.example.com%2Fproducts%3Fid%3D42&page=Product&cx={}&stm=1765000000000",
        "eyJzY2hlbWEiOiJpZ2x1OmNvbS5zbm93cGxvd2FuYWx5dGljcy".repeat(16)
    );
    let before = cpu();
    let answered = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (address, query, answered) = (address.clone(), query.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                while answered.fetch_add(1, Ordering::Relaxed) < n {
                    let request = Request::get(query.as_str())
                        .header(hyper::header::HOST, address.as_str())
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    // A deadline on the head and the body, as the relay has.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    let response = tokio::time::timeout_at(deadline, sender.send_request(request))
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(response.status().is_success());
                    tokio::time::timeout_at(deadline, response.into_body().collect())
                        .await
                        .unwrap()
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    println!("{}", cpu() - before);
}

/// [`http_floor_child`]'s CPU seconds per 100,000 requests, through a proxy `delay_ms`
/// away, with `connections` at once.
async fn http_floor(
    collector: &CountingCollector,
    url: &str,
    delay_ms: u64,
    n: u64,
    connections: usize,
) -> f64 {
    let target: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let proxy = delaying_proxy(target, Duration::from_millis(delay_ms)).await;
    collector.delay_ms.store(delay_ms, Ordering::Relaxed);
    let me = std::env::current_exe().unwrap();
    let output = tokio::process::Command::new(me)
        .args([
            "--http-floor-child",
            &proxy,
            &n.to_string(),
            &connections.to_string(),
        ])
        .output()
        .await
        .unwrap();
    collector.delay_ms.store(0, Ordering::Relaxed);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    seconds / n as f64 * 100_000.0
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(url) = arg(&args, "--http-floor-child") {
        let at = args.iter().position(|a| a == "--http-floor-child").unwrap();
        return http_floor_child(
            &url,
            args[at + 2].parse().unwrap(),
            args[at + 3].parse().unwrap(),
        );
    }
    let n: usize = arg(&args, "--events").map_or(200_000, |v| v.parse().unwrap());
    let backlog: usize = arg(&args, "--backlog").map_or(1_000_000, |v| v.parse().unwrap());
    let python = args.iter().any(|a| a == "--python");
    SPACED.store(args.iter().any(|a| a == "--spaced"), Ordering::Relaxed);
    let only = arg(&args, "--only");
    let case = arg(&args, "--case");
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|o| o == name))
    };

    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "snowplow-relay"])
        .status()
        .unwrap();
    assert!(status.success());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = support::RedisServer::start();
        let (collector, url) = CountingCollector::start().await;
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |name: &str, value: String| {
            println!("{name:<58} {value}");
            rows.push((name.to_owned(), value));
        };
        let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("{date}, nproc {nproc}, `cargo bench --bench relay` with {:?}", &args[1..]);
        println!("snowplow-relay benchmark: {n} events of 400-1,200 bytes per throughput run; 2 cores shared by Redis, relay and collector");

        let raw = if wanted("raw") {
            let rate = raw_drain(&redis, n).await;
            row("a. raw drain (claim + ack scripts, 500/call), events/s", format!("{rate:.0}"));
            Some(rate)
        } else {
            None
        };
        if wanted("post-tuned") {
            let tuned = ["--buffer-size", "500", "--byte-limit", "1000000"];
            let t = throughput(&redis, &collector, &url, n, &tuned, &[("SNOWPLOW_RELAY_REDIS__CLAIM_BATCH_SIZE", "2000")]).await;
            row("b. POST tuned (buffer 500, claim 2000, 1 thread), events/s", format!("{:.0}", t.events_per_second));
            row("d. peak RSS at full speed (POST tuned), MB", format!("{:.1}", t.peak_rss_kb as f64 / 1024.0));
            row("e. CPU s per 100,000 events (POST tuned)", format!("{:.3}", t.cpu_seconds_per_100k));
            row("l. redis-server CPU s per 100,000 events / events/s one Redis core carries (POST tuned)", redis_core_row(&t));
            if let Some(raw) = raw {
                row("f. POST tuned / raw drain", format!("{:.2}", t.events_per_second / raw));
            }
        }
        if wanted("post-default") {
            let t = throughput(&redis, &collector, &url, n, &[], &[]).await;
            row("b. POST default configuration (buffer 200, adaptive concurrency, 1 thread), events/s", format!("{:.0}", t.events_per_second));
            row("e. CPU s per 100,000 events (POST default)", format!("{:.3}", t.cpu_seconds_per_100k));
            row("d. peak RSS (POST default), MB", format!("{:.1}", t.peak_rss_kb as f64 / 1024.0));
            row("l. redis-server CPU s per 100,000 events / events/s one Redis core carries (POST default)", redis_core_row(&t));
            if let Some(raw) = raw {
                row("f. POST default / raw drain", format!("{:.2}", t.events_per_second / raw));
            }
        }
        if wanted("get") {
            let t = throughput(&redis, &collector, &url, n, &["--method", "get"], &[("SNOWPLOW_RELAY_COLLECTOR__MAX_REQUESTS_IN_FLIGHT", "32")]).await;
            row("b. GET (32 requests in flight, 1 thread), events/s", format!("{:.0}", t.events_per_second));
            row("e. CPU s per 100,000 events (GET)", format!("{:.3}", t.cpu_seconds_per_100k));
            row("l. redis-server CPU s per 100,000 events / events/s one Redis core carries (GET)", redis_core_row(&t));
            if let Some(raw) = raw {
                row("f. GET / raw drain", format!("{:.2}", t.events_per_second / raw));
            }
        }
        if wanted("scaling") {
            for copies in [1, 2, 4] {
                let t = throughput_of(&redis, &collector, &url, n, copies, &[], &[]).await;
                row(
                    &format!("g. {copies} relay(s) on one list, POST default, events/s"),
                    format!("{:.0}", t.events_per_second),
                );
                row(
                    &format!("g. {copies} relay(s), CPU s per 100,000 events (all copies)"),
                    format!("{:.3}", t.cpu_seconds_per_100k),
                );
            }
        }
        if wanted("tls") {
            // One redis-server with a plain and a TLS port: the same data, two transports.
            let certs = support::Certs::new();
            let tls_redis = support::RedisServer::start_tls(&certs, false);
            let ca = certs.path("ca.pem");
            let rediss = tls_redis.tls_url();
            let plain = throughput(&tls_redis, &collector, &url, n, &[], &[]).await;
            let tls_env = [
                ("SNOWPLOW_RELAY_REDIS__URL", rediss.as_str()),
                ("SNOWPLOW_RELAY_REDIS__TLS_CA_FILE", ca.as_str()),
            ];
            let tls = throughput(&tls_redis, &collector, &url, n, &[], &tls_env).await;
            row("h. POST default, Redis over plain TCP, events/s", format!("{:.0}", plain.events_per_second));
            row("h. POST default, Redis over TLS (rediss://), events/s", format!("{:.0}", tls.events_per_second));
            row("h. CPU s per 100,000 events, plain TCP / TLS", format!("{:.3} / {:.3}", plain.cpu_seconds_per_100k, tls.cpu_seconds_per_100k));
        }
        if wanted("latency") {
            for (rate, seconds) in [(1_000, 10), (10_000, 5), (50_000, 2)] {
                let (p50, p99) = latency(&redis, &collector, &url, rate, seconds).await;
                row(
                    &format!("c. latency RPUSH -> collector at {rate} ev/s (default config), p50 / p99 ms"),
                    format!("{p50:.2} / {p99:.2}"),
                );
            }
        }
        if wanted("backlog") {
            let (kb, per_event, mean_element) = backlog_rss(&redis, &collector, &url, backlog).await;
            row(&format!("d. peak RSS, {backlog} backlog, collector down, MB"), format!("{:.1}", kb as f64 / 1024.0));
            row(
                &format!("d. Redis used_memory per waiting event, {backlog} backlog: bytes (mean element)"),
                format!("{per_event:.0} ({mean_element:.0})"),
            );
        }
        if wanted("distance") {
            let cap = Duration::from_secs(arg(&args, "--distance-seconds").map_or(30, |v| v.parse().unwrap()));
            let delays: Vec<u64> = arg(&args, "--distance-ms").map_or(vec![0, 20, 100, 200], |v| v.split(',').map(|d| d.parse().unwrap()).collect());
            for (method, flags) in [("POST", &[][..]), ("GET", &["--method", "get"][..])] {
                if case.as_deref().is_some_and(|wanted| !method.starts_with(wanted)) {
                    continue;
                }
                for &delay in &delays {
                    let t = at_distance(&redis, &collector, &url, (delay, n, cap), flags).await;
                    row(
                        &format!("j. {method} default, collector {delay} ms away: events/s, most requests at once, CPU s per 100k, peak RSS MB"),
                        format!(
                            "{:.0}, {}, {:.3}, {:.1}",
                            t.events_per_second,
                            t.peak_requests,
                            t.cpu_seconds_per_100k,
                            t.peak_rss_kb as f64 / 1024.0
                        ),
                    );
                }
            }
        }
        if wanted("http-floor") {
            // The relay's own GET rows: one request at a time near, 1,024 at 100 ms.
            let near = http_floor(&collector, &url, 0, n as u64, 1).await;
            let far = http_floor(&collector, &url, 100, n as u64 / 2, 1024).await;
            row(
                "m. HTTP/1.1 floor (hyper alone): CPU s per 100k requests, 1 connection at 0 ms / 1,024 at 100 ms (ratio)",
                format!("{near:.3} / {far:.3} ({:.2})", far / near),
            );
        }
        if wanted("instructions") {
            /// A row: its name, flags and environment.
            type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
            // The first row's settings stay fixed whatever the defaults become, so that
            // it compares across versions (batches of 50 and claims of 500).
            // The second row is the first with elements capped at 64 KiB: claims read
            // claim_max_bytes / max_element_bytes elements per LRANGE (4 by default).
            let cases: [Case; 5] = [
                ("POST buffer 50, claim 500", &["--buffer-size", "50"], &[("SNOWPLOW_RELAY_REDIS__CLAIM_BATCH_SIZE", "500")]),
                ("POST buffer 50, claim 500, elements up to 64 KiB", &["--buffer-size", "50"], &[("SNOWPLOW_RELAY_REDIS__CLAIM_BATCH_SIZE", "500"), ("SNOWPLOW_RELAY_EVENTS__MAX_ELEMENT_BYTES", "65536")]),
                ("POST default", &[], &[]),
                ("POST tuned (buffer 500, claim 2000)", &["--buffer-size", "500"], &[("SNOWPLOW_RELAY_REDIS__CLAIM_BATCH_SIZE", "2000")]),
                ("GET (32 in flight)", &["--method", "get"], &[("SNOWPLOW_RELAY_COLLECTOR__MAX_REQUESTS_IN_FLIGHT", "32")]),
            ];
            for (name, args, env) in cases {
                if case.as_deref().is_some_and(|wanted| !name.starts_with(wanted)) {
                    continue;
                }
                let (relay, redis_server) = instructions(&collector, &url, args, env).await;
                row(
                    &format!("i. instructions per event, {name}: relay / redis-server"),
                    format!("{relay:.0} / {redis_server:.0}"),
                );
            }
        }
        if wanted("producers") {
            for (name, how) in [
                ("one RPUSH per event (Python RedisEmitter)", Producer::OnePerEvent),
                ("RPUSH of 100 events", Producer::Batched),
                ("100 RPUSHes pipelined", Producer::Pipelined),
            ] {
                let (instructions, redis_cpu, user, system) = producer_costs(how, n.min(100_000));
                row(
                    &format!("k. producer, {name}: redis-server instructions / redis-server CPU µs / producer user µs / producer system µs, per event"),
                    format!("{instructions:.0} / {redis_cpu:.2} / {user:.2} / {system:.2}"),
                );
            }
        }
        if wanted("claims") {
            for (name, primitive) in [
                ("LPOP 500 (no record: the floor)", ClaimPrimitive::Pop),
                ("moved through Lua (LRANGE + RPUSH + LTRIM in a script)", ClaimPrimitive::MoveThroughLua),
                ("SORT … STORE to a claim key, plain LRANGE, DEL", ClaimPrimitive::SortStore),
                ("a range of the list as a log, plain LRANGE, trim", ClaimPrimitive::Range),
                ("the same range read in pipelined pages of 64", ClaimPrimitive::RangeInPages(64)),
                ("the same range read in pipelined pages of 4", ClaimPrimitive::RangeInPages(4)),
            ] {
                let instructions = claim_primitive_cost(primitive);
                row(
                    &format!("n. claim primitive, {name}: redis-server instructions per event"),
                    format!("{instructions:.0}"),
                );
            }
        }
        if python {
            let small = n.min(20_000);
            let post100 = python_worker(&redis, &collector, &url, small, "post", 100).await;
            row(&format!("Python RedisWorker POST batch 100 ({small} events), events/s"), format!("{post100:.0}"));
            let post10 = python_worker(&redis, &collector, &url, small.min(10_000), "post", 10).await;
            row("Python RedisWorker POST batch 10, events/s", format!("{post10:.0}"));
        }
        println!("\n| measure | value |\n|---|---|");
        for (name, value) in &rows {
            println!("| {name} | {value} |");
        }
    });
}
