//! A FIFO queue split into segments, so no entity holds more than one segment's items.
//!
//! A queue named `q` is a *cursor* entity (id `q`) that knows which segment is the head
//! (oldest, being consumed) and which is the tail (open, being filled), and *segment*
//! entities (ids `q#0`, `q#1`, ...) that hold up to `capacity` items each. A segment is
//! sealed once `capacity` items were pushed into it; then producers move on to the next.
//! Each step is one atomic command on one entity, and the cursor only moves forward with
//! compare-and-advance, so a client that dies between steps loses nothing and any
//! number of producers and consumers may race. The client library drives the steps.
//!
//! Cursor commands: `"cursor"` → `{"head":H,"tail":T}`; `{"advance_head":{"from":H}}`
//! and `{"advance_tail":{"from":T}}` → the cursor after the move (no move unless `from`
//! is current). Segment commands: `{"push":{"value":V,"capacity":C}}` → `"pushed"` or
//! `"full"`; `"peek"`, `"pop"` → `{"item":V}`, `"empty"` (open: the queue is empty here)
//! or `"sealed"` (drained for good: move on); `"pop_wait"` → like pop, but parks while
//! the segment is open and empty, and a parked pop is answered `"sealed"` if the segment
//! fills up without it; `{"drain":{"max":N}}` → `{"items":[..],"sealed":bool}`; `"count"`.

use std::collections::VecDeque;

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Values one `drain` returns at most, whatever the caller asks for.
pub const DRAIN_MAX: u32 = 1000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Queue {
    // As a cursor:
    head: u64,
    tail: u64,
    // As a segment:
    items: VecDeque<Value>,
    /// Items ever pushed; the segment is sealed once this reaches its capacity.
    pushed: u64,
    capacity: Option<u64>,
    /// Parked `pop_wait` requests, longest waiting first.
    waiters: VecDeque<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Cursor,
    AdvanceHead {
        from: u64,
    },
    AdvanceTail {
        from: u64,
    },
    Push {
        value: Value,
        capacity: u64,
    },
    Peek,
    Pop,
    PopWait,
    Drain {
        max: u32,
    },
    Count,
    /// How many `pop_wait`s are parked here.
    Waiting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    HeadAdvanced {
        to: u64,
    },
    TailAdvanced {
        to: u64,
    },
    Pushed {
        value: Value,
        capacity: u64,
    },
    /// A pushed value went straight to a parked `pop_wait`.
    Handed {
        request_id: String,
        capacity: u64,
    },
    Popped {
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

impl Queue {
    fn sealed(&self) -> bool {
        self.capacity.is_some_and(|c| self.pushed >= c)
    }

    fn cursor(&self) -> Value {
        json!({ "head": self.head, "tail": self.tail })
    }

    /// What an empty segment answers a pop: empty for now, or drained for good.
    fn nothing(&self) -> Value {
        json!(if self.sealed() { "sealed" } else { "empty" })
    }
}

impl Entity for Queue {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Step, Rejection> {
        Ok(match command {
            Command::Cursor => Decision::reply(self.cursor()),
            Command::AdvanceHead { from } if from == self.head && self.head < self.tail => {
                let to = self.head + 1;
                Decision::reply(json!({ "head": to, "tail": self.tail })).persist(Event::HeadAdvanced { to })
            }
            Command::AdvanceTail { from } if from == self.tail => {
                let to = self.tail + 1;
                Decision::reply(json!({ "head": self.head, "tail": to })).persist(Event::TailAdvanced { to })
            }
            Command::AdvanceHead { .. } | Command::AdvanceTail { .. } => Decision::reply(self.cursor()),
            Command::Push { capacity: 0, .. } => {
                return Err(Rejection::new("invalid-capacity", "a segment holds at least one item"));
            }
            Command::Push { .. } if self.sealed() => Decision::reply(json!("full")),
            Command::Push { value, capacity } => {
                let capacity = self.capacity.unwrap_or(capacity);
                let mut decision = match self.waiters.front() {
                    Some(request_id) => Decision::reply(json!("pushed"))
                        .persist(Event::Handed { request_id: request_id.clone(), capacity })
                        .answer(request_id.clone(), &json!({ "item": value })),
                    None => Decision::reply(json!("pushed")).persist(Event::Pushed { value, capacity }),
                };
                if self.pushed + 1 >= capacity {
                    // The segment is full now: whoever still waits here must move on.
                    for request_id in self.waiters.iter().skip(usize::from(!decision.answers.is_empty())) {
                        decision = decision.answer(request_id.clone(), &json!("sealed"));
                    }
                }
                decision
            }
            Command::Peek => match self.items.front() {
                Some(item) => Decision::reply(json!({ "item": item })),
                None => Decision::reply(self.nothing()),
            },
            Command::Pop | Command::PopWait if !self.items.is_empty() => {
                Decision::reply(json!({ "item": self.items[0] })).persist(Event::Popped { count: 1 })
            }
            Command::PopWait if !self.sealed() && self.waiters.contains(&ctx.request_id) => {
                // A retry of a request already waiting (as after a restart) keeps its place.
                Decision::park()
            }
            Command::PopWait if !self.sealed() => {
                Decision::park().persist(Event::Waiting { request_id: ctx.request_id.clone() })
            }
            Command::Pop | Command::PopWait => Decision::reply(self.nothing()),
            Command::Drain { max } => {
                let count = max.min(DRAIN_MAX).min(self.items.len() as u32);
                let items: Vec<Value> = self.items.iter().take(count as usize).cloned().collect();
                let sealed = self.sealed() && count as usize == self.items.len();
                let decision = Decision::reply(json!({ "items": items, "sealed": sealed }));
                if count == 0 { decision } else { decision.persist(Event::Popped { count }) }
            }
            Command::Count => Decision::reply(Value::from(self.items.len() as u64)),
            Command::Waiting => Decision::reply(Value::from(self.waiters.len() as u64)),
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
            Event::HeadAdvanced { to } => self.head = to,
            Event::TailAdvanced { to } => self.tail = to,
            Event::Pushed { value, capacity } => {
                self.capacity.get_or_insert(capacity);
                self.items.push_back(value);
                self.pushed += 1;
            }
            Event::Handed { request_id, capacity } => {
                self.capacity.get_or_insert(capacity);
                self.waiters.retain(|w| *w != request_id);
                self.pushed += 1;
            }
            Event::Popped { count } => {
                self.items.drain(..(count as usize).min(self.items.len()));
            }
            Event::Waiting { request_id } => self.waiters.push_back(request_id),
            Event::Withdrawn { request_id } => self.waiters.retain(|w| *w != request_id),
        }
        if self.sealed() {
            // Sealing answered every waiter (see `Push`); none stays parked here.
            self.waiters.clear();
        }
    }
}

casty_guest_sdk::export_entity!(Queue);

#[cfg(test)]
mod tests;
