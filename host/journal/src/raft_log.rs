//! The Raft log file: every group's entries and Raft state, appended to segment files.
//!
//! A round of the Raft loop writes one buffer of records to the end of the active
//! segment and syncs it once, whatever the number of groups in it (a round of commit
//! indexes alone needs no sync: [`RoundBuffer::push_unsynced`]); redb, which keeps
//! snapshots, checkpoints, types and metadata, wrote some 55 to 70 pages per commit for
//! the same round (measured: ARCHITECTURE.md). Each record is
//! `[length u32][crc32 u32][postcard body]`. On open, every segment is read in order;
//! a record that is cut short or fails its checksum at the end of the last segment is a
//! torn write that was never acknowledged, and the file is cut there. Anywhere else it
//! is damage, reported as such.
//!
//! The active segment is kept written with zeros ahead of its records
//! ([`RAFT_LOG_ZEROED_AHEAD_BYTES`]), and records are written over them in place: an
//! append that grows the file makes fdatasync write the inode too, a second I/O in
//! series with the data (measured: ARCHITECTURE.md). A zero header is no record (an
//! empty body does not decode), so reading stops there. The zeros are cut off a segment
//! before the next one is started, and off the last one on open, so only the segment
//! being written ends in them.
//!
//! The log file knows nothing of Raft: an entry is bytes at (group, index), a state is
//! bytes under (group, key), and a later entry at an index drops the group's entries
//! from that index on (a new leader overwrote them).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use casty_core::limits::{
    FRAME_SIZE_MAX_BYTES, RAFT_LOG_JOINED_WRITE_BYTES_MAX, RAFT_LOG_SEGMENT_BYTES,
    RAFT_LOG_ZEROED_AHEAD_BYTES, WRITER_QUEUE_LEN_MAX,
};
use serde::{Deserialize, Serialize};

use crate::JournalError;

