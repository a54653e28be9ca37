//! What a partition worker asks of the rest of the node, as traits: the entity types and
//! their instances ([`Components`], wasmtime in the node) and the node's Raft loop
//! ([`Group`]). The worker's logic is written against them, so its tests run it on a
//! native fake of each, without an async runtime, components or a network (`tests.rs`).
//!
//! The worker awaits component calls (a call runs on a fiber and yields at every epoch
//! tick); what it asks of its group only queues a request with the loop, whose answers
//! come back as [`Event`](casty_raft::Event)s.

use std::sync::Arc;

use casty_core::Decision;
use casty_core::record::TypeRecord;
use casty_raft::{Entry, GroupLog, GroupStatus, LoopError, RaftLoop};
use casty_runtime::{CallContext, EntityType, InvokeError, Runtime, ShardInstance};
use tokio::sync::{mpsc, watch};

use crate::types::Registry;

/// A version of an entity type, as far as a partition needs to know it.
pub(crate) trait TypeVersion: Clone {
    fn name(&self) -> &str;
    fn version(&self) -> u32;
}

/// One shard's instance of an entity type, hosting the shard's live entities; see
/// `casty_runtime::ShardInstance`.
pub(crate) trait Instance {
    fn version(&self) -> u32;
    fn contains(&self, id: &str) -> bool;
    fn entity_ids(&self) -> Vec<String>;
    fn len(&self) -> usize;
    /// Whether a call failed in a way that leaves the instance unusable.
    fn is_poisoned(&self) -> bool;
    async fn create(&mut self, id: &str) -> Result<(), InvokeError>;
    async fn restore(&mut self, id: &str, snapshot: &[u8]) -> Result<(), InvokeError>;
    async fn handle(&mut self, id: &str, ctx: &CallContext, command: &[u8]) -> Result<Decision, InvokeError>;
    async fn apply(&mut self, id: &str, event: &[u8]) -> Result<(), InvokeError>;
    async fn wake(&mut self, id: &str, ctx: &CallContext) -> Result<Decision, InvokeError>;
    async fn withdraw(
        &mut self,
        id: &str,
        ctx: &CallContext,
        request_id: &str,
    ) -> Result<Decision, InvokeError>;
    async fn snapshot(&mut self, id: &str) -> Result<Vec<u8>, InvokeError>;
}

/// The entity types this node has, and instances of them.
pub(crate) trait Components {
    type Type: TypeVersion;
    type Instance: Instance;
    /// The newest version of a type, if the node has it.
    fn current(&self, name: &str) -> Option<Self::Type>;
    /// The newest version of a type once it is at least `version` (a deployment may
    /// reach this node after entries its new version decided).
    async fn at_least(&self, name: &str, version: u32) -> Result<Self::Type, String>;
    async fn instantiate(&self, ty: &Self::Type) -> Result<Self::Instance, InvokeError>;
    /// Loads a committed deployment.
    async fn install(&self, record: &TypeRecord);
}

/// The partition's Raft group, as the node's Raft loop drives it; see [`RaftLoop`].
pub(crate) trait Group {
    async fn add(
        &self,
        log: GroupLog,
        applied: u64,
        events: mpsc::Sender<casty_raft::Event>,
        status: watch::Sender<GroupStatus>,
    ) -> Result<(), LoopError>;
    async fn campaign(&self, group: u32) -> Result<(), LoopError>;
    async fn propose(&self, group: u32, context: Vec<u8>, data: Vec<u8>) -> Result<(), LoopError>;
    async fn read_index(&self, group: u32, context: Vec<u8>) -> Result<(), LoopError>;
    async fn compact(&self, group: u32, index: u64) -> Result<(), LoopError>;
    async fn exported(&self, group: u32, index: u64, data: Vec<u8>) -> Result<(), LoopError>;
    async fn entries(&self, group: u32, from: u64, to: u64) -> Result<Vec<Entry>, String>;
}

