//! One HTTP/1 accept loop for the relay's listeners (the admin listener and the local
//! collector), bounded whatever clients do:
//! - at most `max_connections` connections are served at once; more wait in the kernel's
//!   accept queue, not in the process;
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
    let mut accept_failures = Retry::new(ACCEPT_BACKOFF);
    tokio::pin!(shutdown);
    loop {
        // A slot first: past the cap, connections wait in the accept queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => return,
        };
        let Ok(slot) = slot else { return };
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
                drop(slot);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
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
            let _ = tokio::time::timeout(limits.connection_timeout, connection).await;
            drop(slot);
        });
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
