//! One shard of a map (or of a set): the keys that hash to this shard and their values.
//!
//! The client routes each key to its shard entity (`hash(key) % shards`), so a map of a
//! million keys is a hundred entities of ten thousand, and `size`, `scan` and `clear`
//! are per-shard operations the client fans out. Keys and values are JSON in their
//! canonical form (object keys sorted), so equal values are equal strings; entries are
//! ordered by that string. Optional replies are arrays: `[value]` or `[]`, so a stored
//! `null` stays distinguishable from absence. A set is this map with `null` values.
//!
//! Commands: `{"put":{"key":K,"value":V}}` → previous `[V]`/`[]`; `{"get":{"key":K}}` →
//! `[V]`/`[]`; `{"contains":{"key":K}}` → bool; `{"delete":{"key":K}}` → existed;
//! `"size"`; `{"scan":{"after":K|null,"limit":N}}` → `{"entries":[[K,V]..],"next":K|null}`;
//! `"clear"` → how many keys it removed.

use std::collections::BTreeMap;
use std::ops::Bound;

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entries one scan page returns at most, whatever the caller asks for.
pub const SCAN_PAGE_MAX: u32 = 1000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MapShard {
    /// Canonical JSON of the key → the value.
    entries: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Put { key: Value, value: Value },
    Get { key: Value },
    Contains { key: Value },
    Delete { key: Value },
    Size,
    Scan { after: Option<Value>, limit: u32 },
    Clear,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Put { key: String, value: Value },
    Deleted { key: String },
    Cleared,
}

/// One page of a scan, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub entries: Vec<(Value, Value)>,
    pub next: Option<Value>,
}

/// The canonical form of a JSON value: `serde_json` keeps object keys sorted.
fn canonical(value: &Value) -> String {
    value.to_string()
}

fn decode_key(key: &str) -> Value {
    serde_json::from_str(key).expect("stored keys are canonical JSON")
}

impl Entity for MapShard {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, _ctx: &Context, command: Command) -> Result<Decision<Event, Value>, Rejection> {
        let optional = |v: Option<&Value>| Value::Array(v.into_iter().cloned().collect());
        Ok(match command {
            Command::Put { key, value } => {
                let key = canonical(&key);
                let previous = optional(self.entries.get(&key));
                Decision::reply(previous).persist(Event::Put { key, value })
            }
            Command::Get { key } => Decision::reply(optional(self.entries.get(&canonical(&key)))),
            Command::Contains { key } => {
                Decision::reply(Value::Bool(self.entries.contains_key(&canonical(&key))))
            }
            Command::Delete { key } => {
                let key = canonical(&key);
                if self.entries.contains_key(&key) {
                    Decision::reply(Value::Bool(true)).persist(Event::Deleted { key })
                } else {
                    Decision::reply(Value::Bool(false))
                }
            }
            Command::Size => Decision::reply(Value::from(self.entries.len() as u64)),
            Command::Scan { after, limit } => {
                let page = self.scan(after.as_ref(), limit);
                Decision::reply(serde_json::to_value(page).expect("pages serialize"))
            }
            Command::Clear => {
                let removed = Value::from(self.entries.len() as u64);
                if self.entries.is_empty() {
                    Decision::reply(removed)
                } else {
                    Decision::reply(removed).persist(Event::Cleared)
                }
            }
        })
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Put { key, value } => {
                self.entries.insert(key, value);
            }
            Event::Deleted { key } => {
                self.entries.remove(&key);
            }
            Event::Cleared => self.entries.clear(),
        }
    }
}

impl MapShard {
    fn scan(&self, after: Option<&Value>, limit: u32) -> Page {
        let limit = limit.clamp(1, SCAN_PAGE_MAX) as usize;
        let start = match after {
            Some(key) => Bound::Excluded(canonical(key)),
            None => Bound::Unbounded,
        };
        let mut range = self.entries.range((start, Bound::Unbounded));
        let entries: Vec<_> = range.by_ref().take(limit).map(|(k, v)| (decode_key(k), v.clone())).collect();
        let next = if range.next().is_some() { entries.last().map(|(k, _)| k.clone()) } else { None };
        Page { entries, next }
    }
}

