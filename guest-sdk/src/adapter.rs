//! The glue between an [`Entity`] and the generated `casty:entity` bindings: decoding,
//! encoding and the resource the host holds for each entity.

use std::cell::RefCell;

use serde::{Serialize, de::DeserializeOwned};

use crate::bindings::casty::entity::types as wit;
use crate::bindings::exports::casty::entity::entity_handler::{self as handler, GuestEntity};
use crate::{Context, Decision, Entity, Rejection, Reply, Wake};

/// Encodes a value the way every payload is encoded.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data to JSON fails only for maps with non-string keys, which is a
    // bug in the entity's types; it traps the call with this message.
    serde_json::to_vec(value).expect("entity values serialize to JSON (maps need string keys)")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The resource behind one entity: the user's state, behind a `RefCell` because the
/// component model hands resources out by shared reference.
#[derive(Debug)]
pub struct Adapter<E> {
    state: RefCell<E>,
}

impl From<wit::Context> for Context {
    fn from(ctx: wit::Context) -> Self {
        Context {
            entity_id: ctx.entity_id,
            caller: ctx.caller,
            request_id: ctx.request_id,
            now_ms: ctx.now_ms,
        }
    }
}

fn to_wit_rejection(rejection: Rejection) -> wit::Rejection {
    wit::Rejection { code: rejection.code, message: rejection.message }
}

fn to_wit_decision<E: Serialize, R: Serialize>(decision: Decision<E, R>) -> wit::Decision {
    wit::Decision {
        events: decision.events.iter().map(|e| encode(e)).collect(),
        reply: match decision.reply {
            Reply::Now(reply) => wit::Reply::Ok(encode(&reply)),
            Reply::Park => wit::Reply::Park,
            Reply::None => wit::Reply::Ok(Vec::new()),
        },
        wake_parked: decision
            .answers
            .into_iter()
            .map(|(request_id, reply)| wit::ParkedReply {
                request_id,
                reply: reply.map_err(to_wit_rejection),
            })
            .collect(),
        wake: match decision.wake {
            Wake::Keep => wit::WakeUp::Keep,
            Wake::At(at) => wit::WakeUp::At(at),
            Wake::Cancel => wit::WakeUp::Cancel,
        },
    }
}

impl<E: Entity> GuestEntity for Adapter<E> {
    fn new(_id: String) -> Self {
        Adapter { state: RefCell::new(E::default()) }
    }

    fn restore(_id: String, snapshot: Vec<u8>) -> Result<handler::Entity, String> {
        let state: E = decode(&snapshot).map_err(|e| format!("snapshot does not decode: {e}"))?;
        Ok(handler::Entity::new(Adapter { state: RefCell::new(state) }))
    }

    fn handle(&self, ctx: wit::Context, command: Vec<u8>) -> Result<wit::Decision, wit::CommandError> {
        let command: E::Command =
            decode(&command).map_err(|e| wit::CommandError::Malformed(e.to_string()))?;
        let decision = match self.state.borrow().handle(&ctx.into(), command) {
            Ok(decision) => to_wit_decision(decision),
            Err(rejection) => wit::Decision {
                events: Vec::new(),
                reply: wit::Reply::Rejected(to_wit_rejection(rejection)),
                wake_parked: Vec::new(),
                wake: wit::WakeUp::Keep,
            },
        };
        Ok(decision)
    }

    fn apply(&self, event: Vec<u8>) {
        // Events come from this entity's own `handle`; one that does not decode means the
        // journal holds another type's events, and trapping is the only safe answer.
        let event: E::Event = decode(&event).expect("a persisted event decodes");
        self.state.borrow_mut().apply(event);
    }

    fn wake(&self, ctx: wit::Context) -> wit::Decision {
        to_wit_decision(self.state.borrow().wake(&ctx.into()))
    }

    fn withdraw(&self, ctx: wit::Context, request_id: String) -> wit::Decision {
        to_wit_decision(self.state.borrow().withdraw(&ctx.into(), &request_id))
    }

    fn snapshot(&self) -> Vec<u8> {
        encode(&*self.state.borrow())
    }
}
