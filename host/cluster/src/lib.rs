//! The cluster layer: Raft, from openraft, for the node's groups. One Raft group per
//! partition (its log holds [`Proposal`]s, its state machine is the partition's worker).
//!
//! This crate gives openraft what it needs and nothing more: the type configuration, a
//! log store on the node's journal (group commit across groups), a state machine adapter
//! that hands every state-machine call to the partition's worker over a bounded channel,
//! and the encodings of what Raft stores. It makes no decisions of its own: consensus is
//! openraft's, and what an entry means is the node's.
#![forbid(unsafe_code)]

mod codec;
#[cfg(test)]
mod fuzz_seeds;
mod log_store;
mod network;
mod state_machine;

use std::io::Cursor;
use std::sync::Arc;

pub use codec::{AppliedState, CodecError, decode_entry, decode_purged, decode_vote};
pub use log_store::LogStore;
pub use network::{
    Network, Peers, RaftMessage, decode_append_answer, decode_raft_message, decode_snapshot_answer,
    decode_vote_answer, deliver,
};
pub use openraft::{self, EntryPayload, ServerState, StoredMembership};
pub use state_machine::{Answer, SmRequest, StateMachine};

use casty_core::limits::{
    RAFT_ELECTION_TIMEOUT_MAX_MS, RAFT_ELECTION_TIMEOUT_MIN_MS, RAFT_HEARTBEAT_MS,
    RAFT_SNAPSHOT_INTERVAL_ENTRIES,
};
use casty_core::record::Proposal;

/// A node's id in Raft: the hash of its `--node-id` name.
pub type NodeId = u64;

/// What a group's membership says of each member: its name and where it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub addr: String,
}

openraft::declare_raft_types!(
    /// Casty's Raft types: entries carry proposals, the state machine answers nothing
    /// (replies travel from the deciding worker), snapshots are bytes in memory.
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Membership = StoredMembership<NodeId, NodeInfo>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
pub type ClientWriteError =
    openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, NodeInfo>>;
/// Where openraft answers a proposal made with `Raft::client_write_ff`.
pub type WriteAnswer = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;
pub type CheckIsLeaderError =
    openraft::error::RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, NodeInfo>>;

/// The Raft node id of a node named `name`.
pub fn node_id_of(name: &str) -> NodeId {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// The Raft timing and snapshot policy every group uses.
pub fn raft_config(cluster: &str) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: RAFT_HEARTBEAT_MS,
        election_timeout_min: RAFT_ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: RAFT_ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(RAFT_SNAPSHOT_INTERVAL_ENTRIES),
        ..openraft::Config::default()
    };
    Arc::new(config.validate().expect("the Raft timings are consistent"))
}