const HEADER_BYTES: usize = 8;
/// No record is larger than a frame: entries arrive in frames.
const RECORD_BYTES_MAX: usize = FRAME_SIZE_MAX_BYTES;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The entry at `index` of `group`; entries of the group from `index` on before it
    /// are dropped.
    Entry {
        group: u32,
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A small state of the group (its hard state, its configuration), replacing the
    /// last one under `key`.
    State {
        group: u32,
        key: u8,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// One chunk of the data of the snapshot through `index` that the next `Snapshot`
    /// record of the group completes.
    SnapshotChunk {
        group: u32,
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The group's log is replaced by a snapshot through `index` (the bytes describe it;
    /// its data is in the chunks before): it holds no entries, and the next one is
    /// `index + 1`.
    Snapshot {
        group: u32,
        index: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The group no longer needs its entries through `through`.
    Compact { group: u32, through: u64 },
}

/// Where a record lies: its segment and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u32,
}

/// A group as the log file holds it after a restart.
#[derive(Debug, Default)]
pub struct RecoveredGroup {
    /// The index of the first entry in `entries`.
    pub first: u64,
    /// Where each entry from `first` on lies.
    pub entries: VecDeque<Location>,
    pub states: BTreeMap<u8, Vec<u8>>,
    /// Where the group's last snapshot record lies, and its data's chunks in order.
    pub snapshot: Option<(Location, Vec<Location>)>,
    /// Chunks of a snapshot whose record has not been read yet.
    chunks: Vec<(u64, Location)>,
}

/// What [`LogFiles::open`] finds: the files, every group in them, and where the next
/// round's records go.
pub type Opened = (Arc<LogFiles>, BTreeMap<u32, RecoveredGroup>, RoundBuffer);

/// The log's directory: reads of records, and where the next write goes.
#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:08}.log"))
}

fn io(what: &str, e: std::io::Error) -> JournalError {
    JournalError::Storage(format!("{what}: {e}"))
}

impl LogFiles {
    /// Opens the log in `dir`, creating it if need be, and reads back every group. The
    /// returned buffer is where the next round's records go.
    pub fn open(dir: &Path) -> Result<Opened, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io(&format!("cannot create {}", dir.display()), e))?;
        let mut segments: Vec<u32> = std::fs::read_dir(dir)
            .map_err(|e| io("cannot list the Raft log", e))?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let mut groups: BTreeMap<u32, RecoveredGroup> = BTreeMap::new();
        let mut next = RoundBuffer::new(1, 0);
        for (i, &segment) in segments.iter().enumerate() {
            let path = segment_path(dir, segment);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io(&format!("cannot read {}", path.display()), e))?;
            let (records, good) = scan(&bytes);
            if good < bytes.len() {
                if i + 1 < segments.len() {
                    return Err(JournalError::Corrupt {
                        table: "raft log",
                        key: format!("segment {segment} at byte {good}"),
                    });
                }
                // The last segment ends in the zeros written ahead of its records, cut off
                // here too, so that no segment but the one being written holds any; only
                // what is not zeros after its last record is a torn write.
                if bytes[good..].iter().any(|b| *b != 0) {
                    tracing::warn!(
                        "cutting a torn write off the Raft log: {} at byte {good}",
                        path.display()
                    );
                }
                let file =
                    OpenOptions::new().write(true).open(&path).map_err(|e| io("cannot cut the log", e))?;
                file.set_len(good as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("cannot cut the log", e))?;
            }
            for (offset, record) in records {
                let at = Location { segment, offset };
                match record {
                    Record::Entry { group, index, .. } => {
                        let g = groups.entry(group).or_default();
                        if g.entries.is_empty() || index < g.first {
                            g.first = index;
                            g.entries.clear();
                        } else {
                            g.entries.truncate((index - g.first) as usize);
                        }
                        g.entries.push_back(at);
                    }
                    Record::State { group, key, bytes } => {
                        groups.entry(group).or_default().states.insert(key, bytes);
                    }
                    Record::SnapshotChunk { group, index, .. } => {
                        let g = groups.entry(group).or_default();
                        g.chunks.retain(|(i, _)| *i == index);
                        g.chunks.push((index, at));
                    }
                    Record::Snapshot { group, index, .. } => {
                        let g = groups.entry(group).or_default();
                        let chunks = std::mem::take(&mut g.chunks).into_iter().filter(|(i, _)| *i == index);
                        (g.first, g.snapshot) = (index + 1, Some((at, chunks.map(|(_, at)| at).collect())));
                        g.entries.clear();
                    }
                    Record::Compact { group, through } => {
                        let g = groups.entry(group).or_default();
                        let dropped =
                            through.saturating_add(1).saturating_sub(g.first).min(g.entries.len() as u64);
                        g.entries.drain(..dropped as usize);
                        g.first = g.first.max(through + 1);
                    }
                }
            }
            next = RoundBuffer::new(segment, good as u64);
        }
        let files = Arc::new(Self { dir: dir.to_path_buf(), open: Mutex::new(HashMap::new()) });
        Ok((files, groups, next))
    }

    /// The record at `at`.
    pub fn read(&self, at: Location) -> Result<Record, JournalError> {
        let file = self.file(at.segment)?;
        let corrupt = || JournalError::Corrupt {
            table: "raft log",
            key: format!("segment {} at byte {}", at.segment, at.offset),
        };
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, at.offset.into()).map_err(|e| io("cannot read the Raft log", e))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len > RECORD_BYTES_MAX {
            return Err(corrupt());
        }
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, u64::from(at.offset) + HEADER_BYTES as u64)
            .map_err(|e| io("cannot read the Raft log", e))?;
        if crc32fast::hash(&body).to_le_bytes() != header[4..] {
            return Err(corrupt());
        }
        postcard::from_bytes(&body).map_err(|_| corrupt())
    }

    /// Deletes the segments before `segment`. A failure to delete only leaves a file
    /// behind, to be deleted next time.
    fn delete_below(&self, segment: u32) {
        self.open.lock().expect("the open files' lock").retain(|s, _| *s >= segment);
        let Ok(listing) = std::fs::read_dir(&self.dir) else { return };
        for entry in listing.flatten() {
            let name = entry.file_name();
            let number =
                name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u32>().ok());
            if number.is_some_and(|n| n < segment)
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!("cannot delete {}: {e}", entry.path().display());
            }
        }
    }

    fn file(&self, segment: u32) -> Result<Arc<File>, JournalError> {
        let mut open = self.open.lock().expect("the open files' lock");
        if let Some(file) = open.get(&segment) {
            return Ok(file.clone());
        }
        let path = segment_path(&self.dir, segment);
        let file =
            Arc::new(File::open(&path).map_err(|e| io(&format!("cannot open {}", path.display()), e))?);
        open.insert(segment, file.clone());
        Ok(file)
    }
}

