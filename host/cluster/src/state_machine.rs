//! The state machine adapter: every call openraft makes on a partition's state machine is
//! handed to that partition's worker, which owns the entities, and answered by it. The
//! worker is thus the one place a partition's state changes, whether it decided the entry
//! itself (as leader) or receives it (as follower).

use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, RaftSnapshotBuilder, StorageError, StorageIOError};
use tokio::sync::{mpsc, oneshot};

use crate::{Entry, LogId, Membership, NodeId, Snapshot, SnapshotMeta, TypeConfig};

/// Where the worker sends an answer: `Err` carries a message for the log.
pub type Answer<T> = oneshot::Sender<Result<T, String>>;

/// A state-machine call, for the worker to carry out.
#[derive(Debug)]
pub enum SmRequest {
    /// The last applied log id and the membership in force.
    AppliedState(Answer<(Option<LogId>, Membership)>),
    /// Apply these committed entries, in order.
    Apply(Vec<Entry>, Answer<()>),
    /// Checkpoint, and export the partition as a snapshot.
    Snapshot(Answer<Snapshot>),
    /// Replace the partition with this snapshot from another replica.
    Install(SnapshotMeta, Vec<u8>, Answer<()>),
}

/// The adapter openraft holds; also its snapshot builder.
#[derive(Clone, Debug)]
pub struct StateMachine {
    worker: mpsc::Sender<SmRequest>,
}

impl StateMachine {
    pub fn new(worker: mpsc::Sender<SmRequest>) -> Self {
        Self { worker }
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(Answer<T>) -> SmRequest,
        error: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<T, StorageError<NodeId>> {
        let (answer, answered) = oneshot::channel();
        let failed = |message: String| StorageError::from(error(AnyError::error(message)));
        self.worker
            .send(request(answer))
            .await
            .map_err(|_| failed("the partition worker has stopped".into()))?;
        answered.await.map_err(|_| failed("the partition worker has stopped".into()))?.map_err(failed)
    }
}

fn read(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_state_machine(e)
}

fn write(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_state_machine(e)
}

fn snapshot(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_snapshot(None, e)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<NodeId>> {
        self.ask(SmRequest::Snapshot, snapshot).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError<NodeId>> {
        self.ask(SmRequest::AppliedState, read).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len();
        self.ask(|answer| SmRequest::Apply(entries, answer), write).await?;
        Ok(vec![(); count])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        self.ask(|answer| SmRequest::Install(meta, snapshot.into_inner(), answer), write).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<NodeId>> {
        self.ask(SmRequest::Snapshot, read).await.map(Some)
    }
}
