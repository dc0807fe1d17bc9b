//! The collector's connections: HTTP/1.1 (hyper's), kept alive in a small pool, made by
//! the [`Route`] (straight or through a proxy, plain or TLS). A request is made from the
//! bytes the encoder already wrote, with one `http::Uri` parse: no `url::Url` round trip,
//! no redirect layer, no per-request header map beyond what is sent. A request that meets
//! a kept-alive connection the collector has just closed is sent again on a new one (it
//! never left, so it cannot arrive twice).
//!
//! An answer is believed only from a clean exchange: a connection serves another request
//! only after a complete 2xx answer ([`reusable_after`]); the timeout covers the connect
//! (the tunnel and the TLS handshake included) and the answer's head, and a 2xx whose
//! body then stalls is delivered (its connection closed, the body's time bounded by what
//! is left of the timeout); and no answer makes the relay read more than
//! [`MAX_ANSWER_BYTES`] from its connection (interim `1xx` answers included).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::answer::{
    Answer, MAX_ANSWER_BYTES, MAX_RESPONSE_BODY_BYTES, error_chain, reusable_after,
};
use super::route::{Route, Stream};

/// How long a connection may stay idle before it is closed rather than reused: what
/// hyper-util's pool keeps by default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request brought no answer.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// None within the timeout (connect and answer's head): the request may have
    /// arrived.
    TimedOut(Duration),
    /// The error and its causes.
    Failed(String),
}

/// Keep-alive HTTP/1.1 connections to one collector.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    route: Route,
    user_agent: HeaderValue,
    anonymous: bool,
    timeout: Duration,
    max_idle: usize,
    /// Connections waiting for a request, the most recently used last, each with when it
    /// became idle.
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// One connection: hyper's handle to send on it, and the bytes its current answer may
/// still bring (see [`Metered`]).
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    budget: Arc<AtomicUsize>,
}