/// Reads records from the start of a segment: (offset, record) for each good one, and
/// the length of the good prefix. Public so that the fuzz targets (`tests/fuzz`) run it.
pub fn scan(bytes: &[u8]) -> (Vec<(u32, Record)>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let Some(body) =
            bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len).filter(|_| len <= RECORD_BYTES_MAX)
        else {
            break;
        };
        if crc32fast::hash(body).to_le_bytes() != header[4..] {
            break;
        }
        let Ok(record) = postcard::from_bytes(body) else { break };
        records.push((at as u32, record));
        at += HEADER_BYTES + len;
    }
    (records, at)
}

/// One round's records, encoded, and where they will lie in the log.
#[derive(Debug)]
pub struct RoundBuffer {
    segment: u32,
    /// Where the buffer starts in its segment.
    base: u64,
    bytes: Vec<u8>,
    /// A segment this long is full: the next buffer starts a new one.
    segment_bytes: u64,
    /// Once this buffer is durable, segments before this one are deleted.
    delete_below: Option<u32>,
    /// Whether anything in it must be on disk before its round counts as durable; see
    /// [`RoundBuffer::push_unsynced`].
    must_sync: bool,
}

impl RoundBuffer {
    /// A buffer starting at `base` in `segment`. [`LogFiles::open`] gives the one the
    /// next write goes to; a buffer that is never written (in-process tests) may start
    /// anywhere.
    pub fn new(segment: u32, base: u64) -> Self {
        Self {
            segment,
            base,
            bytes: Vec::new(),
            segment_bytes: RAFT_LOG_SEGMENT_BYTES,
            delete_below: None,
            must_sync: false,
        }
    }

    /// Segments of `bytes` rather than [`RAFT_LOG_SEGMENT_BYTES`] (tests that want many).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// The segment this buffer's records go to.
    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// Deletes every segment before `segment` once this buffer is durable: nothing in
    /// them is needed any more, as far as the records up to this buffer's say.
    pub fn delete_segments_below(&mut self, segment: u32) {
        self.delete_below = Some(segment.min(self.segment));
        self.must_sync = true;
    }

    /// Appends `record` and returns where it will lie. The buffer's round is durable
    /// only once the record is on disk.
    pub fn push(&mut self, record: &Record) -> Location {
        self.must_sync = true;
        self.encode(record)
    }

    /// Appends `record`, which need not be on disk before the round counts as durable:
    /// losing it in a crash loses nothing anyone was told. It reaches the disk with the
    /// next buffer that must be synced, since a sync covers every earlier write of the
    /// file, or is cut off as a torn tail on open. Raft's commit index is such a record
    /// (raft-rs's `Ready::must_sync`): a restarted replica learns it again from its
    /// leader, and never below what it applied (`GroupLog::recover`).
    pub fn push_unsynced(&mut self, record: &Record) -> Location {
        self.encode(record)
    }

