//! The pure core of Casty: limits, addressing and routing, the wire protocol and the
//! journal record formats, and the request table that parks replies and fires timers.
//!
//! This crate does no I/O and reads no clock: no tokio, wasmtime, redb or quinn. Time
//! arrives as a value. Everything here is deterministic and tested with plain `#[test]`s.
#![forbid(unsafe_code)]

pub mod decision;
pub mod limits;
pub mod parked;
pub mod pipeline;
pub mod protocol;
pub mod record;
pub mod requests;
pub mod routing;

pub use decision::{Decision, ParkedReply, Rejection, Reply, WakeUp};
pub use routing::{Address, AddressError, EntityKey, ShardKey};
