//! A Raft group's log and vote in the node's journal.
//!
//! Appends go through the journal's writer, so one transaction (one fsync) carries the
//! appends of every group that is waiting. Raft needs appended entries readable at once,
//! before they are durable, and reads every entry back soon after (to replicate and to
//! apply it), so the newest entries are also kept in memory: all that are not durable yet,
//! and durable ones up to `RAFT_LOG_TAIL_BYTES_MAX`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use casty_core::limits::RAFT_LOG_TAIL_BYTES_MAX;
use casty_journal::{Journal, PartitionWrite};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageError, StorageIOError, Vote};

use crate::codec::{decode_entry, decode_purged, decode_vote, encode_entry, encode_json};
use crate::{Entry, LogId, NodeId, TypeConfig};

const VOTE: u8 = 0;
const PURGED: u8 = 1;

/// One group's log store; cheap to clone (clones share the tail).
#[derive(Clone, Debug)]
pub struct LogStore {
    journal: Journal,
    group: u32,
    tail: Arc<Mutex<Tail>>,
}

/// The newest entries of the log, by index. They are always a suffix of the log (appends
/// extend it, a truncation cuts it, purges and eviction take from its front), so an
/// entry at or after the first one here is here or does not exist.
#[derive(Debug, Default)]
struct Tail {
    entries: BTreeMap<u64, TailEntry>,
    /// Encoded bytes of the durable entries.
    durable_bytes: usize,
}

#[derive(Debug)]
struct TailEntry {
    entry: Entry,
    bytes: usize,
    durable: bool,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.first_key_value().map(|(i, _)| *i)
    }

    fn append(&mut self, entry: Entry, bytes: usize) {
        let replaced = self.entries.insert(entry.log_id.index, TailEntry { entry, bytes, durable: false });
        // Raft truncates before it writes an index again, but the count must hold regardless.
        if let Some(replaced) = replaced.filter(|e| e.durable) {
            self.durable_bytes -= replaced.bytes;
        }
    }

    /// Notes that `landed` are durable, then drops the oldest durable entries beyond the
    /// byte limit.
    fn landed(&mut self, landed: &[(LogId, usize)]) {
        for (log_id, bytes) in landed {
            // A later append may have replaced it after a truncation; that one is not.
            if let Some(e) = self.entries.get_mut(&log_id.index).filter(|e| e.entry.log_id == *log_id) {
                e.durable = true;
                self.durable_bytes += bytes;
            }
        }
        while self.durable_bytes > RAFT_LOG_TAIL_BYTES_MAX {
            let Some(oldest) = self.entries.first_entry() else { break };
            if !oldest.get().durable {
                break;
            }
            self.durable_bytes -= oldest.remove().bytes;
        }
    }

    /// Keeps only the entries `keep` accepts.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let durable_bytes = &mut self.durable_bytes;
        self.entries.retain(|index, e| {
            let kept = keep(*index);
            if !kept && e.durable {
                *durable_bytes -= e.bytes;
            }
            kept
        });
    }
}