    /// Whether the buffer holds a record that must be on disk, or a deletion that must
    /// follow the records before it onto the disk, before its round counts as durable.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    fn encode(&mut self, record: &Record) -> Location {
        let at = Location { segment: self.segment, offset: (self.base + self.bytes.len() as u64) as u32 };
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0u8; HEADER_BYTES]);
        postcard::to_io(record, &mut self.bytes).expect("encoding to memory cannot fail");
        let len = (self.bytes.len() - start - HEADER_BYTES) as u32;
        // Opening would take a larger record for a torn one: entries are refused at the
        // proposal past this, and snapshots are kept in chunks.
        debug_assert!(len as usize <= RECORD_BYTES_MAX, "a Raft log record of {len} bytes");
        let crc = crc32fast::hash(&self.bytes[start + HEADER_BYTES..]);
        self.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.bytes[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        at
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Where in its segment the buffer's records end.
    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Closes this buffer for writing and opens the next one after it (in a new segment
    /// once this one is full).
    pub fn take(&mut self) -> RoundBuffer {
        let end = self.end();
        let mut next = if end >= self.segment_bytes {
            RoundBuffer::new(self.segment + 1, 0)
        } else {
            RoundBuffer::new(self.segment, end)
        };
        // Rounds under load are alike: sized as this one, the next rarely grows.
        next.bytes.reserve(self.bytes.len());
        std::mem::replace(self, next.with_segment_bytes(self.segment_bytes))
    }
}

/// What the writer thread calls once a buffer is durable (or, one that need not be
/// synced, written), or failed to be.
pub type Done = Box<dyn FnOnce(Result<(), JournalError>) + Send>;

/// The thread that appends round buffers and syncs them: everything queued when it
/// wakes is written, then synced once, if any of it must be.
#[derive(Debug)]
pub struct LogWriter {
    queue: Option<std::sync::mpsc::SyncSender<(RoundBuffer, Done)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

/// What the writer has done since it started, for the node's metrics: beside a count of
/// writes served, how many system calls and syncs each cost.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// `write` calls into the log files: of records, and of the zeros ahead of them.
    pub writes: AtomicU64,
    /// `fdatasync`s of the log files.
    pub syncs: AtomicU64,
    /// Time spent in them.
    pub sync_micros: AtomicU64,
    /// Bytes of records written.
    pub bytes: AtomicU64,
}

impl LogWriter {
    pub fn start(files: &Arc<LogFiles>) -> Result<Self, JournalError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITER_QUEUE_LEN_MAX);
        let files = files.clone();
        let stats = Arc::new(WriterStats::default());
        let counted = stats.clone();
        let thread = std::thread::Builder::new()
            .name("casty-raft-log".into())
            .spawn(move || write_rounds(&files, &rx, &counted))
            .map_err(|e| io("cannot start the Raft log writer", e))?;
        Ok(Self { queue: Some(tx), thread: Some(thread), stats })
    }

    /// The writer's counts, which its thread keeps up to date.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Queues `buffer` behind every buffer queued before it; `done` is called on the
    /// writer thread once it is durable (so it must be quick and must not block). Blocks
    /// while the queue is full.
    pub fn submit(&self, buffer: RoundBuffer, done: Done) -> Result<(), JournalError> {
        let queue = self.queue.as_ref().ok_or(JournalError::Closed)?;
        queue.send((buffer, done)).map_err(|_| JournalError::Closed)
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_rounds(
    files: &LogFiles,
    queue: &std::sync::mpsc::Receiver<(RoundBuffer, Done)>,
    stats: &WriterStats,
) {
    let dir = files.dir.as_path();
    let mut active: Option<Active> = None;
    let mut failed: Option<String> = None;
    let mut joined = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(WRITER_QUEUE_LEN_MAX));
        let result = match &failed {
            Some(reason) => Err(JournalError::Storage(reason.clone())),
            None => write_batch(dir, &mut active, &batch, &mut joined, stats),
        };
        if let Err(e) = &result {
            tracing::error!("the Raft log's write of {} rounds failed: {e}", batch.len());
            failed.get_or_insert_with(|| e.to_string());
        }
        if result.is_ok()
            && let Some(below) = batch.iter().filter_map(|(buffer, _)| buffer.delete_below).max()
        {
            files.delete_below(below);
        }
        for (_, done) in batch {
            done(result.clone());
        }
    }
}

/// The segment the writer writes to: where its records end, and how far it is written
/// (records, then zeros).
struct Active {
    segment: u32,
    file: File,
    end: u64,
    written: u64,
}

impl Active {
    fn open(dir: &Path, segment: u32) -> Result<Self, JournalError> {
        let path = segment_path(dir, segment);
        let cannot = |e| io(&format!("cannot open {}", path.display()), e);
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(cannot)?;
        let written = file.metadata().map_err(cannot)?.len();
        // A new segment's name must be durable before anything in it is acknowledged.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync the Raft log's directory", e))?;
        Ok(Self { segment, file, end: 0, written })
    }

