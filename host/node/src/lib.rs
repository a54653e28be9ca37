//! The node: the driver that owns the tokio tasks and wires the pure core to the
//! runtime, the journal and the transport.
//!
//! A node is a set of partition workers (each owns its shard instances and its slice of
//! the log), a dispatcher that routes requests to them, and a QUIC server. The same
//! node runs inside `casty-host` and embedded in a Rust program through
//! [`Node::builder`]; both expose the client facades through [`Node::distributed`].

mod cluster;
mod deploy;
mod dispatch;
mod metrics;
mod partition;
mod peers;
mod server;
mod types;

pub use metrics::Metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use casty_client::{
    Backend, BoxFuture, ClientError, DeployReport, Deployment, Distributed, Invoke, RequestIds, StatusReport,
    Tls, TypeInfo,
};
use casty_core::limits;
use casty_core::protocol::{Request, Response};
use casty_journal::Journal;
use casty_runtime::{Runtime, RuntimeConfig, TypeLimits};

use dispatch::Dispatcher;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Journal(#[from] casty_journal::JournalError),
    #[error(transparent)]
    Runtime(#[from] casty_runtime::RuntimeError),
    #[error(transparent)]
    Load(#[from] casty_runtime::LoadError),
    #[error(transparent)]
    Transport(#[from] casty_transport::TransportError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Configures and starts a node.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    name: String,
    bind: SocketAddr,
    node_id: Option<String>,
    seeds: Vec<String>,
    data_dir: Option<PathBuf>,
    partitions: Option<u32>,
    replicas: u32,
    dead_after: Duration,
    runtime: RuntimeConfig,
    extra_types: Vec<(String, Vec<u8>)>,
    metrics_addr: Option<SocketAddr>,
    tls: Tls,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self {
            name: "casty".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 25520)),
            node_id: None,
            seeds: Vec::new(),
            data_dir: None,
            partitions: None,
            replicas: limits::REPLICAS_DEFAULT,
            dead_after: Duration::from_millis(limits::DEAD_AFTER_DEFAULT_MS),
            runtime: RuntimeConfig::default(),
            extra_types: Vec::new(),
            metrics_addr: None,
            tls: Tls::Development,
        }
    }
}

impl NodeBuilder {
    /// The cluster's name (default `casty`). A data directory belongs to one cluster.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The address to serve on (default `127.0.0.1:25520`; port 0 picks a free one).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The node's id (default: its bind address when its data directory was created; the
    /// id is kept with the data).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Seed nodes of the cluster to join.
    pub fn seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// Persist to this directory. Without it the node keeps everything in memory, as the
    /// seed API does without a journal.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Partitions of a new cluster (default 64). Fixed once the data directory exists.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Replicas of each partition (default 3), capped at the cluster's size.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// How long a member may answer nothing before it is removed from the cluster and its
    /// replicas are re-created on the others (default 30 s).
    pub fn dead_after(mut self, after: Duration) -> Self {
        self.dead_after = after;
        self
    }

    /// Shard instances kept live before the least recently used are passivated.
    pub fn live_instances(mut self, max: usize) -> Self {
        self.runtime.live_instances_max = max;
        self
    }

    /// Wall time one call into an entity may take.
    pub fn call_deadline(mut self, deadline: Duration) -> Self {
        self.runtime.call_deadline = deadline;
        self
    }

    /// Linear memory one shard instance may grow to.
    pub fn instance_memory(mut self, bytes: usize) -> Self {
        self.runtime.instance_memory_max_bytes = bytes;
        self
    }

    /// Serves an extra entity type from a component's bytes.
    pub fn entity_type(mut self, name: impl Into<String>, wasm: Vec<u8>) -> Self {
        self.extra_types.push((name.into(), wasm));
        self
    }

