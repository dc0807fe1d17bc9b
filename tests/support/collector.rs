//! A collector stand-in that records every request and answers as the test says, served
//! by the relay's own accept loop (`snowplow_relay::ops::listener::serve_http`); HTTPS
//! by a TLS terminator in front of it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use snowplow_relay::ops::listener::{Body, Limits, full, serve_http};

use super::net::ClosedPort;

/// A stand-in collector's limits: wide, so that no test meets them by accident.
pub const LIMITS: Limits = Limits {
    max_connections: 1024,
    max_header_bytes: 64 * 1024,
    header_timeout: Duration::from_secs(10),
    connection_timeout: Duration::from_secs(3600),
    keep_alive: true,
};

/// One request as the collector saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target as written in the request line (absolute form to a proxy).
    pub target: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
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

/// Answers every request with `status`.
pub fn always(status: u16) -> Responder {
    Box::new(move |_| status)
}

/// Answers `status` to any request carrying one of `eids`, 200 to the others.
pub fn refusing(eids: &'static [&'static str], status: u16) -> Responder {
    refusing_where(move |eid| eids.contains(&eid), status)
}

/// Answers `status` to any request carrying an eid that ends in `digit` (one event in ten
/// of [`super::numbered_events`]), 200 to the others.
pub fn refusing_eids_ending_in(digit: char, status: u16) -> Responder {
    refusing_where(move |eid| eid.ends_with(digit), status)
}

fn refusing_where(refuse: impl Fn(&str) -> bool + Send + Sync + 'static, status: u16) -> Responder {
    Box::new(move |request| {
        let refused = request
            .events()
            .iter()
            .any(|e| e["eid"].as_str().is_some_and(&refuse));
        if refused { status } else { 200 }
    })
}

#[derive(Clone)]
pub struct Collector {
    pub addr: SocketAddr,
    /// The HTTPS address, for [`Collector::start_tls`].
    pub tls_addr: Option<SocketAddr>,
    received: Arc<Mutex<Vec<Received>>>,
    /// Distinct eids answered 2xx, kept as requests arrive (cheap to poll).
    delivered_set: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Events answered 2xx, repeats counted.
    delivered_total: Arc<Mutex<usize>>,
    responder: Arc<Mutex<Responder>>,
    delay: Arc<Mutex<Duration>>,
    location: Arc<Mutex<Option<String>>>,
    /// Cookie bounce on: the bounce parameter's name.
    bounce: Arc<Mutex<Option<&'static str>>>,
    /// Requests whose body has arrived, answered or not (a delayed answer is pending).
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests arrived and not yet answered, and the most there were at once.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    peak_pending: Arc<std::sync::atomic::AtomicUsize>,
    /// The eids of every request that arrived, as it arrived: what a real collector has
    /// taken in even if the relay gave up waiting for its answer.
    arrived_eids: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    pub async fn start() -> Collector {
        Self::start_with(Box::new(|_| 200)).await
    }

