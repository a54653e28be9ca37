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
    /// Answers to parked requests, in order: (request id, reply or rejection).
    pub answers: Vec<(String, Result<serde_json::Value, Rejection>)>,
    /// The pending wake-up time, as the host keeps it from decision to decision.
    pub wake_at_ms: Option<u64>,
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
        Self {
            id: id.to_owned(),
            state: E::default(),
            now_ms: 0,
            next_request: 0,
            journal: Vec::new(),
            answers: Vec::new(),
            wake_at_ms: None,
        }
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

    /// The request id the last `send` used (`test-1`, `test-2`, ...).
    pub fn last_request_id(&self) -> String {
        format!("test-{}", self.next_request)
    }

    fn context(&self, caller: &str) -> Context {
        Context {
            entity_id: self.id.clone(),
            caller: caller.to_owned(),
            request_id: self.last_request_id(),
            now_ms: self.now_ms,
        }
    }

    /// Sends a command from `caller`.
    pub fn send_as(&mut self, caller: &str, command: E::Command) -> Result<serde_json::Value, Outcome> {
        self.next_request += 1;
        let ctx = self.context(caller);
        let decision = self.state.handle(&ctx, command).map_err(Outcome::Rejected)?;
        self.carry_out(decision)
    }

    /// Calls `wake`, as the host does when the asked-for time has come.
    pub fn wake(&mut self) {
        let ctx = self.context("casty-host");
        let decision = self.state.wake(&ctx);
        let _ = self.carry_out(decision);
    }

    /// Calls `withdraw`, as the host does when a parked request's caller gave up.
    pub fn withdraw(&mut self, request_id: &str) {
        let ctx = self.context("casty-host");
        let decision = self.state.withdraw(&ctx, request_id);
        let _ = self.carry_out(decision);
    }

    fn carry_out(
        &mut self,
        decision: crate::Decision<E::Event, E::Reply>,
    ) -> Result<serde_json::Value, Outcome> {
        for event in &decision.events {
            let encoded = encode(event);
            self.state.apply(decode(&encoded).expect("an event round-trips through JSON"));
            self.journal.push(encoded);
        }
        for (request_id, answer) in decision.answers {
            let answer = answer.map(|bytes| serde_json::from_slice(&bytes).expect("answers are JSON"));
            self.answers.push((request_id, answer));
        }
        self.wake_at_ms = match decision.wake {
            crate::Wake::Keep => self.wake_at_ms,
            crate::Wake::At(at) => Some(at),
            crate::Wake::Cancel => None,
        };
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
