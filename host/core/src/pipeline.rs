//! The batches a partition's leader has sent on and not yet answered: batches of writes
//! proposed as log entries, and batches that only read, for which it asked a read index.
//!
//! A leader pipelines: it proposes batch N and goes on deciding N+1 and later on top of
//! its live state. A batch of writes may be answered only once its entry is committed
//! (a majority of the group has it on disk); a batch that only read, once a read index
//! (the leader's word, confirmed by a majority, that it still leads) came back and the
//! applied index reached it. Either way, only after every batch before it was answered:
//! a later batch may have observed an earlier one's writes, so answering it first could
//! reveal state that is then lost.
//!
//! What a batch carries (its replies) is the caller's; this module keeps the order, and
//! is tested without I/O. Time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::limits::{COMMIT_WAIT_MAX_MS, PROPOSALS_IN_FLIGHT_MAX};

/// What a batch waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its entry to come back committed; then, the index it was committed at.
    Commit(Option<u64>),
    /// Its read index; then, the index the applied state must reach.
    ReadIndex(Option<u64>),
}

#[derive(Debug)]
struct InFlight<T> {
    number: u64,
    wait: Wait,
    sent: Instant,
    payload: T,
}

/// A batch whose turn has come.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered<T> {
    pub number: u64,
    /// For a batch of writes: the log index its entry was committed at.
    pub committed: Option<u64>,
    /// When it was sent on.
    pub sent: Instant,
    pub payload: T,
}

/// Batches in flight, oldest first, at most [`PROPOSALS_IN_FLIGHT_MAX`].
#[derive(Debug)]
pub struct Pipeline<T> {
    in_flight: VecDeque<InFlight<T>>,
    /// The number of the last batch sent on; batch numbers are never reused.
    numbered: u64,
}

impl<T> Default for Pipeline<T> {
    fn default() -> Self {
        Self { in_flight: VecDeque::new(), numbered: 0 }
    }
}

impl<T> Pipeline<T> {
    /// The number the batch being decided will have.
    pub fn deciding(&self) -> u64 {
        self.numbered + 1
    }

    /// A batch of writes was proposed; returns its number.
    pub fn proposed(&mut self, payload: T, now: Instant) -> u64 {
        self.push(Wait::Commit(None), payload, now)
    }

    /// A batch that only read asked a read index; returns its number, which the read
    /// index must come back with ([`Pipeline::read_index`]).
    pub fn reading(&mut self, payload: T, now: Instant) -> u64 {
        self.push(Wait::ReadIndex(None), payload, now)
    }

    fn push(&mut self, wait: Wait, payload: T, sent: Instant) -> u64 {
        debug_assert!(!self.is_full(), "the caller sends on no batch while the pipeline is full");
        self.numbered += 1;
        self.in_flight.push_back(InFlight { number: self.numbered, wait, sent, payload });
        self.numbered
    }

    /// An entry this leader proposed came back committed at `index`. It is the oldest
    /// batch of writes not yet committed: one leader's entries commit in the order it
    /// proposed them.
    pub fn committed(&mut self, index: u64) {
        let oldest = self.in_flight.iter_mut().find(|b| b.wait == Wait::Commit(None));
        if let Some(batch) = oldest {
            batch.wait = Wait::Commit(Some(index));
        }
    }

    /// The read index asked with `number` came back: `index`. An answer for a batch no
    /// longer in flight (it was failed meanwhile) is dropped.
    pub fn read_index(&mut self, number: u64, index: u64) {
        let asked = self.in_flight.iter_mut().find(|b| b.number == number);
        if let Some(batch) = asked
            && batch.wait == Wait::ReadIndex(None)
        {
            batch.wait = Wait::ReadIndex(Some(index));
        }
    }

    /// The oldest batch, if its turn has come with the state applied through `applied`.
    pub fn next_answered(&mut self, applied: u64) -> Option<Answered<T>> {
        let oldest = self.in_flight.front()?;
        let committed = match oldest.wait {
            Wait::Commit(Some(index)) => Some(index),
            Wait::ReadIndex(Some(index)) if applied >= index => None,
            Wait::Commit(None) | Wait::ReadIndex(_) => return None,
        };
        let batch = self.in_flight.pop_front().expect("peeked");
        Some(Answered { number: batch.number, committed, sent: batch.sent, payload: batch.payload })
    }

    /// Takes every batch in flight, oldest first, to answer it some other way (none of
    /// them was acknowledged).
    pub fn take_all(&mut self) -> impl Iterator<Item = T> + use<T> {
        std::mem::take(&mut self.in_flight).into_iter().map(|b| b.payload)
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Whether as many batches are in flight as may be.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= PROPOSALS_IN_FLIGHT_MAX
    }

