//! Seed inputs for the fuzz targets in `tests/fuzz`: one valid encoding of each kind of
//! frame, message and record, so that libFuzzer starts past the formats' outer layers.
//! This crate sees every format the targets decode, the Raft loop's own included.
//!
//! Each seed is checked to decode. With `CASTY_FUZZ_SEEDS` set to a directory, they are
//! written to `<dir>/<target>/`, which is how `tests/fuzz/corpus` is seeded:
//! `CASTY_FUZZ_SEEDS=$PWD/tests/fuzz/corpus cargo test -p casty-raft --lib fuzz_seeds`.
//! The first byte of each seed is the target's selector byte, as its doc says.

use casty_core::protocol::{
    Deployment, ErrorKind, Invoke, LENGTH_PREFIX_BYTES, Request, Response, WireError, decode_body,
    encode_frame,
};
use casty_core::record::{
    CompletedRequest, EntitySnapshot, LogEntry, MemberChange, MemberRecord, PartitionExport, PartitionState,
    Proposal, TypeRecord,
};
use casty_core::routing::Address;
use casty_journal::raft_log::{LogFiles, LogWriter, Record, scan};
use raft::eraftpb::{Entry, Message, MessageType};

use crate::wire::{self, Frame, StreamHead, WireMessage};

fn invoke() -> Invoke {
    Invoke {
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
    }
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
    let mut stream = frame(1, &Request::Invoke(invoke()));
    stream.extend(frame(2, &Request::Leave { node_id: "n2".into() }));
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
    let requests = [Request::Invoke(invoke()), deploy, Request::Leave { node_id: "n2".into() }];
    let bodies = requests.iter().map(|r| frame(1, r)).chain([frame(2, &error)]);
    bodies.map(|f| with_selector(0, &f[LENGTH_PREFIX_BYTES..])).collect()
}

fn proposal() -> Proposal {
    let entry = LogEntry {
        entity: invoke().address.entity_key(),
        version: 1,
        events: vec![b"1".to_vec()],
        wake_at_ms: Some(7),
        completed: vec![CompletedRequest { request_id: "client-1:1".into(), reply: b"1".to_vec() }],
    };
    Proposal { entries: vec![entry], deploys: Vec::new(), part: None }
}

/// `journal_record`: a kind byte (the target's numbering), then a stored value.
fn journal_seeds() -> Vec<Vec<u8>> {
    let key = invoke().address.entity_key();
    let member = MemberRecord { id: 11, name: "n1".into(), addr: "127.0.0.1:7000".into() };
    let state = PartitionState {
        completed: proposal().entries[0].completed.clone(),
        applied_index: 42,
        applied_term: 3,
        members: vec![member.clone()],
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
        parts: Vec::new(),
    };
    vec![
        with_selector(0, &proposal().entries[0].encode()),
        with_selector(1, &proposal().encode()),
        with_selector(2, &snapshot.encode()),
        with_selector(3, &key.encode()),
        with_selector(4, &state.encode()),
        with_selector(5, &export.encode()),
        with_selector(6, &record.encode()),
        with_selector(7, &MemberChange::Admit(member).encode()),
        with_selector(8, &casty_journal::seal(&proposal().encode())),
    ]
}

fn body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(&mut out, value);
    out.split_off(LENGTH_PREFIX_BYTES)
}

/// `raft_frame`: 0 and a round's frame, 1 and a stream head, 2 and a snapshot chunk,
/// 3 and a segment of the Raft log.
fn raft_frame_seeds() -> Vec<Vec<u8>> {
    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    (append.to, append.from, append.term, append.index, append.commit) = (2, 1, 3, 9, 8);
    let data = Entry { index: 10, term: 3, data: proposal().encode().into(), ..Entry::default() };
    append.set_entries(vec![data.clone()].into());
    let frame = Frame { messages: vec![(3, WireMessage::from_raft(&append))] };
    let head = StreamHead::Rounds { from: 1, addr: "127.0.0.1:7000".into() };
    // A segment as the log's writer leaves it.
    let dir = tempfile::tempdir().unwrap();
    let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
    let entry = wire::encode(&wire::WireEntry::from_raft(&data));
    next.push(&Record::Entry { group: 3, index: 10, bytes: entry });
    next.push(&Record::State { group: 3, key: 1, bytes: vec![1, 2, 3] });
    let (done, written) = std::sync::mpsc::channel();
    let writer = LogWriter::start(&files).unwrap();
    writer.submit(next.take(), Box::new(move |result| done.send(result).unwrap())).unwrap();
    written.recv().unwrap().unwrap();
    let segment = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
    let segment = std::fs::read(segment).unwrap();
    vec![
        with_selector(0, &body(&frame)),
        with_selector(1, &body(&head)),
        with_selector(2, &body(&b"chunk".to_vec())),
        with_selector(3, &segment),
    ]
}

#[test]
fn fuzz_seeds() {
    let frames = frame_seeds();
    let wire_seeds = wire_seeds();
    let journal = journal_seeds();
    let raft = raft_frame_seeds();
    // Every seed is valid, so the fuzzer starts from inputs that reach the innermost decoder.
    for seed in &wire_seeds {
        assert!(decode_body::<Request>(&seed[1..]).is_ok() || decode_body::<Response>(&seed[1..]).is_ok());
    }
    assert!(PartitionExport::decode(&journal[5][1..]).is_ok());
    assert!(MemberChange::decode(&journal[7][1..]).is_ok());
    assert_eq!(wire::decode_frame(&raft[0][1..]).unwrap().len(), 1);
    assert!(wire::decode_body::<StreamHead>("stream head", &raft[1][1..]).is_ok());
    assert_eq!(scan(&raft[3][1..]).0.len(), 2);
    let Some(dir) = std::env::var_os("CASTY_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    for (target, seeds) in
        [("frame", frames), ("wire_message", wire_seeds), ("journal_record", journal), ("raft_frame", raft)]
    {
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
