//! One group's Raft log and state as raft-rs reads them ([`raft::Storage`]): the newest
//! entries in memory, older ones read back from the Raft log files.
//!
//! Every change is made twice: here at once, because raft-rs must read what it appended
//! before the append is durable, and into the round's buffer for the log files, which
//! the loop writes for every group at once. Entries that are not yet durable always stay
//! in memory; durable ones are dropped from memory, oldest first, past a byte limit.
//!
//! A group's log starts after a snapshot: for a founding replica, the empty partition at
//! [`FIRST_INDEX`] with the first configuration; later, the partition its owner exported
//! at a checkpoint, behind which the log is compacted; on a replica that was behind or
//! new, the snapshot its leader sent. A replica that joins starts with nothing, not even a
//! configuration, so its leader has to send it a snapshot before any entry.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

use casty_core::limits::{RAFT_LOG_TAIL_BYTES_MAX, RAFT_SNAPSHOT_CHUNK_BYTES};
use casty_journal::JournalError;
use casty_journal::raft_log::{Location, LogFiles, Record, RecoveredGroup, RoundBuffer};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use crate::wire::{self, WireConfState, WireEntry};

/// Where a founding replica's log starts: after the empty partition at this index and
/// term. Starting above zero makes a replica that joins later (whose log is empty) need
/// a snapshot, which carries the configuration it cannot otherwise learn.
pub const FIRST_INDEX: u64 = 1;
const FIRST_TERM: u64 = 1;

/// Keys of the group's states in the Raft log.
const HARD_STATE: u8 = 1;
const CONF_STATE: u8 = 2;
const LOG_START: u8 = 3;

/// The hard state as stored: (term, vote, commit).
type StoredHardState = (u64, u64, u64);

/// Where the log starts: the index and term of the snapshot before its first entry.
type StoredLogStart = (u64, u64);

/// A snapshot as the log files keep one a leader sent, until its owner has it in a
/// checkpoint of its own; its data is in the chunk records before it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    term: u64,
    conf: WireConfState,
    len: u64,
}

/// The log files a group reads entries that left memory back from, or none: a group
/// without them keeps every entry in memory (tests).
pub type Cold = Option<Arc<LogFiles>>;

#[derive(Debug)]
pub struct GroupLog {
    group: u32,
    cold: Cold,
    hard_state: HardState,
    conf_state: ConfState,
    /// Configurations since the log's start: (index of the entry that made it, state).
    /// A snapshot at an index carries the one in force there.
    confs: Vec<(u64, ConfState)>,
    /// The log before `first_index` is gone; this is where it ended.
    snapshot_meta: SnapshotMetadata,
    /// The newest snapshot its owner exported, which raft-rs sends replicas that are
    /// behind the log's start.
    exported: Option<Snapshot>,
    /// raft-rs asked for a snapshot newer than `exported`.
    wanted: Cell<bool>,
    /// The records of a leader's snapshot the owner has not exported past yet (its
    /// index, the snapshot record, the data's chunks): the log files must keep them.
    installed_at: Option<(u64, Location, Vec<Location>)>,
    /// Where every entry from the first on lies in the log files.
    locations: VecDeque<Location>,
    /// The newest entries, through `last`; entries before them left memory.
    tail: VecDeque<Entry>,
    tail_bytes: usize,
    last: u64,
    last_term: u64,
    /// Entries through this index are durable.
    durable: u64,
    /// A new log's configuration and start still have to reach the log files; they go
    /// with the group's first record.
    start_unsaved: bool,
}

impl GroupLog {
    /// A founding replica's log: the empty partition at [`FIRST_INDEX`], `voters` its
    /// first configuration.
    pub fn new(group: u32, voters: Vec<u64>, cold: Cold) -> Self {
        let mut log = Self::joining(group, cold);
        log.conf_state = ConfState { voters, ..ConfState::default() };
        log.confs = vec![(FIRST_INDEX, log.conf_state.clone())];
        log.start_at(FIRST_INDEX, FIRST_TERM);
        log.hard_state = HardState { term: FIRST_TERM, commit: FIRST_INDEX, ..HardState::default() };
        log
    }

    /// The log of a replica that joins a group: empty until its leader sends a snapshot.
    pub fn joining(group: u32, cold: Cold) -> Self {
        Self {
            group,
            cold,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            confs: Vec::new(),
            snapshot_meta: SnapshotMetadata::default(),
            exported: None,
            wanted: Cell::new(false),
            installed_at: None,
            locations: VecDeque::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            last: 0,
            last_term: 0,
            durable: 0,
            start_unsaved: true,
        }
    }

