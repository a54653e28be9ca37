//! The network between the members of Raft groups: every Raft message is one request on
//! the node-to-node QUIC connection (`Request::Raft`), encoded here, and delivered to the
//! receiving node's group by [`deliver`], which decodes it with [`decode_raft_message`].
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

use crate::codec::{CodecError, decode_entry, decode_json, encode_entry, encode_json};
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

/// A Raft message from a peer, decoded: what [`deliver`] hands to the group.
#[derive(Debug)]
pub enum RaftMessage {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

impl RaftMessage {
    /// The leader or candidate that sent the message.
    fn sender(&self) -> NodeId {
        match self {
            RaftMessage::Append(rpc) => rpc.vote.leader_id.node_id,
            RaftMessage::Vote(rpc) => rpc.vote.leader_id.node_id,
            RaftMessage::Snapshot(rpc) => rpc.vote.leader_id.node_id,
        }
    }
}

/// Decodes the bytes of a peer's `Request::Raft`. This is all the decoding a receiving
/// node does before the message reaches openraft; it is public so that the fuzz targets
/// (`tests/fuzz`) run exactly it.
pub fn decode_raft_message(bytes: &[u8]) -> Result<RaftMessage, String> {
    let message: Message =
        postcard::from_bytes(bytes).map_err(|e| format!("undecodable Raft message: {e}"))?;
    Ok(match message {
        Message::Append { head, entries } => {
            let (vote, prev_log_id, leader_commit): AppendHead =
                decode_json("append-entries head", &head).map_err(|e| e.to_string())?;
            let entries = entries.iter().map(|e| decode_entry(e)).collect::<Result<Vec<_>, _>>();
            let entries = entries.map_err(|e| e.to_string())?;
            RaftMessage::Append(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
        }
        Message::Vote(request) => {
            RaftMessage::Vote(decode_json("vote request", &request).map_err(|e| e.to_string())?)
        }
        Message::Snapshot { head, data } => {
            let (vote, meta, offset, done): SnapshotHead =
                decode_json("install-snapshot head", &head).map_err(|e| e.to_string())?;
            RaftMessage::Snapshot(InstallSnapshotRequest { vote, meta, offset, data, done })
        }
    })
}

/// Decodes a peer's answer to an append-entries message.
pub fn decode_append_answer(bytes: &[u8]) -> Result<AppendEntriesResponse<NodeId>, CodecError> {
    decode_json("append-entries response", bytes)
}

/// Decodes a peer's answer to a vote request.
pub fn decode_vote_answer(bytes: &[u8]) -> Result<VoteResponse<NodeId>, CodecError> {
    decode_json("vote response", bytes)
}

/// Decodes a peer's answer to an install-snapshot message.
pub fn decode_snapshot_answer(bytes: &[u8]) -> Result<InstallSnapshotResponse<NodeId>, CodecError> {
    decode_json("install-snapshot response", bytes)
}

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
        decode_append_answer(&answer).map_err(|e| network(e.to_string()))
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
        decode_snapshot_answer(&answer).map_err(|e| network(e.to_string()))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let answer = self.send(&Message::Vote(encode_json(&rpc)), option.hard_ttl()).await?;
        decode_vote_answer(&answer).map_err(|e| network(e.to_string()))
    }
}

/// Hands a Raft message from a peer to this node's group and encodes its answer. The
/// sender (the vote's leader or candidate) counts as heard from.
pub async fn deliver(raft: &Raft, peers: &Peers, message: &[u8]) -> Result<Vec<u8>, String> {
    let message = decode_raft_message(message)?;
    peers.heard_from(message.sender());
    match message {
        RaftMessage::Append(rpc) => {
            raft.append_entries(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string())
        }
        RaftMessage::Vote(rpc) => raft.vote(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string()),
        RaftMessage::Snapshot(rpc) => {
            raft.install_snapshot(rpc).await.map(|r| encode_json(&r)).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use openraft::{EntryPayload, LeaderId, StoredMembership};

    use super::*;
    use crate::{Entry, LogId};

    /// One encoded message of each kind, as `Peer` sends them.
    pub(crate) fn messages() -> Vec<Vec<u8>> {
        let vote = Vote::new_committed(3, 11);
        let log_id = LogId::new(LeaderId::new(3, 11), 42);
        let entry = Entry { log_id, payload: EntryPayload::Blank };
        let membership = openraft::Membership::new(vec![BTreeSet::from([11u64])], None);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "42-a".into(),
        };
        let head: AppendHead = (vote, Some(log_id), Some(log_id));
        let snapshot_head: SnapshotHead = (vote, meta, 0, true);
        [
            Message::Append { head: encode_json(&head), entries: vec![encode_entry(&entry)] },
            Message::Vote(encode_json(&VoteRequest::new(vote, Some(log_id)))),
            Message::Snapshot { head: encode_json(&snapshot_head), data: b"export".to_vec() },
        ]
        .iter()
        .map(|m| postcard::to_allocvec(m).unwrap())
        .collect()
    }

    #[test]
    fn messages_decode_to_what_was_sent() {
        let decoded: Vec<_> = messages().iter().map(|m| decode_raft_message(m).unwrap()).collect();
        assert!(
            matches!(&decoded[0], RaftMessage::Append(rpc) if rpc.entries.len() == 1 && rpc.prev_log_id.is_some())
        );
        assert!(matches!(&decoded[1], RaftMessage::Vote(rpc) if rpc.last_log_id.is_some()));
        assert!(matches!(&decoded[2], RaftMessage::Snapshot(rpc) if rpc.done && rpc.data == b"export"));
        assert!(decoded.iter().all(|m| m.sender() == 11));
        assert!(decode_raft_message(&[7]).unwrap_err().contains("undecodable Raft message"));
    }

    proptest::proptest! {
        /// Messages with bytes overwritten and the end cut off decode to a message or an
        /// error, never a panic.
        #[test]
        fn damaged_messages_never_panic(
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
            keep in proptest::num::usize::ANY,
        ) {
            for mut bytes in messages() {
                for &(at, byte) in &damage {
                    let len = bytes.len();
                    bytes[at % len] = byte;
                }
                bytes.truncate(keep % (bytes.len() + 1));
                let _ = decode_raft_message(&bytes);
            }
        }

        /// Arbitrary bytes, as a message and as each kind of answer.
        #[test]
        fn arbitrary_messages_and_answers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_raft_message(&bytes);
            let _ = decode_append_answer(&bytes);
            let _ = decode_vote_answer(&bytes);
            let _ = decode_snapshot_answer(&bytes);
        }
    }
}
