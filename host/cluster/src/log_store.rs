//! A Raft group's log and vote in the node's journal.
//!
//! Appends go through the journal's writer, so one transaction (one fsync) carries the
//! appends of every group that is waiting. Raft needs appended entries readable at once,
//! before they are durable, so they are also kept in memory until their commit lands.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use casty_journal::{Journal, PartitionWrite};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageError, StorageIOError, Vote};

use crate::codec::{decode_entry, decode_json, encode_entry, encode_json};
use crate::{Entry, LogId, NodeId, TypeConfig};

const VOTE: u8 = 0;
const PURGED: u8 = 1;

/// One group's log store; cheap to clone (clones share the unflushed entries).
#[derive(Clone, Debug)]
pub struct LogStore {
    journal: Journal,
    group: u32,
    /// Appended entries whose commit has not been seen to land, by index.
    unflushed: Arc<Mutex<BTreeMap<u64, Entry>>>,
}

impl LogStore {
    pub fn new(journal: Journal, group: u32) -> Self {
        Self { journal, group, unflushed: Arc::default() }
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.unflushed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        // Memory first: an entry whose commit lands meanwhile leaves memory but is then in
        // the journal read below, so it is seen either way.
        let mut entries: BTreeMap<u64, Entry> =
            self.unflushed().range(from..to).map(|(i, e)| (*i, e.clone())).collect();
        for (index, bytes) in self.journal.read_log(self.group, from, to, usize::MAX).map_err(read_error)? {
            if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(index) {
                slot.insert(decode_entry(&bytes).map_err(read_error)?);
            }
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId> = match self.journal.raft(self.group, PURGED).map_err(read_error)? {
            Some(bytes) => Some(decode_json("purged log id", &bytes).map_err(read_error)?),
            None => None,
        };
        let in_memory = self.unflushed().last_key_value().map(|(_, e)| e.log_id);
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
            Ok(Some(bytes)) => decode_json("vote", &bytes)
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
            let mut unflushed = self.unflushed();
            for entry in entries {
                write.appends.push((entry.log_id.index, encode_entry(&entry)));
                appended.push(entry.log_id);
                unflushed.insert(entry.log_id.index, entry);
            }
        }
        let unflushed = self.unflushed.clone();
        // Called on the journal's writer thread, which saves Raft a task hop per commit.
        let landed = move |result: Result<(), casty_journal::JournalError>| {
            if result.is_ok() {
                let mut unflushed = unflushed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for log_id in appended {
                    // A later append may have replaced it after a truncation; keep that one.
                    if unflushed.get(&log_id.index).is_some_and(|e| e.log_id == log_id) {
                        unflushed.remove(&log_id.index);
                    }
                }
            }
            callback.log_io_completed(result.map_err(io::Error::other));
        };
        self.journal.submit(write, landed).await.map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.unflushed().split_off(&log_id.index);
        let write = PartitionWrite { truncate_from: Some(log_id.index), ..PartitionWrite::new(self.group) };
        self.write(write).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.unflushed().retain(|&index, _| index > log_id.index);
        let write = PartitionWrite {
            raft: vec![(PURGED, encode_json(&log_id))],
            purge_through: Some(log_id.index),
            ..PartitionWrite::new(self.group)
        };
        self.write(write).await.map_err(write_error)
    }
}
