//! What a partition's log and snapshot tables hold, encoded with postcard. The journal
//! adds a checksum around these bytes; this module only says what they mean.

use serde::{Deserialize, Serialize};

use crate::limits::COMPONENT_CHUNK_BYTES;
use crate::protocol::Deployment;
use crate::routing::EntityKey;

/// One log entry: the events one decision persisted for one entity, applied together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub entity: EntityKey,
    /// The version of the entity's type that decided it: a replica that does not have
    /// that version yet waits for it rather than applying the events with an older one.
    pub version: u32,
    #[serde(with = "byte_strings")]
    pub events: Vec<Vec<u8>>,
    /// The wake-up time the decision asked for, so it survives a restart.
    pub wake_at_ms: Option<u64>,
    /// The requests this decision completed with their replies (its own caller's, and
    /// parked ones it answered), so a retry is answered instead of applied again.
    pub completed: Vec<CompletedRequest>,
}

/// What a partition's leader proposes to its Raft group: the log entries of one batch of
/// decisions. The leader applied them as it decided them; the Raft entry's context names
/// the leadership epoch that decided them, so when the entry comes back committed the
/// leader recognises its own epoch and does not apply them twice, and every other
/// replica applies them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub entries: Vec<LogEntry>,
    /// Entity type versions deployed (only in the metadata group's log), each without
    /// its component (`wasm` is empty): that came ahead, in [`ComponentPart`]s.
    pub deploys: Vec<TypeRecord>,
    /// A piece of the component of a deploy that a later entry carries (only in the
    /// metadata group's log): a component may be far larger than one entry.
    pub part: Option<ComponentPart>,
}

/// One piece of a deployed component, in the metadata group's log ahead of its
/// [`TypeRecord`]. Every member stores the pieces as they commit and joins them when the
/// record does; a piece at offset 0 starts the component afresh (an earlier attempt to
/// deploy the same version may have left pieces).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentPart {
    pub entity_type: String,
    pub version: u32,
    /// Where the piece starts in the component.
    pub offset: u64,
    /// The whole component's length.
    pub len: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl ComponentPart {
    /// `record`'s component in pieces of at most [`COMPONENT_CHUNK_BYTES`], and the record
    /// without it, as they go into the log.
    pub fn split(mut record: TypeRecord) -> (Vec<ComponentPart>, TypeRecord) {
        let wasm = std::mem::take(&mut record.deployment.wasm);
        let len = wasm.len() as u64;
        let parts = (0..wasm.len())
            .step_by(COMPONENT_CHUNK_BYTES)
            .map(|start| ComponentPart {
                entity_type: record.deployment.entity_type.clone(),
                version: record.version,
                offset: start as u64,
                len,
                bytes: wasm[start..wasm.len().min(start + COMPONENT_CHUNK_BYTES)].to_vec(),
            })
            .collect();
        (parts, record)
    }

    /// The component joined from the stored pieces of one version, or what is missing:
    /// from offset 0, each next piece starts where the one before ended, up to the
    /// length the first one gives. Pieces left over from an earlier attempt are ignored.
    pub fn join(parts: &[ComponentPart]) -> Result<Vec<u8>, String> {
        let starting_at = |offset: u64| parts.iter().find(|p| p.offset == offset);
        let len = starting_at(0).ok_or("its first piece is missing")?.len;
        let mut wasm = Vec::with_capacity(usize::try_from(len).map_err(|e| e.to_string())?);
        while (wasm.len() as u64) < len {
            let at = wasm.len() as u64;
            match starting_at(at).filter(|p| p.len == len && !p.bytes.is_empty()) {
                Some(part) => wasm.extend_from_slice(&part.bytes),
                None => return Err(format!("the piece at byte {at} of {len} is missing")),
            }
        }
        if wasm.len() as u64 != len {
            return Err(format!("its pieces add up to {} bytes, not {len}", wasm.len()));
        }
        Ok(wasm)
    }
}

/// One deployed version of an entity type, as the metadata group stores it: the
/// deployment as it was asked for, and the version the metadata leader gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeRecord {
    pub version: u32,
    pub deployment: Deployment,
}

/// A whole partition as one replica hands it to another (a Raft snapshot): its checkpoint
/// and every stored entity snapshot and wake-up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionExport {
    pub checkpoint_index: u64,
    /// The encoded [`PartitionState`] as of the checkpoint.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// (encoded entity key, encoded [`EntitySnapshot`]).
    pub snapshots: Vec<(Vec<u8>, Vec<u8>)>,
    /// (encoded entity key, wake-up time in ms).
    pub wakeups: Vec<(Vec<u8>, u64)>,
    /// Encoded [`TypeRecord`]s: every deployed type version (the metadata group's state).
    #[serde(with = "byte_strings")]
    pub types: Vec<Vec<u8>>,
    /// Encoded [`ComponentPart`]s stored and not yet joined: a deploy under way.
    #[serde(with = "byte_strings")]
    pub parts: Vec<Vec<u8>>,
}