impl LogStore {
    pub fn new(journal: Journal, group: u32) -> Self {
        Self { journal, group, tail: Arc::default() }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn write(&self, write: PartitionWrite) -> Result<(), io::Error> {
        self.journal.write(write).await.map_err(io::Error::other)
    }
}

fn read_error(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_error(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if from >= to {
            return Ok(Vec::new());
        }
        // The tail is a suffix of the log, so only what lies before it is read from the
        // journal. An entry that leaves the tail meanwhile is durable, so it is there.
        let (first_in_tail, from_tail) = {
            let tail = self.tail();
            let first = tail.first_index().unwrap_or(u64::MAX);
            let from_tail = tail.entries.range(from.max(first)..to.max(first)).map(|(_, e)| e.entry.clone());
            (first, from_tail.collect::<Vec<_>>())
        };
        let mut entries = Vec::new();
        if from < first_in_tail {
            let stored = self.journal.read_log(self.group, from, to.min(first_in_tail), usize::MAX);
            for (_, bytes) in stored.map_err(read_error)? {
                entries.push(decode_entry(&bytes).map_err(read_error)?);
            }
        }
        entries.extend(from_tail);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId> = match self.journal.raft(self.group, PURGED).map_err(read_error)? {
            Some(bytes) => Some(decode_purged(&bytes).map_err(read_error)?),
            None => None,
        };
        let in_memory = self.tail().entries.last_key_value().map(|(_, e)| e.entry.log_id);
        let stored = match self.journal.last_log(self.group).map_err(read_error)? {
            Some((_, bytes)) => Some(decode_entry(&bytes).map_err(read_error)?.log_id),
            None => None,
        };
        let last = in_memory.max(stored).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write =
            PartitionWrite { raft: vec![(VOTE, encode_json(vote))], ..PartitionWrite::new(self.group) };
        self.write(write).await.map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        match self.journal.raft(self.group, VOTE) {
            Ok(Some(bytes)) => decode_vote(&bytes)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(AnyError::error(e.to_string())).into()),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_vote(AnyError::error(e.to_string())).into()),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut write = PartitionWrite::new(self.group);
        let mut appended = Vec::new();
        {
            let mut tail = self.tail();
            for entry in entries {
                let bytes = encode_entry(&entry);
                let len = bytes.len();
                appended.push((entry.log_id, len));
                write.appends.push((entry.log_id.index, bytes));
                tail.append(entry, len);
            }
        }
        let tail = self.tail.clone();
        // Called on the journal's writer thread, which saves Raft a task hop per commit.
        let landed = move |result: Result<(), casty_journal::JournalError>| {
            if result.is_ok() {
                tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner).landed(&appended);
            }
            callback.log_io_completed(result.map_err(io::Error::other));
        };
        self.journal.submit(write, landed).await.map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.tail().retain(|index| index < log_id.index);
        let write = PartitionWrite { truncate_from: Some(log_id.index), ..PartitionWrite::new(self.group) };
        self.write(write).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.tail().retain(|index| index > log_id.index);
        let write = PartitionWrite {
            raft: vec![(PURGED, encode_json(&log_id))],
            purge_through: Some(log_id.index),
            ..PartitionWrite::new(self.group)
        };
        self.write(write).await.map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 7), index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn the_tail_drops_only_durable_entries_beyond_its_byte_limit() {
        let mut tail = Tail::default();
        let half = RAFT_LOG_TAIL_BYTES_MAX / 2;
        for index in 1..=4 {
            tail.append(entry(index), half);
        }
        // Nothing is durable yet: all four stay, however large.
        tail.landed(&[]);
        assert_eq!(tail.entries.len(), 4);
        tail.landed(&[(entry(1).log_id, half), (entry(2).log_id, half), (entry(3).log_id, half)]);
        assert_eq!(tail.first_index(), Some(2), "one durable entry too many is dropped, the oldest");
        assert_eq!(tail.durable_bytes, 2 * half);
        // A landing of an entry replaced after a truncation changes nothing.
        let replaced = LogId::new(CommittedLeaderId::new(0, 7), 4);
        tail.landed(&[(replaced, half)]);
        assert!(!tail.entries[&4].durable);
        // Writing index 3 again (Raft truncates first, but the count holds regardless).
        tail.append(entry(3), 1);
        assert_eq!(tail.durable_bytes, half, "the durable entry written over no longer counts");
        tail.retain(|index| index < 3);
        assert_eq!(tail.entries.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(tail.durable_bytes, half, "dropped durable entries no longer count");
    }

    #[tokio::test]
    async fn reads_take_the_tail_from_memory_and_the_rest_from_the_journal() {
        let journal = Journal::in_memory().expect("an in-memory journal");
        let appends = (1..=10).map(|i| (i, encode_entry(&entry(i)))).collect();
        journal.write(PartitionWrite { appends, ..PartitionWrite::new(3) }).await.expect("write the log");
        let mut store = LogStore::new(journal, 3);
        for index in 6..=12 {
            store.tail().append(entry(index), 1);
        }
        assert_eq!(indexes(&store.try_get_log_entries(1..13).await.unwrap()), (1..=12).collect::<Vec<_>>());
        assert_eq!(indexes(&store.try_get_log_entries(4..8).await.unwrap()), vec![4, 5, 6, 7]);
        assert_eq!(indexes(&store.try_get_log_entries(7..=8).await.unwrap()), vec![7, 8]);
        assert_eq!(indexes(&store.try_get_log_entries(2..4).await.unwrap()), vec![2, 3]);
        assert_eq!(indexes(&store.try_get_log_entries(11..).await.unwrap()), vec![11, 12]);
        assert!(store.try_get_log_entries(13..20).await.unwrap().is_empty());
        assert!(store.try_get_log_entries(5..5).await.unwrap().is_empty());
    }
}
