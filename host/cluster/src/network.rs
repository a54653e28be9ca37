//! The network between the members of Raft groups: every Raft message is one request on
//! the node-to-node QUIC connection (`Request::Raft`), encoded here, and delivered to the
//! receiving node's group by [`deliver`].
//!
//! Log entries travel in the journal's binary entry encoding; the small records (votes,
//! log ids, snapshot metadata, responses) as JSON, which is openraft's own serde form.

// openraft's network trait fixes the (large) error type these functions return.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use casty_client::{Client, Tls};
use casty_core::protocol::{Request, Response};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId as RaftLogId, Vote};
use serde::{Deserialize, Serialize};

use crate::codec::{decode_entry, decode_json, encode_entry, encode_json};
use crate::{NodeId, NodeInfo, Raft, SnapshotMeta, TypeConfig};

/// How long a node waits to connect to a peer before calling it unreachable.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One Raft message on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// JSON of (vote, prev log id, leader commit), and the entries.
    Append { head: Vec<u8>, entries: Vec<Vec<u8>> },
    /// JSON of the vote request.
    Vote(Vec<u8>),
    /// JSON of (vote, meta, offset, done), and the chunk.
    Snapshot { head: Vec<u8>, data: Vec<u8> },
}

type AppendHead = (Vote<NodeId>, Option<RaftLogId<NodeId>>, Option<RaftLogId<NodeId>>);
type SnapshotHead = (Vote<NodeId>, SnapshotMeta, u64, bool);

/// The node's connections to its peers, shared by every group, and when each peer last
/// answered (which is how the node tells a dead peer from a live one).
#[derive(Debug)]
pub struct Peers {
    tls: Tls,
    /// This node's own address, which its connections to peers are made from.
    local: IpAddr,
    clients: Mutex<HashMap<SocketAddr, Client>>,
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl Peers {
    /// No connections yet; each will be made from `local` and authenticate as `tls` says.
    pub fn new(tls: Tls, local: IpAddr) -> Self {
        Self { tls, local, clients: Mutex::default(), answered: Mutex::default() }
    }

    /// The connection to the node at `addr`, made on first use.
    pub fn client(&self, addr: &str) -> Result<Client, String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(clients
            .entry(addr)
            .or_insert_with(|| Client::lazy(addr, PEER_CONNECT_TIMEOUT, self.tls.clone(), self.local))
            .clone())
    }

    /// When the peer last answered a Raft message, if it ever did.
    pub fn last_answer(&self, node: NodeId) -> Option<Instant> {
        self.answered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&node).copied()
    }

    /// Asks the peer at `addr` whether it is alive, and notes when it answers.
    pub async fn ping(&self, node: NodeId, addr: &str) {
        let Ok(client) = self.client(addr) else { return };
        if let Ok(Ok(Response::Reply(_))) =
            tokio::time::timeout(PEER_CONNECT_TIMEOUT, client.request(&Request::Ping)).await
        {
            self.heard_from(node);
        }
    }

    fn heard_from(&self, node: NodeId) {
        self.answered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node, Instant::now());
    }
}

/// Connects one group to its peers.
#[derive(Clone, Debug)]
pub struct Network {
    group: u32,
    peers: Arc<Peers>,
}

impl Network {
    pub fn new(group: u32, peers: Arc<Peers>) -> Self {
        Self { group, peers }
    }
}

/// A group's connection to one peer.
#[derive(Debug)]
pub struct Peer {
    group: u32,
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer { group: self.group, target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

fn unreachable<E: std::error::Error>(reason: String) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
}

fn network<E: std::error::Error>(reason: String) -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(reason)))
}

impl Peer {
    /// Sends one message and returns the peer's encoded answer.
    async fn send<E: std::error::Error>(
        &self,
        message: &Message,
        ttl: Duration,
    ) -> Result<Vec<u8>, RPCError<NodeId, NodeInfo, E>> {
        let client = self.peers.client(&self.addr).map_err(unreachable)?;
        let request = Request::Raft {
            group: self.group,
            message: postcard::to_allocvec(message).expect("Raft messages serialize"),
        };
        let answer = tokio::time::timeout(ttl, client.request(&request))
            .await
            .map_err(|_| {
                network(format!("node {:016x} did not answer within {} ms", self.target, ttl.as_millis()))
            })?
            .map_err(|e| unreachable(format!("node {:016x} at {}: {e}", self.target, self.addr)))?;
        match answer {
            Response::Reply(bytes) => {
                self.peers.heard_from(self.target);
                Ok(bytes)
            }
            Response::Error(e) => Err(network(format!("node {:016x}: {}", self.target, e.message))),
            other => Err(network(format!("node {:016x} answered {other:?}", self.target))),
        }
    }
}

fn decode<T: for<'a> Deserialize<'a>, E: std::error::Error>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, RPCError<NodeId, NodeInfo, E>> {
    decode_json(what, bytes).map_err(|e| network(e.to_string()))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let head: AppendHead = (rpc.vote, rpc.prev_log_id, rpc.leader_commit);
        let message = Message::Append {
            head: encode_json(&head),
            entries: rpc.entries.iter().map(encode_entry).collect(),
        };
        let answer = self.send(&message, option.hard_ttl()).await?;
        decode("append-entries response", &answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let head: SnapshotHead = (rpc.vote, rpc.meta, rpc.offset, rpc.done);
        let message = Message::Snapshot { head: encode_json(&head), data: rpc.data };
        let answer = self.send(&message, option.hard_ttl()).await?;
        decode("install-snapshot response", &answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let answer = self.send(&Message::Vote(encode_json(&rpc)), option.hard_ttl()).await?;
        decode("vote response", &answer)
    }
}

/// Hands a Raft message from a peer to this node's group and encodes its answer. The
/// sender (the vote's leader or candidate) counts as heard from.
pub async fn deliver(raft: &Raft, peers: &Peers, message: &[u8]) -> Result<Vec<u8>, String> {
    let message: Message =
        postcard::from_bytes(message).map_err(|e| format!("undecodable Raft message: {e}"))?;
    match message {
        Message::Append { head, entries } => {
            let (vote, prev_log_id, leader_commit): AppendHead =
                decode_json("append-entries head", &head).map_err(|e| e.to_string())?;
            peers.heard_from(vote.leader_id.node_id);
            let entries = entries.iter().map(|e| decode_entry(e)).collect::<Result<Vec<_>, _>>();
            let rpc = AppendEntriesRequest {
                vote,
                prev_log_id,
                entries: entries.map_err(|e| e.to_string())?,
                leader_commit,
            };
            raft.append_entries(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string())
        }
        Message::Vote(request) => {
            let rpc: VoteRequest<NodeId> =
                decode_json("vote request", &request).map_err(|e| e.to_string())?;
            peers.heard_from(rpc.vote.leader_id.node_id);
            raft.vote(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string())
        }
        Message::Snapshot { head, data } => {
            let (vote, meta, offset, done): SnapshotHead =
                decode_json("install-snapshot head", &head).map_err(|e| e.to_string())?;
            peers.heard_from(vote.leader_id.node_id);
            let rpc = InstallSnapshotRequest { vote, meta, offset, data, done };
            raft.install_snapshot(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string())
        }
    }
}
