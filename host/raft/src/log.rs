//! One group's Raft log and state as raft-rs reads them ([`raft::Storage`]): the newest
//! entries in memory, older ones read back from the journal.
//!
//! Every change is made twice: here at once, because raft-rs must read what it appended
//! before the append is durable, and into the round's journal write, which the loop
//! commits for every group at once. Entries that are not yet durable always stay in
//! memory; durable ones are dropped from memory, oldest first, past a byte limit.

use std::collections::VecDeque;
use std::sync::Arc;

use casty_core::limits::RAFT_LOG_TAIL_BYTES_MAX;
use casty_journal::JournalError;
use casty_journal::raft_log::{Location, LogFiles, Record, RecoveredGroup, RoundBuffer};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::wire::{self, WireConfState, WireEntry};

/// Keys of the group's states in the Raft log.
const HARD_STATE: u8 = 1;
const CONF_STATE: u8 = 2;

/// The hard state as stored: (term, vote, commit).
type StoredHardState = (u64, u64, u64);

/// The log files a group reads entries that left memory back from, or none: a group
/// without them keeps every entry in memory (the in-process tests).
pub type Cold = Option<Arc<LogFiles>>;

#[derive(Debug)]
pub struct GroupLog {
    group: u32,
    cold: Cold,
    hard_state: HardState,
    conf_state: ConfState,
    /// The log before `first_index` is gone; this is where it ended.
    snapshot_meta: SnapshotMetadata,
    /// Where every entry from the first on lies in the log files.
    locations: VecDeque<Location>,
    /// The newest entries, `tail_first..=last`.
    tail: VecDeque<Entry>,
    tail_first: u64,
    tail_bytes: usize,
    last: u64,
    last_term: u64,
    /// Entries through this index are durable.
    durable: u64,
    /// A new group's first configuration still has to reach the log file; it goes with
    /// the group's first record.
    conf_unsaved: bool,
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
            locations: VecDeque::new(),
            tail: VecDeque::new(),
            tail_first: 1,
            tail_bytes: 0,
            last: 0,
            last_term: 0,
            durable: 0,
            conf_unsaved: true,
        }
    }

    /// The group's log as the log files held it at start-up. Its owner has applied the
    /// entries through `applied`, which were committed, so the commit index is at least
    /// that (raft-rs writes the commit index lazily).
    pub fn recover(
        group: u32,
        recovered: RecoveredGroup,
        files: Arc<LogFiles>,
        applied: u64,
    ) -> Result<Self, JournalError> {
        let corrupt =
            |what: &str| JournalError::Corrupt { table: "raft log", key: format!("group {group} {what}") };
        let mut log = Self::new(group, Vec::new(), Some(files.clone()));
        log.conf_unsaved = false;
        if let Some(bytes) = recovered.states.get(&HARD_STATE) {
            let (term, vote, commit): StoredHardState =
                wire::decode("hard state", bytes).map_err(|_| corrupt("hard state"))?;
            (log.hard_state.term, log.hard_state.vote, log.hard_state.commit) = (term, vote, commit);
        }
        if let Some(bytes) = recovered.states.get(&CONF_STATE) {
            let conf: WireConfState = wire::decode("conf state", bytes).map_err(|_| corrupt("conf state"))?;
            log.conf_state = conf.into_raft();
        }
        if let Some(at) = recovered.entries.back() {
            let entry = entry_at(&files, *at)?;
            (log.last, log.last_term) = (entry.index, entry.term);
            log.snapshot_meta.index = recovered.first - 1;
        }
        log.locations = recovered.entries;
        (log.tail_first, log.durable) = (log.last + 1, log.last);
        log.hard_state.commit = log.hard_state.commit.max(applied.min(log.last));
        Ok(log)
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    /// Appends `entries` (raft-rs's unstable ones), first dropping any entries at and
    /// after the first of them: a new leader overwrote the uncommitted tail. The log
    /// file drops them when it reads the first entry back.
    pub fn append(&mut self, entries: Vec<Entry>, write: &mut RoundBuffer) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        self.save_conf(write);
        if first <= self.last {
            self.locations.truncate((first - self.first()) as usize);
            if first < self.tail_first {
                // Everything in memory is after the cut; the files keep what precedes it.
                self.tail.clear();
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
            let bytes = wire::encode(&WireEntry::from_raft(&entry));
            self.locations.push_back(write.push(&Record::Entry {
                group: self.group,
                index: entry.index,
                bytes,
            }));
            (self.last, self.last_term) = (entry.index, entry.term);
            self.tail_bytes += entry_bytes(&entry);
            self.tail.push_back(entry);
        }
        if let Some(front) = self.tail.front() {
            self.tail_first = front.index;
        }
    }

    pub fn set_hard_state(&mut self, hs: &HardState, write: &mut RoundBuffer) {
        self.save_conf(write);
        self.hard_state = hs.clone();
        let stored: StoredHardState = (hs.term, hs.vote, hs.commit);
        write.push(&Record::State { group: self.group, key: HARD_STATE, bytes: wire::encode(&stored) });
    }

    /// Records the configuration a committed conf change made.
    pub fn set_conf_state(&mut self, cs: ConfState, write: &mut RoundBuffer) {
        self.conf_state = cs;
        self.conf_unsaved = true;
        self.save_conf(write);
    }

    fn save_conf(&mut self, write: &mut RoundBuffer) {
        if std::mem::take(&mut self.conf_unsaved) {
            let bytes = wire::encode(&WireConfState::from_raft(&self.conf_state));
            write.push(&Record::State { group: self.group, key: CONF_STATE, bytes });
        }
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

    /// Entries `from..to` that left memory, from the log files.
    fn cold_entries(&self, from: u64, to: u64) -> raft::Result<Vec<Entry>> {
        let Some(files) = &self.cold else { return Err(raft::Error::Store(StorageError::Unavailable)) };
        let failed = |e: JournalError| raft::Error::Store(StorageError::Other(e.into()));
        let skip = (from - self.first()) as usize;
        let locations: Vec<Location> =
            self.locations.iter().skip(skip).take((to - from) as usize).copied().collect();
        if locations.len() as u64 != to - from {
            let missing = format!("group {} has no record of entries {from}..{to}", self.group);
            return Err(failed(JournalError::Corrupt { table: "raft log", key: missing }));
        }
        locations.into_iter().map(|at| entry_at(files, at).map_err(failed)).collect()
    }
}

/// The entry stored at `at`.
fn entry_at(files: &LogFiles, at: Location) -> Result<Entry, JournalError> {
    let corrupt = || JournalError::Corrupt { table: "raft log", key: format!("entry at {at:?}") };
    match files.read(at)? {
        Record::Entry { bytes, .. } => {
            let entry: WireEntry = wire::decode("entry", &bytes).map_err(|_| corrupt())?;
            entry.into_raft().map_err(|_| corrupt())
        }
        Record::State { .. } => Err(corrupt()),
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
            None => Ok(self.cold_entries(idx, idx + 1)?.first().map_or(0, |e| e.term)),
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
        let mut write = RoundBuffer::new(1, 0);
        log.append(entries(1..=5, 1), &mut write);
        log.append(entries(4..=6, 2), &mut write);
        assert_eq!(log.locations.len(), 6);
        assert_eq!(log.last_index().unwrap(), 6);
        let terms: Vec<u64> = (1..=6).map(|i| log.term(i).unwrap()).collect();
        assert_eq!(terms, [1, 1, 1, 2, 2, 2]);
        let got = log.entries(2, 7, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
        assert!(log.entries(2, 8, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn entries_that_left_memory_are_read_back_and_a_restart_recovers_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
        let writer = casty_journal::raft_log::LogWriter::start(&files).unwrap();
        let mut log = GroupLog::new(3, vec![1], Some(files.clone()));
        let many = (RAFT_LOG_TAIL_BYTES_MAX / 100) as u64 * 2;
        log.append(entries(1..=many, 1), &mut next);
        let hs = HardState { term: 1, vote: 1, commit: many - 1, ..HardState::default() };
        log.set_hard_state(&hs, &mut next);
        let (tx, rx) = std::sync::mpsc::channel();
        writer.submit(next.take(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        log.persisted(many);
        assert!(log.tail_first > 1, "some entries left memory");
        assert!(log.tail_bytes <= RAFT_LOG_TAIL_BYTES_MAX);
        let check = |log: &GroupLog| {
            let got = log.entries(1, many + 1, None, GetEntriesContext::empty(false)).unwrap();
            assert_eq!(got.len() as u64, many);
            assert!(got.iter().zip(1..).all(|(e, i)| e.index == i && e.term == 1));
            assert_eq!(log.term(1).unwrap(), 1);
        };
        check(&log);
        drop((writer, files));
        let (files, mut groups, _) = LogFiles::open(dir.path()).unwrap();
        let recovered = GroupLog::recover(3, groups.remove(&3).unwrap(), files, 0).unwrap();
        check(&recovered);
        let state = recovered.initial_state().unwrap();
        assert_eq!(state.hard_state, hs);
        assert_eq!(state.conf_state.voters, [1], "the first configuration went with the first record");
    }
}
