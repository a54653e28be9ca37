//! Checkers for recorded operation histories of a distributed system: linearizability of
//! registers and counters (Wing & Gong's search with Lowe's memoisation, as porcupine
//! does it), mutual exclusion and fencing for locks and semaphores, and the guarantees
//! of sets and queues. Tests record what their clients saw with a [`history::Recorder`]
//! and hand the history to a checker afterwards.
//!
//! This crate is a test tool: no product crate may depend on it, only dev-dependencies.
//! Histories come from the system under test, so no history, however wrong or malformed,
//! makes a checker panic; it yields a verdict or a list of violations instead.
#![forbid(unsafe_code)]

pub mod collections;
pub mod fencing;
pub mod history;
pub mod linearizable;
pub mod models;
mod report;

pub use history::{Op, Outcome, Recorder};
pub use linearizable::{Model, Verdict, check};
pub use report::Violation;
