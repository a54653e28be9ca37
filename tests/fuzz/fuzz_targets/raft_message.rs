//! Raft messages as a node receives them from a peer (`casty_cluster::decode_raft_message`,
//! the whole of the decoding `deliver` does before openraft sees the message), and the
//! peer's answers as the sending node decodes them.
//!
//! The first input byte picks what the rest is: a message (0 to 4), or an answer to an
//! append-entries (5), vote (6) or install-snapshot (7) message.
#![no_main]

use casty_cluster::{decode_append_answer, decode_raft_message, decode_snapshot_answer, decode_vote_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    match first % 8 {
        5 => drop(decode_append_answer(bytes)),
        6 => drop(decode_vote_answer(bytes)),
        7 => drop(decode_snapshot_answer(bytes)),
        _ => drop(decode_raft_message(bytes)),
    }
});