impl Pool {
    /// Connections on `route` with `timeout` for each request (the connect and the
    /// answer's head), keeping up to `max_idle` idle ones.
    pub fn new(route: Route, timeout: Duration, max_idle: usize, anonymous: bool) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                route,
                user_agent: HeaderValue::from_static(super::USER_AGENT),
                anonymous,
                timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// One request to `target` (a URL to this collector): a POST of `body`, or a GET. The
    /// answer's body is read (up to [`MAX_RESPONSE_BODY_BYTES`]) so that the connection
    /// can serve the next request after a 2xx. The error text never holds the URL.
    ///
    /// `timeout` bounds the connect and the answer's head (`None`: the pool's own).
    pub async fn send(
        &self,
        target: Bytes,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Unanswered> {
        let shared = &self.shared;
        let mut uri = Uri::from_maybe_shared(target)
            .map_err(|e| Unanswered::Failed(format!("not a request URL: {e}")))?;
        if !shared.route.absolute_form() {
            // To the collector itself (or through a tunnel): the request line holds the
            // path and query; through a proxy, the whole URL.
            let mut parts = uri.into_parts();
            parts.scheme = None;
            parts.authority = None;
            uri = Uri::from_parts(parts)
                .map_err(|e| Unanswered::Failed(format!("not a request URL: {e}")))?;
        }
        let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        shared.route.add_headers(headers);
        headers.insert(USER_AGENT, shared.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if shared.anonymous {
            headers.insert("sp-anonymous", HeaderValue::from_static("*"));
        }
        if body.is_some() {
            *request.method_mut() = Method::POST;
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        let timeout = timeout.unwrap_or(shared.timeout);
        shared.exchange(request, timeout).await
    }
}

impl Shared {
    /// Sends `request` on an idle connection or a new one, and reads the answer: its head
    /// by `deadline` (else the attempt failed), then its body within what is left.
    async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, Unanswered> {
        let deadline = Instant::now() + timeout;
        loop {
            let head = async {
                let (mut connection, reused) = match self.idle_connection().await {
                    Some(connection) => (connection, true),
                    None => (self.connect().await?, false),
                };
                connection.budget.store(MAX_ANSWER_BYTES, Ordering::Relaxed);
                let sent = Instant::now();
                match connection.sender.try_send_request(request).await {
                    Ok(response) => Ok(Ok((connection, response, sent.elapsed()))),
                    Err(mut failed) => match failed.take_message() {
                        // The connection closed before the request was written (the
                        // collector closed a kept-alive connection): it never left, send it
                        // on another.
                        Some(unsent) if reused => Ok(Err(unsent)),
                        _ => Err(error_chain(failed.error())),
                    },
                }
            };
            let (connection, mut response, answered_in) =
                match tokio::time::timeout_at(deadline, head).await {
                    Err(_) => return Err(Unanswered::TimedOut(timeout)),
                    Ok(Err(error)) => return Err(Unanswered::Failed(error)),
                    Ok(Ok(Err(unsent))) => {
                        request = unsent;
                        continue;
                    }
                    Ok(Ok(Ok(sent))) => sent,
                };
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            // The status decides; the body is read, within what is left of the time, only
            // so that the connection can serve another request.
            let body = async {
                let mut read = 0;
                while read <= MAX_RESPONSE_BODY_BYTES {
                    match response.body_mut().frame().await {
                        Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                        Some(Err(_)) => return false,
                        None => return true,
                    }
                }
                false
            };
            let complete = tokio::time::timeout_at(deadline, body)
                .await
                .unwrap_or(false);
            if reusable_after(status, complete) {
                self.keep(connection);
            }
            return Ok(Answer {
                status,
                location,
                answer_seconds: answered_in.as_secs_f64(),
            });
        }
    }

    /// The most recently used idle connection that is still open and ready for a request.
    async fn idle_connection(&self) -> Option<Connection> {
        loop {
            let (mut connection, since) = self.idle.lock().expect("idle connections").pop()?;
            if connection.sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Ready once its connection has finished the previous exchange; an error means
            // it closed meanwhile.
            if connection.sender.ready().await.is_ok() {
                return Some(connection);
            }
        }
    }

    /// A new connection (the connect counts against the request's timeout), driven by a
    /// task of its own until it closes.
    async fn connect(&self) -> Result<Connection, String> {
        tracing::trace!("opening a connection to the collector");
        let stream = self.route.connect().await?;
        let budget = Arc::new(AtomicUsize::new(MAX_ANSWER_BYTES));
        let metered = Metered {
            stream,
            budget: budget.clone(),
        };
        let (sender, connection) = handshake(TokioIo::new(metered))
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error_chain(&error), "collector connection ended");
            }
        });
        Ok(Connection { sender, budget })
    }

    /// Puts a connection whose exchange has ended back for the next request, unless
    /// `max_idle` are already waiting (then it closes). Connections idle for longer than
    /// [`IDLE_TIMEOUT`] are closed on the way; closed ones are swept out when the list
    /// is full (else [`Self::idle_connection`] skips them). No walk of the whole list
    /// on every return: with a thousand connections that cost more than the request.
    fn keep(&self, connection: Connection) {
        let mut idle = self.idle.lock().expect("idle connections");
        let now = Instant::now();
        // Pushed in time order under the lock, so the expired ones are the oldest, first.
        let expired = idle.partition_point(|(_, since)| now - *since > IDLE_TIMEOUT);
        idle.drain(..expired);
        if idle.len() >= self.max_idle {
            idle.retain(|(connection, _)| !connection.sender.is_closed());
        }
        if idle.len() < self.max_idle {
            idle.push((connection, now));
        }
    }
}