casty_guest_sdk::export_entity!(MapShard);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, serde_json::json};
    use proptest::prelude::*;

    fn put(key: Value, value: Value) -> Command {
        Command::Put { key, value }
    }

    #[test]
    fn put_returns_the_previous_value_and_delete_whether_it_existed() {
        let mut map = Harness::<MapShard>::new("0");
        let alice = json!({"name": "Alice", "email": "alice@example.com"});
        assert_eq!(map.send(put(json!("alice"), alice.clone())).unwrap(), json!([]));
        assert_eq!(map.send(Command::Get { key: json!("alice") }).unwrap(), json!([alice]));
        assert_eq!(map.send(Command::Contains { key: json!("alice") }).unwrap(), json!(true));
        assert_eq!(map.send(put(json!("alice"), json!(1))).unwrap(), json!([alice]));
        assert_eq!(map.send(Command::Delete { key: json!("alice") }).unwrap(), json!(true));
        assert_eq!(map.send(Command::Delete { key: json!("alice") }).unwrap(), json!(false));
        assert_eq!(map.send(Command::Contains { key: json!("alice") }).unwrap(), json!(false));
        assert_eq!(map.send(put(json!("alice"), json!(2))).unwrap(), json!([]));
        // A stored null is not absence.
        assert_eq!(map.send(put(json!("n"), Value::Null)).unwrap(), json!([]));
        assert_eq!(map.send(put(json!("n"), Value::Null)).unwrap(), json!([null]));
        map.assert_replay_matches();
    }

    #[test]
    fn keys_with_the_same_fields_in_another_order_are_one_key() {
        let mut map = Harness::<MapShard>::new("0");
        let a: Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap();
        map.send(put(a, json!(1))).unwrap();
        assert_eq!(map.send(Command::Contains { key: b }).unwrap(), json!(true));
        assert_eq!(map.send(Command::Size).unwrap(), json!(1));
    }

    #[test]
    fn scans_page_in_key_order_and_clear_empties() {
        let mut map = Harness::<MapShard>::new("0");
        for i in 0..25 {
            map.send(put(json!(format!("k{i:02}")), json!(i))).unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page: Page =
                serde_json::from_value(map.send(Command::Scan { after, limit: 10 }).unwrap()).unwrap();
            seen.extend(page.entries.into_iter().map(|(k, _)| k));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).map(|i| json!(format!("k{i:02}"))).collect::<Vec<_>>());
        assert_eq!(map.send(Command::Clear).unwrap(), json!(25));
        assert_eq!(map.send(Command::Size).unwrap(), json!(0));
        map.assert_replay_matches();
    }

    fn command() -> impl Strategy<Value = Command> {
        let key = (0u8..8).prop_map(|k| json!(k));
        prop_oneof![
            (key.clone(), any::<i16>()).prop_map(|(key, v)| put(key, json!(v))),
            key.clone().prop_map(|key| Command::Get { key }),
            key.clone().prop_map(|key| Command::Contains { key }),
            key.prop_map(|key| Command::Delete { key }),
            Just(Command::Size),
            Just(Command::Clear),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(commands in proptest::collection::vec(command(), 0..64)) {
            let mut map = Harness::<MapShard>::new("0");
            let mut model: BTreeMap<String, Value> = BTreeMap::new();
            for command in commands {
                let expected = match &command {
                    Command::Put { key, value } => json!(model.insert(key.to_string(), value.clone()).into_iter().collect::<Vec<_>>()),
                    Command::Get { key } => json!(model.get(&key.to_string()).into_iter().collect::<Vec<_>>()),
                    Command::Contains { key } => json!(model.contains_key(&key.to_string())),
                    Command::Delete { key } => json!(model.remove(&key.to_string()).is_some()),
                    Command::Size => json!(model.len()),
                    Command::Clear => { let n = model.len(); model.clear(); json!(n) }
                    Command::Scan { .. } => unreachable!("not generated"),
                };
                prop_assert_eq!(map.send(command).unwrap(), expected);
            }
            map.assert_replay_matches();
        }
    }
}
