//! Seed inputs for the fuzz targets in `tests/fuzz`: one valid encoding of each kind of
//! frame, message and record, so that libFuzzer starts past the formats' outer layers (it
//! seldom spells a JSON field name by chance). This crate sees every format the targets
//! decode, the private Raft message included.
//!
//! Each seed is checked to decode. With `CASTY_FUZZ_SEEDS` set to a directory, they are
//! written to `<dir>/<target>/`, which is how `tests/fuzz/corpus` is seeded:
//! `CASTY_FUZZ_SEEDS=$PWD/tests/fuzz/corpus cargo test -p casty-cluster fuzz_seeds`.
//! The first byte of each seed is the target's selector byte, as its doc says.

use std::collections::BTreeMap;

use casty_core::protocol::{
    Deployment, ErrorKind, Invoke, LENGTH_PREFIX_BYTES, Request, Response, WireError, decode_body,
    encode_frame,
};
use casty_core::record::{CompletedRequest, EntitySnapshot, PartitionExport, PartitionState, TypeRecord};
use casty_core::routing::Address;
use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use openraft::{LeaderId, Vote};

use crate::codec::{AppliedState, decode_entry, encode_entry, encode_json};
use crate::network::{decode_raft_message, tests::messages};
use crate::{LogId, Membership, NodeInfo};

fn invoke() -> Request {
    Request::Invoke(Invoke {
        address: Address {
            entity_type: "counter".into(),
            region: "hits".into(),
            shards: 8,
            id: "home".into(),
        },
        command: br#"{"Increment":{"by":1}}"#.to_vec(),
        caller: "client-1".into(),
        request_id: "client-1:1".into(),
        timeout_ms: 5000,
    })
}

fn frame<T: serde::Serialize>(id: u64, message: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, id, message);
    frame
}

fn with_selector(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut seed = vec![selector];
    seed.extend_from_slice(bytes);
    seed
}

/// `frame`: a chunk-size byte, then a stream of frames.
fn frame_seeds() -> Vec<Vec<u8>> {
    let mut stream = frame(1, &invoke());
    stream.extend(frame(2, &Request::Raft { group: 3, message: messages().swap_remove(1) }));
    stream.extend(frame(3, &Response::Reply(b"1".to_vec())));
    vec![with_selector(15, &stream), with_selector(2, &frame(4, &Request::Status))]
}

/// `wire_message`: an even byte, then a frame body.
fn wire_seeds() -> Vec<Vec<u8>> {
    let deploy = Request::Deploy(Deployment {
        entity_type: "bank-account".into(),
        wasm: b"\0asm\x01\0\0\0".to_vec(),
        memory_max_bytes: Some(1 << 20),
        call_deadline_ms: Some(100),
    });
    let error = Response::Error(WireError::new(ErrorKind::Rejected { code: "empty".into() }, "no funds"));
    let requests = [invoke(), deploy, Request::Leave { node_id: "n2".into() }];
    let bodies = requests.iter().map(|r| frame(1, r)).chain([frame(2, &error)]);
    bodies.map(|f| with_selector(0, &f[LENGTH_PREFIX_BYTES..])).collect()
}

fn membership() -> Membership {
    let log_id = LogId::new(LeaderId::new(3, 11), 42);
    let nodes = BTreeMap::from([(11u64, NodeInfo { name: "n1".into(), addr: "127.0.0.1:7000".into() })]);
    let config = openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes);
    Membership::new(Some(log_id), config)
}

