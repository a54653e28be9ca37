//! Casty's own encoding of Raft messages and log entries.
//!
//! raft-rs speaks protobuf, and rust-protobuf 2 can be crashed by deeply nested input, so
//! protobuf never crosses the network or the disk: messages and entries are converted
//! here into plain serde structures (postcard on the wire, like every other frame) and
//! back. Decoding checks every enumerated value and refuses the message types that only
//! have meaning inside one node (a proposal, a tick, an unreachable report), so a peer
//! can only send what a peer may send.
//!
//! The one protobuf a conf-change entry holds (raft-rs reads the change from the entry's
//! data) is made in this process from a decoded [`ConfChange`]: it is encoded here, never
//! decoded from bytes a peer sent.

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot, SnapshotMetadata,
};
use serde::{Deserialize, Serialize};

/// Why bytes from a peer or the disk are not a Raft message or entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("undecodable Raft {what}: {reason}")]
    Undecodable { what: &'static str, reason: String },
    #[error("a Raft message of type {0} is not one a peer may send")]
    LocalMessage(u8),
    #[error("unknown Raft {what} kind {value}")]
    UnknownKind { what: &'static str, value: u8 },
}

/// One round's Raft messages from one node to another: every group's, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub messages: Vec<(u32, WireMessage)>,
}

/// The first frame of every stream one node opens to another: what the stream carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamHead {
    /// [`Frame`]s, one a round, until the stream ends, from node `from`, which serves at
    /// `addr`: a node that joins a group learns where to answer its leader from this.
    Rounds { from: u64, addr: String },
    /// One snapshot message of `group`, without its data; the data follows in frames of
    /// chunks, `len` bytes in all.
    Snapshot { group: u32, message: Box<WireMessage>, len: u64 },
}

/// A Raft message as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    kind: u8,
    to: u64,
    from: u64,
    term: u64,
    log_term: u64,
    index: u64,
    entries: Vec<WireEntry>,
    commit: u64,
    commit_term: u64,
    snapshot: Option<WireSnapshot>,
    request_snapshot: u64,
    reject: bool,
    reject_hint: u64,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
    priority: i64,
}