/// A request that persisted events, and the reply its caller got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedRequest {
    pub request_id: String,
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
}

/// What a partition keeps besides its entities, stored with each checkpoint: the recent
/// completed requests, oldest first (the log that named them is compacted in time), the
/// log entry the checkpoint was taken after, and (in the metadata group only) the
/// cluster's members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub completed: Vec<CompletedRequest>,
    pub applied_index: u64,
    pub applied_term: u64,
    pub members: Vec<MemberRecord>,
}

/// A member of the cluster: its Raft id, its name (`--node-id`) and where it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    pub addr: String,
}

/// What a change of the metadata group's configuration does to the cluster's members.
/// It travels as the change's context, so every replica applies it with the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A node joins, as a learner of the metadata group.
    Admit(MemberRecord),
    /// A learner becomes a voter; the members stay.
    Promote(u64),
    /// A node leaves the cluster.
    Remove(u64),
}

/// One entity's state as of a log index: everything up to and including `index` applied.
/// (Its wake-up time is stored beside it, so start-up can read every one without reading
/// every state.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySnapshot {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// Why a stored record could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored {what} does not decode: {reason}")]
pub struct RecordError {
    pub what: &'static str,
    pub reason: String,
}

/// A list of byte strings; `serde_bytes` covers one. postcard writes a byte string as its
/// length and its bytes, as it writes a sequence of `u8`, but in one copy rather than one
/// call per byte.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(|bytes| Bytes::new(bytes)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(deserializer)?.into_iter().map(ByteBuf::into_vec).collect())
    }
}

macro_rules! record_codec {
    ($ty:ty, $what:literal) => {
        impl $ty {
            pub fn encode(&self) -> Vec<u8> {
                postcard::to_allocvec(self).expect("records serialize")
            }

            pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
                postcard::from_bytes(bytes).map_err(|e| RecordError { what: $what, reason: e.to_string() })
            }
        }
    };
}

