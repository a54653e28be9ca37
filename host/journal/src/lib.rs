//! The journal: one redb database per node holding the entities' snapshots, the
//! partitions' checkpoints, the deployed types and the node's metadata. The Raft log is
//! not here: it is in append-only files of its own ([`raft_log`]).
//!
//! Writes go through one writer thread that commits every batch waiting for it in a
//! single transaction (group commit: one fsync for many partitions' writes); a write is
//! acknowledged only once its transaction committed. Every stored value carries a CRC-32
//! so a damaged file is reported, never decoded into garbage. This crate knows nothing of
//! entities or wasm: payloads are bytes that `casty-core::record` gives meaning to.
#![forbid(unsafe_code)]

pub mod raft_log;
mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use casty_core::limits::JOURNAL_CACHE_MAX_BYTES;

/// Node metadata: cluster name, node id, partition count, format version.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Entity snapshots: (partition, encoded entity key) → checksummed snapshot.
const SNAPSHOTS: TableDefinition<(u32, &[u8]), &[u8]> = TableDefinition::new("snapshots");
/// Wake-up times of entities, kept with their snapshots: (partition, entity) → ms.
const WAKEUPS: TableDefinition<(u32, &[u8]), u64> = TableDefinition::new("wakeups");
/// Per partition: the index through which every entity's snapshot is complete and the
/// partition's own state as of that index. (The Raft log before it may then be compacted.)
const CHECKPOINTS: TableDefinition<u32, (u64, &[u8])> = TableDefinition::new("checkpoints");
/// Deployed entity types: (type name, version) → checksummed type record (the component
/// and its limits). The metadata group's state; versions are never removed.
const TYPES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("types");
/// Pieces of components whose deploy is under way: (type name, version, offset) →
/// checksummed piece. Removed once the type record joins them.
const PARTS: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("parts");

/// The payloads of a table's `items`, unsealed; `key` names one that is damaged.
fn unsealed<K: redb::Key + 'static>(
    items: redb::Range<'_, K, &'static [u8]>,
    table: &'static str,
    key: impl Fn(K::SelfType<'_>) -> String,
) -> Result<Vec<Vec<u8>>, JournalError> {
    let mut payloads = Vec::new();
    for item in items {
        let (stored_key, value) = item.map_err(storage)?;
        let payload = unseal(value.value())
            .ok_or_else(|| JournalError::Corrupt { table, key: key(stored_key.value()) })?;
        payloads.push(payload.to_vec());
    }
    Ok(payloads)
}

/// A stored value with its key: (encoded entity key, bytes).
pub type KeyedBytes = (Vec<u8>, Vec<u8>);

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

/// Everything one partition wants committed together. The parts are carried out in
/// field order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionWrite {
    pub partition: u32,
    /// Deletes every entity snapshot and wake-up of the partition before storing those
    /// below: the partition is being replaced by a snapshot from another replica.
    pub replace_entities: bool,
    /// Entity snapshots to store: (encoded entity key, encoded snapshot).
    pub snapshots: Vec<(Vec<u8>, Vec<u8>)>,
    /// Wake-up times of the snapshotted entities: set, or cleared with `None`.
    pub wakeups: Vec<(Vec<u8>, Option<u64>)>,
    /// Deletes every stored piece of these (type name, version)s' components, before the
    /// pieces below are stored: a deploy starts afresh, or its record joined them.
    pub parts_cleared: Vec<(String, u32)>,
    /// Pieces of components to store: (type name, version, offset, encoded piece).
    pub parts: Vec<(String, u32, u64, Vec<u8>)>,
    /// Entity type versions to store: (type name, version, encoded record).
    pub types: Vec<(String, u32, Vec<u8>)>,
    /// Sets the checkpoint, after the snapshots above.
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
        !self.replace_entities
            && self.snapshots.is_empty()
            && self.wakeups.is_empty()
            && self.parts_cleared.is_empty()
            && self.parts.is_empty()
            && self.types.is_empty()
            && self.checkpoint.is_none()
    }
}

/// A handle to the node's journal; cheap to clone. When the last handle is dropped the
/// writer finishes its commit and stops, and the file is closed.
#[derive(Clone, Debug)]
pub struct Journal {
    db: Arc<Database>,
    writer: Arc<writer::Writer>,
    /// Why the first failed commit failed, once one has.
    failure: watch::Receiver<Option<String>>,
}

