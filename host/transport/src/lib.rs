//! QUIC transport for clients and nodes: endpoints, TLS identities, and reading and
//! writing protocol frames on long-lived streams.
//!
//! All certificate handling lives in [`tls`]: development mode, or verified mutual TLS
//! under the cluster's certificate authority. Frames are bounded by `FRAME_SIZE_MAX_BYTES`; a frame
//! that breaks the protocol is an error for that stream, never for the process.
#![forbid(unsafe_code)]

mod frames;
pub mod tls;

pub use frames::{FrameReadError, read_frame};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol name; a peer speaking anything else is refused at the handshake.
pub const ALPN: &[u8] = b"casty/1";
/// Bidirectional streams one peer may have open on a connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Unidirectional streams one peer may have open on a connection: a node's Raft frames to
/// another travel on one such long-lived stream.
pub const UNI_STREAMS_PER_CONNECTION_MAX: u32 = 4;
/// A connection with no traffic for this long is closed. Keep-alives make "no traffic"
/// mean "the peer is gone" (killed, stopped, cut off), so requests waiting on a dead
/// peer fail after this long and are retried elsewhere.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Packets a peer may take in before it must acknowledge them at once (QUIC's ACK
/// frequency extension; the default, 1, acknowledges every other packet). Requests and
/// Raft frames are answered within a round, and the answer carries the acknowledgement,
/// so an ACK of its own is mostly a datagram and a wake-up wasted. Kept well below the
/// initial congestion window (10 packets), so a sender in slow start still hears of its
/// packets within one window.
const ACK_ELICITING_PACKETS_MAX: u32 = 4;
/// Keep-alives keep idle but wanted connections open.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    config.max_concurrent_uni_streams(UNI_STREAMS_PER_CONNECTION_MAX.into());
    config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("3 s fits a QUIC idle timeout")));
    config.keep_alive_interval(Some(KEEP_ALIVE));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_PACKETS_MAX.into());
    config.ack_frequency_config(Some(acks));
    Arc::new(config)
}

/// A server endpoint bound to `addr`. In development mode it presents the self-signed
/// identity kept in `identity_dir` (made there on first use), or a fresh one without it.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: &tls::Tls,
    identity_dir: Option<&Path>,
) -> Result<quinn::Endpoint, TransportError> {
    let development = || match identity_dir {
        Some(dir) => tls::Identity::load_or_create(dir),
        None => tls::Identity::self_signed(),
    };
    let mut config = quinn::ServerConfig::with_crypto(tls::server_crypto(tls, development)?);
    config.transport_config(transport_config());
    quinn::Endpoint::server(config, addr).map_err(|source| TransportError::Bind { addr, source })
}

/// A client endpoint on an ephemeral loopback or wildcard port.
pub fn client_endpoint(local: SocketAddr, tls: &tls::Tls) -> Result<quinn::Endpoint, TransportError> {
    let mut endpoint =
        quinn::Endpoint::client(local).map_err(|source| TransportError::Bind { addr: local, source })?;
    let mut config = quinn::ClientConfig::new(tls::client_crypto(tls)?);
    config.transport_config(transport_config());
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_connection_ask_their_peer_to_acknowledge_less_often() {
        let tls = tls::Tls::Development;
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = server_endpoint(loopback, &tls, None).unwrap();
        let client = client_endpoint(loopback, &tls).unwrap();
        let addr = server.local_addr().unwrap();
        let (dialed, accepted) =
            tokio::join!(async { client.connect(addr, "127.0.0.1").unwrap().await.unwrap() }, async {
                server.accept().await.unwrap().await.unwrap()
            },);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (end, connection) in [("client", &dialed), ("server", &accepted)] {
            while connection.stats().frame_tx.ack_frequency == 0 {
                let sent = connection.stats().frame_tx;
                assert!(Instant::now() < deadline, "the {end} sent no ACK_FREQUENCY frame: {sent:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