    /// How long until the oldest batch in flight has waited [`COMMIT_WAIT_MAX_MS`] (zero
    /// once it has); `None` with nothing in flight.
    pub fn commit_wait_left(&self, now: Instant) -> Option<Duration> {
        let oldest = self.in_flight.front()?;
        let waited = now.saturating_duration_since(oldest.sent);
        Some(Duration::from_millis(COMMIT_WAIT_MAX_MS).saturating_sub(waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(pipeline: &mut Pipeline<&'static str>, applied: u64) -> Vec<(&'static str, Option<u64>)> {
        std::iter::from_fn(|| pipeline.next_answered(applied)).map(|b| (b.payload, b.committed)).collect()
    }

    #[test]
    fn a_batch_of_writes_waits_for_its_commit() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        assert_eq!(pipeline.deciding(), 1);
        assert_eq!(pipeline.proposed("a", now), 1);
        assert_eq!(pipeline.deciding(), 2);
        assert!(answered(&mut pipeline, 100).is_empty(), "applied state is no commit");
        pipeline.committed(7);
        assert_eq!(answered(&mut pipeline, 0), [("a", Some(7))]);
        assert!(pipeline.is_empty());
    }

    #[test]
    fn pipelined_batches_are_answered_in_order_even_when_a_later_one_is_ready_first() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        pipeline.proposed("write 1", now);
        let read = pipeline.reading("read 2", now);
        pipeline.proposed("write 3", now);
        // The read's index comes back first: it still waits for the write before it.
        pipeline.read_index(read, 5);
        assert!(answered(&mut pipeline, 5).is_empty());
        // Commits go to the writes in order, skipping the read.
        pipeline.committed(6);
        pipeline.committed(7);
        assert_eq!(
            answered(&mut pipeline, 7),
            [("write 1", Some(6)), ("read 2", None), ("write 3", Some(7))]
        );
    }

    #[test]
    fn a_read_waits_for_its_read_index_and_then_for_the_applied_state_to_reach_it() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        let read = pipeline.reading("read", now);
        assert!(answered(&mut pipeline, 10).is_empty(), "no read index yet");
        pipeline.read_index(read, 12);
        assert!(answered(&mut pipeline, 11).is_empty(), "applied behind the read index");
        assert_eq!(answered(&mut pipeline, 12), [("read", None)]);
    }

    #[test]
    fn a_read_index_for_a_batch_not_in_flight_is_dropped() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        let failed = pipeline.reading("failed", now);
        assert_eq!(pipeline.take_all().collect::<Vec<_>>(), ["failed"]);
        let read = pipeline.reading("read", now);
        assert_ne!(read, failed, "numbers are never reused");
        pipeline.read_index(failed, 1);
        assert!(answered(&mut pipeline, 1).is_empty(), "the old answer is not this read's");
        // A read index answered twice keeps the first answer.
        pipeline.read_index(read, 3);
        pipeline.read_index(read, 1);
        assert!(answered(&mut pipeline, 2).is_empty());
        assert_eq!(answered(&mut pipeline, 3), [("read", None)]);
    }

    #[test]
    fn a_commit_with_no_batch_of_writes_in_flight_changes_nothing() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        pipeline.committed(4);
        let read = pipeline.reading("read", now);
        pipeline.committed(5);
        pipeline.proposed("write", now);
        pipeline.read_index(read, 5);
        assert_eq!(answered(&mut pipeline, 5), [("read", None)]);
        assert_eq!(pipeline.len(), 1, "the write was proposed after the commit");
    }

    #[test]
    fn taking_all_empties_the_pipeline_in_order() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        for payload in ["a", "b", "c"] {
            pipeline.proposed(payload, now);
        }
        pipeline.committed(1);
        assert_eq!(pipeline.take_all().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(pipeline.is_empty());
        assert!(answered(&mut pipeline, 1).is_empty());
    }

    #[test]
    fn it_is_full_at_the_limit_of_batches_in_flight() {
        let mut pipeline = Pipeline::default();
        let now = Instant::now();
        for _ in 0..PROPOSALS_IN_FLIGHT_MAX {
            assert!(!pipeline.is_full());
            pipeline.proposed("w", now);
        }
        assert!(pipeline.is_full());
        pipeline.committed(1);
        assert!(pipeline.next_answered(1).is_some());
        assert!(!pipeline.is_full());
    }

    #[test]
    fn the_commit_wait_counts_from_the_oldest_batch() {
        let mut pipeline = Pipeline::default();
        let start = Instant::now();
        assert_eq!(pipeline.commit_wait_left(start), None);
        pipeline.proposed("old", start);
        pipeline.proposed("new", start + Duration::from_millis(1000));
        let wait = Duration::from_millis(COMMIT_WAIT_MAX_MS);
        assert_eq!(
            pipeline.commit_wait_left(start + Duration::from_millis(500)),
            Some(wait - Duration::from_millis(500))
        );
        assert_eq!(pipeline.commit_wait_left(start + wait * 2), Some(Duration::ZERO));
    }
}
