//! The admin listener (`admin.listen`, `--admin-listen ADDR`): `/metrics` (Prometheus /
//! OpenMetrics text), `/healthz` (alive) and `/readyz` (ready to relay), on one small
//! HTTP/1 server; and [`probe`], the client side used by `snowplow-relay healthcheck`
//! (slim container images have no curl).
//!
//! It only reads shared state; a slow or hostile scraper cannot hold up the relay. It
//! is bounded as [`crate::ops::listener`] says: at most 64 connections (the oldest that
//! sent no request closed to make room for a new one), 8 KiB of headers each, 2 s to
//! send them, one request per connection, 10 s per connection at most. It runs on a
//! thread of its own ([`AdminThread`]), so probes are answered however busy the relay's
//! own threads are (a collector that keeps them spinning, say).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::ops::listener::{Body, Limits, full};

use crate::ops::health::Health;
use crate::ops::metrics::{Format, Metrics};

/// What the listener serves.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The metrics behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The state behind `/healthz` and `/readyz`.
    pub health: Arc<Health>,
}

/// The admin listener on a thread of its own, with a runtime of its own; it stops when
/// this is dropped.
#[derive(Debug)]
pub struct AdminThread {
    /// The address it listens on (the port chosen when `admin.listen` asked for 0).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AdminThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` (failing at start-up, not later, if the address is taken) and serves
/// `admin` on a thread of its own.
pub fn spawn(addr: SocketAddr, admin: Admin) -> std::io::Result<AdminThread> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let stopped = async {
                    let _ = stopped.await;
                };
                serve_until(listener, admin, stopped).await;
            });
        })?;
    Ok(AdminThread {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// How the admin listener bounds its clients: its endpoints need a few hundred bytes.
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    max_header_bytes: 8 * 1024,
    header_timeout: Duration::from_secs(2),
    connection_timeout: Duration::from_secs(10),
    keep_alive: false,
};

/// Serves until `stop` completes.
async fn serve_until(
    listener: TcpListener,
    admin: Admin,
    stop: impl std::future::Future<Output = ()>,
) {
    let answer = move |request: Request<Incoming>| {
        let response = admin.answer(&request);
        async move { response }
    };
    crate::ops::listener::serve_http(listener, LIMITS, answer, stop).await;
}

impl Admin {
    fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let accept = request
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|value| value.to_str().ok());
                let format = Format::from_accept(accept);
                // The readiness gauge says what /readyz would answer now.
                self.metrics.readiness(self.health.ready().is_ok());
                Response::builder()
                    .header("content-type", format.content_type())
                    .body(full(self.metrics.encode(format)))
                    .unwrap_or_else(|_| Response::new(full("")))
            }
            "/healthz" => match self.health.alive() {
                Ok(()) => text(StatusCode::OK, format!("ok: {}\n", self.health.status())),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not alive: {why}\n"),
                ),
            },
            "/readyz" => match self.health.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// `GET path` on the admin listener at `addr`, within `timeout`: `Ok` with the body on
/// a 200, `Err` with what went wrong otherwise.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == hyper::StatusCode::OK {
            Ok(body)
        } else {
            Err(format!("{status}: {}", body.trim()))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}