record_codec!(LogEntry, "log entry");
record_codec!(EntitySnapshot, "entity snapshot");
record_codec!(EntityKey, "entity key");
record_codec!(PartitionState, "partition state");
record_codec!(Proposal, "proposal");
record_codec!(PartitionExport, "partition export");
record_codec!(TypeRecord, "type record");
record_codec!(MemberChange, "member change");
record_codec!(ComponentPart, "component part");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ShardKey;

    #[test]
    fn entries_round_trip_and_garbage_is_an_error() {
        assert_eq!(LogEntry::decode(&entry().encode()).unwrap(), entry());
        assert!(LogEntry::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn byte_fields_encode_as_the_sequences_of_bytes_earlier_versions_wrote() {
        // Logs and snapshots written when every byte field was a sequence of `u8` read
        // back, and new ones read the same on an older node.
        #[derive(Serialize)]
        struct Sequences {
            entity: EntityKey,
            version: u32,
            events: Vec<Vec<u8>>,
            wake_at_ms: Option<u64>,
            completed: Vec<(String, Vec<u8>)>,
        }
        // Long enough that its length takes two bytes.
        let entry = LogEntry { events: vec![vec![7; 300], Vec::new()], ..entry() };
        let earlier = postcard::to_allocvec(&Sequences {
            entity: entry.entity.clone(),
            version: entry.version,
            events: entry.events.clone(),
            wake_at_ms: entry.wake_at_ms,
            completed: entry.completed.iter().map(|c| (c.request_id.clone(), c.reply.clone())).collect(),
        })
        .unwrap();
        assert_eq!(entry.encode(), earlier);
        assert_eq!(LogEntry::decode(&earlier).unwrap(), entry);
    }

    fn entry() -> LogEntry {
        LogEntry {
            entity: EntityKey {
                shard: ShardKey { entity_type: "counter".into(), region: "c".into(), shards: 1, shard: 0 },
                id: "c".into(),
            },
            version: 1,
            events: vec![b"{}".to_vec()],
            wake_at_ms: Some(5),
            completed: vec![CompletedRequest { request_id: "c:1".into(), reply: b"1".to_vec() }],
        }
    }

    /// One encoded record of each kind.
    fn records() -> Vec<Vec<u8>> {
        let proposal = Proposal { entries: vec![entry(), entry()], deploys: vec![type_record()], part: None };
        let (mut parts, _) = ComponentPart::split(type_record());
        let part = Proposal { entries: Vec::new(), deploys: Vec::new(), part: parts.pop() };
        let member = MemberRecord { id: 7, name: "a".into(), addr: "127.0.0.1:1".into() };
        let state = PartitionState {
            completed: entry().completed,
            applied_index: 9,
            applied_term: 2,
            members: vec![member.clone()],
        };
        let snapshot = EntitySnapshot { index: 9, state: b"{\"n\":1}".to_vec() };
        let export = PartitionExport {
            checkpoint_index: 9,
            state: state.encode(),
            snapshots: vec![(entry().entity.encode(), snapshot.encode())],
            wakeups: vec![(entry().entity.encode(), 5)],
            types: vec![type_record().encode()],
            parts: vec![part.part.as_ref().unwrap().encode()],
        };
        vec![
            entry().encode(),
            proposal.encode(),
            part.encode(),
            state.encode(),
            snapshot.encode(),
            entry().entity.encode(),
            export.encode(),
            type_record().encode(),
            MemberChange::Admit(member).encode(),
        ]
    }

    #[test]
    fn a_component_is_split_into_pieces_that_fit_an_entry_and_joined_back() {
        let wasm: Vec<u8> = (0..COMPONENT_CHUNK_BYTES * 2 + 7).map(|i| (i % 251) as u8).collect();
        let record = TypeRecord {
            deployment: Deployment { wasm: wasm.clone(), ..type_record().deployment },
            ..type_record()
        };
        let (parts, logged) = ComponentPart::split(record);
        assert!(logged.deployment.wasm.is_empty(), "the record in the log leaves the component out");
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.bytes.len() <= COMPONENT_CHUNK_BYTES && p.len == wasm.len() as u64));
        assert_eq!(ComponentPart::join(&parts).unwrap(), wasm);

        // Stored pieces come back in key order, with leftovers of an earlier attempt.
        let mut stored = parts.clone();
        stored.reverse();
        stored.push(ComponentPart { offset: 99, len: 5, ..parts[0].clone() });
        assert_eq!(ComponentPart::join(&stored).unwrap(), wasm);
        let missing = [parts[0].clone(), parts[2].clone()];
        let err = ComponentPart::join(&missing).unwrap_err();
        assert_eq!(err, format!("the piece at byte {COMPONENT_CHUNK_BYTES} of {} is missing", wasm.len()));
        assert_eq!(ComponentPart::join(&parts[1..]).unwrap_err(), "its first piece is missing");
        let stale = [parts[0].clone(), ComponentPart { len: 1, ..parts[1].clone() }, parts[2].clone()];
        assert!(ComponentPart::join(&stale).is_err(), "a piece of another length is not this component's");
    }

    fn type_record() -> TypeRecord {
        TypeRecord {
            version: 2,
            deployment: Deployment {
                entity_type: "counter".into(),
                wasm: b"\0asm".to_vec(),
                memory_max_bytes: Some(1 << 20),
                call_deadline_ms: None,
            },
        }
    }

    fn decode_every_kind(bytes: &[u8]) {
        let _ = LogEntry::decode(bytes);
        let _ = Proposal::decode(bytes);
        let _ = PartitionState::decode(bytes);
        let _ = EntitySnapshot::decode(bytes);
        let _ = EntityKey::decode(bytes);
        let _ = PartitionExport::decode(bytes);
        let _ = TypeRecord::decode(bytes);
        let _ = MemberChange::decode(bytes);
        let _ = ComponentPart::decode(bytes);
    }

    #[test]
    fn every_kind_round_trips() {
        let [entry, proposal, part, state, snapshot, key, export, ty, change] = records().try_into().unwrap();
        assert_eq!(LogEntry::decode(&entry).unwrap().encode(), entry);
        assert_eq!(Proposal::decode(&proposal).unwrap().encode(), proposal);
        assert_eq!(Proposal::decode(&part).unwrap().encode(), part);
        assert_eq!(PartitionState::decode(&state).unwrap().encode(), state);
        assert_eq!(EntitySnapshot::decode(&snapshot).unwrap().encode(), snapshot);
        assert_eq!(EntityKey::decode(&key).unwrap().encode(), key);
        assert_eq!(PartitionExport::decode(&export).unwrap().encode(), export);
        assert_eq!(TypeRecord::decode(&ty).unwrap().encode(), ty);
        assert_eq!(MemberChange::decode(&change).unwrap().encode(), change);
    }

    proptest::proptest! {
        /// Stored records with bytes overwritten and the end cut off (as a torn or
        /// corrupted page would leave them, had the checksum not caught it) decode to a
        /// record or an error, never a panic.
        #[test]
        fn damaged_records_never_panic(
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
            keep in proptest::num::usize::ANY,
        ) {
            for mut bytes in records() {
                for &(at, byte) in &damage {
                    let len = bytes.len();
                    bytes[at % len] = byte;
                }
                bytes.truncate(keep % (bytes.len() + 1));
                decode_every_kind(&bytes);
            }
        }

        /// Arbitrary bytes, as a record whose checksum matched by chance would be.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            decode_every_kind(&bytes);
        }
    }
}
