//! The writer thread: group commit. It takes every job that is waiting, writes them all
//! in one redb transaction, commits once (one fsync), then answers each job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability};
use tokio::sync::{mpsc, watch};

use casty_core::limits::WRITER_QUEUE_LEN_MAX;

use crate::{CHECKPOINTS, JournalError, PARTS, PartitionWrite, SNAPSHOTS, TYPES, WAKEUPS, seal, storage};

/// Jobs one transaction carries at most, so one commit's latency stays bounded.
const JOBS_PER_COMMIT_MAX: usize = 1024;

/// What the writer thread calls once a write's commit is over.
pub(crate) type Done = Box<dyn FnOnce(Result<(), JournalError>) + Send>;

struct Job {
    write: PartitionWrite,
    done: Done,
}

/// The queue into the writer thread, and the thread, joined on drop so the database is
/// closed when the journal is.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    /// Transactions committed so far.
    commits: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread; it reports the first commit that fails on `failure`.
    pub(crate) fn spawn(db: Arc<Database>, failure: watch::Sender<Option<String>>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_LEN_MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("casty-journal".into())
            .spawn(move || run(&db, rx, &failure, &counted))?;
        Ok(Self { jobs: Some(tx), commits, thread: Some(thread) })
    }

    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub(crate) async fn submit(&self, write: PartitionWrite, done: Done) -> Result<(), JournalError> {
        let jobs = self.jobs.as_ref().ok_or(JournalError::Closed)?;
        jobs.send(Job { write, done }).await.map_err(|_| JournalError::Closed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            // The thread ends once the queue is closed and its last commit is done.
            let _ = thread.join();
        }
    }
}

fn run(
    db: &Database,
    mut jobs: mpsc::Receiver<Job>,
    failure: &watch::Sender<Option<String>>,
    commits: &AtomicU64,
) {
    let mut batch = Vec::with_capacity(JOBS_PER_COMMIT_MAX);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < JOBS_PER_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = commit(db, batch.iter().map(|job| &job.write));
        if result.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            tracing::error!("journal commit of {} writes failed: {e}", batch.len());
            failure.send_if_modified(|first| {
                first.get_or_insert_with(|| format!("a journal commit failed: {e}"));
                true
            });
        }
        for job in batch.drain(..) {
            (job.done)(result.clone());
        }
    }
}

fn commit<'a>(db: &Database, writes: impl Iterator<Item = &'a PartitionWrite>) -> Result<(), JournalError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(|e| JournalError::Storage(e.to_string()))?;
    {
        let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(storage)?;
        let mut wakeups = txn.open_table(WAKEUPS).map_err(storage)?;
        let mut parts = txn.open_table(PARTS).map_err(storage)?;
        let mut types = txn.open_table(TYPES).map_err(storage)?;
        for write in writes {
            let p = write.partition;
            if write.replace_entities {
                // Partition numbers are far below `u32::MAX`, so the next one bounds the range.
                let range = (p, &[][..])..(p.saturating_add(1), &[][..]);
                snapshots.retain_in(range.clone(), |_, _| false).map_err(storage)?;
                wakeups.retain_in(range, |_, _| false).map_err(storage)?;
            }
            for (entity, snapshot) in &write.snapshots {
                snapshots.insert((p, entity.as_slice()), seal(snapshot).as_slice()).map_err(storage)?;
            }
            for (entity, at) in &write.wakeups {
                match at {
                    Some(at) => wakeups.insert((p, entity.as_slice()), *at).map(drop),
                    None => wakeups.remove((p, entity.as_slice())).map(drop),
                }
                .map_err(storage)?;
            }
            for (name, version) in &write.parts_cleared {
                let range = (name.as_str(), *version, 0)..=(name.as_str(), *version, u64::MAX);
                parts.retain_in(range, |_, _| false).map_err(storage)?;
            }
            for (name, version, offset, part) in &write.parts {
                parts.insert((name.as_str(), *version, *offset), seal(part).as_slice()).map_err(storage)?;
            }
            for (name, version, record) in &write.types {
                types.insert((name.as_str(), *version), seal(record).as_slice()).map_err(storage)?;
            }
            if let Some(checkpoint) = &write.checkpoint {
                checkpoints
                    .insert(p, (checkpoint.index, seal(&checkpoint.state).as_slice()))
                    .map_err(storage)?;
            }
        }
    }
    txn.commit().map_err(storage)
}
