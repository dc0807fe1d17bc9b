//! The collector client: one request per attempt over keep-alive connections, and what
//! its answer means. *Whether* to retry is decided here ([`classify`]); *when* is the
//! caller's ([`crate::retry`]). It writes no state of anyone's: each attempt returns what
//! happened ([`Report`]), and the caller counts it.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use url::Url;

use super::answer::Answer;
use super::pool::{Pool, Unanswered};
use super::route::Route;
use super::settings::{ClientError, ClientSettings};
use crate::protocol::{Batch, Method, epoch_millis, write_post_body};

/// The `User-Agent` sent.
pub const USER_AGENT: &str = concat!("snowplow-relay/", env!("CARGO_PKG_VERSION"));

/// What the collector's answer means for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// 2xx: the events are delivered.
    Accepted,
    /// A no-retry status: the events are refused for good.
    Rejected,
    /// Anything else: try again later.
    Retry,
}

/// Classifies an HTTP status (retry decisions only; timing is the caller's).
pub fn classify(status: u16, no_retry: &[u16]) -> Disposition {
    if (200..300).contains(&status) {
        Disposition::Accepted
    } else if no_retry.contains(&status) {
        Disposition::Rejected
    } else {
        Disposition::Retry
    }
}

/// Why an attempt's events were refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The collector answered a no-retry status.
    Status,
    /// The collector answered 413 to a single event.
    TooLarge,
    /// The request cannot be built (a GET URL over the byte limit, text GET cannot send).
    Unsendable,
}

/// What one attempt to send a batch came to.
#[derive(Debug)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Refused for good.
    Rejected {
        /// The collector's status, if it answered.
        status: Option<u16>,
        /// What to tell whoever keeps the events.
        reason: String,
        /// Which kind of refusal.
        refusal: Refusal,
    },
    /// 413 for a batch of several events: each half may get through.
    TooLarge,
    /// Worth retrying: a transient status, a redirect, a timeout or a connection error.
    Failed(AttemptError),
}

/// Why one attempt failed. Its `Display` never holds the request URL's query (event
/// data) nor credentials.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A status that is retried.
    #[error("collector answered {0}")]
    Status(u16),
    /// A redirect, which is never followed.
    #[error(
        "collector answered {status} redirecting to {location}; redirects are not followed \
         (a POST would be replayed as a GET without its events): point the collector URL at \
         the final address"
    )]
    Redirect {
        /// The 3xx status.
        status: u16,
        /// The masked `Location`, without its query.
        location: String,
    },
    /// The error and its causes (e.g. the certificate problem), without the URL.
    #[error("request failed: {0}")]
    Transport(String),
    /// No answer within the time allowed (the connect and the answer's head): the request
    /// may have arrived, and sending it again may duplicate its events.
    #[error("request failed: no answer within {0:?}")]
    TimedOut(Duration),
}

impl From<Unanswered> for AttemptError {
    fn from(unanswered: Unanswered) -> AttemptError {
        match unanswered {
            Unanswered::TimedOut(timeout) => AttemptError::TimedOut(timeout),
            Unanswered::Failed(text) => AttemptError::Transport(text),
        }
    }
}

impl AttemptError {
    /// The collector's status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status(status) | AttemptError::Redirect { status, .. } => Some(*status),
            AttemptError::Transport(_) | AttemptError::TimedOut(_) => None,
        }
    }
}

/// What one attempt did, for the caller's counters: the outcome, and each request it
/// made (none when the batch could not be sent at all, two after a cookie bounce).
#[derive(Debug)]
pub struct Report {
    /// What it came to.
    pub attempt: Attempt,
    /// The requests made, in order.
    pub exchanges: Exchanges,
}

/// One request and its answer, as the collector gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchange {
    /// The status the collector answered (`None`: no answer: a transport error or a
    /// timeout).
    pub status: Option<u16>,
    /// Seconds from sending to the answer (or to the error).
    pub seconds: f64,
    /// Seconds from the request leaving on its connection to the answer's head: the
    /// collector's answer time, a new connection's connect (and TLS handshake) left out.
    /// `None` without an answer.
    pub answer_seconds: Option<f64>,
    /// Bytes sent: the POST body or the GET request URL.
    pub bytes: u64,
}

/// The requests of one attempt: at most two (a cookie bounce sends the request again).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exchanges {
    made: [Option<Exchange>; 2],
}

