//! Test harness: a private `redis-server` per test, a recording HTTP collector, and a
//! relay running in-process with a shutdown the test controls.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use snowplow_relay::config::{Overrides, Settings};
use tokio::sync::oneshot;

/// The events real Python trackers write, one JSON object per line.
pub const TRACKER_0_15: &str =
    include_str!("../../crates/tracker/tests/fixtures/python-tracker-0.15.0.jsonl");
/// Events in the shape the 0.4.0 tracker wrote them (numbers, plain and base64 contexts).
pub const TRACKER_0_4: &str =
    include_str!("../../crates/tracker/tests/fixtures/python-tracker-0.4.0-shape.jsonl");
/// The payload_data 1-0-4 schema every POST body must satisfy.
pub const PAYLOAD_DATA_SCHEMA: &str = include_str!("../fixtures/payload_data-1-0-4.json");

/// Every fixture event.
pub fn fixture_events() -> Vec<String> {
    TRACKER_0_15
        .lines()
        .chain(TRACKER_0_4.lines())
        .map(str::to_owned)
        .collect()
}

/// Gives a fixture event a unique `eid` (the 0.4.0 shape has none), so it can be traced.
pub fn with_eid(event: &str, eid: &str) -> String {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(event).unwrap();
    value.insert("eid".into(), eid.into());
    serde_json::to_string(&value).unwrap()
}

/// `n` distinct events cycling through the fixtures, each with eid `ev-<i>`.
pub fn numbered_events(n: usize) -> Vec<String> {
    let fixtures = fixture_events();
    (0..n)
        .map(|i| with_eid(&fixtures[i % fixtures.len()], &format!("ev-{i}")))
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on a free port, in a directory of its own (a replica writes
/// the data it syncs there, and a server loads any `dump.rdb` in its directory at
/// start), killed by PID when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    client: redis::Client,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        Self::start_on(port, extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        Self::start_under(&[], port, extra)
    }

    /// A redis-server run by `wrapper` (e.g. `valgrind --tool=callgrind …`), or directly
    /// when it is empty.
    pub fn start_under(wrapper: &[&str], port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("redis-server");
                command
            }
            None => Command::new("redis-server"),
        };
        let child = command
            .args(["--dir", dir.path().to_str().unwrap()])
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline =
            Instant::now() + Duration::from_secs(if wrapper.is_empty() { 10 } else { 60 });
        // Only the server this harness started counts: another one on the same port
        // (a leftover, a parallel test) would make every assertion meaningless.
        let pid = child.id();
        loop {
            if let Ok(mut conn) = client.get_connection()
                && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn)
            {
                assert!(
                    info.contains(&format!("process_id:{pid}\r\n")),
                    "port {port} is answered by a redis-server this test did not start"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            port,
            child,
            client,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        self.client.get_connection().unwrap()
    }

    pub fn rpush(&self, key: &str, items: &[String]) {
        let mut conn = self.conn();
        for chunk in items.chunks(1000) {
            redis::cmd("RPUSH")
                .arg(key)
                .arg(chunk)
                .query::<i64>(&mut conn)
                .unwrap();
        }
    }

    pub fn rpush_bytes(&self, key: &str, item: &[u8]) {
        redis::cmd("RPUSH")
            .arg(key)
            .arg(item)
            .query::<i64>(&mut self.conn())
            .unwrap();
    }

    pub fn lrange(&self, key: &str) -> Vec<Vec<u8>> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut self.conn())
            .unwrap()
    }

    pub fn llen(&self, key: &str) -> usize {
        redis::cmd("LLEN").arg(key).query(&mut self.conn()).unwrap()
    }

    /// Every key in the database.
    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(&mut self.conn()).unwrap()
    }

    /// How many clients are blocked in a command (e.g. the relay's BLMOVE).
    pub fn blocked_clients(&self) -> usize {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut self.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "STOP", "CONT") to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM: Redis writes its append-only file and exits.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request as the collector saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    /// The events this request carried, as name -> value maps.
    pub fn events(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        if self.method == "GET" {
            let pairs = form_urlencoded_pairs(self.query.as_deref().unwrap_or(""));
            vec![
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
            ]
        } else {
            let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item.as_object().unwrap().clone())
                .collect()
        }
    }
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Decides the status of each request; the default answers 200.
pub type Responder = Box<dyn FnMut(&Received) -> u16 + Send>;

#[derive(Clone)]
pub struct Collector {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// Distinct eids answered 2xx, kept as requests arrive (cheap to poll).
    delivered_set: Arc<Mutex<std::collections::HashSet<String>>>,
    responder: Arc<Mutex<Responder>>,
    delay: Arc<Mutex<Duration>>,
    location: Arc<Mutex<Option<String>>>,
}