/// The node's components: compiled by wasmtime, deployed through the metadata group.
#[derive(Clone)]
pub(crate) struct Wasm {
    pub(crate) runtime: Runtime,
    pub(crate) types: Arc<Registry>,
}

impl TypeVersion for Arc<EntityType> {
    fn name(&self) -> &str {
        EntityType::name(self)
    }

    fn version(&self) -> u32 {
        EntityType::version(self)
    }
}

impl Components for Wasm {
    type Type = Arc<EntityType>;
    type Instance = ShardInstance;

    fn current(&self, name: &str) -> Option<Self::Type> {
        self.types.current(name)
    }

    async fn at_least(&self, name: &str, version: u32) -> Result<Self::Type, String> {
        self.types.at_least(name, version).await
    }

    async fn instantiate(&self, ty: &Self::Type) -> Result<ShardInstance, InvokeError> {
        self.runtime.instantiate(ty).await
    }

    async fn install(&self, record: &TypeRecord) {
        self.types.install(record).await;
    }
}

impl Instance for ShardInstance {
    fn version(&self) -> u32 {
        ShardInstance::version(self)
    }

    fn contains(&self, id: &str) -> bool {
        ShardInstance::contains(self, id)
    }

    fn entity_ids(&self) -> Vec<String> {
        ShardInstance::entity_ids(self).map(str::to_owned).collect()
    }

    fn len(&self) -> usize {
        ShardInstance::len(self)
    }

    fn is_poisoned(&self) -> bool {
        ShardInstance::is_poisoned(self)
    }

    async fn create(&mut self, id: &str) -> Result<(), InvokeError> {
        ShardInstance::create(self, id).await
    }

    async fn restore(&mut self, id: &str, snapshot: &[u8]) -> Result<(), InvokeError> {
        ShardInstance::restore(self, id, snapshot).await
    }

    async fn handle(&mut self, id: &str, ctx: &CallContext, command: &[u8]) -> Result<Decision, InvokeError> {
        ShardInstance::handle(self, id, ctx, command).await
    }

    async fn apply(&mut self, id: &str, event: &[u8]) -> Result<(), InvokeError> {
        ShardInstance::apply(self, id, event).await
    }

    async fn wake(&mut self, id: &str, ctx: &CallContext) -> Result<Decision, InvokeError> {
        ShardInstance::wake(self, id, ctx).await
    }

    async fn withdraw(
        &mut self,
        id: &str,
        ctx: &CallContext,
        request_id: &str,
    ) -> Result<Decision, InvokeError> {
        ShardInstance::withdraw(self, id, ctx, request_id).await
    }

    async fn snapshot(&mut self, id: &str) -> Result<Vec<u8>, InvokeError> {
        ShardInstance::snapshot(self, id).await
    }
}

impl Group for RaftLoop {
    async fn add(
        &self,
        log: GroupLog,
        applied: u64,
        events: mpsc::Sender<casty_raft::Event>,
        status: watch::Sender<GroupStatus>,
    ) -> Result<(), LoopError> {
        RaftLoop::add(self, log, applied, events, status).await
    }

    async fn campaign(&self, group: u32) -> Result<(), LoopError> {
        RaftLoop::campaign(self, group).await
    }

    async fn propose(&self, group: u32, context: Vec<u8>, data: Vec<u8>) -> Result<(), LoopError> {
        RaftLoop::propose(self, group, context, data).await
    }

    async fn read_index(&self, group: u32, context: Vec<u8>) -> Result<(), LoopError> {
        RaftLoop::read_index(self, group, context).await
    }

    async fn compact(&self, group: u32, index: u64) -> Result<(), LoopError> {
        RaftLoop::compact(self, group, index).await
    }

    async fn exported(&self, group: u32, index: u64, data: Vec<u8>) -> Result<(), LoopError> {
        RaftLoop::exported(self, group, index, data).await
    }

    async fn entries(&self, group: u32, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        RaftLoop::entries(self, group, from, to).await
    }
}
