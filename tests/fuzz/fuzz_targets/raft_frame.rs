//! What the Raft loop decodes of a peer's bytes before raft-rs sees them: a stream's
//! head, a round's frame (`casty_raft::wire::decode_frame`), a snapshot chunk; and a
//! segment of the Raft log file as a restarting node scans it
//! (`casty_journal::raft_log::scan`). The first input byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    match first % 4 {
        0 => drop(casty_raft::wire::decode_frame(bytes)),
        1 => drop(casty_raft::wire::decode_body::<casty_raft::wire::StreamHead>("stream head", bytes)),
        2 => drop(casty_raft::wire::decode_body::<Vec<u8>>("snapshot chunk", bytes)),
        _ => {
            let (_, good) = casty_journal::raft_log::scan(bytes);
            assert!(good <= bytes.len());
        }
    }
});
