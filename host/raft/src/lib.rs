//! Raft for every group of a node, on tikv's raft-rs, driven by one loop per node.
//!
//! - [`wire`]: Casty's own encoding of Raft messages and entries (protobuf never
//!   leaves the process).
//! - [`log`]: a group's log as raft-rs reads it, in memory and in the journal.
//! - [`groups`]: every group of the node, run in rounds, without I/O.
//! - [`driver`]: the tokio loop around it: the inbox, one journal write per round, one
//!   frame per peer per round.
#![forbid(unsafe_code)]

pub mod driver;
pub mod groups;
pub mod log;
pub mod wire;

#[cfg(test)]
mod fuzz_seeds;
#[cfg(test)]
mod simulation;

pub use driver::{LoopConfig, LoopError, LoopStats, RaftLoop};
pub use groups::{Event, GroupStatus, Groups, ProposeError, Round, TICK_MS};
pub use log::GroupLog;
pub use raft::eraftpb::{Entry, EntryType, Message};
pub use wire::ConfChange;

/// raft-rs's logger, forwarding its records to `tracing`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!())
}
