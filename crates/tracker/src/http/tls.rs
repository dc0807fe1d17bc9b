//! The TLS settings of an `https` collector (and of nothing else): the roots a collector's
//! certificate must chain to (the system's, with an extra bundle added, or the bundle
//! alone), a client identity for mutual TLS, TLS 1.2 at least (rustls speaks nothing
//! older), HTTP/1.1 offered by ALPN. The crypto provider is *ring*, given to this
//! configuration only: the library installs no process-wide provider.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::settings::{ClientError, ClientSettings};

/// The client configuration for `settings`' collector.
pub(crate) fn client_config(
    settings: &ClientSettings,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &settings.tls_ca_pem {
        let extra: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|_| ClientError::NoCertificates)?;
        if extra.is_empty() {
            return Err(ClientError::NoCertificates);
        }
        roots.add_parsable_certificates(extra);
    }
    if !settings.tls_ca_only {
        let system = rustls_native_certs::load_native_certs();
        // A machine without a CA bundle (a minimal image) still has the operator's own
        // tls_ca_file to trust: only a store left empty is an error.
        if system.certs.is_empty() && roots.is_empty() {
            let why = system
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(ClientError::TrustStore(why));
        }
        roots.add_parsable_certificates(system.certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &settings.tls_identity_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Identity(e.to_string()))?;
            if chain.is_empty() {
                return Err(ClientError::Identity("no certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| ClientError::Identity(format!("no private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Identity(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
