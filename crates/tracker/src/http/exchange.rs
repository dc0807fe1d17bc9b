//! One HTTP/1.1 exchange on a collector connection: the request written as one buffer
//! (its head and body), the answer's head read with `httparse`, its body framed as
//! RFC 9112 §6.3 says and read only so that the connection can serve the next request.
//! Owns a connection's bytes in both directions; the pool decides which connection to
//! use and when an exchange has taken too long.
//!
//! Written here rather than through hyper's client connection because a collector
//! exchange needs a small part of HTTP/1.1 (no upgrades, no request bodies streamed, one
//! request at a time on a connection), and hyper's general machinery (an `http::Uri`
//! checked byte by byte, a header map, a task per connection to drive it) cost more than
//! the rest of a GET event's work together: see docs/design.md, "The collector's
//! connections".
//!
//! An answer is believed only from a clean exchange: the connection is offered for reuse
//! only after a complete answer whose framing left nothing unread and nothing extra
//! behind it (a stray second answer is never taken for the next request's), and no
//! exchange reads more than [`MAX_ANSWER_BYTES`] (interim `1xx` answers included).

use std::io::IoSlice;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::answer::{MAX_ANSWER_BYTES, MAX_RESPONSE_BODY_BYTES};
use super::route::Stream;

/// The most header lines an answer's head may have.
const MAX_ANSWER_HEADERS: usize = 64;

/// How much room a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// One connection to the collector and the bytes read from it but not yet used.
pub(crate) struct Connection {
    stream: Stream,
    /// The head of the request being written, kept for the next one.
    head: Vec<u8>,
    read: Vec<u8>,
    /// Where the unused bytes of `read` start.
    used: usize,
    /// What the current exchange may still read (see [`MAX_ANSWER_BYTES`]).
    budget: usize,
}

/// The head of the collector's final (non-`1xx`) answer.
pub(crate) struct AnswerHead {
    pub status: u16,
    pub location: Option<String>,
    body: Body,
    /// The collector keeps the connection open after this answer.
    keep_alive: bool,
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// When the collector closes the connection.
    UntilClose,
}

