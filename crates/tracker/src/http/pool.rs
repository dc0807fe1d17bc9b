//! The collector's connections: HTTP/1.1, kept alive in a small pool, made by the
//! [`Route`] (straight or through a proxy, plain or TLS); each exchange on one is
//! written and read by [`exchange`](super::exchange). A request is written from the
//! bytes the encoder already wrote: no `url::Url` round trip, no redirect layer, no
//! header map. A kept-alive connection the collector has closed (or sent anything on)
//! while it was idle is never used.
//!
//! An answer is believed only from a clean exchange: a connection serves another request
//! only after a complete 2xx answer ([`reusable_after`]) that left nothing behind it; the
//! timeout covers the connect (the tunnel and the TLS handshake included) and the
//! answer's head, and a 2xx whose body then stalls is delivered (its connection closed,
//! the body's time bounded by what is left of the timeout); and no answer makes the
//! relay read more than [`MAX_ANSWER_BYTES`](super::answer::MAX_ANSWER_BYTES) from its
//! connection (interim `1xx` answers included).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::answer::{Answer, reusable_after};
use super::exchange::{Connection, RequestLine};
use super::route::Route;

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
    /// The header lines every request carries: the route's (`Host`, credentials), then
    /// `User-Agent`, `Accept` and `SP-Anonymous` if asked.
    headers: Vec<u8>,
    timeout: Duration,
    max_idle: usize,
    /// Connections waiting for a request, the most recently used last, each with when it
    /// became idle.
    idle: Mutex<Vec<(Connection, Instant)>>,
}

impl Pool {
    /// Connections on `route` with `timeout` for each request (the connect and the
    /// answer's head), keeping up to `max_idle` idle ones.
    pub fn new(route: Route, timeout: Duration, max_idle: usize, anonymous: bool) -> Pool {
        let mut headers = Vec::new();
        route.write_headers(&mut headers);
        headers.extend_from_slice(b"User-Agent: ");
        headers.extend_from_slice(super::USER_AGENT.as_bytes());
        headers.extend_from_slice(b"\r\nAccept: */*\r\n");
        if anonymous {
            headers.extend_from_slice(b"SP-Anonymous: *\r\n");
        }
        Pool {
            shared: Arc::new(Shared {
                route,
                headers,
                timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// One request to `target` (a URL to this collector): a POST of `body`, or a GET. The
    /// answer's body is read (up to
    /// [`MAX_RESPONSE_BODY_BYTES`](super::answer::MAX_RESPONSE_BODY_BYTES)) so that the
    /// connection can serve the next request after a 2xx. The error text never holds
    /// the URL.
    ///
    /// `timeout` bounds the connect and the answer's head (`None`: the pool's own).
    pub async fn send(
        &self,
        target: Bytes,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Unanswered> {
        let shared = &self.shared;
        let line = RequestLine::new(
            &target,
            shared.route.absolute_form(),
            body.as_ref().map(Bytes::len),
        )
        .map_err(Unanswered::Failed)?;
        let timeout = timeout.unwrap_or(shared.timeout);
        shared.exchange(&line, body.as_deref(), timeout).await
    }
}

impl Shared {
    /// Sends the request (`line`, the pool's headers and `body`) on an idle connection or
    /// a new one, and reads the answer: its head by the deadline (else the attempt
    /// failed), then its body within what is left.
    async fn exchange(
        &self,
        line: &RequestLine<'_>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Answer, Unanswered> {
        let deadline = Instant::now() + timeout;
        // The answer's status, where it redirects to and how long it took, once its
        // head is read: from then on the exchange has an answer, whatever the body does.
        let mut answered: Option<(u16, Option<String>, Duration)> = None;
        let exchange = async {
            let mut connection = match self.idle_connection() {
                Some(connection) => connection,
                None => {
                    tracing::trace!("opening a connection to the collector");
                    Connection::new(self.route.connect().await?)
                }
            };
            let sent = Instant::now();
            connection.send(line, &self.headers, body).await?;
            let answer = connection.read_head().await?;
            answered = Some((answer.status, answer.location.clone(), sent.elapsed()));
            let reusable = connection.read_body(&answer).await?;
            Ok::<_, String>((connection, reusable))
        };
        let ended = tokio::time::timeout_at(deadline, exchange).await;
        let Some((status, location, answered_in)) = answered else {
            return Err(match ended {
                Err(_) => Unanswered::TimedOut(timeout),
                Ok(Err(error)) => Unanswered::Failed(error),
                Ok(Ok(_)) => unreachable!("an exchange that ended well has an answer"),
            });
        };
        // The status decides; the body was read only so that the connection can serve
        // another request.
        if let Ok(Ok((connection, complete))) = ended
            && reusable_after(status, complete)
        {
            self.keep(connection);
        }
        Ok(Answer {
            status,
            location,
            answer_seconds: answered_in.as_secs_f64(),
        })
    }

    /// The most recently used idle connection that is still open and quiet.
    fn idle_connection(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("idle connections");
        loop {
            let (mut connection, since) = idle.pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && connection.is_idle_and_open() {
                return Some(connection);
            }
        }
    }

    /// Puts a connection whose exchange has ended back for the next request, unless
    /// `max_idle` are already waiting (then it closes). Connections idle for longer than
    /// [`IDLE_TIMEOUT`] are closed on the way (else [`Self::idle_connection`] skips
    /// them); closed ones are swept out when the list is full. No walk of the whole list
    /// on every return: with a thousand connections
    /// that cost more than the request.
    fn keep(&self, connection: Connection) {
        let mut idle = self.idle.lock().expect("idle connections");
        let now = Instant::now();
        // Pushed in time order under the lock, so the expired ones are the oldest, first.
        let expired = idle.partition_point(|(_, since)| now - *since > IDLE_TIMEOUT);
        idle.drain(..expired);
        if idle.len() >= self.max_idle {
            idle.retain_mut(|(connection, _)| connection.is_idle_and_open());
        }
        if idle.len() < self.max_idle {
            idle.push((connection, now));
        }
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