impl Exchanges {
    fn push(&mut self, exchange: Exchange) {
        if let Some(slot) = self.made.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(exchange);
        }
    }

    /// Each request made, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Exchange> {
        self.made.iter().flatten()
    }

    /// The last request's status (`None`: no request, or no answer).
    pub fn last_status(&self) -> Option<u16> {
        self.iter().last().and_then(|exchange| exchange.status)
    }

    /// The last request's answer time, in seconds (0 when none was made).
    pub fn last_seconds(&self) -> f64 {
        self.iter().last().map_or(0.0, |exchange| exchange.seconds)
    }
}

/// A collector: keep-alive connections, a request timeout, no cookie store, no redirects,
/// TLS 1.2 at least, an honest `User-Agent`, and `SP-Anonymous` if asked.
#[derive(Clone)]
pub struct Client {
    pool: Pool,
    url: Url,
    /// `url` without its query and fragment: a GET request's URL is this, `?` and the
    /// event's query.
    base: String,
    method: Method,
    byte_limit: usize,
    no_retry: Vec<u16>,
    timeout: Duration,
}

impl Client {
    /// Builds the client: checks the TLS material (the CA bundle, the client identity,
    /// the system's roots for an https collector) and the proxy; connects to nothing yet.
    pub fn new(settings: &ClientSettings) -> Result<Client, ClientError> {
        let url = settings.url.clone().ok_or(ClientError::NoUrl)?;
        let timeout = settings.request_timeout.unwrap_or(Duration::from_secs(5));
        let pool = Pool::new(
            Route::new(&url, settings)?,
            timeout,
            settings.max_idle_connections.max(1),
            settings.anonymous,
        );
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(Client {
            pool,
            base: base.into(),
            url,
            method: settings.method.unwrap_or(Method::Post),
            byte_limit: settings.byte_limit.map_or(usize::MAX, NonZeroUsize::get),
            no_retry: settings.no_retry_statuses.clone(),
            timeout,
        })
    }

    /// Where requests go (may hold credentials: do not log it as it is).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// One GET of `url` on the collector's own connections (same route, TLS and proxy;
    /// `url` on the collector's scheme, host and port), its status: how `check --connect`
    /// asks a collector's `/health`. Redirects are not followed.
    pub async fn get_status(&self, url: &Url) -> Result<u16, String> {
        self.pool
            .send(bytes::Bytes::from(url.as_str().to_owned()), None, None)
            .await
            .map(|answer| answer.status)
            .map_err(|unanswered| AttemptError::from(unanswered).to_string())
    }

    /// One attempt to send `batch`, with a fresh `stm`, within the configured timeout.
    pub async fn attempt(&self, batch: &Batch) -> Report {
        self.attempt_within(batch, None).await
    }

    /// The configured time allowed for one request (the connect and the answer's head).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt to send `batch`, with a fresh `stm`, each request allowed `timeout`
    /// (`None`: the configured one).
    pub async fn attempt_within(&self, batch: &Batch, timeout: Option<Duration>) -> Report {
        let mut exchanges = Exchanges::default();
        let attempt = match self.request(batch, timeout, &mut exchanges).await {
            Ok(()) => Attempt::Delivered,
            Err(Failure::Unsendable(reason)) => Attempt::Rejected {
                status: None,
                reason,
                refusal: Refusal::Unsendable,
            },
            Err(Failure::Attempt(error)) => match error {
                AttemptError::Status(status)
                    if classify(status, &self.no_retry) == Disposition::Rejected =>
                {
                    Attempt::Rejected {
                        status: Some(status),
                        reason: format!("collector answered {status}, which is not retried"),
                        refusal: Refusal::Status,
                    }
                }
                AttemptError::Status(413) if batch.len() > 1 => Attempt::TooLarge,
                AttemptError::Status(413) => Attempt::Rejected {
                    status: Some(413),
                    reason: "collector answered 413 (payload too large) to this event alone".into(),
                    refusal: Refusal::TooLarge,
                },
                error => Attempt::Failed(error),
            },
        };
        Report { attempt, exchanges }
    }

