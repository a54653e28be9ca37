//! The Casty client library: connect to a cluster, then reach its structures through
//! typed facades.
//!
//! ```no_run
//! # async fn demo() -> Result<(), casty_client::ClientError> {
//! let client = casty_client::Client::connect(["127.0.0.1:25520"]).await?;
//! let d = client.distributed();
//! let views = d.counter("page-views").shards(50);
//! views.increment(100).await?;
//! views.decrement(10).await?;
//! assert_eq!(views.get().await?, 90);
//! # Ok(()) }
//! ```
//!
//! The facades run over a [`Backend`]: a remote [`Client`] sends requests over QUIC; an
//! embedded node (`casty_node::Node`) implements the same trait in-process, so code
//! written against [`Distributed`] runs unchanged against either.
#![forbid(unsafe_code)]

mod admin;
mod connection;
mod entity;
mod error;
mod facade;
mod lock;
mod map;
mod queue;
mod register;
mod retry;

pub use admin::Admin;
pub use casty_transport::tls::{Tls, Verified};
pub use connection::{Client, ClientBuilder};
pub use entity::{Entities, EntityRef};
pub use error::{ClientError, Zero, duration_ms};
pub use facade::{Counter, Distributed};
pub use lock::{LEASE_TTL_DEFAULT, Lock, LockGuard, Semaphore};
pub use map::{Map, Scan, Set};
pub use queue::{Barrier, Queue};
pub use register::Register;
pub use retry::retrying;

pub use casty_core::protocol::{
    DeployReport, Deployment, ErrorKind, Invoke, StatusReport, TypeInfo, WireError,
};

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future, as [`Backend`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where requests go: a remote cluster or a node in this process.
pub trait Backend: Send + Sync + 'static {
    /// Sends one command to one entity and returns its encoded reply.
    fn invoke(&self, request: Invoke) -> BoxFuture<'_, Result<Vec<u8>, ClientError>>;
    /// Describes the node and its cluster.
    fn status(&self) -> BoxFuture<'_, Result<StatusReport, ClientError>>;
    /// Describes the member at `address` (as a status's member list gives it).
    fn member_status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReport, ClientError>>;
    /// Deploys a version of an entity type to the cluster.
    fn deploy<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<DeployReport, ClientError>>;
    /// The entity types the cluster runs, every version.
    fn types(&self) -> BoxFuture<'_, Result<Vec<TypeInfo>, ClientError>>;
    /// An id for this client, unique across the cluster; request ids derive from it.
    fn client_id(&self) -> &str;
    /// A request id never used before by this client (the node answers a request id it
    /// has seen with the reply it gave, so ids must not repeat).
    fn next_request_id(&self) -> String;
}

/// Request ids for one client: its id and a sequence number.
#[derive(Debug)]
pub struct RequestIds {
    client_id: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    pub fn new(client_id: String) -> Self {
        Self { client_id, next: std::sync::atomic::AtomicU64::new(1) }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn next(&self) -> String {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}:{seq}", self.client_id)
    }
}