impl Journal {
    /// Opens (or creates) the journal file at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let open = |reason: String| JournalError::Open { path: path.display().to_string(), reason };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
        }
        let db = Database::builder()
            .set_cache_size(JOURNAL_CACHE_MAX_BYTES)
            .create(path)
            .map_err(|e| open(e.to_string()))?;
        Self::start(db)
    }

    /// A journal that lives in memory and is gone when the process ends.
    pub fn in_memory() -> Result<Self, JournalError> {
        Self::with_backend(redb::backends::InMemoryBackend::new(), "(memory)")
    }

    /// A journal on a storage backend of redb's, described as `what` in errors.
    fn with_backend(backend: impl redb::StorageBackend, what: &str) -> Result<Self, JournalError> {
        let db = Database::builder()
            .set_cache_size(JOURNAL_CACHE_MAX_BYTES)
            .create_with_backend(backend)
            .map_err(|e| JournalError::Open { path: what.into(), reason: e.to_string() })?;
        Self::start(db)
    }

    fn start(db: Database) -> Result<Self, JournalError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(SNAPSHOTS).map_err(storage)?;
        txn.open_table(CHECKPOINTS).map_err(storage)?;
        txn.open_table(WAKEUPS).map_err(storage)?;
        txn.open_table(TYPES).map_err(storage)?;
        txn.open_table(PARTS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let (report, failure) = watch::channel(None);
        let writer = writer::Writer::spawn(db.clone(), report)
            .map_err(|e| JournalError::Storage(format!("cannot start the writer: {e}")))?;
        Ok(Self { db, writer: Arc::new(writer), failure })
    }

    /// Returns, with the reason, once a commit has failed. After a failed fsync nothing
    /// says which of the writes since the last good one reached the disk, and redb
    /// refuses every later write until the file is opened again; so the owner of the
    /// journal should stop at once (fail-stop) and recover from what the disk holds.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The writer is gone (the journal is closing) without a failure: never.
            Err(_) => std::future::pending().await,
        }
    }

    /// Commits `write`, together with whatever other partitions are writing, and returns
    /// once it is durable.
    pub async fn write(&self, write: PartitionWrite) -> Result<(), JournalError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.submit(write, move |result| {
            // A caller that stopped waiting does not need its answer.
            let _ = done.send(result);
        })
        .await?;
        committed.await.map_err(|_| JournalError::Closed)?
    }

    /// Queues `write` behind every write queued before it and returns once it is queued.
    /// Writes are committed in the order they were queued; the writer thread calls `done`
    /// with the outcome of its commit (so it must be quick and must not block).
    async fn submit(
        &self,
        write: PartitionWrite,
        done: impl FnOnce(Result<(), JournalError>) + Send + 'static,
    ) -> Result<(), JournalError> {
        self.writer.submit(write, Box::new(done)).await
    }

    /// How many transactions (one fsync each) the writer has committed: fewer than the
    /// writes when group commit shares them.
    pub fn commits(&self) -> u64 {
        self.writer.commits()
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

    /// Every entity snapshot of `partition`: (encoded entity key, snapshot), in key order.
    pub fn snapshots(&self, partition: u32) -> Result<Vec<KeyedBytes>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let mut snapshots = Vec::new();
        for item in table.range((partition, &[][..])..).map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (p, entity) = key.value();
            if p != partition {
                break;
            }
            let payload = unseal(value.value()).ok_or_else(|| JournalError::Corrupt {
                table: "snapshots",
                key: format!("partition {partition}"),
            })?;
            snapshots.push((entity.to_vec(), payload.to_vec()));
        }
        Ok(snapshots)
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

    /// The stored pieces of version `version` of `entity_type`'s component, in offset
    /// order; `None` for every (name, version): all of them.
    pub fn parts(&self, of: Option<(&str, u32)>) -> Result<Vec<Vec<u8>>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PARTS).map_err(storage)?;
        let items = match of {
            Some((name, version)) => table.range((name, version, 0)..=(name, version, u64::MAX)),
            None => table.range::<(&str, u32, u64)>(..),
        }
        .map_err(storage)?;
        unsealed(items, "parts", |(name, version, offset)| format!("{name} version {version} at {offset}"))
    }

    /// Every stored entity type version, in (name, version) order.
    pub fn types(&self) -> Result<Vec<Vec<u8>>, JournalError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(TYPES).map_err(storage)?;
        unsealed(table.iter().map_err(storage)?, "types", |(name, version)| {
            format!("{name} version {version}")
        })
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

/// Prefixes a payload with its CRC-32: the form of every value the journal stores.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed value, or `None` when its checksum does not match (or the
/// value is too short to hold one). Every stored value is read through here; it is public
/// so that the fuzz targets (`tests/fuzz`) run it on arbitrary bytes.
pub fn unseal(stored: &[u8]) -> Option<&[u8]> {
    let (crc, payload) = stored.split_at_checked(4)?;
    (crc32fast::hash(payload).to_le_bytes() == crc).then_some(payload)
}

#[cfg(test)]
mod power_loss;
#[cfg(test)]
mod tests;
