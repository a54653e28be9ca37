//! A semaphore with leases and fencing tokens; a lock is the same entity with one permit.
//!
//! The caller (`ctx.caller`) is the owner: each lock or semaphore handle has its own.
//! Grants are FIFO: while anyone waits, a new `acquire` queues behind them. Every grant
//! carries a fencing token that strictly increases for the entity. A holder keeps its
//! permits under a lease it renews; when the lease ends the permits go to the next
//! waiters. A waiter whose caller gave up is withdrawn and never granted.
//!
//! Re-acquiring a lock (one permit) that the caller already holds is reentrant without
//! counting: it renews the lease and returns the same token, and one release frees it.
//! A semaphore owner may hold several permits, one per acquire; release frees one.
//!
//! Commands: `{"acquire":{"permits":N,"ttl_ms":T}}` → `{"token":K}` (parks while no
//! permit is free); `{"try_acquire":{"permits":N,"ttl_ms":T}}` → `{"token":K}` or null;
//! `"release"` → bool; `{"renew":{"ttl_ms":T}}` → bool; `{"available":{"permits":N}}`;
//! `"waiting"` → how many requests wait in line.
//! `permits` is the semaphore's size, fixed by the first command; a handle that names
//! another size is refused with `permits-mismatch`.

use std::collections::{BTreeMap, VecDeque};