/// A log entry as it travels and as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    term: u64,
    index: u64,
    data: EntryData,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum EntryData {
    Normal(#[serde(with = "serde_bytes")] Vec<u8>),
    ConfChange(ConfChange),
}

/// A membership change: joint consensus (`ConfChangeV2`) in Casty's encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    /// 0 automatic, 1 implicit joint, 2 explicit joint (raft-rs's `ConfChangeTransition`).
    transition: u8,
    /// (0 add voter, 1 remove, 2 add learner; node id).
    changes: Vec<(u8, u64)>,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WireSnapshot {
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    index: u64,
    term: u64,
    conf: WireConfState,
}

/// A group's configuration: voters, learners, and the outgoing half of a joint one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireConfState {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

/// The message types one node may send another.
const PEER_MESSAGES: [MessageType; 13] = [
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

impl WireMessage {
    /// The wire form of a message raft-rs produced.
    pub fn from_raft(m: &Message) -> Self {
        Self {
            kind: m.get_msg_type() as u8,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m.get_entries().iter().map(WireEntry::from_raft).collect(),
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot: m.snapshot.as_ref().map(WireSnapshot::from_raft),
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context.to_vec(),
            priority: m.priority,
        }
    }

    /// The raft-rs message, once its kinds are checked.
    pub fn into_raft(self) -> Result<Message, WireError> {
        let kind = PEER_MESSAGES
            .into_iter()
            .find(|t| *t as u8 == self.kind)
            .ok_or(WireError::LocalMessage(self.kind))?;
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = self.to;
        m.from = self.from;
        m.term = self.term;
        m.log_term = self.log_term;
        m.index = self.index;
        m.set_entries(
            self.entries.into_iter().map(WireEntry::into_raft).collect::<Result<Vec<_>, _>>()?.into(),
        );
        m.commit = self.commit;
        m.commit_term = self.commit_term;
        if let Some(snapshot) = self.snapshot {
            m.set_snapshot(snapshot.into_raft());
        }
        m.request_snapshot = self.request_snapshot;
        m.reject = self.reject;
        m.reject_hint = self.reject_hint;
        m.context = self.context.into();
        m.priority = self.priority;
        Ok(m)
    }

    /// Takes the data out of a snapshot message, which travels on a stream of its own.
    pub fn take_snapshot_data(&mut self) -> Option<Vec<u8>> {
        self.snapshot.as_mut().map(|s| std::mem::take(&mut s.data))
    }

    /// Puts back the data of a snapshot message; false if it is not one.
    pub fn set_snapshot_data(&mut self, data: Vec<u8>) -> bool {
        self.snapshot.as_mut().map(|s| s.data = data).is_some()
    }

    /// Bytes the message's entries and snapshot carry.
    pub fn entries_bytes(&self) -> usize {
        let entries: usize = self.entries.iter().map(|e| e.context.len() + e.data.len()).sum();
        entries + self.snapshot.as_ref().map_or(0, |s| s.data.len())
    }
}

impl EntryData {
    fn len(&self) -> usize {
        match self {
            EntryData::Normal(data) => data.len(),
            EntryData::ConfChange(cc) => cc.context.len() + cc.changes.len() * 9,
        }
    }
}

impl WireEntry {
    pub fn from_raft(e: &Entry) -> Self {
        let data = match e.get_entry_type() {
            EntryType::EntryNormal => EntryData::Normal(e.data.to_vec()),
            // Conf-change entries are made by this process (`ConfChange::into_entry_data`)
            // or by `into_raft` below, so their protobuf is our own; raft-rs's own empty
            // v1 entries never occur, as the loop proposes v2 changes only.
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let mut cc = ConfChangeV2::default();
                // Our own protobuf always decodes; were it ever not to, the entry keeps
                // its place in the log as an empty one rather than stopping the node.
                match cc.merge_from_bytes(&e.data) {
                    Ok(()) => EntryData::ConfChange(ConfChange::from_raft(&cc)),
                    Err(_) => EntryData::Normal(Vec::new()),
                }
            }
        };
        Self { term: e.term, index: e.index, data, context: e.context.to_vec() }
    }

    pub fn into_raft(self) -> Result<Entry, WireError> {
        let mut e =
            Entry { term: self.term, index: self.index, context: self.context.into(), ..Entry::default() };
        match self.data {
            EntryData::Normal(data) => {
                e.set_entry_type(EntryType::EntryNormal);
                e.data = data.into();
            }
            EntryData::ConfChange(cc) => {
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e.data = cc.into_raft()?.write_to_bytes().expect("encoding to memory cannot fail").into();
            }
        }
        Ok(e)
    }
}

impl ConfChange {
    /// A change that adds `voters` and `learners` and removes `removed`, through joint
    /// consensus that raft-rs leaves on its own once the joint configuration is applied.
    pub fn new(voters: &[u64], learners: &[u64], removed: &[u64]) -> Self {
        let changes = voters.iter().map(|id| (0, *id));
        let changes = changes.chain(removed.iter().map(|id| (1, *id)));
        let changes = changes.chain(learners.iter().map(|id| (2, *id))).collect();
        Self { transition: 0, changes, context: Vec::new() }
    }

    /// The change, carrying `context` for the group's owner (it comes back with the
    /// committed entry).
    pub fn with_context(mut self, context: Vec<u8>) -> Self {
        self.context = context;
        self
    }

    /// The change a committed conf-change entry holds, if it is one.
    pub fn of_entry(entry: &Entry) -> Option<Self> {
        if entry.get_entry_type() == EntryType::EntryNormal {
            return None;
        }
        crate::log::conf_change_of(entry).map(|cc| Self::from_raft(&cc))
    }

    /// What the proposer gave the change to carry.
    pub fn context(&self) -> &[u8] {
        &self.context
    }

    /// Whether the change removes `id` from the group (or demotes it to a learner).
    pub fn removes(&self, id: u64) -> bool {
        self.changes.iter().any(|(kind, node)| *node == id && *kind != 0)
    }

    fn from_raft(cc: &ConfChangeV2) -> Self {
        Self {
            transition: cc.get_transition() as u8,
            changes: cc.get_changes().iter().map(|c| (c.get_change_type() as u8, c.node_id)).collect(),
            context: cc.context.to_vec(),
        }
    }

    pub fn into_raft(self) -> Result<ConfChangeV2, WireError> {
        let unknown = |what, value| WireError::UnknownKind { what, value };
        let mut cc = ConfChangeV2::default();
        cc.set_transition(match self.transition {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            other => return Err(unknown("conf-change transition", other)),
        });
        for (kind, node_id) in self.changes {
            let mut change = ConfChangeSingle::default();
            change.set_change_type(match kind {
                0 => ConfChangeType::AddNode,
                1 => ConfChangeType::RemoveNode,
                2 => ConfChangeType::AddLearnerNode,
                other => return Err(unknown("conf-change type", other)),
            });
            change.node_id = node_id;
            cc.mut_changes().push(change);
        }
        cc.context = self.context.into();
        Ok(cc)
    }
}

impl WireSnapshot {
    fn from_raft(s: &Snapshot) -> Self {
        let meta = s.get_metadata();
        Self {
            data: s.data.to_vec(),
            index: meta.index,
            term: meta.term,
            conf: WireConfState::from_raft(meta.get_conf_state()),
        }
    }

    fn into_raft(self) -> Snapshot {
        let mut meta = SnapshotMetadata { index: self.index, term: self.term, ..SnapshotMetadata::default() };
        meta.set_conf_state(self.conf.into_raft());
        let mut s = Snapshot { data: self.data.into(), ..Snapshot::default() };
        s.set_metadata(meta);
        s
    }
}

impl WireConfState {
    pub fn from_raft(c: &ConfState) -> Self {
        Self {
            voters: c.voters.clone(),
            learners: c.learners.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners_next: c.learners_next.clone(),
            auto_leave: c.auto_leave,
        }
    }

    pub fn into_raft(self) -> ConfState {
        ConfState {
            voters: self.voters,
            learners: self.learners,
            voters_outgoing: self.voters_outgoing,
            learners_next: self.learners_next,
            auto_leave: self.auto_leave,
            ..ConfState::default()
        }
    }
}

/// Encodes anything of this module with postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to memory cannot fail")
}