impl Connection {
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            head: Vec::new(),
            read: Vec::with_capacity(READ_CHUNK),
            used: 0,
            budget: MAX_ANSWER_BYTES,
        }
    }

    /// Whether an idle connection is still worth a request: the collector has neither
    /// closed it nor sent anything on it since its last answer (checked without waiting).
    pub fn is_idle_and_open(&mut self) -> bool {
        use std::task::{Context, Poll, Waker};
        use tokio::io::{AsyncRead, ReadBuf};
        if self.used != self.read.len() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut context = Context::from_waker(Waker::noop());
        matches!(
            std::pin::Pin::new(&mut self.stream).poll_read(&mut context, &mut probe),
            Poll::Pending
        )
    }

    /// Writes one request: its head (`line`, then the header lines `headers`, each ended
    /// by `\r\n`), then `body`, in as few writes as the connection takes (with
    /// TCP_NODELAY, each write may be a packet of its own).
    pub async fn send(
        &mut self,
        line: &RequestLine<'_>,
        headers: &[u8],
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        self.budget = MAX_ANSWER_BYTES;
        line.write_head(&mut self.head, headers);
        let failed = |e: std::io::Error| format!("the collector closed the connection: {e}");
        let mut slices = [
            IoSlice::new(&self.head),
            IoSlice::new(body.unwrap_or_default()),
        ];
        let mut left = &mut slices[..];
        while left.iter().any(|slice| !slice.is_empty()) {
            let written = self.stream.write_vectored(left).await.map_err(failed)?;
            if written == 0 {
                return Err(failed(std::io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut left, written);
        }
        self.stream.flush().await.map_err(failed)
    }

    /// Reads the answer's head, skipping interim (`1xx`) answers.
    pub async fn read_head(&mut self) -> Result<AnswerHead, String> {
        if self.used == self.read.len() {
            self.fill("before answering").await?;
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            let head_len = match answer.parse(&self.read[self.used..]) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => {
                    self.fill("before answering").await?;
                    continue;
                }
                Err(e) => return Err(format!("the collector's answer is not HTTP/1.1: {e}")),
            };
            let status = answer.code.expect("a complete head has a status");
            let head = answer_head(status, answer.version == Some(1), answer.headers)?;
            self.used += head_len;
            match status {
                101 => return Err("the collector answered 101 (switching protocols)".into()),
                100..=199 => continue,
                _ => return Ok(head),
            }
        }
    }

    /// Reads the body of the answer `head` began, up to [`MAX_RESPONSE_BODY_BYTES`]:
    /// whether the connection may serve another request (the body was read whole, the
    /// collector keeps the connection open and sent nothing after the answer).
    pub async fn read_body(&mut self, head: &AnswerHead) -> Result<bool, String> {
        match head.body {
            Body::Length(length) => {
                let Ok(length) = usize::try_from(length) else {
                    return Ok(false);
                };
                if length > MAX_RESPONSE_BODY_BYTES {
                    return Ok(false);
                }
                self.take(length).await?;
            }
            Body::Chunked => {
                if !self.read_chunks().await? {
                    return Ok(false);
                }
            }
            Body::UntilClose => {
                while self.read.len() - self.used <= MAX_RESPONSE_BODY_BYTES {
                    if self.read_more().await? == 0 {
                        break;
                    }
                }
                return Ok(false);
            }
        }
        Ok(head.keep_alive && self.used == self.read.len())
    }

    /// A chunked body, trailers included; `false` if it is longer than the relay reads.
    async fn read_chunks(&mut self) -> Result<bool, String> {
        let mut total = 0usize;
        loop {
            let size = match httparse::parse_chunk_size(&self.read[self.used..]) {
                Ok(httparse::Status::Complete((len, size))) => {
                    self.used += len;
                    size
                }
                Ok(httparse::Status::Partial) => {
                    self.fill("in the middle of its answer").await?;
                    continue;
                }
                Err(_) => return Err("the collector's chunked answer is malformed".into()),
            };
            if size == 0 {
                break;
            }
            total = total.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
            if total > MAX_RESPONSE_BODY_BYTES {
                return Ok(false);
            }
            self.take(size as usize).await?;
            self.take_line_end().await?;
        }
        // Trailer lines, up to the empty one.
        loop {
            match self.read[self.used..].windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.used += 2;
                    return Ok(true);
                }
                Some(at) => self.used += at + 2,
                None => self.fill("in the middle of its answer").await?,
            }
        }
    }

    /// Skips `length` bytes of the answer, reading them as needed.
    async fn take(&mut self, length: usize) -> Result<(), String> {
        while self.read.len() - self.used < length {
            self.fill("in the middle of its answer").await?;
        }
        self.used += length;
        Ok(())
    }

    /// The `\r\n` after a chunk's data.
    async fn take_line_end(&mut self) -> Result<(), String> {
        while self.read.len() - self.used < 2 {
            self.fill("in the middle of its answer").await?;
        }
        if &self.read[self.used..self.used + 2] != b"\r\n" {
            return Err("the collector's chunked answer is malformed".into());
        }
        self.used += 2;
        Ok(())
    }

    /// Reads more of the answer; the connection closing is an error (`when` says where
    /// in the answer it was).
    async fn fill(&mut self, when: &str) -> Result<(), String> {
        match self.read_more().await? {
            0 => Err(format!("the collector closed the connection {when}")),
            _ => Ok(()),
        }
    }

    /// One read from the connection, within the exchange's budget: the bytes read (0:
    /// the collector closed it).
    async fn read_more(&mut self) -> Result<usize, String> {
        if self.budget == 0 {
            return Err("the collector's answer is longer than the relay reads".into());
        }
        if self.used == self.read.len() {
            self.read.clear();
            self.used = 0;
        } else if self.used > 0 && self.read.capacity() - self.read.len() < READ_CHUNK {
            self.read.drain(..self.used);
            self.used = 0;
        }
        self.read.reserve(READ_CHUNK);
        let room = (self.read.capacity() - self.read.len()).min(self.budget);
        // Reads into the vector's spare room (nothing zeroed), at most `room` bytes.
        let read = (&mut self.stream)
            .take(room as u64)
            .read_buf(&mut self.read)
            .await
            .map_err(|e| format!("the collector's connection failed: {e}"))?;
        self.budget -= read;
        Ok(read)
    }
}

