//! A register: one value, read and replaced atomically. Values are canonical JSON, so
//! `compare_and_set` compares equal values as equal.
//!
//! Commands: `"get"` → `[V]`/`[]`; `{"set":{"value":V}}` → null;
//! `{"compare_and_set":{"expected":[V]|[],"new":V}}` → whether it was set (`[]` expects
//! the register to be empty); `{"get_and_set":{"value":V}}` → the previous `[V]`/`[]`.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Register {
    value: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Get,
    Set { value: Value },
    CompareAndSet { expected: Option<Value>, new: Value },
    GetAndSet { value: Value },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Set { value: Value },
}

impl Register {
    fn current(&self) -> Value {
        Value::Array(self.value.iter().cloned().collect())
    }
}

impl Entity for Register {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, _ctx: &Context, command: Command) -> Result<Decision<Event, Value>, Rejection> {
        Ok(match command {
            Command::Get => Decision::reply(self.current()),
            Command::Set { value } => Decision::reply(Value::Null).persist(Event::Set { value }),
            Command::GetAndSet { value } => Decision::reply(self.current()).persist(Event::Set { value }),
            Command::CompareAndSet { expected, new } => {
                if expected == self.value {
                    Decision::reply(Value::Bool(true)).persist(Event::Set { value: new })
                } else {
                    Decision::reply(Value::Bool(false))
                }
            }
        })
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Set { value } => self.value = Some(value),
        }
    }
}

casty_guest_sdk::export_entity!(Register);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, serde_json::json};
    use proptest::prelude::*;

    #[test]
    fn compare_and_set_and_get_and_set() {
        let mut r = Harness::<Register>::new("r");
        assert_eq!(r.send(Command::Get).unwrap(), json!([]));
        let cas = |expected: Option<Value>, new: Value| Command::CompareAndSet { expected, new };
        assert_eq!(r.send(cas(Some(json!(1)), json!(2))).unwrap(), json!(false));
        assert_eq!(r.send(cas(None, json!({"a": 1, "b": 2}))).unwrap(), json!(true));
        let same: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(r.send(cas(Some(same), json!(3))).unwrap(), json!(true));
        assert_eq!(r.send(Command::GetAndSet { value: json!(4) }).unwrap(), json!([3]));
        assert_eq!(r.send(Command::Set { value: json!(5) }).unwrap(), Value::Null);
        assert_eq!(r.send(Command::Get).unwrap(), json!([5]));
        r.assert_replay_matches();
    }

    fn command() -> impl Strategy<Value = Command> {
        let value = (0u8..4).prop_map(|v| json!(v));
        prop_oneof![
            Just(Command::Get),
            value.clone().prop_map(|value| Command::Set { value }),
            value.clone().prop_map(|value| Command::GetAndSet { value }),
            (proptest::option::of(value.clone()), value)
                .prop_map(|(expected, new)| Command::CompareAndSet { expected, new }),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_an_option(commands in proptest::collection::vec(command(), 0..64)) {
            let mut r = Harness::<Register>::new("r");
            let mut model: Option<Value> = None;
            for command in commands {
                let current = json!(model.iter().collect::<Vec<_>>());
                let expected = match &command {
                    Command::Get => current,
                    Command::Set { value } => { model = Some(value.clone()); Value::Null }
                    Command::GetAndSet { value } => { model = Some(value.clone()); current }
                    Command::CompareAndSet { expected, new } => {
                        let swap = *expected == model;
                        if swap { model = Some(new.clone()); }
                        json!(swap)
                    }
                };
                prop_assert_eq!(r.send(command).unwrap(), expected);
            }
            r.assert_replay_matches();
        }
    }
}
