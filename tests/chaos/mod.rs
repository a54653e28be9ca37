//! The pieces of the robustness suite (`tests/robustness.rs`): nodes and their faults,
//! network faults, the seeded schedule, and the recording workload.
#![allow(unreachable_pub)] // One test binary's modules; `pub` is for each other.

pub mod disk;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod schedule;
pub mod workload;
