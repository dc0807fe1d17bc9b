//! The plain-HTTP transport: hyper's HTTP/1.1 connections, kept alive in a small pool of
//! its own, for a collector reached over `http://` with no proxy and no credentials in its
//! URL (a collector beside the relay, or a TLS-terminating sidecar). A request is made from
//! the bytes the encoder already wrote, with one `http::Uri` parse: no `url::Url` round
//! trip, no redirect layer, no per-request header map beyond what is sent, none of
//! hyper-util's pool bookkeeping (measured at about 8,600 instructions per GET). Anything
//! else (TLS, a proxy, a URL with a user) goes through reqwest ([`super::client`]), which
//! this must behave like: the same headers, the same timeout (connect to the last byte of
//! the answer), no redirects followed, a small answer read so its connection is reused,
//! and a request that meets a kept-alive connection the collector has just closed sent
//! again on a new one (it never left, so it cannot arrive twice).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::time::Instant;

use super::client::{MAX_RESPONSE_BODY_BYTES, error_chain};

/// How long a connection may stay idle before it is closed rather than reused: what
/// hyper-util's and reqwest's pools keep by default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What the collector answered: its status, and where it redirects to (if it does).
pub(crate) struct Answer {
    pub status: u16,
    pub location: Option<String>,
}

/// Keep-alive HTTP/1.1 connections to one plain-HTTP collector.
#[derive(Clone)]
pub(crate) struct Plain {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where connections go: the URL's host (an IPv6 address without brackets) and port.
    host: String,
    port: u16,
    /// `Host` header: the host, and the port unless it is the default (as hyper-util and
    /// reqwest write it).
    host_header: HeaderValue,
    user_agent: HeaderValue,
    anonymous: bool,
    timeout: Duration,
    max_idle: usize,
    /// Connections waiting for a request, the most recently used last, each with when it
    /// became idle.
    idle: Mutex<Vec<(SendRequest<Full<Bytes>>, Instant)>>,
}

impl Plain {
    /// Connections to `url`'s host and port with `timeout` for each request (connect to
    /// the last byte of the answer), keeping up to `max_idle` idle ones.
    pub fn new(url: &Url, timeout: Duration, max_idle: usize, anonymous: bool) -> Plain {
        let host = url.host_str().unwrap_or_default();
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Plain {
            shared: Arc::new(Shared {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: url.port_or_known_default().unwrap_or(80),
                host_header: HeaderValue::from_str(&host_header)
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                user_agent: HeaderValue::from_static(super::USER_AGENT),
                anonymous,
                timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// One request to `target` (an `http://` URL to this collector): a POST of `body`, or
    /// a GET. The answer's body is read (up to [`MAX_RESPONSE_BODY_BYTES`]) so that the
    /// connection can serve the next request. The error text never holds the URL.
    pub async fn send(&self, target: Bytes, body: Option<Bytes>) -> Result<Answer, String> {
        let uri = Uri::from_maybe_shared(target).map_err(|e| format!("not a request URL: {e}"))?;
        // HTTP/1.1 to a server (not a proxy): the request line holds the path and query.
        let mut parts = uri.into_parts();
        parts.scheme = None;
        parts.authority = None;
        let uri = Uri::from_parts(parts).map_err(|e| format!("not a request URL: {e}"))?;
        let shared = &self.shared;
        let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, shared.host_header.clone());
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
        match tokio::time::timeout(shared.timeout, shared.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no complete answer within {:?}", shared.timeout)),
        }
    }
}

impl Shared {
    /// Sends `request` on an idle connection or a new one, and reads the answer.
    async fn exchange(&self, mut request: Request<Full<Bytes>>) -> Result<Answer, String> {
        loop {
            let (mut sender, reused) = match self.idle_connection().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            let mut response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut failed) => match failed.take_message() {
                    // The connection closed before the request was written (the collector
                    // closed a kept-alive connection): it never left, send it on another.
                    Some(unsent) if reused => {
                        request = unsent;
                        continue;
                    }
                    _ => return Err(error_chain(failed.error())),
                },
            };
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            // Read a small body so the connection can be reused; never a large one (its
            // connection is dropped).
            let mut read = 0;
            let mut ended = false;
            while read <= MAX_RESPONSE_BODY_BYTES {
                match response.body_mut().frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    Some(Err(_)) => break,
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                self.keep(sender);
            }
            return Ok(Answer { status, location });
        }
    }

    /// The most recently used idle connection that is still open and ready for a request.
    async fn idle_connection(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let (mut sender, since) = self.idle.lock().expect("idle connections").pop()?;
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Ready once its connection has finished the previous exchange; an error means
            // it closed meanwhile.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// A new connection (the connect counts against the request's timeout), driven by a
    /// task of its own until it closes.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("could not connect to the collector: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("could not set TCP_NODELAY: {e}"))?;
        let (sender, connection) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error_chain(&error), "collector connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts a connection whose exchange has ended back for the next request, unless
    /// `max_idle` are already waiting (then it closes). Connections idle for longer than
    /// [`IDLE_TIMEOUT`] are closed on the way.
    fn keep(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().expect("idle connections");
        let now = Instant::now();
        idle.retain(|(sender, since)| !sender.is_closed() && now - *since <= IDLE_TIMEOUT);
        if idle.len() < self.max_idle {
            idle.push((sender, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

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

    fn target(url: &Url) -> Bytes {
        Bytes::from(format!("{url}?e=pv&p=pc&tv=t"))
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_requests_written_in_origin_form() {
        let (url, accepted, head) = collector(usize::MAX).await;
        let plain = Plain::new(&url, Duration::from_secs(5), 4, true);
        for _ in 0..5 {
            let answer = plain.send(target(&url), None).await.unwrap();
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
        let plain = Plain::new(&url, Duration::from_secs(5), 4, false);
        for round in 1..=3 {
            let answer = plain
                .send(target(&url), Some(Bytes::from_static(b"{}")))
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
        let plain = Plain::new(&url, Duration::from_secs(5), 4, false);
        let error = plain.send(target(&url), None).await.err().unwrap();
        assert!(error.contains("could not connect"), "{error}");
        assert!(!error.contains("e=pv"), "{error}");
    }
}
