//! The typed facades over a [`Backend`]: `distributed().counter(..)` and the rest.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::json;

use casty_core::limits::{CLIENT_TIMEOUT_DEFAULT_MS, SHARDS_DEFAULT};
use casty_core::protocol::{DeployReport, Deployment, Invoke, TypeInfo};
use casty_core::routing::Address;

use crate::{Admin, Backend, ClientError, ErrorKind, Zero, duration_ms};

/// The entry point to the structures, as `system.distributed()` in the seed API.
#[derive(Clone)]
pub struct Distributed {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed").field("client_id", &self.backend.client_id()).finish()
    }
}

impl Distributed {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The counter `name`.
    pub fn counter(&self, name: &str) -> Counter {
        Counter { target: Target::new(self.clone(), "counter", name) }
    }

    /// The map `name`, with keys of type `K` and values of type `V`.
    pub fn map<K, V>(&self, name: &str) -> crate::Map<K, V> {
        crate::Map::new(Target::new(self.clone(), "map", name))
    }

    /// The set `name` of `T`s.
    pub fn set<T>(&self, name: &str) -> crate::Set<T> {
        crate::Set::new(Target::new(self.clone(), "set", name))
    }

    /// The lock `name`. Each handle has its own owner id.
    pub fn lock(&self, name: &str) -> crate::Lock {
        crate::Lock::new(self.lock_as_semaphore(name))
    }

    /// The lock `name` as the semaphore of one permit it is, for callers that treat locks
    /// and semaphores alike (the CLI).
    pub fn lock_as_semaphore(&self, name: &str) -> crate::Semaphore {
        crate::Semaphore::new(Target::new(self.clone(), "lock", name), 1)
    }

    /// The semaphore `name` with `permits` permits. Each handle has its own owner id.
    pub fn semaphore(&self, name: &str, permits: u32) -> crate::Semaphore {
        crate::Semaphore::new(Target::new(self.clone(), "semaphore", name), permits)
    }

    /// The FIFO queue `name` of `T`s.
    pub fn queue<T>(&self, name: &str) -> crate::Queue<T> {
        crate::Queue::new(Target::new(self.clone(), "queue", name))
    }

    /// The barrier `name`. Its party id is this client's id unless set with `party`.
    pub fn barrier(&self, name: &str) -> crate::Barrier {
        crate::Barrier::new(Target::new(self.clone(), "barrier", name))
    }

    /// The register `name`, holding one `T`.
    pub fn register<T>(&self, name: &str) -> crate::Register<T> {
        crate::Register::new(Target::new(self.clone(), "register", name))
    }

    /// The entities of a deployed type, with commands of type `C` and replies of type `R`
    /// (the entity's own serde types): `d.entity::<Command, Reply>("bank-account")`.
    pub fn entity<C, R>(&self, entity_type: &str) -> crate::Entities<C, R> {
        crate::Entities::new(Target::new(self.clone(), entity_type, entity_type))
    }

    /// Deploys a component as the next version of `entity_type`, with the node's default
    /// limits; see [`Distributed::deploy_with`].
    pub async fn deploy(&self, wasm: Vec<u8>, entity_type: &str) -> Result<DeployReport, ClientError> {
        let deployment = Deployment {
            entity_type: entity_type.to_owned(),
            wasm,
            memory_max_bytes: None,
            call_deadline_ms: None,
        };
        self.deploy_with(deployment).await
    }

    /// Deploys a component to the whole cluster. The first deployment of a type creates
    /// it; a later one upgrades it live: each entity moves to the new version at its next
    /// command, its state restored by the new version from the old one's snapshot. The
    /// component is refused, with the reason, when it is not an entity component, imports
    /// what entities are not given, or cannot restore the state of the type's entities.
    /// It is retried while the cluster is unavailable (electing its metadata leader,
    /// say), for up to 60 s; [`Admin::timeout`] sets another bound.
    pub async fn deploy_with(&self, deployment: Deployment) -> Result<DeployReport, ClientError> {
        self.admin().deploy_with(deployment).await
    }

    /// Every entity type the cluster runs, with each version.
    pub async fn types(&self) -> Result<Vec<TypeInfo>, ClientError> {
        self.admin().types().await
    }

    /// The cluster's administration: status, readiness, types and deploys.
    pub fn admin(&self) -> Admin {
        Admin::new(self.backend.clone())
    }

    /// Sends a raw command to any entity type; the command and reply are JSON bytes.
    pub async fn send_raw(
        &self,
        address: Address,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let request = self.request(address, command, timeout);
        self.invoke(request).await
    }

    /// A request with a fresh request id, from this client, waiting up to `timeout`.
    pub fn request(&self, address: Address, command: Vec<u8>, timeout: Duration) -> Invoke {
        self.request_as(self.backend.client_id(), address, command, timeout)
    }

    /// A request as [`Distributed::request`] makes, sent on behalf of `caller` (a lock
    /// handle's owner id, for example).
    pub fn request_as(&self, caller: &str, address: Address, command: Vec<u8>, timeout: Duration) -> Invoke {
        Invoke {
            address,
            command,
            caller: caller.to_owned(),
            request_id: self.backend.next_request_id(),
            timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
        }
    }