    /// Writes `bytes` in place at `base`, and zeros ahead of them once they pass the
    /// zeros written so far (never past the end of a full segment of `segment_bytes`).
    fn write(
        &mut self,
        base: u64,
        bytes: &[u8],
        segment_bytes: u64,
        stats: &WriterStats,
    ) -> Result<(), JournalError> {
        let cannot = |e| io("cannot write the Raft log", e);
        self.file.write_all_at(bytes, base).map_err(cannot)?;
        stats.writes.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.end = base + bytes.len() as u64;
        if self.end > self.written {
            self.written = self.end;
            let ahead = (self.end + RAFT_LOG_ZEROED_AHEAD_BYTES).min(segment_bytes.max(self.end));
            static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
            while self.written < ahead {
                let len = (ahead - self.written).min(ZEROS.len() as u64) as usize;
                self.file.write_all_at(&ZEROS[..len], self.written).map_err(cannot)?;
                stats.writes.fetch_add(1, Ordering::Relaxed);
                self.written += len as u64;
            }
        }
        Ok(())
    }

    fn sync(&self, stats: &WriterStats) -> Result<(), JournalError> {
        let started = std::time::Instant::now();
        self.file.sync_data().map_err(|e| io("cannot sync the Raft log", e))?;
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.sync_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the zeros after the last record off and syncs: the segment is done.
    fn close(self, stats: &WriterStats) -> Result<(), JournalError> {
        if self.written > self.end {
            self.file.set_len(self.end).map_err(|e| io("cannot cut a full Raft log segment", e))?;
        }
        self.sync(stats)
    }
}

/// Writes the buffers of `batch` in order, each run of them that follows on in one
/// segment (up to `RAFT_LOG_JOINED_WRITE_BYTES_MAX`) as one write, copied into `joined`:
/// every write into the page cache costs a system call and an update of the file's
/// times, in series with the sync (see ARCHITECTURE.md).
fn write_batch(
    dir: &Path,
    active: &mut Option<Active>,
    batch: &[(RoundBuffer, Done)],
    joined: &mut Vec<u8>,
    stats: &WriterStats,
) -> Result<(), JournalError> {
    let mut rest = batch;
    while let Some((first, _)) = rest.first() {
        let mut len = 1;
        while let Some((next, _)) = rest.get(len)
            && next.segment == first.segment
            && next.base == rest[len - 1].0.end()
            && next.end() - first.base <= RAFT_LOG_JOINED_WRITE_BYTES_MAX
        {
            len += 1;
        }
        let (run, later) = rest.split_at(len);
        rest = later;
        if active.as_ref().is_none_or(|a| a.segment != first.segment) {
            if let Some(done) = active.take() {
                done.close(stats)?;
            }
            *active = Some(Active::open(dir, first.segment)?);
        }
        let bytes = match run {
            [(only, _)] => only.bytes.as_slice(),
            _ => {
                joined.clear();
                for (buffer, _) in run {
                    joined.extend_from_slice(&buffer.bytes);
                }
                joined.as_slice()
            }
        };
        active.as_mut().expect("a segment is open").write(first.base, bytes, first.segment_bytes, stats)?;
    }
    if let Some(active) = active
        && batch.iter().any(|(buffer, _)| buffer.must_sync())
    {
        active.sync(stats)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: u32, index: u64) -> Record {
        Record::Entry { group, index, bytes: format!("{group}/{index}").into_bytes() }
    }

    fn write(writer: &LogWriter, buffer: RoundBuffer) {
        let (tx, rx) = std::sync::mpsc::channel();
        writer.submit(buffer, Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn entries_and_states_come_back_after_a_restart_with_overwrites_applied() {
        let dir = tempfile::tempdir().unwrap();
        let locations = {
            let (files, groups, mut next) = LogFiles::open(dir.path()).unwrap();
            assert!(groups.is_empty());
            let writer = LogWriter::start(&files).unwrap();
            let mut at = Vec::new();
            for index in 1..=5 {
                at.push(next.push(&entry(0, index)));
                next.push(&entry(1, index));
            }
            next.push(&Record::State { group: 0, key: 1, bytes: b"old".to_vec() });
            write(&writer, next.take());
            // A new leader overwrote group 1 from index 3.
            next.push(&entry(1, 3));
            next.push(&Record::State { group: 0, key: 1, bytes: b"new".to_vec() });
            write(&writer, next.take());
            assert_eq!(files.read(at[2]).unwrap(), entry(0, 3));
            at
        };
        let (files, groups, _) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].first, 1);
        assert_eq!(groups[&0].entries, locations);
        assert_eq!(groups[&0].states[&1], b"new");
        assert_eq!(groups[&1].entries.len(), 3, "entries 4 and 5 of group 1 were overwritten");
        assert_eq!(files.read(groups[&1].entries[2]).unwrap(), entry(1, 3));
    }

    #[test]
    fn only_a_buffer_of_unsynced_records_needs_no_sync_and_it_is_written_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
            let writer = LogWriter::start(&files).unwrap();
            next.push_unsynced(&Record::State { group: 0, key: 1, bytes: b"commit 1".to_vec() });
            assert!(!next.must_sync());
            write(&writer, next.take());
            next.push_unsynced(&Record::State { group: 0, key: 1, bytes: b"commit 2".to_vec() });
            next.push(&entry(0, 1));
            assert!(next.must_sync(), "an entry must be on disk before its round is durable");
            write(&writer, next.take());
            next.push_unsynced(&Record::State { group: 0, key: 1, bytes: b"commit 3".to_vec() });
            next.delete_segments_below(0);
            assert!(next.must_sync(), "a deletion must follow what made it safe onto the disk");
            write(&writer, next.take());
        }
        let (_, groups, _) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].states[&1], b"commit 3");
        assert_eq!(groups[&0].entries.len(), 1);
    }

    #[test]
    fn snapshots_and_compactions_come_back_as_the_start_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
            let writer = LogWriter::start(&files).unwrap();
            for index in 1..=6 {
                next.push(&entry(0, index));
                next.push(&entry(1, index));
            }
            next.push(&Record::Compact { group: 0, through: 4 });
            next.push(&Record::SnapshotChunk { group: 1, index: 8, bytes: b"torn".to_vec() });
            next.push(&Record::SnapshotChunk { group: 1, index: 9, bytes: b"data".to_vec() });
            next.push(&Record::Snapshot { group: 1, index: 9, bytes: b"state".to_vec() });
            next.push(&entry(1, 10));
            write(&writer, next.take());
        }
        let (files, groups, _) = LogFiles::open(dir.path()).unwrap();
        assert_eq!((groups[&0].first, groups[&0].entries.len()), (5, 2), "entries 5 and 6 are left");
        assert_eq!(files.read(groups[&0].entries[0]).unwrap(), entry(0, 5));
        assert_eq!((groups[&1].first, groups[&1].entries.len()), (10, 1));
        let (at, chunks) = groups[&1].snapshot.clone().unwrap();
        assert_eq!(
            files.read(at).unwrap(),
            Record::Snapshot { group: 1, index: 9, bytes: b"state".to_vec() }
        );
        assert_eq!(
            files.read(chunks[0]).unwrap(),
            Record::SnapshotChunk { group: 1, index: 9, bytes: b"data".to_vec() }
        );
        assert_eq!(chunks.len(), 1, "the chunk of an earlier, unfinished snapshot is not one of them");
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
            let writer = LogWriter::start(&files).unwrap();
            next.push(&entry(0, 1));
            write(&writer, next.take());
        }
        let path = segment_path(dir.path(), 1);
        let (_, _, next) = LogFiles::open(dir.path()).unwrap();
        let good = next.base;
        // Half a record over the zeros ahead of the records: a crash in the middle of a
        // write.
        let mut torn = RoundBuffer::new(1, good);
        torn.push(&entry(0, 2));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn.bytes[..torn.bytes.len() / 2], good).unwrap();
        let (files, groups, mut next) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].entries.len(), 1, "the torn entry is gone");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "the file was cut at the last good record");
        let writer = LogWriter::start(&files).unwrap();
        let at = next.push(&entry(0, 2));
        write(&writer, next.take());
        assert_eq!(files.read(at).unwrap(), entry(0, 2));
    }

    #[test]
    fn records_are_written_over_zeros_ahead_which_a_restart_cuts_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let end = {
            let (files, _, mut next) = LogFiles::open(dir.path()).unwrap();
            let writer = LogWriter::start(&files).unwrap();
            next.push(&entry(0, 1));
            write(&writer, next.take());
            let len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(len, next.base + RAFT_LOG_ZEROED_AHEAD_BYTES, "zeros are written ahead");
            // The next round goes over the zeros and does not grow the file.
            next.push(&entry(0, 2));
            write(&writer, next.take());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            next.base
        };
        let (files, groups, next) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].entries.len(), 2);
        assert_eq!(files.read(groups[&0].entries[1]).unwrap(), entry(0, 2));
        assert_eq!(next.base, end);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end, "the zeros were cut off on open");
    }

    #[test]
    fn full_segments_give_way_to_new_ones_and_old_ones_are_deleted_once_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, next) = LogFiles::open(dir.path()).unwrap();
        let mut next = next.with_segment_bytes(32);
        let writer = LogWriter::start(&files).unwrap();
        let mut at = Vec::new();
        for index in 1..=20 {
            at.push(next.push(&entry(0, index)));
            write(&writer, next.take());
        }
        let segments = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
        assert!(segments(dir.path()) > 5, "small segments fill up");
        // A full segment is cut to its records, and was never written past its size.
        let first = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(scan(&first).1, first.len(), "a full segment ends with its last record");
        let keep = at[15].segment;
        next.push(&Record::Compact { group: 0, through: 15 });
        next.delete_segments_below(keep);
        write(&writer, next.take());
        assert!(std::fs::read_dir(dir.path()).unwrap().flatten().all(|e| {
            e.file_name().to_str().unwrap().strip_suffix(".log").unwrap().parse::<u32>().unwrap() >= keep
        }));
        assert_eq!(files.read(at[16]).unwrap(), entry(0, 17));
        drop(writer);
        let (_, groups, _) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].first, 16);
        assert_eq!(groups[&0].entries.len(), 5);
    }

    #[test]
    fn rounds_written_in_one_batch_across_segments_all_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, next) = LogFiles::open(dir.path()).unwrap();
        let mut next = next.with_segment_bytes(64);
        let mut batch = Vec::new();
        for index in 1..=30 {
            next.push(&entry(0, index));
            let done: Done = Box::new(|result| result.unwrap());
            batch.push((next.take(), done));
        }
        assert!(batch.iter().any(|(b, _)| b.segment != batch[0].0.segment), "the batch spans segments");
        let (mut active, mut joined, stats) = (None, Vec::new(), WriterStats::default());
        write_batch(dir.path(), &mut active, &batch, &mut joined, &stats).unwrap();
        assert!(!joined.is_empty(), "rounds that follow on in a segment were joined into one write");
        let segments: std::collections::BTreeSet<u32> = batch.iter().map(|(b, _)| b.segment).collect();
        let bytes: usize = batch.iter().map(|(b, _)| b.bytes.len()).sum();
        assert_eq!(stats.bytes.load(Ordering::Relaxed), bytes as u64, "every record is counted once");
        // Each full segment is synced as it is closed, and the last one once for the batch.
        assert_eq!(stats.syncs.load(Ordering::Relaxed), segments.len() as u64);
        drop(active);
        let (files, groups, _) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(groups[&0].entries.len(), 30);
        for (index, at) in (1..).zip(&groups[&0].entries) {
            assert_eq!(files.read(*at).unwrap(), entry(0, index));
        }
    }

    #[test]
    fn damage_before_the_last_segment_is_reported_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        for segment in [1, 2] {
            let mut buffer = RoundBuffer::new(segment, 0);
            buffer.push(&entry(0, u64::from(segment)));
            std::fs::write(segment_path(dir.path(), segment), &buffer.bytes).unwrap();
        }
        let mut bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let err = LogFiles::open(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    }

    proptest::proptest! {
        /// Any bytes scan to a good prefix of records, never a panic.
        #[test]
        fn arbitrary_segments_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let (_, good) = scan(&bytes);
            proptest::prop_assert!(good <= bytes.len());
        }
    }
}