    /// Serves Prometheus metrics over HTTP at `addr` (`GET /metrics`).
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// How the node authenticates clients and peers (default: development mode, which
    /// verifies nothing). Verified mutual TLS admits only certificates of the cluster's
    /// authority, on client connections and between nodes alike.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    pub async fn start(self) -> Result<Node, NodeError> {
        let started = std::time::Instant::now();
        if self.replicas == 0 {
            return Err(NodeError::Config("replicas must be at least 1".into()));
        }
        let journal = match &self.data_dir {
            Some(dir) => Journal::open(&dir.join("journal.redb"))?,
            None => Journal::in_memory()?,
        };
        // The Raft log is files in any case: a node without a data directory keeps them in
        // a scratch directory that goes with it.
        let (raft_dir, scratch) = match &self.data_dir {
            Some(dir) => (dir.join("raft"), None),
            None => {
                let scratch = tempfile::tempdir().map_err(|e| {
                    NodeError::Config(format!("cannot make a scratch directory for the Raft log: {e}"))
                })?;
                (scratch.path().to_owned(), Some(scratch))
            }
        };
        let partitions = settle_metadata(&journal, &self.name, self.partitions)?;
        tracing::debug!(elapsed = ?started.elapsed(), "journal open");

        let mut runtime_config = self.runtime.clone();
        runtime_config.cache_dir = self.data_dir.as_ref().map(|dir| dir.join("compiled"));
        let runtime = Runtime::new(runtime_config)?;
        tracing::debug!(elapsed = ?started.elapsed(), "runtime ready");
        let mut fixed = HashMap::new();
        let builtins = casty_builtins::BUILTINS.iter().map(|(name, wasm)| (*name, *wasm));
        let extra = self.extra_types.iter().map(|(name, wasm)| (name.as_str(), wasm.as_slice()));
        for (name, wasm) in builtins.chain(extra) {
            casty_core::routing::validate_type_name(name).map_err(|e| NodeError::Config(e.to_string()))?;
            fixed.insert(name.to_owned(), runtime.load_type(name, 1, wasm, TypeLimits::default())?);
        }
        let types = Arc::new(types::Registry::new(runtime.clone(), fixed));
        types.load_stored(&journal).map_err(|e| NodeError::Config(format!("the deployed types: {e}")))?;

        tracing::debug!(elapsed = ?started.elapsed(), "entity types loaded");
        let identity_dir = self.data_dir.as_ref().map(|dir| dir.join("tls"));
        let endpoint = casty_transport::server_endpoint(self.bind, &self.tls, identity_dir.as_deref())?;
        let local_addr = endpoint.local_addr().map_err(|e| NodeError::Config(e.to_string()))?;
        let node_id = settle_node_id(&journal, self.node_id.as_deref(), &local_addr.to_string())?;
        let metrics = Arc::new(Metrics::default());
        if let Some(addr) = self.metrics_addr {
            let bound = metrics::serve(addr, metrics.clone())
                .await
                .map_err(|e| NodeError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
            tracing::info!("serving Prometheus metrics on http://{bound}/metrics");
        }
        let dispatcher = Dispatcher::start(dispatch::Config {
            cluster: self.name.clone(),
            raft_id: peers::node_id_of(&node_id),
            node_id: node_id.clone(),
            partitions,
            replicas: self.replicas,
            dead_after: self.dead_after,
            tls: self.tls.clone(),
            address: local_addr,
            journal: journal.clone(),
            raft_dir,
            runtime,
            types,
            metrics: metrics.clone(),
        })
        .await?;
        let dispatcher = Arc::new(dispatcher);
        tokio::spawn(server::serve(endpoint.clone(), dispatcher.clone()));
        self.settle_membership(&dispatcher, &node_id, &local_addr.to_string()).await?;
        tokio::spawn(dispatcher.clone().place_forever());
        let tls = match self.tls {
            Tls::Development => {
                "TLS is in development mode: a self-signed certificate, which clients do not verify"
            }
            Tls::Verified(_) => {
                "verified mutual TLS: clients and peers need a certificate of the cluster's authority"
            }
        };
        tracing::info!(
            cluster = %self.name, node = %node_id, partitions,
            data = %self.data_dir.as_ref().map_or("(in memory)".into(), |d| d.display().to_string()),
            "listening on {local_addr} (QUIC) after {} ms. {tls}",
            started.elapsed().as_millis()
        );
        Ok(Node {
            dispatcher: dispatcher.clone(),
            endpoint,
            local_addr,
            journal,
            metrics,
            _scratch: scratch,
            embedded: Arc::new(Embedded {
                dispatcher,
                ids: RequestIds::new(format!("node-{node_id}-{}", uuid::Uuid::new_v4())),
            }),
        })
    }
}

