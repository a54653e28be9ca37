//! The journal: one redb database per node holding every partition's log, the entities'
//! snapshots and the node's metadata.
//!
//! Writes go through one writer thread that commits every batch waiting for it in a
//! single transaction (group commit: one fsync for many partitions' appends); a write is
//! acknowledged only once its transaction committed. Every stored value carries a CRC-32
//! so a damaged file is reported, never decoded into garbage. This crate knows nothing of
//! entities or wasm: payloads are bytes that `casty-core::record` gives meaning to.
#![forbid(unsafe_code)]

mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

/// Node metadata: cluster name, node id, partition count, format version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Partition logs: (partition, index) → checksummed log entry.
const LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("log");
/// Entity snapshots: (partition, encoded entity key) → checksummed snapshot.
const SNAPSHOTS: TableDefinition<(u32, &[u8]), &[u8]> = TableDefinition::new("snapshots");
/// Wake-up times of entities, kept with their snapshots: (partition, entity) → ms.
const WAKEUPS: TableDefinition<(u32, &[u8]), u64> = TableDefinition::new("wakeups");
/// Per partition: the index through which every entity's snapshot is complete (the log at
/// and below it has been truncated) and the partition's own state as of that index.
const CHECKPOINTS: TableDefinition<u32, (u64, &[u8])> = TableDefinition::new("checkpoints");

/// Why the journal failed. Any of these fails the writes it names; acknowledged data
/// stays as it was.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("journal storage failed: {0}")]
    Storage(String),
    #[error("the journal's {table} table holds a damaged record at {key}: checksum mismatch")]
    Corrupt { table: &'static str, key: String },
    #[error("the journal writer has stopped; the node is shutting down")]
    Closed,
}

fn storage(e: impl Into<redb::Error>) -> JournalError {
    JournalError::Storage(e.into().to_string())
}

/// Everything one partition wants committed together.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionWrite {
    pub partition: u32,
    /// Log entries to append, by index.
    pub appends: Vec<(u64, Vec<u8>)>,
    /// Entity snapshots to store: (encoded entity key, encoded snapshot).
    pub snapshots: Vec<(Vec<u8>, Vec<u8>)>,
    /// Wake-up times of the snapshotted entities: set, or cleared with `None`.
    pub wakeups: Vec<(Vec<u8>, Option<u64>)>,
    /// Sets the checkpoint and truncates the log through it, after the snapshots above.
    pub checkpoint: Option<Checkpoint>,
}

/// A partition's checkpoint: the log index every snapshot covers, and state the partition
/// keeps besides its entities (opaque to the journal), as of that index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub index: u64,
    pub state: Vec<u8>,
}

impl PartitionWrite {
    pub fn new(partition: u32) -> Self {
        Self { partition, ..Self::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.snapshots.is_empty()
            && self.wakeups.is_empty()
            && self.checkpoint.is_none()
    }
}

/// A handle to the node's journal; cheap to clone. When the last handle is dropped the
/// writer finishes its commit and stops, and the file is closed.
#[derive(Clone, Debug)]
pub struct Journal {
    db: Arc<Database>,
    writer: Arc<writer::Writer>,
}

impl Journal {
    /// Opens (or creates) the journal file at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let open = |reason: String| JournalError::Open { path: path.display().to_string(), reason };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| open(e.to_string()))?;
        Self::start(db)
    }

