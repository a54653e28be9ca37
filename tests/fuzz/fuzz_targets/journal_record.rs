//! Every kind of stored record decoded from arbitrary bytes: the partition records of
//! `casty_core::record` (a membership change travels in the Raft log as a conf change's
//! context), and the journal's checksum (`casty_journal::unseal`) around all of them.
//! Records that decode must encode and decode to the same record.
//!
//! The first input byte picks the kind; the rest is the stored value. The payload kinds
//! are what a value whose checksum matched would hold (a bug that wrote garbage, or
//! damage the checksum missed); the last kind is the value as read from disk, checksum
//! and all, whose payload, if it unseals, is decoded as every kind.
#![no_main]

use casty_core::record::{
    EntitySnapshot, LogEntry, MemberChange, PartitionExport, PartitionState, Proposal, RecordError, TypeRecord,
};
use casty_core::routing::EntityKey;
use libfuzzer_sys::fuzz_target;

const KINDS: u8 = 9;

/// Decodes `bytes` as a core record; what decodes round-trips.
macro_rules! round_trip {
    ($ty:ty, $bytes:expr) => {{
        let decoded: Result<$ty, RecordError> = <$ty>::decode($bytes);
        if let Ok(record) = &decoded {
            assert_eq!(&<$ty>::decode(&record.encode()).expect("an encoded record decodes"), record);
        }
        decoded
    }};
}


/// A whole partition as a Raft snapshot carries it, and every record inside it.
fn partition_export(bytes: &[u8]) {
    let Ok(export) = round_trip!(PartitionExport, bytes) else { return };
    let _ = round_trip!(PartitionState, &export.state);
    for (key, snapshot) in &export.snapshots {
        let _ = round_trip!(EntityKey, key);
        let _ = round_trip!(EntitySnapshot, snapshot);
    }
    for (key, _) in &export.wakeups {
        let _ = round_trip!(EntityKey, key);
    }
    for record in &export.types {
        let _ = round_trip!(TypeRecord, record);
    }
}

fn decode(kind: u8, bytes: &[u8]) {
    match kind {
        0 => drop(round_trip!(LogEntry, bytes)),
        1 => drop(round_trip!(Proposal, bytes)),
        2 => drop(round_trip!(EntitySnapshot, bytes)),
        3 => drop(round_trip!(EntityKey, bytes)),
        4 => drop(round_trip!(PartitionState, bytes)),
        5 => partition_export(bytes),
        6 => drop(round_trip!(TypeRecord, bytes)),
        7 => drop(round_trip!(MemberChange, bytes)),
        _ => {
            if let Some(payload) = casty_journal::unseal(bytes) {
                for kind in 0..KINDS - 1 {
                    decode(kind, payload);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    decode(first % KINDS, bytes);
});
