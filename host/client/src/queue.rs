//! Queues and barriers: structures whose callers may wait for each other.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::facade::{Target, decode_value, encode_value, target_options};
use crate::{ClientError, Zero, duration_ms};

/// Items one queue segment holds. Every client must use the same number: the first push
/// into a segment fixes its capacity.
const SEGMENT_ITEMS: u64 = 1000;

/// Where a queue's head (oldest segment) and tail (open segment) are.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Cursor {
    head: u64,
    tail: u64,
}

/// A segment's answer to a pop or peek: an item, or `"empty"` / `"sealed"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Taken {
    Item { item: Value },
    Nothing(String),
}

#[derive(Debug, Deserialize)]
struct Drained {
    items: Vec<Value>,
    sealed: bool,
}

/// A distributed FIFO queue of `T`, as `d.queue::<String>("work-queue")`.
///
/// The queue is a cursor entity and segments of up to 1000 items, each its own entity,
/// so a queue of millions never sits in one entity's memory. Every step is one atomic
/// command, and the cursor only moves forward by compare-and-advance, so producers and
/// consumers may race and a client that dies between steps loses nothing.
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
    fn segment(&self, n: u64) -> String {
        format!("{}#{n}", self.target.name)
    }

    async fn cursor(&self) -> Result<Cursor, ClientError> {
        self.target.call(&self.target.name, json!("cursor")).await
    }

    async fn advance(&self, end: &str, from: u64) -> Result<Cursor, ClientError> {
        let command = json!({ format!("advance_{end}"): { "from": from } });
        self.target.call(&self.target.name, command).await
    }

    /// Moves past a sealed head segment: the head when the tail is ahead of it, else the
    /// tail first (a producer would, on its next push). Returns the new cursor.
    async fn past_sealed_head(&self, cursor: Cursor) -> Result<Cursor, ClientError> {
        let cursor =
            if cursor.head < cursor.tail { cursor } else { self.advance("tail", cursor.tail).await? };
        self.advance("head", cursor.head).await
    }

    pub async fn enqueue(&self, value: &T) -> Result<(), ClientError> {
        let value = encode_value(value)?;
        let mut cursor = self.cursor().await?;
        loop {
            let command = json!({ "push": { "value": value, "capacity": SEGMENT_ITEMS } });
            let reply: String = self.target.call(&self.segment(cursor.tail), command).await?;
            if reply == "pushed" {
                return Ok(());
            }
            cursor = self.advance("tail", cursor.tail).await?;
        }
    }

    /// Pops (or peeks at) the oldest item, moving past drained segments.
    async fn take(&self, command: &str) -> Result<Option<T>, ClientError> {
        let mut cursor = self.cursor().await?;
        loop {
            match self.target.call(&self.segment(cursor.head), json!(command)).await? {
                Taken::Item { item } => return decode_value(item).map(Some),
                Taken::Nothing(state) if state == "sealed" && cursor.head < cursor.tail => {
                    cursor = self.advance("head", cursor.head).await?;
                }
                Taken::Nothing(_) => return Ok(None),
            }
        }
    }

    /// The oldest value, without removing it.
    pub async fn peek(&self) -> Result<Option<T>, ClientError> {
        self.take("peek").await
    }

    /// Removes and returns the oldest value; `None` when the queue is empty.
    pub async fn dequeue(&self) -> Result<Option<T>, ClientError> {
        self.take("pop").await
    }

    /// Callers waiting in [`Queue::dequeue_wait`] for a value to arrive.
    pub async fn waiting(&self) -> Result<u64, ClientError> {
        let cursor = self.cursor().await?;
        self.target.call(&self.segment(cursor.head), json!("waiting")).await
    }

    /// Removes and returns the oldest value, waiting up to `timeout` for one to arrive;
    /// `None` when none did. Waiters on a segment are served in the order they came.
    /// A wait of zero is a [`Queue::dequeue`]; one of more than 30 days is refused.
    pub async fn dequeue_wait(&self, timeout: Duration) -> Result<Option<T>, ClientError> {
        if duration_ms("the wait", timeout, Zero::Allowed)? == 0 {
            return self.dequeue().await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cursor = self.cursor().await?;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(1) {
                return Ok(None);
            }
            let segment = self.segment(cursor.head);
            let taken = self.target.call_as(self.target.client_id(), &segment, json!("pop_wait"), left).await;
            match taken {
                Ok(Taken::Item { item }) => return decode_value(item).map(Some),
                Ok(Taken::Nothing(_)) => cursor = self.past_sealed_head(cursor).await?,
                Err(ClientError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Values queued now (the sum over the live segments).
    pub async fn size(&self) -> Result<u64, ClientError> {
        let cursor = self.cursor().await?;
        self.target.sum_over((cursor.head..=cursor.tail).map(|n| self.segment(n)), json!("count")).await
    }

    /// Removes and returns up to `max` of the oldest values, oldest first.
    pub async fn drain(&self, max: u32) -> Result<Vec<T>, ClientError> {
        let mut cursor = self.cursor().await?;
        let mut values = Vec::new();
        while (values.len() as u32) < max {
            let asked = max - values.len() as u32;
            let command = json!({ "drain": { "max": asked } });
            let drained: Drained = self.target.call(&self.segment(cursor.head), command).await?;
            let got = drained.items.len() as u32;
            for item in drained.items {
                values.push(decode_value(item)?);
            }
            if drained.sealed && cursor.head < cursor.tail {
                cursor = self.advance("head", cursor.head).await?;
            } else if got < asked.min(DRAIN_PAGE_MAX) {
                break;
            }
        }
        Ok(values)
    }
}

/// Values one segment returns per drain call at most (the entity's bound).
const DRAIN_PAGE_MAX: u32 = 1000;

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
