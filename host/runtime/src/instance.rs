//! A shard instance: one component instance in its own store, hosting the entities of
//! one shard as resources.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Instant;

use wasmtime::component::ResourceAny;
use wasmtime::{Store, UpdateDeadline};

use casty_core::limits::{EVENT_SIZE_MAX_BYTES, EVENTS_PER_DECISION_MAX, FAILING_CALLS_MS_PER_S};
use casty_core::protocol::ErrorKind;
use casty_core::{Decision, ParkedReply, Rejection, Reply, WakeUp};

use crate::Runtime;
use crate::bindings::Entity as EntityWorld;
use crate::bindings::casty::entity::types as wit;
use crate::loader::EntityType;
use crate::wasi::HostState;

/// What the host tells an entity about a call; see `context` in the WIT world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    pub caller: String,
    pub request_id: String,
    pub now_ms: u64,
}

/// Why a call into an entity failed. Every variant but [`InvokeError::Malformed`] and
/// [`InvokeError::InvalidDecision`] poisons the instance: drop it and build a new one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    #[error("the command does not decode as a {entity_type} command: {reason}")]
    Malformed { entity_type: String, reason: String },
    #[error("entity type {entity_type} trapped: {reason}")]
    Trapped { entity_type: String, reason: String },
    #[error("entity type {entity_type} ran past its deadline of {deadline_ms} ms and was stopped")]
    DeadlineExceeded { entity_type: String, deadline_ms: u64 },
    #[error("entity type {entity_type} hit its memory limit of {limit_bytes} bytes and was stopped")]
    MemoryLimit { entity_type: String, limit_bytes: usize },
    #[error("entity type {entity_type} returned an invalid decision: {reason}")]
    InvalidDecision { entity_type: String, reason: String },
    #[error("entity type {entity_type} could not restore entity {id:?} from its snapshot: {reason}")]
    Restore { entity_type: String, id: String, reason: String },
    #[error("entity type {entity_type} could not be instantiated: {reason}")]
    Instantiate { entity_type: String, reason: String },
    #[error(
        "entity type {entity_type} is refused on this node for {retry_after_ms} ms: its calls that trapped or \
         hit a limit (the last: {last_failure}) took more than its share of {FAILING_CALLS_MS_PER_S} ms per second"
    )]
    Throttled { entity_type: String, retry_after_ms: u64, last_failure: String },
}

impl InvokeError {
    /// The kind of error a caller sees for this failure.
    pub fn wire_kind(&self) -> ErrorKind {
        match self {
            InvokeError::Malformed { .. } => ErrorKind::MalformedCommand,
            InvokeError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            InvokeError::MemoryLimit { .. } => ErrorKind::MemoryLimitExceeded,
            InvokeError::Trapped { .. } | InvokeError::InvalidDecision { .. } => ErrorKind::EntityTrapped,
            InvokeError::Restore { .. } => ErrorKind::Internal,
            InvokeError::Instantiate { .. } => ErrorKind::Unavailable,
            InvokeError::Throttled { .. } => ErrorKind::Overloaded,
        }
    }

    /// Whether the instance must be dropped after this error.
    pub fn poisons(&self) -> bool {
        !matches!(
            self,
            InvokeError::Malformed { .. }
                | InvokeError::InvalidDecision { .. }
                | InvokeError::Throttled { .. }
        )
    }
}

/// One shard's component instance and the entities it hosts.
pub struct ShardInstance {
    ty: Arc<EntityType>,
    store: Store<HostState>,
    world: EntityWorld,
    entities: HashMap<String, ResourceAny>,
    poisoned: bool,
}

