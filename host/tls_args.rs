//! The TLS flags of both binaries: all three turn on verified mutual TLS; none leaves
//! TLS in development mode.

use std::path::PathBuf;
use std::sync::Arc;

use casty_client::{Tls, Verified};

#[derive(Debug, clap::Args)]
pub(crate) struct TlsArgs {
    /// PEM certificate of the cluster's certificate authority. With --tls-cert and
    /// --tls-key it turns on verified mutual TLS; without them TLS verifies nothing.
    #[arg(long, env = "CASTY_TLS_CA", requires_all = ["tls_cert", "tls_key"], global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this process, signed by the authority (a node's must name
    /// the IP addresses it is reached at, and allow client authentication too).
    #[arg(long, env = "CASTY_TLS_CERT", requires_all = ["tls_ca", "tls_key"], global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CASTY_TLS_KEY", requires_all = ["tls_ca", "tls_cert"], global = true)]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS the flags ask for; an error says which file could not be used and why.
    pub(crate) fn tls(&self) -> Result<Tls, String> {
        Ok(match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                Tls::Verified(Arc::new(Verified::from_pem_files(ca, cert, key).map_err(|e| e.to_string())?))
            }
            _ => Tls::Development,
        })
    }
}
