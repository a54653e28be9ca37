//! Certificates and TLS configuration, in one place.
//!
//! Two modes. **Development** (the default): a node generates a self-signed certificate
//! into its data directory on first start and reuses it; clients accept any server
//! certificate and present none. The connection is encrypted but neither end is
//! authenticated, which the node says plainly when it starts. **Verified mutual TLS**:
//! every node and client holds a certificate signed by the cluster's certificate
//! authority; a server accepts only clients that present one, and a client accepts only
//! a server whose certificate chains to the authority and names the IP address it dialed.
//! Nodes talk to each other as clients, so a process without such a certificate can
//! neither join the cluster nor send it Raft messages.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{ALPN, TransportError};

/// How a process authenticates its connections.
#[derive(Clone, Debug, Default)]
pub enum Tls {
    /// Encrypted, nothing verified: for development on one machine.
    #[default]
    Development,
    /// Verified mutual TLS under the cluster's certificate authority.
    Verified(Arc<Verified>),
}

/// The cluster's certificate authority and this process's certificate signed by it.
#[derive(Debug)]
pub struct Verified {
    roots: Arc<RootCertStore>,
    identity: Identity,
}

impl Verified {
    /// Reads the authority's certificate(s), this process's certificate chain and its
    /// private key from PEM files.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let read = |what: &str, path: &Path, e: rustls::pki_types::pem::Error| {
            TransportError::Tls(format!("cannot read the {what} from {}: {e}", path.display()))
        };
        let certs = |what: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, TransportError> {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| read(what, path, e))?;
            if certs.is_empty() {
                return Err(TransportError::Tls(format!("{} holds no PEM certificate", path.display())));
            }
            Ok(certs)
        };
        let authority = certs("certificate authority", ca)?;
        let chain = certs("certificate", cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read("private key", key, e))?;
        Self::new(authority, Identity { certs: chain, key })
    }

    /// Trusts the certificates in `authority` and presents `identity`.
    fn new(authority: Vec<CertificateDer<'static>>, identity: Identity) -> Result<Self, TransportError> {
        let mut roots = RootCertStore::empty();
        for cert in authority {
            roots
                .add(cert)
                .map_err(|e| TransportError::Tls(format!("the certificate authority is not usable: {e}")))?;
        }
        Ok(Self { roots: Arc::new(roots), identity })
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

const CERT_FILE: &str = "node-cert.der";
const KEY_FILE: &str = "node-key.der";

impl Identity {
    /// A fresh self-signed identity for `localhost` and the loopback addresses.
    pub fn self_signed() -> Result<Self, TransportError> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let generated = rcgen::generate_simple_self_signed(names).map_err(tls_error)?;
        Ok(Self {
            certs: vec![generated.cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()).into(),
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
            return Ok(Self {
                certs: vec![CertificateDer::from(cert)],
                key: PrivatePkcs8KeyDer::from(key).into(),
            });
        }
        let identity = Self::self_signed()?;
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory", e))?;
        std::fs::write(&cert_path, identity.certs[0].as_ref())
            .map_err(|e| io("cannot write the certificate", e))?;
        std::fs::write(&key_path, identity.key.secret_der()).map_err(|e| io("cannot write the key", e))?;
        Ok(identity)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl ToString) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// A server's TLS: in development mode it presents `development` (a self-signed identity);
/// verified, it presents its own certificate and requires one of the authority's from
/// every client.
pub(crate) fn server_crypto(
    tls: &Tls,
    development: impl FnOnce() -> Result<Identity, TransportError>,
) -> Result<Arc<QuicServerConfig>, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut config = match tls {
        Tls::Development => {
            let identity = development()?;
            builder.with_no_client_auth().with_single_cert(identity.certs, identity.key)
        }
        Tls::Verified(verified) => {
            let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
                verified.roots.clone(),
                provider(),
            )
            .build()
            .map_err(tls_error)?;
            builder
                .with_client_cert_verifier(clients)
                .with_single_cert(verified.identity.certs.clone(), verified.identity.key.clone_key())
        }
    }
    .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(QuicServerConfig::try_from(config).map_err(tls_error)?))
}

pub(crate) fn client_crypto(tls: &Tls) -> Result<Arc<QuicClientConfig>, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut config = match tls {
        Tls::Development => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
            .with_no_client_auth(),
        Tls::Verified(verified) => builder
            .with_root_certificates(verified.roots.clone())
            .with_client_auth_cert(verified.identity.certs.clone(), verified.identity.key.clone_key())
            .map_err(tls_error)?,
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(QuicClientConfig::try_from(config).map_err(tls_error)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_error(ca: &Path, cert: &Path, key: &Path) -> String {
        Verified::from_pem_files(ca, cert, key).unwrap_err().to_string()
    }

    #[test]
    fn unusable_pem_files_are_named_with_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("casty-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let (cert, key, empty) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("empty.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        std::fs::write(&empty, "not a PEM file\n").unwrap();
        let missing = dir.join("missing.pem");

        let error = setup_error(&missing, &cert, &key);
        assert!(
            error.contains("cannot read the certificate authority from") && error.contains("missing.pem"),
            "{error}"
        );
        let error = setup_error(&cert, &empty, &key);
        assert!(error.contains("empty.pem holds no PEM certificate"), "{error}");
        let error = setup_error(&cert, &cert, &empty);
        assert!(error.contains("cannot read the private key from") && error.contains("empty.pem"), "{error}");
        assert!(Verified::from_pem_files(&cert, &cert, &key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