/// Decodes what [`encode`] made; `what` names it in the error.
pub fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Undecodable { what, reason: e.to_string() })
}

/// Decodes the body of a peer's frame (the bytes after its length prefix) into raft-rs
/// messages: all a receiving node runs on a peer's bytes, public so that the fuzz targets
/// (`tests/fuzz`) run exactly it.
pub fn decode_frame(body: &[u8]) -> Result<Vec<(u32, Message)>, WireError> {
    let frame: Frame = decode_body("frame", body)?;
    frame.messages.into_iter().map(|(group, m)| Ok((group, m.into_raft()?))).collect()
}

/// The frame holding `value` (a [`Frame`], a [`StreamHead`], a chunk), length prefix
/// and all, as [`decode_frame`] and [`decode_body`] read it.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    casty_core::protocol::encode_frame(out, 0, value);
}

/// Decodes the body of a frame other than a round's: a stream's head, a chunk.
pub fn decode_body<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, WireError> {
    casty_core::protocol::decode_body::<T>(body)
        .map(|(_, value)| value)
        .map_err(|(_, e)| WireError::Undecodable { what, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame's body, as the receiving node's stream reader hands it over.
    fn framed(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, frame);
        out.split_off(casty_core::protocol::LENGTH_PREFIX_BYTES)
    }

    fn entry(index: u64, data: &[u8]) -> Entry {
        Entry { index, term: 3, data: data.to_vec().into(), ..Entry::default() }
    }

    #[test]
    fn a_message_with_entries_and_a_snapshot_survives_the_round_trip() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.to, m.from, m.term, m.log_term, m.index, m.commit) = (2, 1, 3, 3, 9, 8);
        m.set_entries(vec![entry(10, b"a"), entry(11, b"bc")].into());
        let mut snapshot = WireSnapshot::from_raft(&Snapshot::default()).into_raft();
        snapshot.mut_metadata().index = 7;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.set_snapshot(snapshot);
        m.context = b"ctx".to_vec().into();
        let frame = Frame { messages: vec![(4, WireMessage::from_raft(&m))] };
        let decoded = decode_frame(&framed(&frame)).unwrap();
        assert_eq!(decoded, vec![(4, m)]);
    }

    #[test]
    fn a_conf_change_entry_travels_without_protobuf_and_comes_back_equal() {
        let cc = ConfChange::new(&[4], &[5], &[2]);
        let entry = WireEntry { term: 2, index: 6, data: EntryData::ConfChange(cc.clone()), context: vec![] };
        let raft = entry.clone().into_raft().unwrap();
        assert_eq!(raft.get_entry_type(), EntryType::EntryConfChangeV2);
        assert_eq!(WireEntry::from_raft(&raft), entry);
        let changes = cc.into_raft().unwrap();
        let kinds: Vec<_> = changes.get_changes().iter().map(|c| (c.get_change_type(), c.node_id)).collect();
        assert_eq!(
            kinds,
            [
                (ConfChangeType::AddNode, 4),
                (ConfChangeType::RemoveNode, 2),
                (ConfChangeType::AddLearnerNode, 5)
            ]
        );
    }

    #[test]
    fn messages_only_a_node_itself_may_make_are_refused() {
        for local in
            [MessageType::MsgHup, MessageType::MsgBeat, MessageType::MsgPropose, MessageType::MsgUnreachable]
        {
            let mut m = Message::default();
            m.set_msg_type(local);
            let frame = Frame { messages: vec![(0, WireMessage::from_raft(&m))] };
            assert_eq!(decode_frame(&framed(&frame)), Err(WireError::LocalMessage(local as u8)));
        }
    }

    proptest! {
        /// Arbitrary bytes decode to a frame or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }
    }
}