impl Collector {
    pub async fn start() -> Collector {
        Self::start_with(Box::new(|_| 200)).await
    }

    /// A collector answering 200 on a given port.
    pub async fn start_on(port: u16) -> Collector {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, Box::new(|_| 200))
    }

    /// Answers each request with `responder(request)`.
    pub async fn start_with(responder: Responder) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, responder)
    }

    fn serve(listener: tokio::net::TcpListener, responder: Responder) -> Collector {
        Self::serve_with(listener, responder, None)
    }

    /// Accepts connections (through `tls` when given) and answers every request.
    fn serve_with(
        listener: tokio::net::TcpListener,
        responder: Responder,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Collector {
        let collector = Collector {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            delivered_set: Arc::default(),
            responder: Arc::new(Mutex::new(responder)),
            delay: Arc::default(),
            location: Arc::default(),
        };
        let state = collector.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, tls) = (state.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return, // a refused handshake: nothing to serve
                        },
                    };
                });
            }
        });
        collector
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut received = Received {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            status: 0,
        };
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        received.status = (self.responder.lock().unwrap())(&received);
        let status = received.status;
        if (200..300).contains(&status) {
            let mut set = self.delivered_set.lock().unwrap();
            for event in received.events() {
                if let Some(eid) = event.get("eid").and_then(|e| e.as_str()) {
                    set.insert(eid.to_owned());
                }
            }
        }
        self.received.lock().unwrap().push(received);
        let mut response = Response::builder().status(status);
        if let Some(location) = self.location.lock().unwrap().clone() {
            response = response.header("location", location);
        }
        response.body(Full::new(Bytes::from_static(b"ok"))).unwrap()
    }

    /// Adds a `Location` header to every answer from now on (for 3xx answers).
    pub fn set_location(&self, location: Option<String>) {
        *self.location.lock().unwrap() = location;
    }

    /// Changes how requests are answered from now on.
    pub fn respond_with(&self, responder: Responder) {
        *self.responder.lock().unwrap() = responder;
    }

    /// Holds every answer back this long (requests still count when answered).
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Events from the requests that were answered 2xx.
    pub fn delivered(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(Received::events)
            .collect()
    }

    /// How many distinct eids were delivered (answered 2xx).
    pub fn distinct_delivered(&self) -> usize {
        self.delivered_set.lock().unwrap().len()
    }

    /// The distinct eids delivered.
    pub fn distinct_eids(&self) -> std::collections::HashSet<String> {
        self.delivered_set.lock().unwrap().clone()
    }

    /// eids of delivered events.
    pub fn delivered_eids(&self) -> Vec<String> {
        self.delivered()
            .iter()
            .map(|e| e["eid"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A configuration pointing at `redis` and `collector`, with fast retries for tests.
pub fn config(
    redis: &RedisServer,
    collector: &Collector,
    extra: &[(&'static str, &str)],
) -> Settings {
    config_for_urls(&redis.url(), &collector.url(), extra)
}

/// As [`config`], for a Redis and a collector given by URL (which may not answer yet).
pub fn config_for_urls(
    redis_url: &str,
    collector_url: &str,
    extra: &[(&'static str, &str)],
) -> Settings {
    let mut overrides = Overrides::default();
    overrides.set("redis.url", Some(redis_url));
    overrides.set("collector.url", Some(collector_url));
    overrides.set("collector.retry_initial_backoff_ms", Some("20"));
    overrides.set("collector.retry_max_backoff_ms", Some("200"));
    for (key, value) in extra {
        overrides.set(key, Some(value));
    }
    Settings::load(None, &overrides, Some(&Default::default())).unwrap()
}

/// A relay running in this process until [`Relay::stop`].
pub struct Relay {
    shutdown: Option<oneshot::Sender<()>>,
    force: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<snowplow_relay::Summary, snowplow_relay::Error>>,
}

impl Relay {
    pub fn start(config: Settings) -> Relay {
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (force_tx, force_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(snowplow_relay::run(
            config,
            async move {
                let _ = shutdown_rx.await;
            },
            async move {
                if force_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        ));
        Relay {
            shutdown: Some(shutdown_tx),
            force: Some(force_tx),
            task,
        }
    }

    /// Graceful shutdown; waits for the relay to finish.
    pub async fn stop(mut self) -> snowplow_relay::Summary {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30 s")
            .unwrap()
            .expect("relay stops cleanly")
    }

    /// Shutdown followed at once by a second signal.
    pub async fn stop_now(mut self) -> snowplow_relay::Summary {
        let _ = self.shutdown.take().unwrap().send(());
        let _ = self.force.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30 s")
            .unwrap()
            .expect("relay stops cleanly")
    }
}

/// The relay's instance ids registered in `redis` (for the default list).
pub fn instances(redis: &RedisServer) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg("{snowplow}:instances")
        .query(&mut redis.conn())
        .unwrap()
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Validates a POST body: the self-describing envelope, and its `data` against
/// payload_data 1-0-4 (the iglu `$schema` and `self` keys removed, as Iglu does).
pub fn assert_valid_payload_data(body: &[u8]) {
    let mut schema: serde_json::Value = serde_json::from_str(PAYLOAD_DATA_SCHEMA).unwrap();
    let object = schema.as_object_mut().unwrap();
    object.remove("$schema");
    object.remove("self");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(body).expect("POST body is JSON");
    assert_eq!(
        body["schema"],
        "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "only schema and data");
    let errors: Vec<String> = validator
        .iter_errors(&body["data"])
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "payload_data violations: {errors:?}");
}

/// A private CA with a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the `openssl` command in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for name in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        // A CA nobody trusts, for the failure paths.
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
        ]);
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

impl Collector {
    /// A collector answering 200 over HTTPS with the server certificate of `certs`;
    /// with `client_auth`, only clients with a certificate from its CA get through.
    pub async fn start_tls(certs: &Certs, client_auth: bool) -> Collector {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.path("server.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(certs.path("ca.pem")).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_with(listener, Box::new(|_| 200), Some(acceptor))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl RedisServer {
    /// A redis-server with a plain port (for the harness) and a TLS port using the server
    /// certificate of `certs`; `client_auth` requires client certificates.
    pub fn start_tls(certs: &Certs, client_auth: bool) -> (RedisServer, u16) {
        let tls_port = free_port();
        let server = Self::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &certs.path("server.pem"),
            "--tls-key-file",
            &certs.path("server.key"),
            "--tls-ca-cert-file",
            &certs.path("ca.pem"),
            "--tls-auth-clients",
            if client_auth { "yes" } else { "no" },
        ]);
        (server, tls_port)
    }
}

/// A TCP proxy on 127.0.0.1 in front of a Redis (or anything): it can stop forwarding
/// on the connections it holds (they stay open and answer nothing, as a frozen peer or a
/// dead network path would) while new connections pass, and it can send new connections
/// to another target (an address moved to a new master).
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    target: Arc<Mutex<u16>>,
    /// Bumped by `freeze_existing`: a connection born in an older generation forwards
    /// nothing from then on.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            target: Arc::new(Mutex::new(target_port)),
            generation: Arc::default(),
        };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = *state.target.lock().unwrap();
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(state.clone().forward(in_read, out_write));
                tokio::spawn(state.clone().forward(out_read, in_write));
            }
        });
        proxy
    }

    /// Copies `from` to `to` until either closes, or forever nothing once frozen.
    async fn forward(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let born = self.generation.load(Ordering::SeqCst);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.generation.load(Ordering::SeqCst) != born {
                // Frozen: hold the connection open and forward nothing, ever.
                let _keep = (from, to);
                std::future::pending::<()>().await;
                return;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }

    /// From now on, the connections open so far forward nothing (they stay open).
    pub fn freeze_existing(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// New connections go to `port` from now on.
    pub fn retarget(&self, port: u16) {
        *self.target.lock().unwrap() = port;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl RedisServer {
    /// Every key and its value (DUMP, so any type compares), for "nothing changed".
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut conn = self.conn();
        self.keys()
            .into_iter()
            .map(|key| {
                let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn).unwrap();
                (key, dump)
            })
            .collect()
    }

    /// Runs a command on the harness's own (default, unrestricted) connection.
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut self.conn()).unwrap()
    }
}

/// The binary under test; `RELAY_BIN` runs the process tests against another build (a
/// release binary, or an older one to show a test fails there).
pub fn bin() -> String {
    std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_snowplow-relay").to_owned())
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process id of ours.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

/// A process's peak resident memory so far (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The relay binary as an operator runs it, with fast collector retries; its stderr goes
/// to a file (a pipe read only at exit can fill up and block the relay).
pub struct RelayProcess {
    pub child: Child,
    log: tempfile::NamedTempFile,
}

impl RelayProcess {
    pub fn start(redis_url: &str, collector_url: &str, env: &[(&str, &str)]) -> RelayProcess {
        Self::start_with(
            &["--redis-url", redis_url, "--collector", collector_url],
            env,
        )
    }

    /// The binary with these arguments.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(bin())
            .args(args)
            .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_INITIAL_BACKOFF_MS", "20")
            .env("SNOWPLOW_RELAY_COLLECTOR__RETRY_MAX_BACKOFF_MS", "200")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        RelayProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log.path()).unwrap()).into_owned()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the exit (at most `limit`); returns the status and the log.
    pub async fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the process did not exit within {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