    /// Answers each request with `responder(request)`.
    pub async fn start_with(responder: Responder) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, responder)
    }

    /// A collector answering 200 on a port reserved earlier.
    pub fn start_on(port: ClosedPort) -> Collector {
        Self::serve(port.listen(), Box::new(|_| 200))
    }

    /// Serves `listener` on the relay's own accept loop until the test ends.
    fn serve(listener: tokio::net::TcpListener, responder: Responder) -> Collector {
        let collector = Collector {
            addr: listener.local_addr().unwrap(),
            tls_addr: None,
            received: Arc::default(),
            delivered_set: Arc::default(),
            delivered_total: Arc::default(),
            responder: Arc::new(Mutex::new(responder)),
            delay: Arc::default(),
            location: Arc::default(),
            bounce: Arc::default(),
            arrived: Arc::default(),
            pending: Arc::default(),
            peak_pending: Arc::default(),
            arrived_eids: Arc::default(),
        };
        let state = collector.clone();
        let answer = move |request| {
            let state = state.clone();
            async move { state.handle(request).await }
        };
        tokio::spawn(serve_http(listener, LIMITS, answer, std::future::pending()));
        collector
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        // The delay is fixed before the request counts as arrived: a test that sees it
        // arrive and then drops the delay must not have it answered at once (a soak test
        // once saw all 200 events of a dead relay's request delivered that way, between
        // the two steps).
        let delay = *self.delay.lock().unwrap();
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut received = Received {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            status: 0,
            at: Instant::now(),
        };
        self.arrived_eids.lock().unwrap().extend(
            received
                .events()
                .iter()
                .filter_map(|e| e.get("eid").and_then(|e| e.as_str()).map(str::to_owned)),
        );
        let pending = self
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.peak_pending
            .fetch_max(pending, std::sync::atomic::Ordering::SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.pending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let bounce = self.bounce_location(&received);
        received.status = match bounce {
            Some(_) => 302,
            None => (self.responder.lock().unwrap())(&received),
        };
        let status = received.status;
        if (200..300).contains(&status) {
            let mut set = self.delivered_set.lock().unwrap();
            let events = received.events();
            *self.delivered_total.lock().unwrap() += events.len();
            for event in events {
                if let Some(eid) = event.get("eid").and_then(|e| e.as_str()) {
                    set.insert(eid.to_owned());
                }
            }
        }
        self.received.lock().unwrap().push(received);
        let mut response = Response::builder().status(status);
        if let Some(location) = bounce.or_else(|| self.location.lock().unwrap().clone()) {
            response = response.header("location", location);
        }
        response.body(full(Bytes::from_static(b"ok"))).unwrap()
    }

    /// As the Snowplow collector's `cookieBounce`: a request without the collector's
    /// cookie and without `parameter` is answered 302 to the same URL plus
    /// `parameter=true`.
    pub fn bounce_cookies(&self, parameter: &'static str) {
        *self.bounce.lock().unwrap() = Some(parameter);
    }

    fn bounce_location(&self, request: &Received) -> Option<String> {
        let parameter = (*self.bounce.lock().unwrap())?;
        let query = request.query.as_deref().unwrap_or("");
        let bounced = form_urlencoded_pairs(query)
            .iter()
            .any(|(k, _)| k == parameter);
        if bounced || request.headers.contains_key("cookie") {
            return None;
        }
        let joiner = if query.is_empty() { "" } else { "&" };
        Some(format!("{}?{query}{joiner}{parameter}=true", request.path))
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
    /// The most requests it held unanswered at once.
    pub fn peak_pending(&self) -> usize {
        self.peak_pending.load(std::sync::atomic::Ordering::SeqCst)
    }

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

    /// Waits up to `timeout_secs` until the collector received at least `n` requests.
    pub async fn until_requests(&self, n: usize, timeout_secs: u64) {
        let what = format!("{n} requests");
        super::wait_until(&what, timeout_secs, async || self.request_count() >= n).await;
    }

    /// Waits up to `timeout_secs` until at least `n` requests arrived, answered or not
    /// (with [`Collector::set_delay`], the answers come later).
    pub async fn until_arrived(&self, n: usize, timeout_secs: u64) {
        let what = format!("{n} requests arrived");
        super::wait_until(&what, timeout_secs, async || {
            self.arrived.load(std::sync::atomic::Ordering::SeqCst) >= n
        })
        .await;
    }

    /// How many requests were answered so far.
    pub fn request_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits up to `timeout_secs` until at least `n` events were delivered (repeats count).
    pub async fn until_delivered(&self, n: usize, timeout_secs: u64) {
        let what = format!("{n} events delivered");
        super::wait_until(&what, timeout_secs, async || self.delivered_count() >= n).await;
    }

    /// Waits up to `timeout_secs` until exactly `n` events were delivered (repeats count).
    pub async fn until_exactly_delivered(&self, n: usize, timeout_secs: u64) {
        let what = format!("exactly {n} events delivered");
        super::wait_until(&what, timeout_secs, async || self.delivered_count() == n).await;
    }

    /// Waits up to `timeout_secs` until `n` distinct eids were delivered.
    pub async fn until_distinct(&self, n: usize, timeout_secs: u64) {
        let what = format!("{n} distinct events delivered");
        super::wait_until(&what, timeout_secs, async || self.distinct_delivered() == n).await;
    }

    /// The eids of every request that arrived, answered or not, repeats kept.
    pub fn arrived_eids(&self) -> Vec<String> {
        self.arrived_eids.lock().unwrap().clone()
    }

    /// How many events were delivered, repeats counted (cheap to poll).
    pub fn delivered_count(&self) -> usize {
        *self.delivered_total.lock().unwrap()
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

impl Collector {
    /// A collector answering 200 over HTTPS with the server certificate of `certs`;
    /// with `client_auth`, only clients with a certificate from its CA get through.
    pub async fn start_tls(certs: &super::Certs, client_auth: bool) -> Collector {
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
        let plain = Self::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_addr = listener.local_addr().unwrap();
        tokio::spawn(terminate_tls(listener, acceptor, plain.addr));
        Collector {
            tls_addr: Some(tls_addr),
            ..plain
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.tls_addr.expect("a TLS collector"))
    }
}

/// Accepts TLS connections on `listener` and forwards their plain bytes to `inner`.
async fn terminate_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: SocketAddr,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A refused handshake (no client certificate, an untrusted one) ends here.
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let Ok(mut plain) = tokio::net::TcpStream::connect(inner).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}