    /// Sends a prepared request and waits up to its timeout. Sending the same request
    /// again (same request id) is safe: the node applies it once and answers the retry
    /// with the original reply.
    ///
    /// A timeout of less than 1 ms or more than 30 days is refused. Running out of time
    /// is [`ClientError::Timeout`], whether the client gave up or the node withdrew a
    /// call parked that long.
    pub async fn invoke(&self, request: Invoke) -> Result<Vec<u8>, ClientError> {
        let timeout_ms =
            duration_ms("the timeout", Duration::from_millis(request.timeout_ms), Zero::Refused)?;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.backend.invoke(request)).await {
            Ok(Err(e)) if e.kind() == Some(&ErrorKind::Timeout) => Err(ClientError::Timeout { timeout_ms }),
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { timeout_ms }),
        }
    }
}

/// What every structure handle carries: where it points and how it waits.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    d: Distributed,
    entity_type: String,
    pub(crate) name: String,
    pub(crate) shards: u32,
    pub(crate) timeout: Duration,
}

impl Target {
    pub(crate) fn new(d: Distributed, entity_type: &str, name: &str) -> Self {
        Self {
            d,
            entity_type: entity_type.to_owned(),
            name: name.to_owned(),
            shards: SHARDS_DEFAULT,
            timeout: Duration::from_millis(CLIENT_TIMEOUT_DEFAULT_MS),
        }
    }

    fn address(&self, id: &str) -> Address {
        Address {
            entity_type: self.entity_type.clone(),
            region: self.name.clone(),
            shards: self.shards,
            id: id.to_owned(),
        }
    }

    /// This client's id, the default party of a barrier.
    pub(crate) fn client_id(&self) -> &str {
        self.d.backend.client_id()
    }

    /// Sends `command` to entity `id` of this structure and decodes the reply as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        id: &str,
        command: serde_json::Value,
    ) -> Result<T, ClientError> {
        self.call_as(self.d.backend.client_id(), id, command, self.timeout).await
    }

    /// [`Target::call`] on behalf of `caller`, waiting up to `timeout`.
    pub(crate) async fn call_as<T: DeserializeOwned>(
        &self,
        caller: &str,
        id: &str,
        command: serde_json::Value,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(&command).expect("JSON values serialize");
        let reply = self.d.invoke(self.d.request_as(caller, self.address(id), bytes, timeout)).await?;
        serde_json::from_slice(&reply).map_err(|e| {
            ClientError::Decode(format!("the reply does not decode as {}: {e}", std::any::type_name::<T>()))
        })
    }

    /// Sends `command` to every entity in `ids` at once and adds up their numeric replies
    /// (a map's size over its shards, a queue's over its segments).
    pub(crate) async fn sum_over(
        &self,
        ids: impl Iterator<Item = String>,
        command: serde_json::Value,
    ) -> Result<u64, ClientError> {
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let (target, command) = (self.clone(), command.clone());
            tasks.spawn(async move { target.call::<u64>(&id, command).await });
        }
        let mut total = 0;
        while let Some(result) = tasks.join_next().await {
            total += result.map_err(|e| ClientError::ConnectionLost(e.to_string()))??;
        }
        Ok(total)
    }
}

/// Encodes a caller's value in the one encoding every structure stores: JSON with object
/// keys sorted, so equal values have equal bytes.
pub(crate) fn encode_value<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<serde_json::Value, ClientError> {
    serde_json::to_value(value).map_err(|e| ClientError::Encode(e.to_string()))
}

/// Decodes a stored value into the caller's type, naming the type when it does not fit.
pub(crate) fn decode_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| {
        ClientError::Decode(format!("a stored value does not decode as {}: {e}", std::any::type_name::<T>()))
    })
}

/// Decodes an optional reply, which entities send as `[value]` or `[]`.
pub(crate) fn decode_optional<T: DeserializeOwned>(
    reply: Vec<serde_json::Value>,
) -> Result<Option<T>, ClientError> {
    reply.into_iter().next().map(decode_value).transpose()
}

/// `shards`, `timeout` and `name` for a structure handle with a `target` field.
macro_rules! target_options {
    () => {
        /// How many shards the structure is split into (default 100). Every handle to the
        /// same structure must use the same number.
        pub fn shards(mut self, shards: u32) -> Self {
            self.target.shards = shards;
            self
        }

        /// How long each operation waits (default 5 s).
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.target.timeout = timeout;
            self
        }

        /// The structure's name.
        pub fn name(&self) -> &str {
            &self.target.name
        }
    };
}
pub(crate) use target_options;

/// A distributed counter: one entity named after the counter.
#[derive(Clone, Debug)]
pub struct Counter {
    target: Target,
}

impl Counter {
    target_options!();

    async fn send<T: DeserializeOwned>(&self, command: serde_json::Value) -> Result<T, ClientError> {
        self.target.call(&self.target.name, command).await
    }

    /// Adds `by`; returns the new value.
    pub async fn increment(&self, by: i64) -> Result<i64, ClientError> {
        self.send(json!({ "increment": { "by": by } })).await
    }

    /// Subtracts `by`; returns the new value.
    pub async fn decrement(&self, by: i64) -> Result<i64, ClientError> {
        self.send(json!({ "decrement": { "by": by } })).await
    }

    /// The current value (0 for a counter never written).
    pub async fn get(&self) -> Result<i64, ClientError> {
        self.send(json!("get")).await
    }

    /// Sets the value back to 0.
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.send::<Option<i64>>(json!("reset")).await.map(drop)
    }
}
