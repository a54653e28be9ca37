//! Queues and barriers: structures whose callers may wait for each other.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ClientError;
use crate::facade::{Target, decode_optional, decode_value, encode_value, target_options};

/// A distributed FIFO queue of `T`, as `d.queue::<String>("work-queue")`.
#[derive(Debug, Clone)]
pub struct Queue<T> {
    target: Target,
    _type: PhantomData<fn() -> T>,
}

impl<T> Queue<T> {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, _type: PhantomData }
    }

    target_options!();
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    async fn send<R: DeserializeOwned>(&self, command: Value) -> Result<R, ClientError> {
        self.target.call(&self.target.name, command).await
    }

    pub async fn enqueue(&self, value: &T) -> Result<(), ClientError> {
        self.send::<Value>(json!({ "enqueue": { "value": encode_value(value)? } })).await.map(drop)
    }

    /// The oldest value, without removing it.
    pub async fn peek(&self) -> Result<Option<T>, ClientError> {
        decode_optional(self.send(json!("peek")).await?)
    }

    /// Removes and returns the oldest value; `None` when the queue is empty.
    pub async fn dequeue(&self) -> Result<Option<T>, ClientError> {
        decode_optional(self.send(json!("dequeue")).await?)
    }

    /// Removes and returns the oldest value, waiting up to `timeout` for one to arrive;
    /// `None` when none did. Waiters are served in the order they started waiting.
    pub async fn dequeue_wait(&self, timeout: Duration) -> Result<Option<T>, ClientError> {
        let reply =
            self.target.call_as(self.target.client_id(), &self.target.name, json!("dequeue_wait"), timeout);
        match reply.await {
            Ok(reply) => decode_optional(reply),
            Err(ClientError::Timeout { .. }) => Ok(None),
            Err(e) if e.kind() == Some(&crate::ErrorKind::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn size(&self) -> Result<u64, ClientError> {
        self.send(json!("size")).await
    }

    /// Removes and returns up to `max` of the oldest values (at most 1000 a call).
    pub async fn drain(&self, max: u32) -> Result<Vec<T>, ClientError> {
        let values: Vec<Value> = self.send(json!({ "drain": { "max": max } })).await?;
        values.into_iter().map(decode_value).collect()
    }
}

/// A distributed, reusable barrier, as `d.barrier("phase-1")`.
#[derive(Debug, Clone)]
pub struct Barrier {
    target: Target,
    party: Option<String>,
}

impl Barrier {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, party: None }
    }

    target_options!();

    /// Arrives as `party` instead of this client's id.
    pub fn party(mut self, party: impl Into<String>) -> Self {
        self.party = Some(party.into());
        self
    }

    /// Waits (up to the timeout) until `expected` parties have arrived in this round, then
    /// returns the round's number. An arrival whose timeout passes is withdrawn.
    pub async fn arrive(&self, expected: u32) -> Result<u64, ClientError> {
        let party = self.party.as_deref().unwrap_or(self.target.client_id());
        let command = json!({ "arrive": { "expected": expected, "party": party } });
        self.target.call(&self.target.name, command).await
    }

    /// How many parties are waiting in the current round.
    pub async fn arrived(&self) -> Result<u64, ClientError> {
        self.target.call(&self.target.name, json!("arrived")).await
    }
}
