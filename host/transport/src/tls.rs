//! Certificates and TLS configuration, in one place.
//!
//! Development mode (the only mode so far): a node generates a self-signed certificate
//! into its data directory on first start and reuses it; clients accept any server
//! certificate. The connection is encrypted but the server is not authenticated, which
//! the node says plainly when it starts.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{ALPN, TransportError};

/// A node's certificate chain and private key.
#[derive(Debug)]
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

const CERT_FILE: &str = "node-cert.der";
const KEY_FILE: &str = "node-key.der";

impl Identity {
    /// A fresh self-signed identity for `localhost` and the loopback addresses.
    pub fn self_signed() -> Result<Self, TransportError> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let generated =
            rcgen::generate_simple_self_signed(names).map_err(|e| TransportError::Tls(e.to_string()))?;
        Ok(Self {
            certs: vec![generated.cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()),
        })
    }

    /// The identity kept in `dir`, generated and stored there on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TransportError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let io =
            |what: &str, e: std::io::Error| TransportError::Tls(format!("{what} in {}: {e}", dir.display()));
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(|e| io("cannot read the certificate", e))?;
            let key = std::fs::read(&key_path).map_err(|e| io("cannot read the key", e))?;
            return Ok(Self { certs: vec![CertificateDer::from(cert)], key: PrivatePkcs8KeyDer::from(key) });
        }
        let identity = Self::self_signed()?;
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory", e))?;
        std::fs::write(&cert_path, identity.certs[0].as_ref())
            .map_err(|e| io("cannot write the certificate", e))?;
        std::fs::write(&key_path, identity.key.secret_pkcs8_der())
            .map_err(|e| io("cannot write the key", e))?;
        Ok(identity)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn server_crypto(identity: &Identity) -> Result<Arc<QuicServerConfig>, TransportError> {
    let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), PrivateKeyDer::Pkcs8(identity.key.clone_key()))
        .map_err(tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(config).map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(Arc::new(quic))
}

pub(crate) fn client_crypto() -> Result<Arc<QuicClientConfig>, TransportError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(Arc::new(quic))
}

/// Development mode: any server certificate is accepted; handshake signatures are still
/// checked, so the session keys belong to whoever holds the presented certificate.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