impl NodeBuilder {
    /// Makes this node a member: a node that already is one (its groups are initialised)
    /// carries on; one without seeds founds a cluster; one with seeds joins through them.
    /// Seeds that list each other and find no cluster let the one with the lowest address
    /// found it, so they converge to one cluster rather than each founding its own.
    async fn settle_membership(
        &self,
        dispatcher: &Dispatcher,
        node_id: &str,
        address: &str,
    ) -> Result<(), NodeError> {
        let member = dispatcher.is_member();
        if member {
            dispatcher.found(false).await?;
        }
        if self.seeds.is_empty() {
            return if member { Ok(()) } else { dispatcher.found(true).await };
        }
        // A node that was a member joins again too: if it left (SIGTERM) or was removed
        // as dead, that makes it a member once more; if not, joining changes nothing.
        let request = casty_core::protocol::JoinRequest {
            cluster: self.name.clone(),
            node_id: node_id.to_owned(),
            address: address.to_owned(),
        };
        let lowest = !member && self.seeds.iter().all(|seed| seed.as_str() > address);
        let deadline = Duration::from_millis(if lowest {
            3 * limits::PLACEMENT_INTERVAL_MS
        } else {
            limits::JOIN_DEADLINE_MS
        });
        match cluster::join(&dispatcher.peers, &self.seeds, request, deadline).await {
            // Its replicas start empty; the groups' leaders fill them.
            Ok(()) => dispatcher.found(false).await,
            Err(e) if lowest && !e.contains("refused") => {
                tracing::info!(
                    "no seed leads a cluster ({e}); founding it, as the seed with the lowest address"
                );
                dispatcher.found(true).await
            }
            Err(e) => Err(NodeError::Config(format!("cannot join the cluster: {e}"))),
        }
    }
}

const META_CLUSTER: &str = "cluster";
const META_NODE_ID: &str = "node-id";

/// A node keeps its id for the life of its data directory: Raft knows it by that id.
fn settle_node_id(journal: &Journal, asked: Option<&str>, address: &str) -> Result<String, NodeError> {
    let stored = journal.meta(META_NODE_ID)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    match (stored, asked) {
        (Some(stored), Some(asked)) if stored != asked => Err(NodeError::Config(format!(
            "the data directory belongs to node {stored:?}, not {asked:?}; start with --node-id {stored} or use another data directory"
        ))),
        (Some(stored), _) => Ok(stored),
        (None, asked) => {
            let id = asked.unwrap_or(address).to_owned();
            journal.put_meta(META_NODE_ID, id.as_bytes())?;
            Ok(id)
        }
    }
}
const META_PARTITIONS: &str = "partitions";