/// `journal_record`: a kind byte (the target's numbering), then a stored value.
fn journal_seeds() -> Vec<Vec<u8>> {
    let Request::Invoke(invoke) = invoke() else { unreachable!() };
    let key = invoke.address.entity_key();
    let applied =
        AppliedState { log_id: Some(LogId::new(LeaderId::new(3, 11), 42)), membership: membership() };
    let state = PartitionState {
        completed: vec![CompletedRequest { request_id: "client-1:1".into(), reply: b"1".to_vec() }],
        raft: applied.encode(),
    };
    let snapshot = EntitySnapshot { index: 42, state: br#"{"value":1}"#.to_vec() };
    let record = TypeRecord {
        version: 2,
        deployment: Deployment {
            entity_type: "counter".into(),
            wasm: b"\0asm".to_vec(),
            memory_max_bytes: None,
            call_deadline_ms: None,
        },
    };
    let export = PartitionExport {
        checkpoint_index: 42,
        state: state.encode(),
        snapshots: vec![(key.encode(), snapshot.encode())],
        wakeups: vec![(key.encode(), 1_000)],
        types: vec![record.encode()],
    };
    let entries = crate::codec::tests::entries();
    let raft_entries = entries.iter().map(|e| with_selector(7, &encode_entry(e)));
    let Some(openraft::EntryPayload::Normal(proposal)) = entries.get(1).map(|e| e.payload.clone()) else {
        unreachable!("the second fixture entry is a proposal")
    };
    let mut seeds = vec![
        with_selector(1, &proposal.encode()),
        with_selector(2, &snapshot.encode()),
        with_selector(3, &key.encode()),
        with_selector(4, &state.encode()),
        with_selector(5, &export.encode()),
        with_selector(6, &record.encode()),
        with_selector(8, &applied.encode()),
        with_selector(9, &encode_json(&Vote::new_committed(3, 11))),
        with_selector(10, &encode_json(&LogId::new(LeaderId::new(3, 11), 40))),
        with_selector(11, &casty_journal::seal(&proposal.encode())),
    ];
    seeds.extend(proposal.entries.iter().map(|e| with_selector(0, &e.encode())));
    seeds.extend(raft_entries);
    seeds
}

/// `raft_message`: 0 and a message, or 5, 6, 7 and an answer to an append-entries, vote
/// or install-snapshot message.
fn raft_seeds() -> Vec<Vec<u8>> {
    let vote = Vote::new_committed(3, 11);
    let log_id = Some(LogId::new(LeaderId::new(3, 11), 42));
    let mut seeds: Vec<_> = messages().iter().map(|m| with_selector(0, m)).collect();
    for answer in [AppendEntriesResponse::Success, AppendEntriesResponse::PartialSuccess(log_id)] {
        seeds.push(with_selector(5, &encode_json(&answer)));
    }
    seeds.push(with_selector(5, &encode_json(&AppendEntriesResponse::HigherVote(vote))));
    seeds.push(with_selector(6, &encode_json(&VoteResponse::new(vote, log_id, true))));
    seeds.push(with_selector(7, &encode_json(&InstallSnapshotResponse { vote })));
    seeds
}

#[test]
fn fuzz_seeds() {
    let frames = frame_seeds();
    let wire = wire_seeds();
    let journal = journal_seeds();
    let raft = raft_seeds();
    // Every seed is valid, so the fuzzer starts from inputs that reach the innermost decoder.
    for seed in &wire {
        assert!(decode_body::<Request>(&seed[1..]).is_ok() || decode_body::<Response>(&seed[1..]).is_ok());
    }
    for seed in journal.iter().filter(|s| s[0] == 7) {
        decode_entry(&seed[1..]).unwrap();
    }
    assert!(
        AppliedState::decode(&journal.iter().find(|s| s[0] == 8).unwrap()[1..]).unwrap().log_id.is_some()
    );
    for seed in raft.iter().filter(|s| s[0] == 0) {
        decode_raft_message(&seed[1..]).unwrap();
    }
    crate::network::decode_append_answer(&raft[3][1..]).unwrap();
    crate::network::decode_vote_answer(&raft[6][1..]).unwrap();
    crate::network::decode_snapshot_answer(&raft[7][1..]).unwrap();
    let Some(dir) = std::env::var_os("CASTY_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    for (target, seeds) in
        [("frame", frames), ("wire_message", wire), ("journal_record", journal), ("raft_message", raft)]
    {
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
