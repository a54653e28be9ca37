//! Runs an entity's logic natively, the way the host would, for unit and property tests.

use crate::adapter::{decode, encode};
use crate::{Context, Entity, Rejection, Reply};

/// Replies come back as JSON values; compare them with `serde_json::json!`.
pub use serde_json;

/// One entity driven as the host drives it: `handle`, then `apply` of every event, with
/// the events and the reply passed through their JSON encoding.
#[derive(Debug)]
pub struct Harness<E> {
    id: String,
    state: E,
    now_ms: u64,
    next_request: u64,
    /// Every event persisted so far, encoded, in order.
    pub journal: Vec<Vec<u8>>,
}

/// What a harness call produced when it did not simply reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The entity refused the command.
    Rejected(Rejection),
    /// The entity parked the request.
    Parked,
}

impl<E: Entity> Harness<E> {
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned(), state: E::default(), now_ms: 0, next_request: 0, journal: Vec::new() }
    }

    /// Sets the time the next commands see.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    pub fn state(&self) -> &E {
        &self.state
    }

    /// Sends a command from the caller `"test"`; returns the decoded reply.
    pub fn send(&mut self, command: E::Command) -> Result<serde_json::Value, Outcome> {
        self.send_as("test", command)
    }

    /// Sends a command from `caller`.
    pub fn send_as(&mut self, caller: &str, command: E::Command) -> Result<serde_json::Value, Outcome> {
        self.next_request += 1;
        let ctx = Context {
            entity_id: self.id.clone(),
            caller: caller.to_owned(),
            request_id: format!("test-{}", self.next_request),
            now_ms: self.now_ms,
        };
        let decision = self.state.handle(&ctx, command).map_err(Outcome::Rejected)?;
        for event in &decision.events {
            let encoded = encode(event);
            self.state.apply(decode(&encoded).expect("an event round-trips through JSON"));
            self.journal.push(encoded);
        }
        match decision.reply {
            Reply::Now(reply) => Ok(serde_json::to_value(reply).expect("replies serialize")),
            Reply::Park => Err(Outcome::Parked),
            Reply::None => Ok(serde_json::Value::Null),
        }
    }

    /// Rebuilds a fresh state from the journal, as the host does after a restart, and
    /// checks that its snapshot equals the live one's.
    pub fn assert_replay_matches(&self) {
        let mut replayed = E::default();
        for event in &self.journal {
            replayed.apply(decode(event).expect("an event decodes"));
        }
        assert_eq!(encode(&replayed), encode(&self.state), "replaying the journal rebuilt a different state");
    }
}
