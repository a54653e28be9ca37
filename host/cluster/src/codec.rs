//! How Raft's records are stored. A log entry has a fixed binary header (format version,
//! term, leader, index, kind) and a payload: a proposal in postcard, or a membership in
//! JSON (rare, and openraft's own serde form). The small records (vote, purged log id,
//! applied state) are JSON.

use casty_core::record::Proposal;
use openraft::{EntryPayload, LeaderId, Vote};
use serde::{Deserialize, Serialize};

use crate::{Entry, LogId, Membership, NodeId};

const ENTRY_FORMAT: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8 + 8 + 1;
const KIND_BLANK: u8 = 0;
const KIND_PROPOSAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// A stored Raft record that does not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stored Raft {what} does not decode: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 64);
    out.push(ENTRY_FORMAT);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&entry.log_id.index.to_le_bytes());
    match &entry.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(proposal) => {
            out.push(KIND_PROPOSAL);
            out.extend_from_slice(&proposal.encode());
        }
        EntryPayload::Membership(membership) => {
            out.push(KIND_MEMBERSHIP);
            out.extend_from_slice(&serde_json::to_vec(membership).expect("memberships serialize"));
        }
    }
    out
}

/// Decodes a stored (or replicated) log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let error = |reason: String| CodecError { what: "log entry", reason };
    if bytes.len() < HEADER_BYTES {
        return Err(error(format!("{} bytes is shorter than the header", bytes.len())));
    }
    if bytes[0] != ENTRY_FORMAT {
        return Err(error(format!("format {} is not {ENTRY_FORMAT}", bytes[0])));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let log_id = LogId::new(LeaderId::new(word(1), word(9)), word(17));
    let body = &bytes[HEADER_BYTES..];
    let payload = match bytes[HEADER_BYTES - 1] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_PROPOSAL => EntryPayload::Normal(Proposal::decode(body).map_err(|e| error(e.to_string()))?),
        KIND_MEMBERSHIP => {
            EntryPayload::Membership(serde_json::from_slice(body).map_err(|e| error(e.to_string()))?)
        }
        kind => return Err(error(format!("unknown kind {kind}"))),
    };
    Ok(Entry { log_id, payload })
}

pub(crate) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("Raft records serialize")
}

pub(crate) fn decode_json<T: for<'a> Deserialize<'a>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError { what, reason: e.to_string() })
}

/// Decodes a group's stored vote.
pub fn decode_vote(bytes: &[u8]) -> Result<Vote<NodeId>, CodecError> {
    decode_json("vote", bytes)
}

/// Decodes a group's stored last purged log id.
pub fn decode_purged(bytes: &[u8]) -> Result<LogId, CodecError> {
    decode_json("purged log id", bytes)
}

/// What a partition's state machine has applied: the last log id and the membership in
/// force, stored with each checkpoint so a restart resumes from there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub log_id: Option<LogId>,
    pub membership: Membership,
}

impl AppliedState {
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes a stored state; empty bytes are the state of a partition that applied nothing.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        decode_json("applied state", bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use casty_core::record::LogEntry;
    use casty_core::routing::{EntityKey, ShardKey};
    use openraft::Membership as RaftMembership;

    use super::*;

    /// One entry of each kind.
    pub(crate) fn entries() -> Vec<Entry> {
        let key = EntityKey {
            shard: ShardKey { entity_type: "counter".into(), region: "c".into(), shards: 1, shard: 0 },
            id: "c".into(),
        };
        let proposal = Proposal {
            epoch: 7,
            entries: vec![LogEntry {
                entity: key,
                version: 1,
                events: vec![b"1".to_vec()],
                wake_at_ms: None,
                completed: vec![],
            }],
            deploys: vec![],
        };
        let log_id = LogId::new(LeaderId::new(3, 11), 42);
        let membership = RaftMembership::new(vec![BTreeSet::from([11u64])], None);
        [EntryPayload::Blank, EntryPayload::Normal(proposal), EntryPayload::Membership(membership)]
            .into_iter()
            .map(|payload| Entry { log_id, payload })
            .collect()
    }

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let log_id = LogId::new(LeaderId::new(3, 11), 42);
        for entry in entries() {
            let decoded = decode_entry(&encode_entry(&entry)).unwrap();
            assert_eq!(decoded.log_id, entry.log_id);
            assert_eq!(format!("{:?}", decoded.payload), format!("{:?}", entry.payload));
        }
        let mut damaged = encode_entry(&Entry { log_id, payload: EntryPayload::Blank });
        assert!(decode_entry(&damaged[..5]).is_err());
        damaged[HEADER_BYTES - 1] = 9;
        assert!(decode_entry(&damaged).unwrap_err().to_string().contains("unknown kind 9"));
        damaged[0] = 2;
        assert!(decode_entry(&damaged).is_err());
    }

    fn decode_every_kind(bytes: &[u8]) {
        let _ = decode_entry(bytes);
        let _ = AppliedState::decode(bytes);
        let _ = decode_vote(bytes);
        let _ = decode_purged(bytes);
    }

    #[test]
    fn votes_and_purged_log_ids_round_trip() {
        let vote = Vote::new_committed(4, 11);
        assert_eq!(decode_vote(&encode_json(&vote)).unwrap(), vote);
        let purged = LogId::new(LeaderId::new(4, 11), 99);
        assert_eq!(decode_purged(&encode_json(&purged)).unwrap(), purged);
        assert!(decode_vote(b"[1,").is_err() && decode_purged(b"null").is_err());
    }

    #[test]
    fn applied_state_round_trips_and_empty_is_default() {
        assert_eq!(AppliedState::decode(&[]).unwrap(), AppliedState::default());
        let state = AppliedState {
            log_id: Some(LogId::new(LeaderId::new(1, 2), 3)),
            membership: Membership::default(),
        };
        assert_eq!(AppliedState::decode(&state.encode()).unwrap(), state);
        assert!(AppliedState::decode(b"{").is_err());
    }

    proptest::proptest! {
        /// Stored entries with bytes overwritten and the end cut off decode to an entry or
        /// an error, never a panic; so do damaged applied states.
        #[test]
        fn damaged_entries_never_panic(
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
            keep in proptest::num::usize::ANY,
        ) {
            let log_id = LogId::new(LeaderId::new(1, 2), 3);
            let applied = AppliedState { log_id: Some(log_id), ..AppliedState::default() };
            let mut encoded: Vec<Vec<u8>> = entries().iter().map(encode_entry).collect();
            encoded.push(applied.encode());
            encoded.push(encode_json(&Vote::new_committed(1, 2)));
            encoded.push(encode_json(&log_id));
            for mut bytes in encoded {
                for &(at, byte) in &damage {
                    let len = bytes.len();
                    bytes[at % len] = byte;
                }
                bytes.truncate(keep % (bytes.len() + 1));
                decode_every_kind(&bytes);
            }
        }

        /// Arbitrary bytes, and arbitrary bytes after a valid entry header, so that they
        /// reach each payload decoder.
        #[test]
        fn arbitrary_records_never_panic(
            kind in 0u8..4,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            decode_every_kind(&bytes);
            let blank = Entry { log_id: LogId::new(LeaderId::new(1, 2), 3), payload: EntryPayload::Blank };
            let mut entry = encode_entry(&blank);
            entry[HEADER_BYTES - 1] = kind;
            entry.extend_from_slice(&bytes);
            let _ = decode_entry(&entry);
        }
    }
}
