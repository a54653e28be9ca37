//! A peer's frame of Raft messages as the receiving node decodes it
//! (`casty_raft::wire::decode_frame`, all the Raft loop runs on a peer's bytes before
//! raft-rs sees them), and a segment of the Raft log file as a restarting node scans it
//! (`casty_journal::raft_log::scan`). The first input byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    if first % 2 == 0 {
        drop(casty_raft::wire::decode_frame(bytes));
    } else {
        let (_, good) = casty_journal::raft_log::scan(bytes);
        assert!(good <= bytes.len());
    }
});
