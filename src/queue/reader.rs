//! The claim reader: the connection claims run on, and the scan that cuts a claim's reply
//! into `Bytes` slices of the one buffer it was read into.
//!
//! redis-rs turns every element of a reply into a `Vec<u8>` of its own inside a `Value`:
//! about 1,500 relay instructions per claimed event and an allocation each. So claims run
//! on a connection of the relay's own, opened to the same server with the same
//! credentials, database and TLS files as the [`super::connection::Link`]'s; a claim's
//! reply is read whole into one buffer (a claim's reply is bounded by its byte budget:
//! the script diverts oversized elements) and each element is a slice of it. Anything
//! that is not a claim's ordinary reply (an error reply: a refusal, a lost lease) goes
//! through redis-rs's own parser, so it becomes the same `RedisError`, and the same
//! [`super::QueueError`], as on every other call.
//!
//! Owns: that connection and its read buffer. Touches nothing else.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::RedisTls;

/// What the connection runs over: TCP, TLS over TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The least a read asks the socket for.
const READ_CHUNK: usize = 64 * 1024;

/// The longest bulk string read (the most `proto-max-bulk-len` allows by default): a
/// length past it is a broken stream, not a reason to reserve memory.
const MOST_BULK_BYTES: i64 = 512 * 1024 * 1024;

/// A connection that sends packed commands and reads each reply whole, as bytes.
pub(super) struct ReplyConnection {
    /// Where it goes, and with which credentials.
    info: ConnectionInfo,
    stream: Box<dyn Io>,
    /// What has been read of the reply being read (and anything after it).
    buffer: Vec<u8>,
    /// The last reply's length: room for as much is made before the next is read, so
    /// that a claim's reply is read into one allocation, not regrown (and copied) as
    /// it arrives.
    last_reply: usize,
    /// The scan of the reply being read; after [`ReplyConnection::call`], of the reply
    /// it returned ([`ReplyConnection::last_scan`]).
    scan: Scan,
}

impl ReplyConnection {
    /// Connects to `addr` and authenticates as `redis` says (`AUTH`, `SELECT`), then names
    /// the connection as every other connection of the relay is named (`HELLO 2
    /// SETNAME`, its refusal ignored). `tls` is the configuration of a `rediss://` URL.
    pub(super) async fn open(
        info: &ConnectionInfo,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> RedisResult<ReplyConnection> {
        let redis = info.redis_settings();
        let stream: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port).await?),
            ConnectionAddr::TcpTls { host, port, .. } => {
                let Some(config) = tls else {
                    return Err(io::Error::other("no TLS configuration for a rediss:// URL").into());
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = tcp(host, *port).await?;
                Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, stream)
                        .await?,
                )
            }
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            other => return Err(io::Error::other(format!("no claim connection to {other}")).into()),
        };
        let mut conn = ReplyConnection {
            info: info.clone(),
            stream,
            buffer: Vec::new(),
            last_reply: 0,
            scan: Scan::default(),
        };
        let mut handshake = Vec::new();
        let mut checked = 0;
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            handshake.extend(auth.arg(password).get_packed_command());
            checked += 1;
        }
        if redis.db() != 0 {
            handshake.extend(redis::cmd("SELECT").arg(redis.db()).get_packed_command());
            checked += 1;
        }
        handshake.extend(
            redis::cmd("HELLO")
                .arg(2)
                .arg("SETNAME")
                .arg(super::connection::connection_name())
                .get_packed_command(),
        );
        conn.send(&handshake).await?;
        for _ in 0..checked {
            let reply = conn.reply().await?;
            redis::parse_redis_value(&reply)?.extract_error()?;
        }
        // HELLO: a server that refuses it (before Redis 6) leaves the connection unnamed.
        conn.reply().await?;
        Ok(conn)
    }

    /// Where it goes, and with which credentials.
    pub(super) fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Sends `command` (packed) and reads its reply whole.
    /// The scan of the reply the last [`ReplyConnection::call`] returned.
    pub(super) fn last_scan(&self) -> &Scan {
        &self.scan
    }

    pub(super) async fn call(&mut self, command: &[u8]) -> RedisResult<Bytes> {
        self.send(command).await?;
        self.reply().await
    }

    async fn send(&mut self, command: &[u8]) -> io::Result<()> {
        self.stream.write_all(command).await?;
        self.stream.flush().await
    }

    /// Reads one reply whole. It keeps the allocation it was read into, cut to its
    /// length; the next reply is read into a new one.
    async fn reply(&mut self) -> RedisResult<Bytes> {
        let scan = &mut self.scan;
        scan.reset();
        let mut expected = self.last_reply.max(READ_CHUNK) + READ_CHUNK;
        loop {
            if let Some(end) = scan.advance(&self.buffer)? {
                self.last_reply = end;
                // The reply keeps its allocation, cut to its length: its events are
                // slices of it and keep it alive until the last is delivered, so room
                // made for a longer reply must not stay held with it.
                let rest = self.buffer.split_off(end);
                let mut reply = std::mem::replace(&mut self.buffer, rest);
                reply.shrink_to_fit();
                return Ok(Bytes::from(reply));
            }
            let wanted = scan.needed.max(expected).saturating_sub(self.buffer.len());
            // Past the expected length, grow by at least a read's worth.
            expected = 0;
            self.buffer.reserve(wanted.max(READ_CHUNK));
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "Redis closed the connection in the middle of a reply",
                )
                .into());
            }
        }
    }
}