impl std::fmt::Debug for ShardInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInstance")
            .field("type", &self.ty.name)
            .field("entities", &self.entities.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Runtime {
    /// A new, empty instance of `ty`.
    pub async fn instantiate(&self, ty: &Arc<EntityType>) -> Result<ShardInstance, InvokeError> {
        let state = HostState::new(ty.memory_max_bytes, ty.call_deadline);
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        // At every epoch tick a running call yields to the executor, until the time it
        // ran (not the time it waited; see `clock`) reaches its deadline; then it is
        // interrupted.
        store.epoch_deadline_callback(|mut store| {
            if store.data_mut().clock.tick(Instant::now()) {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        store.data_mut().clock.start(Instant::now());
        let world = ty.pre.instantiate_async(&mut store).await.map_err(|e| InvokeError::Instantiate {
            entity_type: ty.name.clone(),
            reason: format!("{e:#}"),
        })?;
        Ok(ShardInstance { ty: ty.clone(), store, world, entities: HashMap::new(), poisoned: false })
    }
}

impl ShardInstance {
    pub fn entity_type(&self) -> &str {
        &self.ty.name
    }

    /// The version of its type this instance runs.
    pub fn version(&self) -> u32 {
        self.ty.version()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entities.contains_key(id)
    }

    pub fn entity_ids(&self) -> impl Iterator<Item = &str> {
        self.entities.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Whether a call trapped or hit a limit; a poisoned instance must not be used again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Creates entity `id` with its initial state.
    pub async fn create(&mut self, id: &str) -> Result<(), InvokeError> {
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_constructor(&mut self.store, id).await;
        let resource = self.finish_call(result)?;
        self.insert(id, resource).await;
        Ok(())
    }

    /// Rebuilds entity `id` from a snapshot.
    pub async fn restore(&mut self, id: &str, snapshot: &[u8]) -> Result<(), InvokeError> {
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_restore(&mut self.store, id, snapshot).await;
        let resource = self.finish_call(result)?.map_err(|reason| InvokeError::Restore {
            entity_type: self.ty.name.clone(),
            id: id.to_owned(),
            reason,
        })?;
        self.insert(id, resource).await;
        Ok(())
    }

    async fn insert(&mut self, id: &str, resource: ResourceAny) {
        if let Some(old) = self.entities.insert(id.to_owned(), resource) {
            // Dropping a resource runs no guest code that can fail in a way we could act on.
            let _ = old.resource_drop_async(&mut self.store).await;
        }
    }

    /// Decides a command for entity `id`, which must exist.
    pub async fn handle(
        &mut self,
        id: &str,
        ctx: &CallContext,
        command: &[u8],
    ) -> Result<Decision, InvokeError> {
        // Only commands are refused: wake-ups and withdrawals keep entities' promises.
        self.ty.failures.admit(Instant::now()).map_err(|overspent| InvokeError::Throttled {
            entity_type: self.ty.name.clone(),
            retry_after_ms: overspent.retry_after_ms,
            last_failure: overspent.last_failure,
        })?;
        let resource = self.resource(id);
        let wit_ctx = self.wit_context(id, ctx);
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_handle(&mut self.store, resource, &wit_ctx, command).await;
        match self.finish_call(result)? {
            Ok(decision) => self.check_decision(decision),
            Err(wit::CommandError::Malformed(reason)) => {
                Err(InvokeError::Malformed { entity_type: self.ty.name.clone(), reason })
            }
        }
    }

    /// Applies one persisted event to entity `id`.
    pub async fn apply(&mut self, id: &str, event: &[u8]) -> Result<(), InvokeError> {
        let resource = self.resource(id);
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_apply(&mut self.store, resource, event).await;
        self.finish_call(result)
    }

    /// Wakes entity `id` at the time it asked for.
    pub async fn wake(&mut self, id: &str, ctx: &CallContext) -> Result<Decision, InvokeError> {
        let resource = self.resource(id);
        let wit_ctx = self.wit_context(id, ctx);
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_wake(&mut self.store, resource, &wit_ctx).await;
        let decision = self.finish_call(result)?;
        self.check_decision(decision)
    }

    /// Tells entity `id` that the caller of parked request `request_id` stopped waiting.
    pub async fn withdraw(
        &mut self,
        id: &str,
        ctx: &CallContext,
        request_id: &str,
    ) -> Result<Decision, InvokeError> {
        let resource = self.resource(id);
        let wit_ctx = self.wit_context(id, ctx);
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_withdraw(&mut self.store, resource, &wit_ctx, request_id).await;
        let decision = self.finish_call(result)?;
        self.check_decision(decision)
    }

    /// The snapshot of entity `id`.
    pub async fn snapshot(&mut self, id: &str) -> Result<Vec<u8>, InvokeError> {
        let resource = self.resource(id);
        self.begin_call();
        let guest = self.world.casty_entity_entity_handler().entity();
        let result = guest.call_snapshot(&mut self.store, resource).await;
        self.finish_call(result)
    }

    fn resource(&self, id: &str) -> ResourceAny {
        assert!(!self.poisoned, "a poisoned instance is never called again");
        *self.entities.get(id).expect("the caller creates or restores an entity before calling it")
    }

    fn wit_context(&self, id: &str, ctx: &CallContext) -> wit::Context {
        wit::Context {
            entity_id: id.to_owned(),
            caller: ctx.caller.clone(),
            request_id: ctx.request_id.clone(),
            now_ms: ctx.now_ms,
        }
    }

    fn begin_call(&mut self) {
        self.store.set_epoch_deadline(1);
        let state = self.store.data_mut();
        state.clock.start(Instant::now());
        state.limiter.memory_limit_hit = false;
    }

    /// Turns a wasmtime error into the limit it names, and poisons the instance.
    fn finish_call<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, InvokeError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        self.poisoned = true;
        let entity_type = self.ty.name.clone();
        let state = self.store.data();
        let failure = if state.limiter.memory_limit_hit {
            InvokeError::MemoryLimit { entity_type, limit_bytes: state.limiter.memory_max_bytes }
        } else if state.clock.deadline_hit {
            InvokeError::DeadlineExceeded {
                entity_type,
                deadline_ms: state.clock.deadline.as_millis() as u64,
            }
        } else {
            InvokeError::Trapped { entity_type, reason: format!("{error:#}") }
        };
        let ran = state.clock.ran_at(Instant::now());
        let what = match &failure {
            InvokeError::MemoryLimit { limit_bytes, .. } => {
                format!("the memory limit of {limit_bytes} bytes")
            }
            InvokeError::DeadlineExceeded { deadline_ms, .. } => format!("the deadline of {deadline_ms} ms"),
            _ => "a trap".to_owned(),
        };
        self.ty.failures.charge(ran, what, Instant::now());
        Err(failure)
    }

    fn check_decision(&self, decision: wit::Decision) -> Result<Decision, InvokeError> {
        let invalid =
            |reason: String| InvokeError::InvalidDecision { entity_type: self.ty.name.clone(), reason };
        if decision.events.len() > EVENTS_PER_DECISION_MAX {
            return Err(invalid(format!(
                "{} events in one decision; the limit is {EVENTS_PER_DECISION_MAX}",
                decision.events.len()
            )));
        }
        let largest = decision.events.iter().map(Vec::len).max().unwrap_or(0);
        if largest > EVENT_SIZE_MAX_BYTES {
            return Err(invalid(format!("an event of {largest} bytes; the limit is {EVENT_SIZE_MAX_BYTES}")));
        }
        let reply = match decision.reply {
            wit::Reply::Ok(bytes) => Reply::Ok(bytes),
            wit::Reply::Rejected(r) => {
                if !decision.events.is_empty() {
                    return Err(invalid("a rejection that also persists events".into()));
                }
                Reply::Rejected(rejection(r))
            }
            wit::Reply::Park => Reply::Park,
        };
        Ok(Decision {
            events: decision.events,
            reply,
            wake_parked: decision
                .wake_parked
                .into_iter()
                .map(|p| ParkedReply { request_id: p.request_id, reply: p.reply.map_err(rejection) })
                .collect(),
            wake: match decision.wake {
                wit::WakeUp::Keep => WakeUp::Keep,
                wit::WakeUp::At(at) => WakeUp::At(at),
                wit::WakeUp::Cancel => WakeUp::Cancel,
            },
        })
    }
}

fn rejection(r: wit::Rejection) -> Rejection {
    Rejection { code: r.code, message: r.message }
}