/// What the head of an answer with `status` says about its body and its connection
/// (`http11`: the answer is HTTP/1.1, else 1.0).
fn answer_head(
    status: u16,
    http11: bool,
    headers: &[httparse::Header<'_>],
) -> Result<AnswerHead, String> {
    let mut location = None;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut keep_alive = http11;
    for header in headers {
        let name = header.name;
        // The length first: most headers are none of these four.
        if !matches!(name.len(), 8 | 10 | 14 | 17) {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|&b| b == b',') {
                let value = value.trim_ascii();
                let parsed = (!value.is_empty() && value.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                    .flatten()
                    .ok_or("the collector's answer has an invalid Content-Length")?;
                if length.is_some_and(|earlier| earlier != parsed) {
                    return Err("the collector's answer has two Content-Lengths".into());
                }
                length = Some(parsed);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the last coding applied.
            let last = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("location") {
            location = std::str::from_utf8(header.value).ok().map(str::to_owned);
        }
    }
    let body = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) => Body::Length(0),
        (_, Some(true), _) => Body::Chunked,
        (_, Some(false), _) => Body::UntilClose,
        (_, None, Some(length)) => Body::Length(length),
        (_, None, None) => Body::UntilClose,
    };
    Ok(AnswerHead {
        status,
        location,
        keep_alive: keep_alive && body != Body::UntilClose,
        body,
    })
}

/// Why a request target cannot be written into a request line.
const NOT_A_TARGET: &str = "not a request URL";

/// A request's line, checked: `GET` (or `POST` of a body of `body_len` bytes) of a URL to
/// the collector, in origin form (`/path?query`) or absolute form (`http://host/path?query`,
/// to a proxy; the URL's user and password are never written there).
pub(crate) struct RequestLine<'a> {
    /// The scheme and the host (and port), for the absolute form.
    scheme_and_host: Option<(&'a [u8], &'a [u8])>,
    path_and_query: &'a [u8],
    body_len: Option<usize>,
}