/// The TLS configuration of the claim connection, from the same settings as redis-rs's
/// (`redis.tls_*`): the CA file's certificates alone if one is given, else the system's;
/// the client certificate if one is given; no certificate check at all with
/// `tls_insecure_skip_verify` (as redis-rs's `#insecure`).
pub(super) fn tls_config(tls: &RedisTls) -> Result<Arc<rustls::ClientConfig>, RedisError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid =
        |what: String| RedisError::from(io::Error::new(io::ErrorKind::InvalidInput, what));
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some((pem, file)) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            if let Some(error) = system.errors.into_iter().next() {
                return Err(invalid(format!("the system's CA certificates: {error}")));
            }
            roots.add_parsable_certificates(system.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("the client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| invalid(format!("the client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(e.to_string()))?
        }
    };
    if tls.insecure_skip_verify {
        config.enable_sni = false;
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )));
    }
    Ok(Arc::new(config))
}

/// `tls_insecure_skip_verify`: any certificate, for any name (the operator chose it).
#[derive(Debug)]
struct AcceptAnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How far one RESP2 reply has been read: resumable as more bytes arrive.
#[derive(Default)]
pub(super) struct Scan {
    /// Where the next header starts.
    at: usize,
    /// Items still to come in each open array, innermost last.
    open: Vec<u64>,
    /// The buffer length the bulk string being read needs.
    needed: usize,
    /// How many items (arrays, bulk strings, integers, lines) the reply has so far.
    items: usize,
    /// Where each (non-null) bulk string's bytes are, in order: a claim's elements are
    /// cut from the reply by them, without reading its headers again.
    bulks: Vec<std::ops::Range<usize>>,
}

impl Scan {
    /// Ready for the next reply; keeps the room it has.
    fn reset(&mut self) {
        self.at = 0;
        self.open.clear();
        self.needed = 0;
        self.items = 0;
        self.bulks.clear();
    }

