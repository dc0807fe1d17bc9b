//! How to reach a collector ([`ClientSettings`]) and why a client cannot be built
//! ([`ClientError`]): the vocabulary the client, its route and its TLS set-up share.

use std::num::NonZeroUsize;
use std::time::Duration;

use url::Url;

use crate::protocol::Method;

/// How to reach a collector.
#[derive(Clone, Default)]
pub struct ClientSettings {
    /// Where requests go: `…/i` for GET, the POST path for POST.
    pub url: Option<Url>,
    /// GET or POST.
    pub method: Option<Method>,
    /// The largest GET URL in bytes (POST bodies are sized by the batch builder).
    pub byte_limit: Option<NonZeroUsize>,
    /// Statuses never retried.
    pub no_retry_statuses: Vec<u16>,
    /// Time for one request, connect to last byte.
    pub request_timeout: Option<Duration>,
    /// Send `SP-Anonymous: *`.
    pub anonymous: bool,
    /// Idle keep-alive connections kept.
    pub max_idle_connections: usize,
    /// Extra CA certificates (PEM) to trust.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Trust only `tls_ca_pem`, not the system's roots.
    pub tls_ca_only: bool,
    /// A client certificate and its private key (PEM, one after the other).
    pub tls_identity_pem: Option<Vec<u8>>,
    /// A proxy URL, and hosts reached directly.
    pub proxy: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("method", &self.method)
            .field("byte_limit", &self.byte_limit)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No URL was given.
    #[error("a collector URL is needed")]
    NoUrl,
    /// The system's CA certificates, needed for an https collector, cannot be loaded.
    #[error(
        "cannot load the system's CA certificates to verify the https collector ({0}); \
         install them (Debian: apt-get install ca-certificates) or point SSL_CERT_FILE at \
         a PEM bundle"
    )]
    TrustStore(String),
    /// The CA file holds no PEM certificate.
    #[error("the collector CA bundle holds no PEM certificate")]
    NoCertificates,
    /// The client certificate or its key is not usable.
    #[error("the client certificate and its private key are not usable PEM ({0})")]
    Identity(String),
    /// The proxy URL is not one.
    #[error("the proxy is not a URL")]
    Proxy,
    /// The proxy (`collector.proxy` or a proxy variable) is not an `http://` one.
    #[error(
        "the proxy for the collector is a {0}:// proxy; only http:// proxies are supported \
         (collector.proxy, or the HTTP_PROXY, HTTPS_PROXY and ALL_PROXY variables)"
    )]
    UnsupportedProxy(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}
