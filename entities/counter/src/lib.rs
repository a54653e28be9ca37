//! The counter: an `i64` that is incremented, decremented, read and reset. Built with the
//! guest SDK exactly as a user's entity is, and shipped inside `casty-host`.
//!
//! Commands (JSON): `{"increment":{"by":5}}`, `{"decrement":{"by":2}}`, `"get"`,
//! `"reset"`. Replies: the new value, the value, or `null` for reset. A change that
//! would overflow is refused with the code `overflow` and persists nothing.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Increment { by: i64 },
    Decrement { by: i64 },
    Get,
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The value changed by `delta`.
    Added {
        delta: i64,
    },
    Reset,
}

/// The value after the command, or nothing (`null`) for a reset.
pub type Reply = Option<i64>;

impl Entity for Counter {
    type Command = Command;
    type Event = Event;
    type Reply = Reply;

    fn handle(&self, _ctx: &Context, command: Command) -> Result<Decision<Event, Reply>, Rejection> {
        let delta = match command {
            Command::Get => return Ok(Decision::reply(Some(self.value))),
            Command::Reset => return Ok(Decision::reply(None).persist(Event::Reset)),
            Command::Increment { by } => Some(by),
            Command::Decrement { by } => by.checked_neg(),
        };
        let value = delta.and_then(|d| self.value.checked_add(d)).ok_or_else(|| {
            Rejection::new("overflow", format!("the counter's value {} would overflow an i64", self.value))
        })?;
        let delta = value - self.value;
        Ok(Decision::reply(Some(value)).persist(Event::Added { delta }))
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Added { delta } => self.value += delta,
            Event::Reset => self.value = 0,
        }
    }
}

casty_guest_sdk::export_entity!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, Outcome, serde_json};
    use proptest::prelude::*;

    #[test]
    fn the_seed_scenario() {
        let mut views = Harness::<Counter>::new("page-views");
        assert_eq!(views.send(Command::Get).unwrap(), 0);
        assert_eq!(views.send(Command::Increment { by: 100 }).unwrap(), 100);
        assert_eq!(views.send(Command::Decrement { by: 10 }).unwrap(), 90);
        assert_eq!(views.send(Command::Get).unwrap(), 90);
        assert_eq!(views.send(Command::Reset).unwrap(), serde_json::Value::Null);
        assert_eq!(views.send(Command::Get).unwrap(), 0);
        views.assert_replay_matches();
    }

    #[test]
    fn overflow_is_refused_and_persists_nothing() {
        let mut c = Harness::<Counter>::new("c");
        c.send(Command::Increment { by: i64::MAX }).unwrap();
        let journal_len = c.journal.len();
        let err = c.send(Command::Increment { by: 1 }).unwrap_err();
        assert!(matches!(err, Outcome::Rejected(r) if r.code == "overflow"));
        assert!(c.send(Command::Decrement { by: i64::MIN }).is_err());
        assert_eq!(c.journal.len(), journal_len);
        assert_eq!(c.send(Command::Get).unwrap(), i64::MAX);
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any::<i32>().prop_map(|by| Command::Increment { by: by.into() }),
            any::<i32>().prop_map(|by| Command::Decrement { by: by.into() }),
            Just(Command::Get),
            Just(Command::Reset),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_an_i64(commands in proptest::collection::vec(command(), 0..64)) {
            let mut counter = Harness::<Counter>::new("c");
            let mut model: i64 = 0;
            for command in commands {
                let expected = match &command {
                    Command::Increment { by } => { model += by; serde_json::json!(model) }
                    Command::Decrement { by } => { model -= by; serde_json::json!(model) }
                    Command::Get => serde_json::json!(model),
                    Command::Reset => { model = 0; serde_json::Value::Null }
                };
                prop_assert_eq!(counter.send(command).unwrap(), expected);
            }
            counter.assert_replay_matches();
        }
    }
}