    async fn request(
        &self,
        batch: &Batch,
        timeout: Option<Duration>,
        exchanges: &mut Exchanges,
    ) -> Result<(), Failure> {
        let stm = epoch_millis();
        let (target, body) = match self.method {
            Method::Post => {
                let mut body = Vec::with_capacity(batch.body_bytes + 16);
                write_post_body(&batch.events, &stm, &mut body);
                (
                    bytes::Bytes::from(self.url.as_str().to_owned()),
                    Some(body.into()),
                )
            }
            Method::Get => {
                let Some(event) = batch.events.first() else {
                    return Ok(());
                };
                // The query is encoded straight behind the base URL: one buffer, one copy.
                let mut target =
                    Vec::with_capacity(self.base.len() + 1 + event.raw().len() * 3 / 2);
                target.extend_from_slice(self.base.as_bytes());
                target.push(b'?');
                event
                    .write_query(&mut target, &stm)
                    .map_err(|bad| Failure::Unsendable(bad.to_string()))?;
                if target.len() > self.byte_limit {
                    return Err(Failure::Unsendable(format!(
                        "the GET request URL is {} bytes, more than collector.byte_limit ({}); \
                         send it with method = \"post\"",
                        target.len(),
                        self.byte_limit
                    )));
                }
                (bytes::Bytes::from(target), None)
            }
        };
        let mut answer = self
            .send(target.clone(), body.clone(), timeout, exchanges)
            .await?;
        // A collector with cookie bounce answers a request without its cookie with a
        // redirect to the same URL plus its bounce parameter: followed once, with the
        // same method and body. Any other redirect is an error.
        if is_redirection(answer.status)
            && let Some(bounced) = answer.location.as_deref().and_then(|to| {
                let sent = Url::parse(std::str::from_utf8(&target).ok()?).ok()?;
                cookie_bounce(&sent, to)
            })
        {
            tracing::debug!("collector bounced the request for its cookie; sending it again once");
            let bounced = bytes::Bytes::from(String::from(bounced));
            answer = self.send(bounced, body, timeout, exchanges).await?;
        }
        let status = answer.status;
        if is_redirection(status) {
            let location = answer
                .location
                .as_deref()
                .map_or_else(|| "(no Location)".to_owned(), mask_url);
            return Err(Failure::Attempt(AttemptError::Redirect {
                status,
                location,
            }));
        }
        match classify(status, &self.no_retry) {
            Disposition::Accepted => Ok(()),
            _ => Err(Failure::Attempt(AttemptError::Status(status))),
        }
    }

    /// Sends one request to `target` (a URL): a POST with `body`, or a GET; records it
    /// in `exchanges`.
    async fn send(
        &self,
        target: bytes::Bytes,
        body: Option<bytes::Bytes>,
        timeout: Option<Duration>,
        exchanges: &mut Exchanges,
    ) -> Result<Answer, Failure> {
        let bytes = body.as_ref().map_or(target.len(), bytes::Bytes::len) as u64;
        let started = Instant::now();
        let answer = self.pool.send(target, body, timeout).await;
        exchanges.push(Exchange {
            status: answer.as_ref().ok().map(|answer| answer.status),
            seconds: started.elapsed().as_secs_f64(),
            answer_seconds: answer.as_ref().ok().map(|answer| answer.answer_seconds),
            bytes,
        });
        answer.map_err(|unanswered| Failure::Attempt(unanswered.into()))
    }
}

fn is_redirection(status: u16) -> bool {
    (300..400).contains(&status)
}

/// The URL to send again to, if a redirect from `sent` to `location` is a collector's
/// cookie bounce: the same scheme, host, port and path, and the same query plus exactly
/// one added parameter (the collector's bounce parameter, `n3pc` by default and
/// configurable there, so any name is accepted).
pub fn cookie_bounce(sent: &Url, location: &str) -> Option<Url> {
    let target = sent.join(location).ok()?;
    let same_place = target.scheme() == sent.scheme()
        && target.host_str() == sent.host_str()
        && target.port_or_known_default() == sent.port_or_known_default()
        && target.path() == sent.path();
    if !same_place {
        return None;
    }
    let before: Vec<_> = sent.query_pairs().collect();
    let after: Vec<_> = target.query_pairs().collect();
    if after.len() != before.len() + 1 {
        return None;
    }
    let mut remaining = after.clone();
    for pair in &before {
        let at = remaining.iter().position(|p| p == pair)?;
        remaining.remove(at);
    }
    let (added, _) = remaining.first()?;
    if before.iter().any(|(name, _)| name == added) {
        return None;
    }
    let mut bounced = sent.clone();
    bounced.set_query(target.query());
    Some(bounced)
}

/// Why a request did not succeed: it could not even be built, or the attempt failed.
enum Failure {
    Unsendable(String),
    Attempt(AttemptError),
}