use casty_guest_sdk::{Context, Decision, Entity, Rejection, Wake};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Semaphore {
    permits: Option<u32>,
    /// The last token granted; the next grant gets a greater one.
    last_token: u64,
    holders: BTreeMap<String, Holder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    permits: u32,
    token: u64,
    lease_until_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Waiter {
    owner: String,
    request_id: String,
    ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Acquire { permits: u32, ttl_ms: u64 },
    TryAcquire { permits: u32, ttl_ms: u64 },
    Release,
    Renew { ttl_ms: u64 },
    Available { permits: u32 },
    Waiting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Sized {
        permits: u32,
    },
    /// A permit for `owner` (re-acquiring a held lock: a renewal, same token); `waiter`
    /// names the queued request it was granted to.
    Granted {
        owner: String,
        token: u64,
        lease_until_ms: u64,
        waiter: Option<String>,
    },
    Renewed {
        owner: String,
        lease_until_ms: u64,
    },
    Released {
        owner: String,
    },
    Expired {
        owner: String,
    },
    Queued {
        owner: String,
        request_id: String,
        ttl_ms: u64,
    },
    Withdrawn {
        request_id: String,
    },
}

type Step = Decision<Event, Value>;

fn token_reply(token: u64) -> Value {
    json!({ "token": token })
}

impl Semaphore {
    fn held(&self) -> u32 {
        self.holders.values().map(|h| h.permits).sum()
    }

    /// The semaphore's size, checking the handle's; the event that fixes it if it is new.
    fn size(&self, asked: u32) -> Result<(u32, Option<Event>), Rejection> {
        if asked == 0 {
            return Err(Rejection::new("invalid-permits", "a semaphore has at least one permit"));
        }
        match self.permits {
            Some(permits) if permits != asked => Err(Rejection::new(
                "permits-mismatch",
                format!(
                    "this semaphore has {permits} permits but the handle says {asked}; use one number everywhere"
                ),
            )),
            Some(permits) => Ok((permits, None)),
            None => Ok((asked, Some(Event::Sized { permits: asked }))),
        }
    }

    fn after(&self, events: &[Event]) -> Semaphore {
        let mut state = self.clone();
        for event in events {
            state.apply(event.clone());
        }
        state
    }

    /// Completes a decision: grants queued waiters that now fit, in order (answering their
    /// parked requests), and asks to be woken when the first remaining lease ends.
    fn settle(&self, mut decision: Step, now_ms: u64) -> Step {
        let mut state = self.after(&decision.events);
        while let (Some(permits), Some(waiter)) = (state.permits, state.waiters.front().cloned()) {
            if state.held() >= permits {
                break;
            }
            let token = state.last_token + 1;
            let event = Event::Granted {
                owner: waiter.owner,
                token,
                lease_until_ms: now_ms.saturating_add(waiter.ttl_ms),
                waiter: Some(waiter.request_id.clone()),
            };
            state.apply(event.clone());
            decision = decision.persist(event).answer(waiter.request_id, &token_reply(token));
        }
        decision.wake = match state.holders.values().map(|h| h.lease_until_ms).min() {
            Some(at) => Wake::At(at),
            None => Wake::Cancel,
        };
        decision
    }
}

impl Entity for Semaphore {
    type Command = Command;
    type Event = Event;
    type Reply = Value;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Step, Rejection> {
        let owner = ctx.caller.as_str();
        let decision = match command {
            Command::Acquire { ttl_ms: 0, .. }
            | Command::TryAcquire { ttl_ms: 0, .. }
            | Command::Renew { ttl_ms: 0 } => {
                return Err(Rejection::new("invalid-ttl", "a lease needs a TTL above zero"));
            }
            Command::Acquire { permits, ttl_ms } | Command::TryAcquire { permits, ttl_ms } => {
                let queue = matches!(command, Command::Acquire { .. });
                let (size, sized) = self.size(permits)?;
                let held_lock = size == 1 && self.holders.contains_key(owner);
                let mut events: Vec<Event> = sized.into_iter().collect();
                if self.waiters.iter().any(|w| w.request_id == ctx.request_id) {
                    // A retry of a request already in line keeps its place.
                    return Ok(self.settle(Decision::park(), ctx.now_ms));
                }
                let reply = if held_lock || (self.held() < size && self.waiters.is_empty()) {
                    let token = match self.holders.get(owner) {
                        Some(holder) if held_lock => holder.token,
                        _ => self.last_token + 1,
                    };
                    let lease_until_ms = ctx.now_ms.saturating_add(ttl_ms);
                    events.push(Event::Granted {
                        owner: owner.to_owned(),
                        token,
                        lease_until_ms,
                        waiter: None,
                    });
                    Some(token_reply(token))
                } else if queue {
                    let request_id = ctx.request_id.clone();
                    events.push(Event::Queued { owner: owner.to_owned(), request_id, ttl_ms });
                    None
                } else {
                    Some(Value::Null)
                };
                let decision = match reply {
                    Some(reply) => Decision::reply(reply),
                    None => Decision::park(),
                };
                events.into_iter().fold(decision, Decision::persist)
            }
            Command::Release => match self.holders.contains_key(owner) {
                true => {
                    Decision::reply(Value::Bool(true)).persist(Event::Released { owner: owner.to_owned() })
                }
                false => Decision::reply(Value::Bool(false)),
            },
            Command::Renew { ttl_ms } => match self.holders.contains_key(owner) {
                true => {
                    let lease_until_ms = ctx.now_ms.saturating_add(ttl_ms);
                    Decision::reply(Value::Bool(true))
                        .persist(Event::Renewed { owner: owner.to_owned(), lease_until_ms })
                }
                false => Decision::reply(Value::Bool(false)),
            },
            Command::Available { permits } => {
                let (size, _) = self.size(permits)?;
                Decision::reply(Value::from(size.saturating_sub(self.held())))
            }
            Command::Waiting => Decision::reply(Value::from(self.waiters.len() as u64)),
        };
        Ok(self.settle(decision, ctx.now_ms))
    }

    fn wake(&self, ctx: &Context) -> Step {
        let expired = self.holders.iter().filter(|(_, h)| h.lease_until_ms <= ctx.now_ms);
        let decision = expired
            .fold(Decision::none(), |d, (owner, _)| d.persist(Event::Expired { owner: owner.clone() }));
        self.settle(decision, ctx.now_ms)
    }

    fn withdraw(&self, ctx: &Context, request_id: &str) -> Step {
        let mut decision = Decision::none();
        if self.waiters.iter().any(|w| w.request_id == request_id) {
            decision = decision.persist(Event::Withdrawn { request_id: request_id.to_owned() });
        }
        self.settle(decision, ctx.now_ms)
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Sized { permits } => self.permits = Some(permits),
            Event::Granted { owner, token, lease_until_ms, waiter } => {
                if let Some(request_id) = waiter {
                    self.waiters.retain(|w| w.request_id != request_id);
                }
                self.last_token = self.last_token.max(token);
                let lock = self.permits == Some(1);
                let holder =
                    self.holders.entry(owner).or_insert(Holder { permits: 0, token, lease_until_ms });
                if !(lock && holder.permits == 1) {
                    holder.permits += 1;
                }
                holder.token = token;
                holder.lease_until_ms = lease_until_ms;
            }
            Event::Renewed { owner, lease_until_ms } => {
                if let Some(holder) = self.holders.get_mut(&owner) {
                    holder.lease_until_ms = lease_until_ms;
                }
            }
            Event::Released { owner } => {
                if let Some(holder) = self.holders.get_mut(&owner) {
                    holder.permits -= 1;
                    if holder.permits == 0 {
                        self.holders.remove(&owner);
                    }
                }
            }
            Event::Expired { owner } => {
                self.holders.remove(&owner);
            }
            Event::Queued { owner, request_id, ttl_ms } => {
                self.waiters.push_back(Waiter { owner, request_id, ttl_ms })
            }
            Event::Withdrawn { request_id } => self.waiters.retain(|w| w.request_id != request_id),
        }
    }
}

casty_guest_sdk::export_entity!(Semaphore);

#[cfg(test)]
mod tests;
