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
    /// The snapshot after each call, with the length of the journal it covers: each a
    /// point where the host may have checkpointed the entity.
    snapshots: Vec<(usize, Vec<u8>)>,
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
            snapshots: vec![(0, encode(&E::default()))],
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
        self.snapshots.push((self.journal.len(), encode(&self.state)));
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

    /// Recovers the entity as the host does after a restart, from every point where it
    /// may have checkpointed: restore a fresh instance from the snapshot taken there,
    /// replay the journal's tail through `apply`; then checks that the recovered state
    /// equals the live one. Catches state the snapshot loses and an `apply` that depends
    /// on more than its state and event.
    pub fn assert_replay_matches(&self) {
        for (at, recovered) in self.recoveries() {
            assert_eq!(
                json(&encode(&recovered)),
                json(&encode(&self.state)),
                "restoring the snapshot after event {at} and replaying the rest built a different state"
            );
        }
    }

    /// [`Harness::assert_replay_matches`], and then that every recovered instance answers
    /// `command()` as the live one does: the same events, reply or rejection. Catches
    /// state the snapshot does not carry (a `#[serde(skip)]` field) but `handle` reads.
    pub fn assert_replay_answers(&self, command: impl Fn() -> E::Command) {
        self.assert_replay_matches();
        let ctx = self.context("test");
        let answer = |entity: &E| match entity.handle(&ctx, command()) {
            Ok(decision) => {
                let events: Vec<_> = decision.events.iter().map(|e| json(&encode(e))).collect();
                let reply = match decision.reply {
                    Reply::Now(reply) => Some(json(&encode(&reply))),
                    Reply::Park | Reply::None => None,
                };
                Ok((events, reply))
            }
            Err(rejection) => Err(rejection),
        };
        let live = answer(&self.state);
        for (at, recovered) in self.recoveries() {
            assert_eq!(
                answer(&recovered),
                live,
                "restored from the snapshot after event {at}, the entity answers differently"
            );
        }
    }

    /// The entity recovered from each snapshot point, with the journal length there.
    fn recoveries(&self) -> impl Iterator<Item = (usize, E)> + '_ {
        self.snapshots.iter().map(|(at, snapshot)| {
            let mut recovered: E = decode(snapshot).expect("a snapshot restores");
            for event in &self.journal[*at..] {
                recovered.apply(decode(event).expect("an event decodes"));
            }
            (*at, recovered)
        })
    }
}

/// A payload as a JSON value, so two states compare equal whatever their maps' order.
fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("payloads are JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;
    use serde::{Deserialize, Serialize};

    /// Counts commands, but keeps the count out of its snapshot.
    #[derive(Default, Serialize, Deserialize)]
    struct Forgetful {
        seen: u64,
        #[serde(skip)]
        unsaved: u64,
    }

    impl Entity for Forgetful {
        type Command = ();
        type Event = ();
        type Reply = u64;
        fn handle(&self, _: &Context, _: ()) -> Result<Decision<(), u64>, Rejection> {
            Ok(Decision::reply(self.unsaved).persist(()))
        }
        fn apply(&mut self, _: ()) {
            self.seen += 1;
            self.unsaved += 1;
        }
    }

    #[test]
    fn recovered_states_match_though_the_snapshot_drops_a_field() {
        let mut harness = Harness::<Forgetful>::new("f");
        for _ in 0..3 {
            harness.send(()).unwrap();
        }
        harness.assert_replay_matches();
    }

    #[test]
    #[should_panic(expected = "restored from the snapshot after event 1, the entity answers differently")]
    fn a_field_the_snapshot_drops_shows_in_the_next_reply() {
        let mut harness = Harness::<Forgetful>::new("f");
        for _ in 0..3 {
            harness.send(()).unwrap();
        }
        harness.assert_replay_answers(|| ());
    }
}