    /// The reply's length, once `buffer` holds all of it.
    fn advance(&mut self, buffer: &[u8]) -> RedisResult<Option<usize>> {
        loop {
            let Some((kind, number, body)) = header(buffer, self.at)? else {
                return Ok(None);
            };
            match kind {
                b'$' if number > MOST_BULK_BYTES => {
                    return Err(protocol("a bulk string longer than Redis allows"));
                }
                b'$' if number >= 0 => {
                    let end = body + number as usize + 2;
                    if buffer.len() < end {
                        self.needed = end;
                        return Ok(None);
                    }
                    self.bulks.push(body..end - 2);
                    self.at = end;
                }
                b'*' if number > 0 => {
                    self.at = body;
                    self.items += 1;
                    self.open.push(number as u64);
                    continue;
                }
                // Null bulk strings and arrays, empty arrays, integers, status and error
                // lines: the header is all there is.
                _ => self.at = body,
            }
            self.items += 1;
            // One item done: close every array it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.at)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// The header line at `at`: its type byte, its number (0 for status and error lines),
/// and where what follows it starts; None until the line is whole. One pass over the
/// digits: this runs twice per claimed event.
fn header(buffer: &[u8], at: usize) -> RedisResult<Option<(u8, i64, usize)>> {
    let Some(rest) = buffer.get(at..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let kind = rest[0];
    let end = match kind {
        b'+' | b'-' => match rest.iter().position(|&b| b == b'\n') {
            Some(newline) if newline >= 2 && rest[newline - 1] == b'\r' => {
                return Ok(Some((kind, 0, at + newline + 1)));
            }
            Some(_) => return Err(protocol("a status line without its CR")),
            None => return Ok(None),
        },
        b'$' | b'*' | b':' => 1,
        _ => return Err(protocol("a reply type RESP2 does not have")),
    };
    let negative = rest.get(end) == Some(&b'-');
    let first = end + usize::from(negative);
    let mut i = first;
    let mut value: i64 = 0;
    loop {
        match rest.get(i) {
            None => return Ok(None),
            Some(&digit) if digit.is_ascii_digit() && i - first < 18 => {
                value = value * 10 + i64::from(digit - b'0');
                i += 1;
            }
            Some(b'\r') if i > first => break,
            Some(_) => return Err(protocol("a length or integer that is not a number")),
        }
    }
    match rest.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((
            kind,
            if negative { -value } else { value },
            at + i + 2,
        ))),
        Some(_) => Err(protocol("a header line without its LF")),
    }
}

fn protocol(what: &str) -> RedisError {
    RedisError::from(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Redis sent {what}"),
    ))
}

/// What a claim returned: `{oversized, ran dry, {elements…}}`, each element a slice of
/// `reply`, cut where `scan` (the reader's scan of that reply) found them. Anything else
/// (an error reply) goes through redis-rs's parser.
pub(super) fn claim_reply(reply: Bytes, scan: &Scan) -> RedisResult<(u64, u8, Vec<Bytes>)> {
    if let Some(parts) = slice_claim(&reply, scan) {
        return Ok(parts);
    }
    let value = redis::parse_redis_value(&reply)?.extract_error()?;
    Ok(redis::from_redis_value(value)?)
}

fn slice_claim(reply: &Bytes, scan: &Scan) -> Option<(u64, u8, Vec<Bytes>)> {
    let next = |at: &mut usize, kind: u8| -> Option<i64> {
        let (found, number, body) = header(reply, *at).ok()??;
        *at = body;
        (found == kind).then_some(number)
    };
    let mut at = 0;
    if next(&mut at, b'*')? != 3 {
        return None;
    }
    let oversized = u64::try_from(next(&mut at, b':')?).ok()?;
    let ran_dry = u8::try_from(next(&mut at, b':')?).ok()?;
    let count = usize::try_from(next(&mut at, b'*')?).ok()?;
    // The scan saw the whole reply: four headers, then `count` items that are all bulk
    // strings (none of the four is one), in order from here to the end.
    if scan.at != reply.len() || scan.items != 4 + count || scan.bulks.len() != count {
        return None;
    }
    let mut elements = Vec::with_capacity(count);
    for bulk in &scan.bulks {
        if bulk.start < at || bulk.end > reply.len() {
            return None;
        }
        at = bulk.end;
        elements.push(reply.slice(bulk.clone()));
    }
    Some((oversized, ran_dry, elements))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reply` to a scan in pieces of `step` bytes, as reads would.
    fn scanned_in_steps(reply: &[u8], step: usize) -> Option<usize> {
        scan_in_steps(reply, step).0
    }

    /// The reply's end, if found, and the scan that found it.
    fn scan_in_steps(reply: &[u8], step: usize) -> (Option<usize>, Scan) {
        let mut scan = Scan::default();
        let mut have = 0;
        loop {
            have = (have + step).min(reply.len());
            if let Some(end) = scan.advance(&reply[..have]).unwrap() {
                return (Some(end), scan);
            }
            if have == reply.len() {
                return (None, scan);
            }
        }
    }

    /// `claim_reply` of a whole reply, as the reader hands it over.
    fn claim(reply: &'static [u8]) -> RedisResult<(u64, u8, Vec<Bytes>)> {
        let (_, scan) = scan_in_steps(reply, reply.len());
        claim_reply(Bytes::from_static(reply), &scan)
    }

    #[test]
    fn a_reply_is_found_whole_however_it_arrives() {
        let claim = b"*3\r\n:1\r\n:0\r\n*2\r\n$3\r\nabc\r\n$0\r\n\r\n".to_vec();
        let nested = b"*2\r\n*0\r\n*2\r\n$-1\r\n*-1\r\n".to_vec();
        for reply in [claim, nested, b"-ERR no\r\n".to_vec(), b":42\r\n".to_vec()] {
            for step in 1..=reply.len() {
                let mut with_next = reply.clone();
                with_next.extend_from_slice(b"+NEXT\r\n");
                assert_eq!(scanned_in_steps(&reply, step), Some(reply.len()));
                assert_eq!(scanned_in_steps(&with_next, step), Some(reply.len()));
                if step < reply.len() {
                    assert_eq!(Scan::default().advance(&reply[..step]).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn a_claim_reply_is_sliced_byte_for_byte() {
        let reply: &[u8] = b"*3\r\n:2\r\n:1\r\n*3\r\n$3\r\nabc\r\n$0\r\n\r\n$4\r\n\r\n\r\n\r\n";
        // However the reply arrived, the scan cut the same elements out of it.
        for step in 1..=reply.len() {
            let (end, scan) = scan_in_steps(reply, step);
            assert_eq!(end, Some(reply.len()));
            let (oversized, dry, elements) =
                claim_reply(Bytes::copy_from_slice(reply), &scan).unwrap();
            assert_eq!((oversized, dry), (2, 1));
            assert_eq!(
                elements,
                [&b"abc"[..], b"", b"\r\n\r\n"],
                "in steps of {step}"
            );
        }
        // A null element is not a claim's: redis-rs's parser has the last word.
        assert!(claim(b"*3\r\n:0\r\n:0\r\n*2\r\n$3\r\nabc\r\n$-1\r\n").is_err());
        // Elements nested one level deeper are not a claim's either.
        assert!(claim(b"*3\r\n:0\r\n:0\r\n*1\r\n*1\r\n$3\r\nabc\r\n").is_err());
    }

    #[test]
    fn other_replies_are_what_redis_rs_makes_of_them() {
        let lost = claim(b"-LEASE_LOST instance x\r\n").unwrap_err();
        assert_eq!(lost.code(), Some("LEASE_LOST"));
        let odd = claim(b"*2\r\n:1\r\n:0\r\n");
        assert!(odd.is_err());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [&b"?x\r\n"[..], b"$abc\r\n", b"\r\n", b"*1\n"] {
            assert!(Scan::default().advance(bad).is_err(), "{bad:?}");
        }
    }
}
