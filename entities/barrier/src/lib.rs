//! A reusable barrier: parties arrive, and when `expected` have arrived in a round all
//! are released together and the next round begins.
//!
//! The party id is the caller unless the command names one; a party arriving again in
//! the same round (a retry) keeps one place. An arrival whose caller gave up is withdrawn
//! and does not count. Within a round every arrival must name the same `expected`.
//!
//! Commands: `{"arrive":{"expected":N,"party":P|null}}` → the round number, once the
//! round is complete (parks until then); `"arrived"` → how many parties wait now.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Barrier {
    round: u64,
    expected: Option<u32>,
    /// (party, request id) of this round's arrivals.
    arrived: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Arrive {
        expected: u32,
        party: Option<String>,
    },
    /// How many parties have arrived in this round so far.
    Arrived,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Arrived { party: String, request_id: String, expected: u32 },
    Released,
    Withdrawn { request_id: String },
}

impl Entity for Barrier {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, Value>, Rejection> {
        let (expected, party) = match command {
            Command::Arrive { expected, party } => (expected, party),
            Command::Arrived => return Ok(Decision::reply(Value::from(self.arrived.len() as u64))),
        };
        if expected == 0 {
            return Err(Rejection::new("invalid-expected", "a barrier needs at least one party"));
        }
        if let Some(current) = self.expected.filter(|_| !self.arrived.is_empty())
            && current != expected
        {
            return Err(Rejection::new(
                "expected-mismatch",
                format!("this round of the barrier expects {current} parties; this arrival says {expected}"),
            ));
        }
        let party = party.unwrap_or_else(|| ctx.caller.clone());
        let arrival = Event::Arrived { party: party.clone(), request_id: ctx.request_id.clone(), expected };
        let others: Vec<_> = self.arrived.iter().filter(|(p, _)| *p != party).collect();
        if others.len() + 1 < expected as usize {
            return Ok(Decision::park().persist(arrival));
        }
        let round = Value::from(self.round);
        let released =
            others.iter().fold(Decision::reply(round.clone()).persist(arrival), |d, (_, request_id)| {
                d.answer(request_id.clone(), &round)
            });
        Ok(released.persist(Event::Released))
    }

    fn withdraw(&self, _ctx: &Context, request_id: &str) -> Decision<Event, Value> {
        if self.arrived.iter().any(|(_, r)| r == request_id) {
            Decision::none().persist(Event::Withdrawn { request_id: request_id.to_owned() })
        } else {
            Decision::none()
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Arrived { party, request_id, expected } => {
                self.arrived.retain(|(p, _)| *p != party);
                self.arrived.push((party, request_id));
                self.expected = Some(expected);
            }
            Event::Released => {
                self.arrived.clear();
                self.expected = None;
                self.round += 1;
            }
            Event::Withdrawn { request_id } => self.arrived.retain(|(_, r)| *r != request_id),
        }
    }
}

casty_guest_sdk::export_entity!(Barrier);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, Outcome, serde_json::json};
    use proptest::prelude::*;

    fn arrive(expected: u32) -> Command {
        Command::Arrive { expected, party: None }
    }

    #[test]
    fn one_party_passes_at_once_and_rounds_repeat() {
        let mut b = Harness::<Barrier>::new("phase-1");
        assert_eq!(b.send(arrive(1)).unwrap(), json!(0));
        assert_eq!(b.send(arrive(1)).unwrap(), json!(1));
    }

    #[test]
    fn parties_are_released_together_and_a_withdrawn_one_does_not_count() {
        let mut b = Harness::<Barrier>::new("b");
        assert_eq!(b.send_as("n1", arrive(3)), Err(Outcome::Parked));
        let first = b.last_request_id();
        assert_eq!(b.send_as("gone", arrive(3)), Err(Outcome::Parked));
        let gone = b.last_request_id();
        b.withdraw(&gone);
        assert_eq!(b.send_as("n2", arrive(3)), Err(Outcome::Parked));
        let second = b.last_request_id();
        assert_eq!(b.send(Command::Arrived).unwrap(), json!(2));
        let err = b.send_as("n3", arrive(4)).unwrap_err();
        assert!(matches!(err, Outcome::Rejected(r) if r.code == "expected-mismatch"));
        assert_eq!(b.send_as("n3", arrive(3)).unwrap(), json!(0));
        assert_eq!(b.answers, vec![(first, Ok(json!(0))), (second, Ok(json!(0)))]);
        // The next round may expect another number.
        assert_eq!(b.send_as("n1", arrive(1)).unwrap(), json!(1));
        b.assert_replay_matches();
    }

    #[test]
    fn a_party_arriving_twice_keeps_one_place() {
        let mut b = Harness::<Barrier>::new("b");
        let again = |party: &str| Command::Arrive { expected: 2, party: Some(party.into()) };
        assert_eq!(b.send(again("p")), Err(Outcome::Parked));
        assert_eq!(b.send(again("p")), Err(Outcome::Parked));
        assert_eq!(b.send(again("q")).unwrap(), json!(0));
    }

    proptest! {
        /// Against a model: a set of parties per round, released when it reaches `expected`.
        #[test]
        fn behaves_like_its_model(arrivals in proptest::collection::vec((0u8..4, 1u32..4), 0..64)) {
            let mut b = Harness::<Barrier>::new("b");
            let (mut round, mut expected, mut waiting) = (0u64, None::<u32>, Vec::<(String, String)>::new());
            for (party, want) in arrivals {
                let party = format!("p{party}");
                let reply = b.send(Command::Arrive { expected: want, party: Some(party.clone()) });
                if expected.is_some_and(|e| e != want) && !waiting.is_empty() {
                    prop_assert!(matches!(reply, Err(Outcome::Rejected(r)) if r.code == "expected-mismatch"));
                    continue;
                }
                waiting.retain(|(p, _)| *p != party);
                if waiting.len() + 1 == want as usize {
                    prop_assert_eq!(reply.unwrap(), json!(round));
                    let answered: Vec<_> = b.answers.drain(..).map(|(r, _)| r).collect();
                    let expected_answers: Vec<_> = waiting.drain(..).map(|(_, r)| r).collect();
                    prop_assert_eq!(answered, expected_answers);
                    round += 1;
                    expected = None;
                } else {
                    prop_assert_eq!(reply, Err(Outcome::Parked));
                    waiting.push((party, b.last_request_id()));
                    expected = Some(want);
                }
            }
            b.assert_replay_matches();
        }
    }
}
