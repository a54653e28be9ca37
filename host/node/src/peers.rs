//! The node's request connections to its peers (joins, forwarded commands, status,
//! pings), and when each peer last answered, which is how the node tells a dead peer
//! from a live one. Raft's own traffic does not go here: the Raft loop keeps one stream
//! per peer of its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use casty_client::{Client, Tls};
use casty_core::protocol::{Request, Response};

/// A node's id in Raft: the hash of its `--node-id` name.
pub(crate) type NodeId = u64;

/// The Raft node id of a node named `name`.
pub(crate) fn node_id_of(name: &str) -> NodeId {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// How long a node waits to connect to a peer before calling it unreachable.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Peers {
    tls: Tls,
    /// This node's own address, which its connections to peers are made from.
    local: IpAddr,
    clients: Mutex<HashMap<SocketAddr, Client>>,
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl Peers {
    /// No connections yet; each will be made from `local` and authenticate as `tls` says.
    pub(crate) fn new(tls: Tls, local: IpAddr) -> Self {
        Self { tls, local, clients: Mutex::default(), answered: Mutex::default() }
    }

    /// The connection to the node at `addr`, made on first use.
    pub(crate) fn client(&self, addr: &str) -> Result<Client, String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(clients
            .entry(addr)
            .or_insert_with(|| Client::lazy(addr, PEER_CONNECT_TIMEOUT, self.tls.clone(), self.local))
            .clone())
    }

    /// When the peer last answered a ping, if it ever did.
    pub(crate) fn last_answer(&self, node: NodeId) -> Option<Instant> {
        self.answered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&node).copied()
    }

    /// Asks the peer at `addr` whether it is alive, and notes when it answers.
    pub(crate) async fn ping(&self, node: NodeId, addr: &str) {
        let Ok(client) = self.client(addr) else { return };
        if let Ok(Ok(Response::Reply(_))) =
            tokio::time::timeout(PEER_CONNECT_TIMEOUT, client.request(&Request::Ping)).await
        {
            self.answered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(node, Instant::now());
        }
    }
}
