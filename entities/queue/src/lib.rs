//! A FIFO queue of JSON values. A `dequeue_wait` on an empty queue parks until an item
//! arrives (the enqueue hands it straight to the longest waiter) or its caller gives up.
//!
//! Commands: `{"enqueue":{"value":V}}` → null; `"peek"` and `"dequeue"` → `[V]`/`[]`;
//! `"dequeue_wait"` → `[V]` (parks while empty); `"size"`; `{"drain":{"max":N}}` → up to
//! N values, oldest first.

use std::collections::VecDeque;

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Values one `drain` returns at most, whatever the caller asks for.
pub const DRAIN_MAX: u32 = 1000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Queue {
    items: VecDeque<Value>,
    /// Parked `dequeue_wait` requests, longest waiting first.
    waiters: VecDeque<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Enqueue { value: Value },
    Peek,
    Dequeue,
    DequeueWait,
    Size,
    Drain { max: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Enqueued {
        value: Value,
    },
    /// An enqueued value went straight to a waiting `dequeue_wait`.
    Handed {
        request_id: String,
    },
    Dequeued {
        count: u32,
    },
    Waiting {
        request_id: String,
    },
    Withdrawn {
        request_id: String,
    },
}

type Step = Decision<Event, Value>;

impl Entity for Queue {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Step, Rejection> {
        let front = || Value::Array(self.items.front().cloned().into_iter().collect());
        Ok(match command {
            Command::Enqueue { value } => match self.waiters.front() {
                Some(request_id) => Decision::reply(Value::Null)
                    .persist(Event::Handed { request_id: request_id.clone() })
                    .answer(request_id.clone(), &json!([value])),
                None => Decision::reply(Value::Null).persist(Event::Enqueued { value }),
            },
            Command::Peek => Decision::reply(front()),
            Command::Dequeue | Command::DequeueWait if !self.items.is_empty() => {
                Decision::reply(front()).persist(Event::Dequeued { count: 1 })
            }
            Command::Dequeue => Decision::reply(json!([])),
            // A retry of a request already waiting (as after a restart) keeps its place.
            Command::DequeueWait if self.waiters.contains(&ctx.request_id) => Decision::park(),
            Command::DequeueWait => {
                Decision::park().persist(Event::Waiting { request_id: ctx.request_id.clone() })
            }
            Command::Size => Decision::reply(Value::from(self.items.len() as u64)),
            Command::Drain { max } => {
                let count = max.min(DRAIN_MAX).min(self.items.len() as u32);
                let values: Vec<Value> = self.items.iter().take(count as usize).cloned().collect();
                let decision = Decision::reply(Value::Array(values));
                if count == 0 { decision } else { decision.persist(Event::Dequeued { count }) }
            }
        })
    }

    fn withdraw(&self, _ctx: &Context, request_id: &str) -> Step {
        if self.waiters.iter().any(|w| w == request_id) {
            Decision::none().persist(Event::Withdrawn { request_id: request_id.to_owned() })
        } else {
            Decision::none()
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Enqueued { value } => self.items.push_back(value),
            Event::Handed { request_id } | Event::Withdrawn { request_id } => {
                self.waiters.retain(|w| *w != request_id)
            }
            Event::Dequeued { count } => {
                self.items.drain(..(count as usize).min(self.items.len()));
            }
            Event::Waiting { request_id } => self.waiters.push_back(request_id),
        }
    }
}

casty_guest_sdk::export_entity!(Queue);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, Outcome};
    use proptest::prelude::*;

    fn enqueue(value: &str) -> Command {
        Command::Enqueue { value: json!(value) }
    }

    #[test]
    fn fifo_peek_and_empty_as_in_the_original_suite() {
        let mut q = Harness::<Queue>::new("work-queue");
        assert_eq!(q.send(Command::Size).unwrap(), json!(0));
        assert_eq!(q.send(Command::Dequeue).unwrap(), json!([]));
        for v in ["a", "b", "c"] {
            q.send(enqueue(v)).unwrap();
        }
        assert_eq!(q.send(Command::Peek).unwrap(), json!(["a"]));
        assert_eq!(q.send(Command::Size).unwrap(), json!(3), "peek does not remove");
        for v in ["a", "b", "c"] {
            assert_eq!(q.send(Command::Dequeue).unwrap(), json!([v]));
        }
        assert_eq!(q.send(Command::Dequeue).unwrap(), json!([]));
        q.assert_replay_matches();
    }

    #[test]
    fn waiting_dequeues_get_items_in_order_unless_withdrawn() {
        let mut q = Harness::<Queue>::new("q");
        assert_eq!(q.send(Command::DequeueWait), Err(Outcome::Parked));
        let gone = q.last_request_id();
        assert_eq!(q.send(Command::DequeueWait), Err(Outcome::Parked));
        let waiting = q.last_request_id();
        q.withdraw(&gone);
        q.send(enqueue("x")).unwrap();
        assert_eq!(q.answers, vec![(waiting, Ok(json!(["x"])))]);
        assert_eq!(q.send(Command::Size).unwrap(), json!(0), "the item went to the waiter");
        q.send(enqueue("y")).unwrap();
        assert_eq!(q.send(Command::DequeueWait).unwrap(), json!(["y"]));
        q.assert_replay_matches();
    }

    #[test]
    fn drain_takes_the_oldest() {
        let mut q = Harness::<Queue>::new("q");
        for v in ["a", "b", "c"] {
            q.send(enqueue(v)).unwrap();
        }
        assert_eq!(q.send(Command::Drain { max: 2 }).unwrap(), json!(["a", "b"]));
        assert_eq!(q.send(Command::Drain { max: 5 }).unwrap(), json!(["c"]));
        assert_eq!(q.send(Command::Drain { max: 5 }).unwrap(), json!([]));
        q.assert_replay_matches();
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            any::<u8>().prop_map(|v| Command::Enqueue { value: json!(v) }),
            Just(Command::Peek),
            Just(Command::Dequeue),
            Just(Command::Size),
            (0u32..4).prop_map(|max| Command::Drain { max }),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque(commands in proptest::collection::vec(command(), 0..64)) {
            let mut q = Harness::<Queue>::new("q");
            let mut model: VecDeque<Value> = VecDeque::new();
            for command in commands {
                let expected = match &command {
                    Command::Enqueue { value } => { model.push_back(value.clone()); Value::Null }
                    Command::Peek => json!(model.front().into_iter().collect::<Vec<_>>()),
                    Command::Dequeue => json!(model.pop_front().into_iter().collect::<Vec<_>>()),
                    Command::Size => json!(model.len()),
                    Command::Drain { max } => {
                        let n = (*max as usize).min(model.len());
                        json!(model.drain(..n).collect::<Vec<_>>())
                    }
                    Command::DequeueWait => unreachable!("not generated"),
                };
                prop_assert_eq!(q.send(command).unwrap(), expected);
            }
            q.assert_replay_matches();
        }
    }
}
