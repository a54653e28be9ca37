//! One group's Raft log and state as raft-rs reads them ([`raft::Storage`]): the newest
//! entries in memory, older ones read back from the journal.
//!
//! Every change is made twice: here at once, because raft-rs must read what it appended
//! before the append is durable, and into the round's journal write, which the loop
//! commits for every group at once. Entries that are not yet durable always stay in
//! memory; durable ones are dropped from memory, oldest first, past a byte limit.

use std::collections::VecDeque;

use casty_core::limits::RAFT_LOG_TAIL_BYTES_MAX;
use casty_journal::{Journal, JournalError, PartitionWrite};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use crate::wire::{self, WireConfState, WireEntry};

/// Keys of the group's records in the journal's Raft table.
const HARD_STATE: u8 = 10;
const CONF_STATE: u8 = 11;
const SNAPSHOT_META: u8 = 12;

/// The hard state as stored: (term, vote, commit).
type StoredHardState = (u64, u64, u64);

/// Where the last snapshot left the log: its index and term, and the configuration then.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredSnapshotMeta {
    index: u64,
    term: u64,
    conf: WireConfState,
}

/// The journal a group reads evicted entries back from, or none: a group without one
/// keeps every entry in memory (the in-process tests).
pub type Cold = Option<Journal>;

#[derive(Debug)]
pub struct GroupLog {
    group: u32,
    cold: Cold,
    hard_state: HardState,
    conf_state: ConfState,
    /// The log before `first_index` is gone; this is where it ended.
    snapshot_meta: SnapshotMetadata,
    /// The newest entries, `tail_first..=last`.
    tail: VecDeque<Entry>,
    tail_first: u64,
    tail_bytes: usize,
    last: u64,
    last_term: u64,
    /// Entries through this index are durable.
    durable: u64,
}

impl GroupLog {
    /// A new group's empty log, with its first configuration.
    pub fn new(group: u32, voters: Vec<u64>, cold: Cold) -> Self {
        let conf_state = ConfState { voters, ..ConfState::default() };
        let mut snapshot_meta = SnapshotMetadata::default();
        snapshot_meta.set_conf_state(conf_state.clone());
        Self {
            group,
            cold,
            hard_state: HardState::default(),
            conf_state,
            snapshot_meta,
            tail: VecDeque::new(),
            tail_first: 1,
            tail_bytes: 0,
            last: 0,
            last_term: 0,
            durable: 0,
        }
    }

    /// The group's log as the journal holds it, or `None` when the journal has none.
    pub fn recover(group: u32, journal: &Journal) -> Result<Option<Self>, JournalError> {
        let corrupt =
            |what: &str| JournalError::Corrupt { table: "raft", key: format!("group {group} {what}") };
        let Some(hard) = journal.raft(group, HARD_STATE)? else { return Ok(None) };
        let (term, vote, commit): StoredHardState =
            wire::decode("hard state", &hard).map_err(|_| corrupt("hard state"))?;
        let conf = match journal.raft(group, CONF_STATE)? {
            Some(bytes) => {
                wire::decode::<WireConfState>("conf state", &bytes).map_err(|_| corrupt("conf state"))?
            }
            None => WireConfState::default(),
        };
        let meta = match journal.raft(group, SNAPSHOT_META)? {
            Some(bytes) => wire::decode("snapshot meta", &bytes).map_err(|_| corrupt("snapshot meta"))?,
            None => StoredSnapshotMeta::default(),
        };
        let (last, last_term) = match journal.last_log(group)? {
            Some((index, bytes)) => {
                let entry: WireEntry = wire::decode("entry", &bytes).map_err(|_| corrupt("last entry"))?;
                let entry = entry.into_raft().map_err(|_| corrupt("last entry"))?;
                (index, entry.term)
            }
            None => (meta.index, meta.term),
        };
        let mut log = Self::new(group, Vec::new(), Some(journal.clone()));
        log.hard_state.term = term;
        log.hard_state.vote = vote;
        log.hard_state.commit = commit.max(meta.index);
        log.conf_state = conf.into_raft();
        log.snapshot_meta.index = meta.index;
        log.snapshot_meta.term = meta.term;
        log.snapshot_meta.set_conf_state(meta.conf.into_raft());
        (log.tail_first, log.last, log.last_term, log.durable) = (last + 1, last, last_term, last);
        Ok(Some(log))
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    /// Appends `entries` (raft-rs's unstable ones), first dropping any entries at and
    /// after the first of them: a new leader overwrote the uncommitted tail.
    pub fn append(&mut self, entries: Vec<Entry>, write: &mut PartitionWrite) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        if first <= self.last {
            write.truncate_from = Some(write.truncate_from.map_or(first, |from| from.min(first)));
            write.appends.retain(|(index, _)| *index < first);
            if first < self.tail_first {
                // Everything in memory is after the cut; the journal keeps what precedes it.
                self.tail.clear();
                self.tail_first = first;
                self.tail_bytes = 0;
            } else {
                while self.tail.back().is_some_and(|e| e.index >= first) {
                    let dropped = self.tail.pop_back().expect("the tail is not empty");
                    self.tail_bytes -= entry_bytes(&dropped);
                }
            }
            self.durable = self.durable.min(first - 1);
        }
        for entry in entries {
            write.appends.push((entry.index, wire::encode(&WireEntry::from_raft(&entry))));
            (self.last, self.last_term) = (entry.index, entry.term);
            self.tail_bytes += entry_bytes(&entry);
            self.tail.push_back(entry);
        }
        if let Some(front) = self.tail.front() {
            self.tail_first = front.index;
        }
    }