    /// The log is empty and starts after (`index`, `term`).
    fn start_at(&mut self, index: u64, term: u64) {
        self.snapshot_meta.index = index;
        self.snapshot_meta.term = term;
        self.locations.clear();
        self.tail.clear();
        self.tail_bytes = 0;
        (self.last, self.last_term, self.durable) = (index, term, index);
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
        let mut log = Self::joining(group, Some(files.clone()));
        log.start_unsaved = false;
        if let Some(bytes) = recovered.states.get(&HARD_STATE) {
            let (term, vote, commit): StoredHardState =
                wire::decode("hard state", bytes).map_err(|_| corrupt("hard state"))?;
            (log.hard_state.term, log.hard_state.vote, log.hard_state.commit) = (term, vote, commit);
        }
        if let Some(bytes) = recovered.states.get(&CONF_STATE) {
            let conf: WireConfState = wire::decode("conf state", bytes).map_err(|_| corrupt("conf state"))?;
            log.conf_state = conf.into_raft();
        }
        if let Some(bytes) = recovered.states.get(&LOG_START) {
            let (index, term): StoredLogStart =
                wire::decode("log start", bytes).map_err(|_| corrupt("log start"))?;
            log.start_at(index, term);
        }
        // The configuration at the log's start is the newest one: conf changes after it
        // are re-applied from the log as raft-rs hands the entries over again.
        log.confs = vec![(log.snapshot_meta.index, log.conf_state.clone())];
        if let Some(at) = recovered.entries.back() {
            let entry = entry_at(&files, *at)?;
            if recovered.first != log.first() {
                return Err(corrupt("entries that do not start where the log does"));
            }
            (log.last, log.last_term, log.durable) = (entry.index, entry.term, entry.index);
            log.locations = recovered.entries;
        }
        log.hard_state.commit = log.hard_state.commit.max(applied.min(log.last));
        log.installed_at = recovered.snapshot.map(|(at, chunks)| (log.snapshot_meta.index, at, chunks));
        Ok(log)
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    /// The configuration as this replica has applied it.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The snapshot a leader sent that the owner has not exported past, as the log files
    /// keep it: (index, data). After a restart, an owner whose own checkpoint is older
    /// restores it.
    pub fn installed_snapshot(&self) -> Option<Result<(u64, Vec<u8>), JournalError>> {
        let (index, at, chunks) = self.installed_at.as_ref()?;
        let files = self.cold.as_ref()?;
        let corrupt = || JournalError::Corrupt { table: "raft log", key: format!("snapshot at {at:?}") };
        let read = || {
            let Record::Snapshot { bytes, .. } = files.read(*at)? else { return Err(corrupt()) };
            let stored: StoredSnapshot = wire::decode("snapshot", &bytes).map_err(|_| corrupt())?;
            let mut data = Vec::with_capacity(chunks.len() * RAFT_SNAPSHOT_CHUNK_BYTES);
            for chunk in chunks {
                let Record::SnapshotChunk { bytes, .. } = files.read(*chunk)? else { return Err(corrupt()) };
                data.extend_from_slice(&bytes);
            }
            if data.len() as u64 != stored.len {
                return Err(corrupt());
            }
            Ok((*index, data))
        };
        Some(read())
    }

    /// Appends `entries` (raft-rs's unstable ones), first dropping any entries at and
    /// after the first of them: a new leader overwrote the uncommitted tail. The log
    /// file drops them when it reads the first entry back.
    pub fn append(&mut self, entries: Vec<Entry>, write: &mut RoundBuffer) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        self.save_start(write);
        if first <= self.last {
            self.locations.truncate((first - self.first()) as usize);
            if first < self.tail_first() {
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
    }

    /// Records the hard state. Unless `must_sync` (raft-rs's `Ready::must_sync`: the
    /// term or vote changed, or entries came with it), the change is the commit index
    /// alone, which the round need not wait for the disk to count as durable.
    pub fn set_hard_state(&mut self, hs: &HardState, must_sync: bool, write: &mut RoundBuffer) {
        self.save_start(write);
        self.hard_state = hs.clone();
        let stored: StoredHardState = (hs.term, hs.vote, hs.commit);
        let record = Record::State { group: self.group, key: HARD_STATE, bytes: wire::encode(&stored) };
        if must_sync {
            write.push(&record);
        } else {
            write.push_unsynced(&record);
        }
    }

    /// Records the configuration the committed conf change at `index` made.
    pub fn set_conf_state(&mut self, index: u64, cs: ConfState, write: &mut RoundBuffer) {
        self.save_start(write);
        self.confs.push((index, cs.clone()));
        self.conf_state = cs;
        self.save_conf(write);
    }

    fn save_conf(&self, write: &mut RoundBuffer) {
        let bytes = wire::encode(&WireConfState::from_raft(&self.conf_state));
        write.push(&Record::State { group: self.group, key: CONF_STATE, bytes });
    }

    fn save_log_start(&self, write: &mut RoundBuffer) {
        let stored: StoredLogStart = (self.snapshot_meta.index, self.snapshot_meta.term);
        write.push(&Record::State { group: self.group, key: LOG_START, bytes: wire::encode(&stored) });
    }

    fn save_start(&mut self, write: &mut RoundBuffer) {
        if std::mem::take(&mut self.start_unsaved) {
            self.save_conf(write);
            self.save_log_start(write);
        }
    }

    /// Replaces the log with a snapshot its leader sent; the snapshot is kept in the log
    /// files until the owner compacts past it.
    pub fn install(&mut self, snapshot: &Snapshot, write: &mut RoundBuffer) {
        let meta = snapshot.get_metadata();
        self.start_unsaved = false;
        self.conf_state = meta.get_conf_state().clone();
        self.confs = vec![(meta.index, self.conf_state.clone())];
        self.start_at(meta.index, meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        let chunks = snapshot.data.chunks(RAFT_SNAPSHOT_CHUNK_BYTES).map(|chunk| {
            write.push(&Record::SnapshotChunk { group: self.group, index: meta.index, bytes: chunk.to_vec() })
        });
        let chunks = chunks.collect();
        let stored = StoredSnapshot {
            term: meta.term,
            conf: WireConfState::from_raft(&self.conf_state),
            len: snapshot.data.len() as u64,
        };
        let bytes = wire::encode(&stored);
        let at = write.push(&Record::Snapshot { group: self.group, index: meta.index, bytes });
        self.installed_at = Some((meta.index, at, chunks));
        self.save_conf(write);
        self.save_log_start(write);
    }

    /// Takes the owner's export of the partition at `index` (which it has applied): what
    /// raft-rs sends a replica that is behind the log's start. The log is compacted
    /// through `index`.
    pub fn exported(
        &mut self,
        index: u64,
        data: Vec<u8>,
        write: &mut RoundBuffer,
    ) -> Result<(), StorageError> {
        if index < self.snapshot_meta.index || index > self.last {
            return Err(StorageError::SnapshotOutOfDate);
        }
        let term = raft::Storage::term(self, index).map_err(|_| StorageError::Unavailable)?;
        let conf =
            self.confs.iter().rev().find(|(at, _)| *at <= index).map(|(_, c)| c.clone()).unwrap_or_default();
        let mut meta = SnapshotMetadata { index, term, ..SnapshotMetadata::default() };
        meta.set_conf_state(conf);
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        snapshot.set_metadata(meta);
        self.exported = Some(snapshot);
        self.wanted.set(false);
        self.compact(index, term, write);
        Ok(())
    }

    /// Drops the entries through `index`, which the owner has in a durable checkpoint,
    /// without an export: a replica that falls behind the log's start then makes raft-rs
    /// ask the owner for one ([`raft::Storage::snapshot`]). Indexes outside the durable
    /// log change nothing.
    pub fn compact_through(&mut self, index: u64, write: &mut RoundBuffer) {
        if index < self.first() || index > self.durable {
            return;
        }
        let Ok(term) = raft::Storage::term(self, index) else { return };
        if self.exported.as_ref().is_some_and(|e| e.get_metadata().index < index) {
            self.exported = None;
        }
        self.compact(index, term, write);
    }

    /// Drops the entries through `index` (of `term`): they are in a snapshot.
    fn compact(&mut self, index: u64, term: u64, write: &mut RoundBuffer) {
        self.save_start(write);
        let dropped = (index + 1).saturating_sub(self.first()).min(self.locations.len() as u64);
        self.locations.drain(..dropped as usize);
        while self.tail.front().is_some_and(|e| e.index <= index) {
            let gone = self.tail.pop_front().expect("the tail is not empty");
            self.tail_bytes -= entry_bytes(&gone);
        }
        self.snapshot_meta.index = index;
        self.snapshot_meta.term = term;
        let keep = self.confs.iter().rposition(|(at, _)| *at <= index).unwrap_or(0);
        self.confs.drain(..keep);
        if self.installed_at.as_ref().is_some_and(|(installed, _, _)| *installed <= index) {
            self.installed_at = None;
        }
        write.push(&Record::Compact { group: self.group, through: index });
        self.save_log_start(write);
    }

    /// Writes every state of the group again (hard state, configuration, where the log
    /// starts), so that older segments need not be kept for them.
    pub fn dump(&mut self, write: &mut RoundBuffer) {
        self.start_unsaved = false;
        self.save_conf(write);
        self.save_log_start(write);
        let hs = self.hard_state.clone();
        self.set_hard_state(&hs, true, write);
    }

    /// The oldest segment of the log files this group still needs, if any.
    pub fn oldest_segment(&self) -> Option<u32> {
        let entries = self.locations.front().map(|at| at.segment);
        let snapshot = self.installed_at.as_ref().map(|(_, at, _)| at.segment);
        entries.into_iter().chain(snapshot).min()
    }

    /// Whether raft-rs asked for a snapshot its owner has not exported yet (it asks
    /// again until one is there); reading it clears it.
    pub fn take_wanted(&self) -> bool {
        self.wanted.take()
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
        }
    }

    /// The index of the first entry in memory (`last + 1` when none is).
    fn tail_first(&self) -> u64 {
        self.tail.front().map_or(self.last + 1, |e| e.index)
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
        _ => Err(corrupt()),
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
        let tail_first = self.tail_first();
        let mut entries =
            if low < tail_first { self.cold_entries(low, high.min(tail_first))? } else { Vec::new() };
        let skip = low.saturating_sub(tail_first) as usize;
        let take = high.saturating_sub(low.max(tail_first)) as usize;
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
        match idx.checked_sub(self.tail_first()) {
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

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.exported {
            // A replica refuses a snapshot from before it was added (its configuration
            // does not name it), so that one would be sent again and again.
            Some(snapshot)
                if snapshot.get_metadata().index >= request_index.max(self.snapshot_meta.index)
                    && names(snapshot.get_metadata().get_conf_state(), to) =>
            {
                Ok(snapshot.clone())
            }
            // The owner exports one at its next checkpoint; raft-rs asks again.
            _ => {
                self.wanted.set(true);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

/// Whether `conf` makes `id` a voter or a learner, in either half of a joint one.
fn names(conf: &ConfState, id: u64) -> bool {
    [&conf.voters, &conf.learners, &conf.voters_outgoing, &conf.learners_next]
        .iter()
        .any(|ids| ids.contains(&id))
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
        log.append(entries(2..=5, 1), &mut write);
        log.append(entries(4..=6, 2), &mut write);
        assert_eq!(log.locations.len(), 5);
        assert_eq!(log.last_index().unwrap(), 6);
        let terms: Vec<u64> = (1..=6).map(|i| log.term(i).unwrap()).collect();
        assert_eq!(terms, [1, 1, 1, 2, 2, 2], "index 1 is the founding snapshot's");
        let got = log.entries(2, 7, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
        assert!(log.entries(2, 8, None, GetEntriesContext::empty(false)).is_err());
        assert!(log.entries(1, 3, None, GetEntriesContext::empty(false)).is_err(), "index 1 is compacted");
    }

    #[test]
    fn entries_that_left_memory_are_read_back_and_a_restart_recovers_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
        let writer = casty_journal::raft_log::LogWriter::start(&files).unwrap();
        let mut log = GroupLog::new(3, vec![1], Some(files.clone()));
        let many = (RAFT_LOG_TAIL_BYTES_MAX / 100) as u64 * 2;
        log.append(entries(2..=many, 1), &mut next);
        let hs = HardState { term: 1, vote: 1, commit: many - 1, ..HardState::default() };
        log.set_hard_state(&hs, true, &mut next);
        let (tx, rx) = std::sync::mpsc::channel();
        writer.submit(next.take(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        log.persisted(many);
        let in_memory = log.tail_first();
        assert!(in_memory > 2, "some entries left memory");
        assert!(log.tail_bytes <= RAFT_LOG_TAIL_BYTES_MAX);
        // The entries still in memory are marked, so each read shows where it came from:
        // the files hold zeros.
        for entry in &mut log.tail {
            entry.data = vec![1u8; 100].into();
        }
        let check = |log: &GroupLog, in_memory: u64| {
            let got = log.entries(2, many + 1, None, GetEntriesContext::empty(false)).unwrap();
            assert_eq!(got.len() as u64, many - 1);
            assert!(got.iter().zip(2..).all(|(e, i)| e.index == i && e.term == 1));
            for e in &got {
                let from_memory = e.data.iter().all(|b| *b == 1);
                assert_eq!(
                    from_memory,
                    e.index >= in_memory,
                    "entry {} was read from the wrong place",
                    e.index
                );
            }
            assert_eq!(log.term(2).unwrap(), 1);
        };
        check(&log, in_memory);
        drop((writer, files));
        let (files, mut groups, _) = LogFiles::open(dir.path()).unwrap();
        let recovered = GroupLog::recover(3, groups.remove(&3).unwrap(), files, 0).unwrap();
        // A recovered log reads everything from the files.
        check(&recovered, many + 1);
        let state = recovered.initial_state().unwrap();
        assert_eq!(state.hard_state, hs);
        assert_eq!(state.conf_state.voters, [1], "the first configuration went with the first record");
    }

    #[test]
    fn an_export_compacts_the_log_and_is_what_a_replica_that_is_behind_gets() {
        let mut log = GroupLog::new(0, vec![1, 2], None);
        let mut write = RoundBuffer::new(1, 0);
        log.append(entries(2..=9, 1), &mut write);
        assert!(log.snapshot(0, 2).is_err(), "nothing exported yet");
        assert!(log.take_wanted() && !log.take_wanted(), "the ask is reported once");
        log.exported(6, b"partition at 6".to_vec(), &mut write).unwrap();
        assert_eq!(log.first_index().unwrap(), 7);
        assert!(log.entries(6, 8, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(log.entries(7, 10, None, GetEntriesContext::empty(false)).unwrap().len(), 3);
        let snapshot = log.snapshot(0, 2).unwrap();
        assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (6, 1));
        assert_eq!(snapshot.get_metadata().get_conf_state().voters, [1, 2]);
        assert_eq!(&snapshot.data[..], b"partition at 6");
        assert!(log.exported(5, Vec::new(), &mut write).is_err(), "an export behind the log's start");
        // Node 3 joins at entry 8: the export at 6 does not name it, so it is not sent
        // there, and a newer one is asked for.
        let joined = ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() };
        log.set_conf_state(8, joined, &mut write);
        assert!(log.snapshot(0, 3).is_err() && log.take_wanted());
        log.exported(8, b"partition at 8".to_vec(), &mut write).unwrap();
        assert_eq!(log.snapshot(0, 3).unwrap().get_metadata().get_conf_state().learners, [3]);
    }

    #[test]
    fn a_replica_that_installed_a_snapshot_restarts_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
        let writer = casty_journal::raft_log::LogWriter::start(&files).unwrap();
        let mut log = GroupLog::joining(4, Some(files.clone()));
        let mut meta = SnapshotMetadata { index: 40, term: 3, ..SnapshotMetadata::default() };
        meta.set_conf_state(ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
        // Larger than a chunk, so it is kept in several.
        let big: Vec<u8> = (0..RAFT_SNAPSHOT_CHUNK_BYTES * 2 + 17).map(|i| i as u8).collect();
        let mut snapshot = Snapshot { data: big.clone().into(), ..Snapshot::default() };
        snapshot.set_metadata(meta);
        log.install(&snapshot, &mut next);
        log.append(entries(41..=42, 3), &mut next);
        let (tx, rx) = std::sync::mpsc::channel();
        writer.submit(next.take(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        drop((writer, files));
        let (files, mut groups, _) = LogFiles::open(dir.path()).unwrap();
        let found = groups.remove(&4).unwrap();
        let recovered = GroupLog::recover(4, found, files, 0).unwrap();
        assert_eq!((recovered.first_index().unwrap(), recovered.last_index().unwrap()), (41, 42));
        assert_eq!(recovered.term(40).unwrap(), 3);
        assert_eq!(recovered.initial_state().unwrap().conf_state.voters, [1, 2, 3]);
        assert_eq!(recovered.installed_snapshot().unwrap().unwrap(), (40, big));
    }
}