impl<'a> RequestLine<'a> {
    /// The line for `target`, a URL to the collector (its scheme, authority, path and
    /// query), absolute-form if `absolute`; refused if it is not a URL a request line can
    /// carry.
    pub fn new(
        target: &'a [u8],
        absolute: bool,
        body_len: Option<usize>,
    ) -> Result<RequestLine<'a>, String> {
        Ok(RequestLine {
            path_and_query: path_and_query(target)?,
            scheme_and_host: match absolute {
                true => Some(scheme_and_authority(target)?),
                false => None,
            },
            body_len,
        })
    }

    /// Writes the request's head into `out` (emptied first): this line, `headers` (each
    /// line ended by `\r\n`), then the body's type and length for a POST.
    fn write_head(&self, out: &mut Vec<u8>, headers: &[u8]) {
        out.clear();
        out.extend_from_slice(match self.body_len {
            Some(_) => b"POST ",
            None => b"GET ",
        });
        if let Some((scheme, host)) = self.scheme_and_host {
            out.extend_from_slice(scheme);
            out.extend_from_slice(b"://");
            out.extend_from_slice(host);
        }
        out.extend_from_slice(self.path_and_query);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(headers);
        if let Some(length) = self.body_len {
            use std::io::Write as _;
            out.extend_from_slice(b"Content-Type: application/json; charset=utf-8\r\n");
            // Writing into a `Vec` cannot fail.
            let _ = write!(out, "Content-Length: {length}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `target`'s path and query: from the first `/` after its authority. Refused if it
/// holds a byte a request line cannot carry (whitespace, a control byte), or none is
/// ASCII: URLs from `url::Url` and form-encoded queries never do, so this check is the
/// one guard against a request line split by a stray byte. One pass with no early exit,
/// which the compiler turns into wide compares.
fn path_and_query(target: &[u8]) -> Result<&[u8], String> {
    let bad = target
        .iter()
        .fold(false, |bad, &b| bad | (b <= b' ') | (b >= 0x7f));
    if bad {
        return Err(NOT_A_TARGET.into());
    }
    let (scheme, _) = scheme_and_authority(target)?;
    let path = &target[scheme.len() + 3 + authority_with_user(target, scheme).len()..];
    match path.first() {
        Some(b'/') => Ok(path),
        _ => Err(NOT_A_TARGET.into()),
    }
}

/// The scheme and the host (and port) of `target`, without a user or password.
fn scheme_and_authority(target: &[u8]) -> Result<(&[u8], &[u8]), String> {
    // The first `:` ends the scheme (a scheme holds none).
    let scheme_end = target
        .iter()
        .position(|&b| b == b':')
        .filter(|&at| {
            at > 0
                && target[at..].starts_with(b"://")
                && target[..at].iter().all(u8::is_ascii_alphabetic)
        })
        .ok_or(NOT_A_TARGET)?;
    let scheme = &target[..scheme_end];
    let authority = authority_with_user(target, scheme);
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if host.is_empty() {
        return Err(NOT_A_TARGET.into());
    }
    Ok((scheme, host))
}

/// The authority of `target` after `scheme://`, a user and password included.
fn authority_with_user<'a>(target: &'a [u8], scheme: &[u8]) -> &'a [u8] {
    let rest = &target[scheme.len() + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one exchange read from a collector that wrote `fragments` (each its own
    /// write, a moment apart) and then closed: the answer's head, whether its body left
    /// the connection reusable, and how many bytes the exchange read.
    /// The answer's status and `Location`, how its body ended, the bytes read.
    type Exchanged = (
        Result<(u16, Option<String>), String>,
        Option<Result<bool, String>>,
        usize,
    );

    fn exchange_with(fragments: Vec<Vec<u8>>) -> Exchanged {
        use tokio::io::AsyncWriteExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let collector = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                for fragment in fragments {
                    if stream.write_all(&fragment).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            });
            let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut connection = Connection::new(Stream::Tcp(tcp));
            let line = RequestLine::new(b"http://h/", false, None).unwrap();
            connection.send(&line, b"", None).await.unwrap();
            let head = connection.read_head().await;
            let body = match &head {
                Ok(head) => Some(connection.read_body(head).await),
                Err(_) => None,
            };
            collector.abort();
            let read = MAX_ANSWER_BYTES - connection.budget;
            let head = head.map(|head| (head.status, head.location));
            (head, body, read)
        })
    }

    /// `body` in chunks of the given sizes (the rest in one), with an extension on
    /// every other chunk and a trailer.
    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        for (i, &size) in sizes.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
            let size = size.min(rest.len());
            if size == 0 {
                continue;
            }
            let extension = if i % 2 == 0 { ";ext=1" } else { "" };
            out.extend_from_slice(format!("{size:x}{extension}\r\n").as_bytes());
            out.extend_from_slice(&rest[..size]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        out.extend_from_slice(b"0\r\nX-Checked: yes\r\n\r\n");
        out
    }

    /// `bytes` cut at the given offsets.
    fn cut(bytes: &[u8], at: &[usize]) -> Vec<Vec<u8>> {
        let mut offsets: Vec<usize> = at.iter().map(|&a| a % (bytes.len() + 1)).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for offset in offsets.into_iter().chain(std::iter::once(bytes.len())) {
            pieces.push(bytes[from..offset].to_vec());
            from = offset;
        }
        pieces
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A well-formed answer, however the collector cuts it into writes, is read whole:
        /// its status, its `Location`, a body framed by length or by chunks, interim
        /// answers before it, and the connection left reusable with nothing behind.
        #[test]
        fn a_well_formed_answer_is_read_whole_however_it_is_cut(
            status in 200u16..600,
            interims in 0usize..3,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            by_chunks in proptest::prelude::any::<bool>(),
            sizes in proptest::collection::vec(1usize..700, 0..6),
            cuts in proptest::collection::vec(0usize..10_000, 0..12),
        ) {
            let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(interims);
            let no_body = status == 204 || status == 304;
            answer.extend_from_slice(format!("HTTP/1.1 {status} Whatever\r\nLocation: /x\r\n").as_bytes());
            if no_body {
                answer.extend_from_slice(b"\r\n");
            } else if by_chunks {
                answer.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                answer.extend_from_slice(&chunked(&body, &sizes));
            } else {
                answer.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                answer.extend_from_slice(&body);
            }
            let (head, read_body, read) = exchange_with(cut(&answer, &cuts));
            proptest::prop_assert_eq!(head, Ok((status, Some("/x".to_owned()))));
            proptest::prop_assert_eq!(read_body, Some(Ok(true)));
            proptest::prop_assert_eq!(read, answer.len());
        }

        /// Whatever a collector sends, the exchange ends (with an answer or an error,
        /// never a panic) having read at most what an answer may bring: random bytes, and
        /// long runs of what a hostile collector would send to keep the relay reading
        /// (interim answers, header lines, chunks, a body without end).
        #[test]
        fn any_bytes_end_the_exchange_within_its_budget(
            start in proptest::sample::select(vec![
                &b""[..], b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
            ]),
            pieces in proptest::collection::vec(0usize..5, 1..6),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            repeat in 1usize..400,
            cuts in proptest::collection::vec(0usize..300_000, 0..8),
        ) {
            let mut run = Vec::new();
            for piece in pieces {
                match piece {
                    0 => run.extend_from_slice(&noise),
                    1 => run.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                    2 => run.extend_from_slice(format!("X-Long: {}\r\n", "a".repeat(900)).as_bytes()),
                    3 => run.extend_from_slice(format!("400\r\n{}\r\n", "c".repeat(0x400)).as_bytes()),
                    _ => run.extend_from_slice(&[b'x'; 1000]),
                }
            }
            let mut answer = start.to_vec();
            answer.extend(run.repeat(repeat));
            let (_, _, read) = exchange_with(cut(&answer, &cuts));
            proptest::prop_assert!(read <= MAX_ANSWER_BYTES);
            proptest::prop_assert!(read <= answer.len());
        }
    }

    fn head(target: &str, absolute: bool, body: Option<usize>) -> Result<String, String> {
        let mut out = Vec::new();
        RequestLine::new(target.as_bytes(), absolute, body)?.write_head(&mut out, b"Host: h\r\n");
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn requests_are_written_in_origin_or_absolute_form_without_credentials() {
        assert_eq!(
            head("http://u:p@h:8080/i?e=pv&p=pc", false, None).unwrap(),
            "GET /i?e=pv&p=pc HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        assert_eq!(
            head(
                "http://u:p@h:8080/com.snowplowanalytics.snowplow/tp2",
                true,
                Some(12)
            )
            .unwrap(),
            "POST http://h:8080/com.snowplowanalytics.snowplow/tp2 HTTP/1.1\r\nHost: h\r\n\
             Content-Type: application/json; charset=utf-8\r\nContent-Length: 12\r\n\r\n"
        );
        assert_eq!(
            head("https://[::1]:9/i", false, None).unwrap(),
            "GET /i HTTP/1.1\r\nHost: h\r\n\r\n"
        );
    }

    #[test]
    fn a_target_that_could_split_the_request_line_is_refused() {
        for bad in [
            "http://h/i?e=pv x",
            "http://h/i?e=pv\r\nX-Injected: 1",
            "http://h/i?e=\u{7f}",
            "http://h/i?e=é",
            "http://h",
            "http://h?e=pv",
            "/i?e=pv",
            "://h/i",
            "http://u@/i",
        ] {
            assert!(head(bad, false, None).is_err(), "{bad:?}");
        }
    }

    fn framing(
        status: u16,
        http11: bool,
        headers: &[(&str, &str)],
    ) -> Result<(Body, bool), String> {
        let headers: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        answer_head(status, http11, &headers).map(|head| (head.body, head.keep_alive))
    }

    /// A status, whether the answer is HTTP/1.1, its headers, and the framing and
    /// keep-alive expected.
    type FramingCase<'a> = (u16, bool, &'a [(&'a str, &'a str)], (Body, bool));

    #[test]
    fn the_body_is_framed_as_rfc_9112_says() {
        use Body::*;
        let cases: &[FramingCase<'_>] = &[
            (200, true, &[("Content-Length", "2")], (Length(2), true)),
            (200, true, &[("content-length", "2, 2")], (Length(2), true)),
            (200, false, &[("Content-Length", "2")], (Length(2), false)),
            (
                200,
                false,
                &[("Content-Length", "2"), ("Connection", "keep-alive")],
                (Length(2), true),
            ),
            (
                200,
                true,
                &[("Content-Length", "2"), ("Connection", "Close")],
                (Length(2), false),
            ),
            (
                200,
                true,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "9")],
                (Chunked, true),
            ),
            (
                200,
                true,
                &[("Transfer-Encoding", "gzip, chunked")],
                (Chunked, true),
            ),
            (
                200,
                true,
                &[("Transfer-Encoding", "chunked, gzip")],
                (UntilClose, false),
            ),
            (200, true, &[], (UntilClose, false)),
            (204, true, &[("Content-Length", "9")], (Length(0), true)),
            (304, true, &[], (Length(0), true)),
        ];
        for (status, http11, headers, expected) in cases {
            assert_eq!(
                framing(*status, *http11, headers).unwrap(),
                *expected,
                "{status} {headers:?}"
            );
        }
        for bad in ["", "x", "-1", "2, 3", "1e3", "99999999999999999999999"] {
            assert!(
                framing(200, true, &[("Content-Length", bad)]).is_err(),
                "{bad:?}"
            );
        }
    }
}
