//! The values an entity's logic works with: what it is told, what it decides.

use serde::Serialize;

/// What the host tells the entity about the command it is deciding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The entity's id within its structure.
    pub entity_id: String,
    /// Who sent the command (a client id, or an owner id such as a lock handle's).
    pub caller: String,
    /// Unique per logical request; retries carry the same id. Parked requests are
    /// answered by it.
    pub request_id: String,
    /// The host's time, in milliseconds since the Unix epoch. Entities have no clock of
    /// their own, so replay is deterministic.
    pub now_ms: u64,
}

/// A domain error: a stable code to match on and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

/// How the caller of a command is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<R> {
    /// Answer now.
    Now(R),
    /// Answer later, by request id, from a later decision's [`Decision::answer`].
    Park,
    /// No caller waits (the decision of a wake-up).
    None,
}

/// What an entity decided about one command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Decision<E, R> {
    pub events: Vec<E>,
    pub reply: Reply<R>,
    /// Answers to parked requests: (request id, encoded reply or rejection).
    pub answers: Vec<(String, Result<Vec<u8>, Rejection>)>,
    /// When to call [`crate::Entity::wake`]; replaces any earlier request.
    pub wake_at_ms: Option<u64>,
}

impl<E, R> Decision<E, R> {
    /// Answer the caller now with `reply`.
    pub fn reply(reply: R) -> Self {
        Self::with_reply(Reply::Now(reply))
    }

    /// Park the caller: a later decision answers it by its request id.
    pub fn park() -> Self {
        Self::with_reply(Reply::Park)
    }

    /// Nothing to reply (for wake-ups).
    pub fn none() -> Self {
        Self::with_reply(Reply::None)
    }

    fn with_reply(reply: Reply<R>) -> Self {
        Self { events: Vec::new(), reply, answers: Vec::new(), wake_at_ms: None }
    }

    /// Also persist `event`; events are applied in the order they are added.
    pub fn persist(mut self, event: E) -> Self {
        self.events.push(event);
        self
    }

    /// Also answer the parked request `request_id` with `reply`.
    pub fn answer<T: Serialize>(mut self, request_id: impl Into<String>, reply: &T) -> Self {
        self.answers.push((request_id.into(), Ok(crate::adapter::encode(reply))));
        self
    }

    /// Also refuse the parked request `request_id`.
    pub fn refuse(mut self, request_id: impl Into<String>, rejection: Rejection) -> Self {
        self.answers.push((request_id.into(), Err(rejection)));
        self
    }

    /// Ask to be woken at `at_ms` (milliseconds since the Unix epoch).
    pub fn wake_at(mut self, at_ms: u64) -> Self {
        self.wake_at_ms = Some(at_ms);
        self
    }
}