/// A URL fit for a log line: user name and password replaced by `****`, query and
/// fragment (event data, tokens) dropped. Text that is not a URL is not shown at all.
pub fn mask_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() {
                let _ = parsed.set_username("****");
            }
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("****"));
            }
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => format!("(not a URL, {} bytes)", url.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a raw collector does on its `connection`-th connection (from 0) for its
    /// `request`-th request there (from 0): bytes to write, then a pause, then more bytes
    /// (an empty second part: nothing more); `None` closes the connection.
    type Script = fn(usize, usize) -> Option<(Vec<u8>, Duration, Vec<u8>)>;

    /// A collector on a raw socket following `script`; records, per request, the
    /// connection it came on.
    async fn raw_collector(script: Script) -> (u16, Arc<Mutex<Vec<usize>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let connections = AtomicUsize::new(0);
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let connection = connections.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    for request in 0.. {
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            let mut byte = [0u8];
                            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        if let Some(length) = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                        {
                            let mut body = vec![0u8; length];
                            let _ = stream.read_exact(&mut body).await;
                        }
                        log.lock().unwrap().push(connection);
                        let Some((first, pause, then)) = script(connection, request) else {
                            return;
                        };
                        if stream.write_all(&first).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                        if !then.is_empty() && stream.write_all(&then).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    /// A client for a raw collector on `port`, with a user and password in the URL or
    /// without; GET, one event per request.
    fn client(port: u16, with_user: bool, timeout: Duration) -> Client {
        let user = if with_user { "u:p@" } else { "" };
        let url = Url::parse(&format!("http://{user}127.0.0.1:{port}/i")).unwrap();
        Client::new(&ClientSettings {
            url: Some(url),
            method: Some(Method::Get),
            request_timeout: Some(timeout),
            max_idle_connections: 4,
            ..ClientSettings::default()
        })
        .unwrap()
    }

    fn batch() -> Batch {
        let element = crate::protocol::Element::parse(
            bytes::Bytes::from_static(br#"{"e":"pv","p":"pc","tv":"t"}"#),
            crate::protocol::ParseOptions::for_method(Method::Get, false),
        )
        .unwrap();
        Batch::single(0, element)
    }

    fn answer(status: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").into_bytes()
    }

    fn delivered(report: &Report) -> bool {
        matches!(report.attempt, Attempt::Delivered)
    }

    /// Each request is reported with the status the collector really answered: a 204 as
    /// 204 (not 200), both requests of a cookie bounce (the 302 and the answer to the
    /// request sent again), and no request at all for a batch that cannot be sent. (On
    /// 582e716 the attempt reported 200 for any 2xx, one request for a bounce, and a
    /// request without a status for an event it never sent.)
    #[tokio::test]
    async fn each_request_is_reported_with_the_status_the_collector_answered() {
        fn bounce_then_204(connection: usize, _: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            // The bounced request comes on a new connection: a 3xx's is not reused.
            let head = match connection {
                0 => "HTTP/1.1 302 Found\r\nLocation: ?n3pc=true\r\nContent-Length: 0\r\n\r\n"
                    .to_owned(),
                _ => "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
            };
            Some((head.into_bytes(), Duration::ZERO, Vec::new()))
        }
        let (port, seen) = raw_collector(bounce_then_204).await;
        let url = Url::parse(&format!(
            "http://127.0.0.1:{port}/com.snowplowanalytics.snowplow/tp2"
        ))
        .unwrap();
        let post = Client::new(&ClientSettings {
            url: Some(url),
            method: Some(Method::Post),
            request_timeout: Some(Duration::from_secs(5)),
            max_idle_connections: 4,
            ..ClientSettings::default()
        })
        .unwrap();
        let element = crate::protocol::Element::parse(
            bytes::Bytes::from_static(br#"{"e":"pv","p":"pc","tv":"t"}"#),
            crate::protocol::ParseOptions::for_method(Method::Post, false),
        )
        .unwrap();
        let report = post.attempt(&Batch::single(0, element)).await;
        assert!(delivered(&report), "{report:?}");
        let statuses: Vec<Option<u16>> = report.exchanges.iter().map(|e| e.status).collect();
        assert_eq!(statuses, [Some(302), Some(204)]);
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(report.exchanges.iter().all(|e| e.bytes > 0));

        // A GET URL over byte_limit is never sent: no request to count.
        let get = Client::new(&ClientSettings {
            url: Some(Url::parse(&format!("http://127.0.0.1:{port}/i")).unwrap()),
            method: Some(Method::Get),
            byte_limit: NonZeroUsize::new(20),
            request_timeout: Some(Duration::from_secs(5)),
            max_idle_connections: 4,
            ..ClientSettings::default()
        })
        .unwrap();
        let report = get.attempt(&batch()).await;
        assert!(
            matches!(
                report.attempt,
                Attempt::Rejected {
                    refusal: Refusal::Unsendable,
                    ..
                }
            ),
            "{report:?}"
        );
        assert_eq!(report.exchanges.iter().count(), 0, "{report:?}");
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "nothing more reached the collector"
        );
    }

    #[tokio::test]
    async fn a_stray_second_answer_is_never_taken_for_the_next_requests_answer() {
        // The first connection answers 503, then a stray 200 a moment later; every other
        // connection answers 503 honestly. Believing the stray 200 would deliver what the
        // collector never accepted.
        fn script(connection: usize, _request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            let stray = if connection == 0 {
                answer("200 OK")
            } else {
                Vec::new()
            };
            Some((
                answer("503 Service Unavailable"),
                Duration::from_millis(30),
                stray,
            ))
        }
        for with_user in [false, true] {
            let (port, seen) = raw_collector(script).await;
            let client = client(port, with_user, Duration::from_secs(5));
            let first = client.attempt(&batch()).await;
            assert_eq!(first.exchanges.last_status(), Some(503));
            // At once, and again after the stray answer came: neither is "delivered".
            for _ in 0..2 {
                let next = client.attempt(&batch()).await;
                assert!(!delivered(&next), "with a user {with_user}: {next:?}");
                assert_eq!(
                    next.exchanges.last_status(),
                    Some(503),
                    "with a user {with_user}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen[0], 0);
            assert!(
                seen[1..].iter().all(|c| *c != 0),
                "with a user {with_user}: a request went on the connection of a non-2xx answer: {seen:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_2xx_whose_body_stalls_is_delivered_once_and_its_connection_closed() {
        fn script(connection: usize, _request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            if connection == 0 {
                // The head of a 2xx, then a body that never comes whole.
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok".to_vec();
                Some((head, Duration::from_secs(60), Vec::new()))
            } else {
                Some((answer("200 OK"), Duration::ZERO, Vec::new()))
            }
        }
        for with_user in [false, true] {
            let (port, seen) = raw_collector(script).await;
            let client = client(port, with_user, Duration::from_millis(300));
            let report = client.attempt(&batch()).await;
            assert!(delivered(&report), "with a user {with_user}: {report:?}");
            let report = client.attempt(&batch()).await;
            assert!(delivered(&report), "with a user {with_user}: {report:?}");
            assert_eq!(*seen.lock().unwrap(), [0, 1], "with a user {with_user}");
        }
    }

    #[tokio::test]
    async fn endless_interim_answers_fail_the_attempt_early() {
        fn script(_connection: usize, _request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            // A megabyte of "100 Continue" interim answers.
            Some((
                b"HTTP/1.1 100 Continue\r\n\r\n".repeat(40_000),
                Duration::from_secs(60),
                Vec::new(),
            ))
        }
        for with_user in [false, true] {
            let (port, _) = raw_collector(script).await;
            let client = client(port, with_user, Duration::from_secs(5));
            let started = std::time::Instant::now();
            let report = client.attempt(&batch()).await;
            assert!(
                matches!(report.attempt, Attempt::Failed(AttemptError::Transport(_))),
                "{report:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "gave up after {:?}, not once it had read what an answer may bring",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn a_large_answer_body_closes_its_connection() {
        fn script(_connection: usize, _request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 80 * 1024).into_bytes();
            answer.extend(vec![b'x'; 80 * 1024]);
            Some((answer, Duration::ZERO, Vec::new()))
        }
        for with_user in [false, true] {
            let (port, seen) = raw_collector(script).await;
            let client = client(port, with_user, Duration::from_secs(5));
            for _ in 0..2 {
                assert!(delivered(&client.attempt(&batch()).await));
            }
            assert_eq!(*seen.lock().unwrap(), [0, 1], "with a user {with_user}");
        }
    }

    #[tokio::test]
    async fn an_answer_keeps_its_connection_only_when_its_framing_allows() {
        // Each of these, split around a pause, leaves the connection ready for the next
        // request: chunks with an extension and a trailer, an interim answer before a
        // 204, HTTP/1.0 asking to keep the connection alive, a length, an empty chunked
        // body spelt in capitals.
        fn kept(_connection: usize, request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            let (first, then): (&[u8], &[u8]) = match request % 5 {
                0 => (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n",
                    b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
                ),
                1 => (
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                    b"",
                ),
                2 => (
                    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\no",
                    b"k",
                ),
                3 => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"),
                _ => (
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
                    b"",
                ),
            };
            Some((first.to_vec(), Duration::from_millis(20), then.to_vec()))
        }
        // Each of these is delivered but closes its connection: `Connection: close`,
        // HTTP/1.0 without keep-alive, a chunked body longer than the relay reads, bytes
        // after the answer, a body that ends when the connection does (here: never), and
        // a malformed chunk.
        fn closed(connection: usize, _request: usize) -> Option<(Vec<u8>, Duration, Vec<u8>)> {
            let answer: Vec<u8> = match connection {
                0 => {
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec()
                }
                1 => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                2 => {
                    let mut long =
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for _ in 0..3 {
                        long.extend_from_slice(b"8000\r\n");
                        long.extend(vec![b'x'; 0x8000]);
                        long.extend_from_slice(b"\r\n");
                    }
                    long.extend_from_slice(b"0\r\n\r\n");
                    long
                }
                3 => [answer("200 OK"), answer("200 OK")].concat(),
                4 => b"HTTP/1.1 200 OK\r\n\r\nok".to_vec(),
                _ => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n".to_vec(),
            };
            Some((answer, Duration::ZERO, Vec::new()))
        }
        let (port, seen) = raw_collector(kept).await;
        let keeping = client(port, false, Duration::from_secs(5));
        for request in 0..10 {
            let report = keeping.attempt(&batch()).await;
            assert!(delivered(&report), "request {request}: {report:?}");
        }
        assert_eq!(*seen.lock().unwrap(), [0; 10], "one connection for all");

        let (port, seen) = raw_collector(closed).await;
        let closing = client(port, false, Duration::from_millis(500));
        for request in 0..6 {
            let report = closing.attempt(&batch()).await;
            assert!(delivered(&report), "request {request}: {report:?}");
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [0, 1, 2, 3, 4, 5],
            "a connection each"
        );
    }

    #[test]
    fn every_status_has_one_disposition() {
        let no_retry = [400, 401, 403, 410, 422];
        for status in 0..=599u16 {
            let expected = match status {
                200..=299 => Disposition::Accepted,
                400 | 401 | 403 | 410 | 422 => Disposition::Rejected,
                _ => Disposition::Retry,
            };
            assert_eq!(classify(status, &no_retry), expected, "status {status}");
        }
        assert_eq!(classify(418, &[418]), Disposition::Rejected);
    }

    #[test]
    fn a_cookie_bounce_is_the_same_url_plus_one_parameter() {
        let get = Url::parse("http://c.example.com:8080/i?e=pv&eid=1&stm=5").unwrap();
        let bounced = "http://c.example.com:8080/i?e=pv&eid=1&stm=5&n3pc=true";
        assert_eq!(cookie_bounce(&get, bounced).unwrap().as_str(), bounced);
        // Relative, another parameter name (configurable at the collector), any order.
        assert!(cookie_bounce(&get, "/i?n3pc=true&e=pv&eid=1&stm=5").is_some());
        assert!(cookie_bounce(&get, "/i?e=pv&bounce=1&eid=1&stm=5").is_some());
        let post = Url::parse("https://c.example.com/com.snowplowanalytics.snowplow/tp2").unwrap();
        assert!(cookie_bounce(&post, "/com.snowplowanalytics.snowplow/tp2?n3pc=true").is_some());
        for elsewhere in [
            "http://other.example.com:8080/i?e=pv&eid=1&stm=5&n3pc=true",
            "https://c.example.com:8080/i?e=pv&eid=1&stm=5&n3pc=true",
            "http://c.example.com:9090/i?e=pv&eid=1&stm=5&n3pc=true",
            "http://c.example.com:8080/other?e=pv&eid=1&stm=5&n3pc=true",
            "http://c.example.com:8080/i?e=pv&eid=1&stm=5",
            "http://c.example.com:8080/i?e=pv&eid=2&stm=5&n3pc=true",
            "http://c.example.com:8080/i?e=pv&eid=1&stm=5&n3pc=true&x=1",
            "http://c.example.com:8080/i?e=pv&eid=1&stm=5&eid=2",
            "http://c.example.com:8080/i?e=pv&eid=1&n3pc=true",
        ] {
            assert!(cookie_bounce(&get, elsewhere).is_none(), "{elsewhere}");
        }
    }
}