    pub fn set_hard_state(&mut self, hs: &HardState, write: &mut PartitionWrite) {
        self.hard_state = hs.clone();
        let stored: StoredHardState = (hs.term, hs.vote, hs.commit);
        write.raft.push((HARD_STATE, wire::encode(&stored)));
    }

    /// Records the configuration a committed conf change made.
    pub fn set_conf_state(&mut self, cs: ConfState, write: &mut PartitionWrite) {
        write.raft.push((CONF_STATE, wire::encode(&WireConfState::from_raft(&cs))));
        self.conf_state = cs;
    }

    /// Entries through `index` are durable: those may leave memory past the byte limit.
    pub fn persisted(&mut self, index: u64) {
        self.durable = self.durable.max(index.min(self.last));
        if self.cold.is_none() {
            return;
        }
        while self.tail_bytes > RAFT_LOG_TAIL_BYTES_MAX
            && self.tail.len() > 1
            && self.tail.front().is_some_and(|e| e.index <= self.durable)
        {
            let evicted = self.tail.pop_front().expect("the tail is not empty");
            self.tail_bytes -= entry_bytes(&evicted);
            self.tail_first = evicted.index + 1;
        }
    }

    fn first(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    /// Entries `from..to` that left memory, from the journal.
    fn cold_entries(&self, from: u64, to: u64) -> raft::Result<Vec<Entry>> {
        let Some(journal) = &self.cold else { return Err(raft::Error::Store(StorageError::Unavailable)) };
        let failed = |e: String| raft::Error::Store(StorageError::Other(e.into()));
        let stored = journal.read_log(self.group, from, to, usize::MAX).map_err(|e| failed(e.to_string()))?;
        let mut entries = Vec::with_capacity(stored.len());
        for (index, bytes) in stored {
            let entry: WireEntry = wire::decode("entry", &bytes).map_err(|e| failed(e.to_string()))?;
            entries.push(entry.into_raft().map_err(|e| failed(format!("entry {index}: {e}")))?);
        }
        if entries.len() as u64 != to - from {
            return Err(failed(format!("group {} is missing log entries in {from}..{to}", self.group)));
        }
        Ok(entries)
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 32
}

impl raft::Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = if low < self.tail_first {
            self.cold_entries(low, high.min(self.tail_first))?
        } else {
            Vec::new()
        };
        let skip = low.saturating_sub(self.tail_first) as usize;
        let take = high.saturating_sub(low.max(self.tail_first)) as usize;
        entries.extend(self.tail.iter().skip(skip).take(take).cloned());
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last {
            return Ok(self.last_term);
        }
        match idx.checked_sub(self.tail_first) {
            Some(offset) => Ok(self.tail[offset as usize].term),
            None => Ok(self.cold_entries(idx, idx + 1)?[0].term),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshots of a partition come from its worker; until one is ready, raft-rs asks
        // again later.
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

/// The conf change a committed conf-change entry holds. Its protobuf was made in this
/// process ([`crate::wire`]), from a change decoded in Casty's encoding.
pub fn conf_change_of(entry: &Entry) -> Option<raft::eraftpb::ConfChangeV2> {
    let mut cc = raft::eraftpb::ConfChangeV2::default();
    cc.merge_from_bytes(&entry.data).ok().map(|()| cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|index| {
                let mut e = Entry::default();
                (e.index, e.term) = (index, term);
                e.data = vec![0u8; 100].into();
                e
            })
            .collect()
    }

    #[test]
    fn an_overwritten_tail_is_cut_in_memory_and_in_the_write() {
        let mut log = GroupLog::new(0, vec![1], None);
        let mut write = PartitionWrite::new(0);
        log.append(entries(1..=5, 1), &mut write);
        log.append(entries(4..=6, 2), &mut write);
        assert_eq!(write.truncate_from, Some(4));
        let written: Vec<u64> = write.appends.iter().map(|(i, _)| *i).collect();
        assert_eq!(written, [1, 2, 3, 4, 5, 6]);
        assert_eq!(log.last_index().unwrap(), 6);
        let terms: Vec<u64> = (1..=6).map(|i| log.term(i).unwrap()).collect();
        assert_eq!(terms, [1, 1, 1, 2, 2, 2]);
        let got = log.entries(2, 7, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
        assert!(log.entries(2, 8, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn durable_entries_past_the_limit_are_read_back_from_the_journal() {
        let journal = Journal::in_memory().unwrap();
        let mut log = GroupLog::new(3, vec![1], Some(journal.clone()));
        let mut write = PartitionWrite::new(3);
        let many = (RAFT_LOG_TAIL_BYTES_MAX / 100) as u64 * 2;
        log.append(entries(1..=many, 1), &mut write);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(journal.write(write))
            .unwrap();
        log.persisted(many);
        assert!(log.tail_first > 1, "some entries left memory");
        assert!(log.tail_bytes <= RAFT_LOG_TAIL_BYTES_MAX);
        let got = log.entries(1, many + 1, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len() as u64, many);
        assert!(got.iter().zip(1..).all(|(e, i)| e.index == i && e.term == 1));
        assert_eq!(log.term(1).unwrap(), 1);
    }
}
