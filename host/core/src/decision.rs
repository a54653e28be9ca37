//! What an entity decided about one command, as the host sees it once it has left the
//! component. Mirrors `decision` in `wit/entity.wit`.

use serde::{Deserialize, Serialize};

/// A domain error: the entity refused the command and persisted nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// A stable, machine-readable code the caller can match on (`insufficient-funds`).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

/// How the caller of a command is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer now with these bytes (the entity's encoded reply).
    Ok(Vec<u8>),
    /// Refuse; nothing is persisted.
    Rejected(Rejection),
    /// Answer later: a later decision names this request in `wake_parked`.
    Park,
}

/// An answer to a request that an earlier decision parked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedReply {
    pub request_id: String,
    pub reply: Result<Vec<u8>, Rejection>,
}

/// When the entity wants to be woken next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeUp {
    /// As asked before (reads and refusals say this).
    Keep,
    /// At this time, in milliseconds since the Unix epoch.
    At(u64),
    Cancel,
}

impl WakeUp {
    /// The wake-up time after this decision, given the one pending before it.
    pub fn after(self, pending: Option<u64>) -> Option<u64> {
        match self {
            WakeUp::Keep => pending,
            WakeUp::At(at) => Some(at),
            WakeUp::Cancel => None,
        }
    }
}

/// The whole decision: events to persist, the reply, replies to parked requests, and
/// when the entity wants to be woken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Vec<u8>>,
    pub reply: Reply,
    pub wake_parked: Vec<ParkedReply>,
    pub wake: WakeUp,
}
