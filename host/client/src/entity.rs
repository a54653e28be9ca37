//! Typed handles to the entities of a deployed type.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::facade::{Target, encode_value, target_options};

/// The entities of one type, whose commands are `C` and replies `R`:
/// `client.entity::<Command, Reply>("bank-account").get("acct-42").send(command)`.
///
/// `C` and `R` are the entity's own serde types (or any types with the same JSON shape).
/// A command the entity refuses comes back as [`ClientError::Rejected`] with the
/// entity's code to match on.
pub struct Entities<C, R> {
    target: Target,
    types: PhantomData<fn(C) -> R>,
}

impl<C, R> Clone for Entities<C, R> {
    fn clone(&self) -> Self {
        Self { target: self.target.clone(), types: PhantomData }
    }
}

impl<C, R> std::fmt::Debug for Entities<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entities").field("target", &self.target).finish()
    }
}

impl<C, R> Entities<C, R> {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, types: PhantomData }
    }

    target_options!();

    /// The entity `id`.
    pub fn get(&self, id: &str) -> EntityRef<C, R> {
        EntityRef { entities: self.clone(), id: id.to_owned() }
    }
}

/// One entity of a deployed type.
pub struct EntityRef<C, R> {
    entities: Entities<C, R>,
    id: String,
}

impl<C, R> std::fmt::Debug for EntityRef<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityRef").field("entities", &self.entities).field("id", &self.id).finish()
    }
}

impl<C: Serialize, R: DeserializeOwned> EntityRef<C, R> {
    /// The entity's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends a command and waits for the entity's reply.
    pub async fn send(&self, command: C) -> Result<R, ClientError> {
        self.entities.target.call(&self.id, encode_value(&command)?).await
    }
}
