//! One HTTP/1 accept loop for the relay's listeners (the admin listener and the local
//! collector), bounded whatever clients do:
//! - at most `max_connections` connections are served at once. When all are taken, the
//!   oldest connection that has not sent a request yet is closed to make room: idle
//!   connections held open by a flood never keep a probe (a health check, a tracker's
//!   request) out. When every connection is serving a request, a new one waits for the
//!   first to end;
//! - each connection's header buffer is small (`max_header_bytes`), its headers must
//!   arrive within `header_timeout`, and it lives at most `connection_timeout`;
//! - an accept error (`EMFILE`: out of file descriptors) backs off, 10 ms doubling to
//!   1 s (the one [`Retry`] every retry uses), instead of spinning.
//!
//! The service decides about bodies (the collector reads them with its own deadline and
//! byte budget); the admin endpoints read none.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use snowplow_relay_tracker::retry::{Backoff, Retry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Between failed accepts: 10 ms doubling to 1 s.
const ACCEPT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_secs(1),
};

/// The response body every listener answers with (a whole buffer or a stream).
pub type Body = BoxBody<Bytes, Infallible>;

/// How a listener bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Bytes of request line and headers a connection may buffer (hyper's minimum is
    /// 8 KiB).
    pub max_header_bytes: usize,
    /// Time for a request's headers to arrive.
    pub header_timeout: Duration,
    /// The longest a connection is kept, whatever it does.
    pub connection_timeout: Duration,
    /// Serve several requests per connection.
    pub keep_alive: bool,
}

/// Serves `listener` with `answer` until `shutdown` completes.
pub async fn serve_http<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    answer: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Waiting::default());
    let mut accept_failures = Retry::new(ACCEPT_BACKOFF);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => {
                accept_failures.succeeded();
                (stream, peer)
            }
            Err(error) => {
                // Out of file descriptors, or the like: wait before trying again.
                let delay = accept_failures.failed();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot accept a connection");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        // A slot: a free one, or the one of the oldest connection that sent no request.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                waiting.close_oldest();
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => slot,
                    () = &mut shutdown => return,
                };
                let Ok(slot) = slot else { return };
                slot
            }
        };
        let answer = answer.clone();
        let (id, close) = waiting.add();
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let started = waiting.clone();
            let service = service_fn(move |mut request: Request<Incoming>| {
                // A request came: this connection is no longer one to close for room.
                started.remove(id);
                request.extensions_mut().insert(Peer(peer));
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(request).await) }
            });
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8 * 1024))
                .keep_alive(limits.keep_alive);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(limits.connection_timeout, connection) => {}
                () = close.cancelled() => {}
            }
            waiting.remove(id);
            drop(slot);
        });
    }
}

/// The connections that have not sent a request yet, oldest first: the ones to close when
/// a new connection needs room.
#[derive(Debug, Default)]
struct Waiting {
    next: std::sync::atomic::AtomicU64,
    connections: std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
}

impl Waiting {
    /// A new connection, waiting for its first request: its id and what closes it.
    fn add(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = CancellationToken::new();
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(id, close.clone());
        }
        (id, close)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.remove(&id);
        }
    }

    /// Closes the oldest connection that has not sent a request, if there is one.
    fn close_oldest(&self) {
        if let Ok(mut connections) = self.connections.lock()
            && let Some((_, close)) = connections.pop_first()
        {
            close.cancel();
        }
    }
}

/// The address a request's connection came from, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// A whole-buffer body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into()).boxed()
}