    /// A journal that lives in memory and is gone when the process ends.
    pub fn in_memory() -> Result<Self, JournalError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| JournalError::Open { path: "(memory)".into(), reason: e.to_string() })?;
        Self::start(db)
    }

    fn start(db: Database) -> Result<Self, JournalError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(LOG).map_err(storage)?;
        txn.open_table(SNAPSHOTS).map_err(storage)?;
        txn.open_table(CHECKPOINTS).map_err(storage)?;
        txn.open_table(WAKEUPS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let writer = writer::Writer::spawn(db.clone())
            .map_err(|e| JournalError::Storage(format!("cannot start the writer: {e}")))?;
        Ok(Self { db, writer: Arc::new(writer) })
    }

    /// Commits `write`, together with whatever other partitions are writing, and returns
    /// once it is durable.
    pub async fn write(&self, write: PartitionWrite) -> Result<(), JournalError> {
        self.writer.write(write).await
    }

    /// The checkpoint of `partition` (index 0 and no state when it has none).
    pub fn checkpoint(&self, partition: u32) -> Result<Checkpoint, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(CHECKPOINTS).map_err(storage)?;
        let Some(value) = table.get(partition).map_err(storage)? else { return Ok(Checkpoint::default()) };
        let (index, sealed) = value.value();
        let state = unseal(sealed).ok_or_else(|| JournalError::Corrupt {
            table: "checkpoints",
            key: format!("partition {partition}"),
        })?;
        Ok(Checkpoint { index, state: state.to_vec() })
    }

    /// The highest log index of `partition`, or its checkpoint when the log is empty.
    pub fn last_index(&self, partition: u32) -> Result<u64, JournalError> {
        let checkpoint = self.checkpoint(partition)?.index;
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(LOG).map_err(storage)?;
        let last = table.range((partition, 0)..=(partition, u64::MAX)).map_err(storage)?.next_back();
        match last {
            Some(entry) => Ok(entry.map_err(storage)?.0.value().1.max(checkpoint)),
            None => Ok(checkpoint),
        }
    }

    /// Up to `max` log entries of `partition` with index greater than `after`, in order.
    pub fn read_log(
        &self,
        partition: u32,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(LOG).map_err(storage)?;
        let mut entries = Vec::new();
        for item in table.range((partition, from)..=(partition, u64::MAX)).map_err(storage)?.take(max) {
            let (key, value) = item.map_err(storage)?;
            let index = key.value().1;
            let payload = unseal(value.value()).ok_or_else(|| JournalError::Corrupt {
                table: "log",
                key: format!("partition {partition} index {index}"),
            })?;
            entries.push((index, payload.to_vec()));
        }
        Ok(entries)
    }

    /// The stored snapshot of one entity of `partition`, if any.
    pub fn snapshot(&self, partition: u32, entity: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let Some(value) = table.get((partition, entity)).map_err(storage)? else {
            return Ok(None);
        };
        let payload = unseal(value.value()).ok_or_else(|| JournalError::Corrupt {
            table: "snapshots",
            key: format!("partition {partition}"),
        })?;
        Ok(Some(payload.to_vec()))
    }

    /// The stored wake-up times of `partition`'s entities: (encoded entity key, ms).
    pub fn wakeups(&self, partition: u32) -> Result<Vec<(Vec<u8>, u64)>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(WAKEUPS).map_err(storage)?;
        let range = table.range((partition, &[][..])..).map_err(storage)?;
        let mut wakeups = Vec::new();
        for item in range {
            let (key, at) = item.map_err(storage)?;
            let (p, entity) = key.value();
            if p != partition {
                break;
            }
            wakeups.push((entity.to_vec(), at.value()));
        }
        Ok(wakeups)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(META).map_err(storage)?;
        let Some(value) = table.get(key).map_err(storage)? else {
            return Ok(None);
        };
        let payload = unseal(value.value())
            .ok_or_else(|| JournalError::Corrupt { table: "meta", key: key.to_owned() })?;
        Ok(Some(payload.to_vec()))
    }

    /// Stores a metadata value durably, outside the group commit (start-up only).
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(META).map_err(storage)?;
            table.insert(key, seal(value).as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

/// Prefixes a payload with its CRC-32.
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed value, or `None` when its checksum does not match.
fn unseal(stored: &[u8]) -> Option<&[u8]> {
    let (crc, payload) = stored.split_at_checked(4)?;
    (crc32fast::hash(payload).to_le_bytes() == crc).then_some(payload)
}

#[cfg(test)]
mod tests;
