//! How a request reaches the collector: straight, or through an HTTP proxy
//! (`collector.proxy`, or `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` as
//! curl reads them); in a tunnel (`CONNECT`) and over TLS for an `https` collector. It
//! opens connections and says how a request is addressed (origin or absolute form) and
//! which headers it carries (`Host`, a URL's user as Basic `Authorization`, a proxy's as
//! `Proxy-Authorization`); the pool sends requests on them.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use hyper::header::HeaderValue;
use hyper_util::client::proxy::matcher::Matcher;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use url::Url;

use super::settings::{ClientError, ClientSettings};

/// The bytes of a proxy's answer to `CONNECT` the relay reads at most.
const MAX_CONNECT_ANSWER: usize = 8 * 1024;

/// How requests reach one collector.
pub(crate) struct Route {
    https: bool,
    /// The collector's host (an IPv6 address without brackets) and port.
    host: String,
    port: u16,
    /// `Host` header: the host, and the port unless it is the default.
    host_header: HeaderValue,
    /// `Authorization: Basic …` from the URL's user and password.
    authorization: Option<HeaderValue>,
    proxy: Option<Proxy>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// An HTTP proxy on the way.
struct Proxy {
    host: String,
    port: u16,
    authorization: Option<HeaderValue>,
}

impl Route {
    /// The route to the collector at `url` with `settings`' proxy and TLS settings.
    pub fn new(url: &Url, settings: &ClientSettings) -> Result<Route, ClientError> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(ClientError::Build(format!(
                    "the collector URL's scheme is {other}: http or https"
                )));
            }
        };
        let host = url.host_str().unwrap_or_default();
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let host_header = HeaderValue::from_str(&host_header)
            .map_err(|_| ClientError::Build("the collector's host is not a valid name".into()))?;
        let authorization = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |text: &str| {
                percent_decoded(text).ok_or_else(|| {
                    ClientError::Build("the collector URL's user or password is not UTF-8".into())
                })
            };
            let credentials = format!(
                "{}:{}",
                decode(url.username())?,
                decode(url.password().unwrap_or_default())?
            );
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| ClientError::Build("the collector URL's credentials".into()))?;
            value.set_sensitive(true);
            Some(value)
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if https {
            let config = super::tls::client_config(settings)?;
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                ClientError::Build("the collector's host is not a valid name".into())
            })?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            if settings.tls_ca_pem.is_some() || settings.tls_identity_pem.is_some() {
                // Checked (and so refused when not usable) even for an http collector.
                super::tls::client_config(&ClientSettings {
                    tls_ca_only: true,
                    ..settings.clone()
                })
                .map(drop)?;
            }
            None
        };
        Ok(Route {
            https,
            port: url
                .port_or_known_default()
                .unwrap_or(if https { 443 } else { 80 }),
            host,
            host_header,
            authorization,
            proxy: proxy_for(url, settings)?,
            tls,
        })
    }

    /// Whether requests go in absolute form (`GET http://host/path`): an http collector
    /// reached through a proxy. Otherwise in origin form (`GET /path`), the tunnel of an
    /// https collector included.
    pub fn absolute_form(&self) -> bool {
        self.proxy.is_some() && !self.https
    }

    /// Writes the header lines every request carries on this route.
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        let mut line = |name: &[u8], value: &HeaderValue| {
            out.extend_from_slice(name);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        line(b"Host: ", &self.host_header);
        if let Some(authorization) = &self.authorization {
            line(b"Authorization: ", authorization);
        }
        if self.absolute_form()
            && let Some(authorization) = self.proxy.as_ref().and_then(|p| p.authorization.as_ref())
        {
            line(b"Proxy-Authorization: ", authorization);
        }
    }

    /// A new connection to the collector: TCP (to the proxy, if any), a tunnel through the
    /// proxy for an https collector, then TLS for an https collector. The error text
    /// never holds credentials or a request URL.
    pub async fn connect(&self) -> Result<Stream, String> {
        let (host, port) = match &self.proxy {
            Some(proxy) => (proxy.host.as_str(), proxy.port),
            None => (self.host.as_str(), self.port),
        };
        let what = if self.proxy.is_some() {
            "the proxy"
        } else {
            "the collector"
        };
        let mut tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("could not connect to {what}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("could not set TCP_NODELAY: {e}"))?;
        if let (Some(proxy), true) = (&self.proxy, self.https) {
            self.tunnel(&mut tcp, proxy).await?;
        }
        match &self.tls {
            None => Ok(Stream::Tcp(tcp)),
            Some((connector, name)) => connector
                .connect(name.clone(), tcp)
                .await
                .map(|tls| Stream::Tls(Box::new(tls)))
                .map_err(|e| format!("TLS with the collector failed: {}", super::error_chain(&e))),
        }
    }

    /// Asks `proxy` for a tunnel to the collector (`CONNECT host:port`).
    async fn tunnel(&self, tcp: &mut TcpStream, proxy: &Proxy) -> Result<(), String> {
        let authority = match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(authorization) = &proxy.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(authorization.to_str().unwrap_or_default());
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("the proxy closed the connection: {e}"))?;
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_CONNECT_ANSWER {
                return Err("the proxy's answer to CONNECT is too long".into());
            }
            let mut byte = [0u8];
            if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                return Err("the proxy closed the connection during CONNECT".into());
            }
            answer.push(byte[0]);
        }
        let status_line = String::from_utf8_lossy(&answer);
        let status_line = status_line.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(format!(
                "the proxy refused a tunnel to the collector: {}",
                crate::protocol::shorten(status_line)
            ))
        }
    }
}

/// The proxy for the collector at `url`: `collector.proxy` (unless `collector.no_proxy`
/// names the collector's host), or the proxy environment variables. Only `http://`
/// proxies are supported; another scheme is refused when the client is built.
fn proxy_for(url: &Url, settings: &ClientSettings) -> Result<Option<Proxy>, ClientError> {
    let matcher = match &settings.proxy {
        Some((proxy, no_proxy)) => {
            // The matcher ignores what it cannot parse; a configured proxy must parse.
            Url::parse(proxy).map_err(|_| ClientError::Proxy)?;
            Matcher::builder()
                .all(proxy.as_str())
                .no(no_proxy.as_deref().unwrap_or_default())
                .build()
        }
        None => Matcher::from_system(),
    };
    let Ok(uri) = url.as_str().parse::<hyper::Uri>() else {
        return Ok(None);
    };
    let Some(intercept) = matcher.intercept(&uri) else {
        return Ok(None);
    };
    let proxy = intercept.uri();
    if proxy.scheme_str() != Some("http") {
        return Err(ClientError::UnsupportedProxy(
            proxy.scheme_str().unwrap_or("none").to_owned(),
        ));
    }
    let mut authorization = intercept.basic_auth().cloned();
    if let Some(value) = &mut authorization {
        value.set_sensitive(true);
    }
    Ok(Some(Proxy {
        host: proxy
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: proxy.port_u16().unwrap_or(80),
        authorization,
    }))
}

/// `text` percent-decoded, if that is UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// A connection to the collector: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write(cx, data),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, data),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