/// Checks the data directory belongs to this cluster and fixes the partition count.
fn settle_metadata(journal: &Journal, cluster: &str, partitions: Option<u32>) -> Result<u32, NodeError> {
    if let Some(stored) = journal.meta(META_CLUSTER)? {
        let stored = String::from_utf8_lossy(&stored).into_owned();
        if stored != cluster {
            return Err(NodeError::Config(format!(
                "the data directory belongs to cluster {stored:?}, not {cluster:?}; start with --name {stored} or use another data directory"
            )));
        }
    } else {
        journal.put_meta(META_CLUSTER, cluster.as_bytes())?;
    }
    let stored = match journal.meta(META_PARTITIONS)? {
        Some(bytes) => Some(
            postcard::from_bytes::<u32>(&bytes)
                .map_err(|e| NodeError::Config(format!("the stored partition count does not decode: {e}")))?,
        ),
        None => None,
    };
    match (stored, partitions) {
        (Some(stored), Some(asked)) if stored != asked => Err(NodeError::Config(format!(
            "this cluster was created with {stored} partitions and cannot change to {asked}; drop --partitions"
        ))),
        (Some(stored), _) => Ok(stored),
        (None, asked) => {
            let partitions = asked.unwrap_or(limits::PARTITIONS_DEFAULT);
            if partitions == 0 || partitions > limits::PARTITIONS_MAX {
                return Err(NodeError::Config(format!(
                    "partitions must be between 1 and {}, got {partitions}",
                    limits::PARTITIONS_MAX
                )));
            }
            journal.put_meta(META_PARTITIONS, &postcard::to_allocvec(&partitions).expect("a u32 encodes"))?;
            Ok(partitions)
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    dispatcher: Arc<Dispatcher>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    journal: Journal,
    metrics: Arc<Metrics>,
    /// The Raft log's directory of a node without a data directory.
    _scratch: Option<tempfile::TempDir>,
    /// The in-process backend every `distributed()` facade shares, so request ids never
    /// repeat across facades.
    embedded: Arc<Embedded>,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The address the node serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The structures, served by this node in-process (as `system.distributed()`).
    pub fn distributed(&self) -> Distributed {
        Distributed::new(self.embedded.clone())
    }

    /// The node's metrics, as `--metrics` serves them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn status(&self) -> StatusReport {
        self.dispatcher.status()
    }

    /// Returns, with the reason, once the node's journal or Raft log has failed (a
    /// commit, and so an fsync, failed). From then on the node acknowledges no write; the
    /// owner of the node should end it at once, without a hand-over, and start it again
    /// once the disk is healthy, when it recovers from what the disk holds (`casty-host`
    /// exits).
    pub async fn failed(&self) -> String {
        tokio::select! {
            reason = self.journal.failed() => reason,
            reason = self.dispatcher.raft.failed() => reason,
        }
    }

    /// Stops serving: leaves the cluster (its replicas and leaderships move to the other
    /// members first), closes connections, lets each partition finish its current batch,
    /// and closes the journal.
    pub async fn shutdown(self) {
        self.dispatcher.leave().await;
        self.endpoint.close(0u32.into(), b"node shutting down");
        self.dispatcher.shutdown().await;
        self.endpoint.wait_idle().await;
    }
}

/// The facades' backend inside the node's own process.
#[derive(Debug)]
struct Embedded {
    dispatcher: Arc<Dispatcher>,
    ids: RequestIds,
}

impl Backend for Embedded {
    fn invoke(&self, request: Invoke) -> BoxFuture<'_, Result<Vec<u8>, ClientError>> {
        Box::pin(async move { self.dispatcher.invoke(request).await.map_err(ClientError::from) })
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusReport, ClientError>> {
        Box::pin(async move { Ok(self.dispatcher.status()) })
    }

    fn member_status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReport, ClientError>> {
        Box::pin(async move {
            match cluster::ask(&self.dispatcher.peers, address, &Request::Status).await? {
                Response::Status(report) => Ok(report),
                Response::Error(e) => Err(e.into()),
                other => Err(ClientError::Decode(format!("{address} answered a status with {other:?}"))),
            }
        })
    }

    fn deploy<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<DeployReport, ClientError>> {
        // In process, the dispatcher takes the component over.
        Box::pin(async move { self.dispatcher.deploy(deployment.clone()).await.map_err(ClientError::from) })
    }

    fn types(&self) -> BoxFuture<'_, Result<Vec<TypeInfo>, ClientError>> {
        Box::pin(async move { Ok(self.dispatcher.types.list()) })
    }

    fn client_id(&self) -> &str {
        self.ids.client_id()
    }

    fn next_request_id(&self) -> String {
        self.ids.next()
    }
}