/// A connection that counts what it reads against the budget its current exchange set
/// ([`MAX_ANSWER_BYTES`] per answer): once it is spent, a read fails, so hyper fails the
/// answer and the connection closes, whatever the collector keeps sending.
struct Metered {
    stream: Stream,
    budget: Arc<AtomicUsize>,
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let left = this.budget.load(Ordering::Relaxed);
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::other(
                "the collector's answer is longer than the relay reads",
            )));
        }
        // As tokio's `Take`: the limited view shares the caller's (uninitialised) memory,
        // so nothing is zeroed before a read.
        let mut limited = buf.take(left);
        let start = limited.filled().as_ptr();
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut limited))?;
        assert_eq!(
            start,
            limited.filled().as_ptr(),
            "the stream swapped the buffer"
        );
        let read = limited.filled().len();
        // SAFETY: the stream initialised `read` bytes of the limited view, which are the
        // first `read` bytes of `buf`'s unfilled part.
        unsafe { buf.assume_init(read) };
        buf.advance(read);
        this.budget.fetch_sub(read, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use url::Url;

    /// A collector on a raw socket: answers `200 ok` to each request (without
    /// `Connection: close`), and closes each connection after `requests_per_connection`
    /// answers. Counts the connections it accepted and keeps the last request head.
    async fn collector(
        requests_per_connection: usize,
    ) -> (Url, Arc<AtomicUsize>, Arc<Mutex<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/i", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let (count, head) = (accepted.clone(), last_head.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let head = head.clone();
                tokio::spawn(async move {
                    for _ in 0..requests_per_connection {
                        let mut request = Vec::new();
                        while !request.ends_with(b"\r\n\r\n") {
                            let mut byte = [0u8];
                            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            request.push(byte[0]);
                        }
                        *head.lock().unwrap() = String::from_utf8_lossy(&request).into_owned();
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        stream.write_all(answer).await.unwrap();
                    }
                    // Closing the connection after the answer, as a collector with a short
                    // keep-alive timeout does.
                });
            }
        });
        (url, accepted, last_head)
    }

    /// A pool to the collector at `url`, straight.
    fn pool(url: &Url, anonymous: bool) -> Pool {
        let route = Route::new(url, &super::super::ClientSettings::default()).unwrap();
        Pool::new(route, Duration::from_secs(5), 4, anonymous)
    }

    fn target(url: &Url) -> Bytes {
        Bytes::from(format!("{url}?e=pv&p=pc&tv=t"))
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_requests_written_in_origin_form() {
        let (url, accepted, head) = collector(usize::MAX).await;
        let plain = pool(&url, true);
        for _ in 0..5 {
            let answer = plain.send(target(&url), None, None).await.unwrap();
            assert_eq!(answer.status, 200);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );
        let head = head.lock().unwrap().clone();
        let port = url.port().unwrap();
        assert!(
            head.starts_with("GET /i?e=pv&p=pc&tv=t HTTP/1.1\r\n"),
            "{head}"
        );
        for header in [
            format!("host: 127.0.0.1:{port}\r\n"),
            format!("user-agent: {}\r\n", super::super::USER_AGENT),
            "accept: */*\r\n".to_owned(),
            "sp-anonymous: *\r\n".to_owned(),
        ] {
            assert!(
                head.to_ascii_lowercase().contains(&header),
                "{header:?} in {head}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_the_collector_closed_is_replaced_without_a_failure() {
        let (url, accepted, _) = collector(1).await;
        let plain = pool(&url, false);
        for round in 1..=3 {
            let answer = plain
                .send(target(&url), Some(Bytes::from_static(b"{}")), None)
                .await;
            assert_eq!(answer.unwrap().status, 200, "request {round}");
            // Long enough for the close to arrive before the next request.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/i", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let plain = pool(&url, false);
        let Some(Unanswered::Failed(error)) = plain.send(target(&url), None, None).await.err()
        else {
            panic!("a refused connection is a failure, not a timeout");
        };
        assert!(error.contains("could not connect"), "{error}");
        assert!(!error.contains("e=pv"), "{error}");
    }
}
