//! The dispatcher: checks each request, routes it to its partition's mailbox, and
//! answers status. It never blocks on a full mailbox: a full one answers `Overloaded`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;

use casty_client::Tls;
use casty_core::limits::{CALLER_LEN_MAX_BYTES, COMMAND_SIZE_MAX_BYTES, MAILBOX_LEN_MAX};
use casty_core::protocol::{ErrorKind, Invoke, Request, Response, StatusReport, WireError};
use casty_core::record::MemberRecord;
use casty_journal::Journal;
use casty_journal::raft_log::LogFiles;
use casty_raft::{GroupStatus, LoopConfig, RaftLoop};
use casty_runtime::Runtime;

use crate::NodeError;
use crate::cluster::Elsewhere;
use crate::metrics::Metrics;
use crate::partition::{Job, Members, Message, PartitionWorker, Setup, Wasm};
use crate::peers::{NodeId, Peers};
use crate::types::Registry;

pub(crate) struct Config {
    pub(crate) cluster: String,
    pub(crate) node_id: String,
    pub(crate) raft_id: NodeId,
    pub(crate) partitions: u32,
    pub(crate) replicas: u32,
    pub(crate) dead_after: std::time::Duration,
    /// How this node authenticates its peers when it connects to them.
    pub(crate) tls: Tls,
    /// The address this node serves on, which it also dials its peers from.
    pub(crate) address: std::net::SocketAddr,
    pub(crate) journal: Journal,
    /// Where the Raft log files are.
    pub(crate) raft_dir: std::path::PathBuf,
    pub(crate) runtime: Runtime,
    pub(crate) types: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) struct Dispatcher {
    pub(crate) cluster: String,
    pub(crate) node_id: String,
    pub(crate) raft_id: NodeId,
    pub(crate) address: String,
    pub(crate) partitions: u32,
    pub(crate) replicas: u32,
    pub(crate) types: Arc<Registry>,
    pub(crate) mailboxes: Vec<mpsc::Sender<Message>>,
    /// The node's Raft loop, which drives every group.
    pub(crate) raft: RaftLoop,
    /// What each group looks like from here: one per partition, then the metadata group.
    pub(crate) groups: Vec<watch::Receiver<GroupStatus>>,
    /// The cluster's members, as the metadata group's worker applied them.
    pub(crate) members: watch::Receiver<Members>,
    /// Whether the Raft log files held the metadata group at start-up: this node is (or
    /// was) a member of a cluster.
    recovered_meta: bool,
    pub(crate) peers: Arc<Peers>,
    pub(crate) started: std::time::Instant,
    pub(crate) dead_after: std::time::Duration,
    /// Set once this node is leaving the cluster.
    pub(crate) leaving: std::sync::atomic::AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    /// Held by the metadata leader while it numbers and commits a deployment, so two
    /// deploys of one type never take the same version.
    pub(crate) deploying: Mutex<()>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("node_id", &self.node_id)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// How far a command may still be passed on: a client's may go through a replica and
/// then the leader; one another node passed on goes at most to the leader; one forwarded
/// to the leader is served where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Relay,
    Forward,
    Serve,
}

pub(crate) fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, message)
}

impl Dispatcher {
    /// Starts the Raft loop on the node's log files, and one worker per partition and
    /// one for the metadata group (which holds no entities). A group the log files hold
    /// is added to the loop at once; the others wait until the node founds a cluster or
    /// joins one ([`Dispatcher::found`]).
    pub(crate) async fn start(config: Config) -> Result<Self, NodeError> {
        let types = config.types;
        let per_partition = (config.runtime.config().live_instances_max / config.partitions as usize).max(1);
        let (files, mut recovered, next_write) = LogFiles::open(&config.raft_dir)?;
        let raft = RaftLoop::start(LoopConfig {
            id: config.raft_id,
            files: files.clone(),
            next_write,
            tls: config.tls.clone(),
            listen: config.address,
            local_ip: config.address.ip(),
        })?;
        config.metrics.watch_raft(raft.stats());
        let recovered_meta = recovered.contains_key(&config.partitions);
        let (members_tx, members) = watch::channel(Members::new());
        let mut mailboxes = Vec::with_capacity(config.partitions as usize + 1);
        let mut workers = Vec::with_capacity(config.partitions as usize + 1);
        let mut groups = Vec::with_capacity(config.partitions as usize + 1);
        for partition in 0..=config.partitions {
            let (tx, rx) = mpsc::channel(MAILBOX_LEN_MAX);
            let (status_tx, status) = watch::channel(GroupStatus::default());
            let holds_types = partition == config.partitions;
            let worker = PartitionWorker::new(Setup {
                id: partition,
                me: config.raft_id,
                journal: config.journal.clone(),
                raft: raft.clone(),
                files: Some(files.clone()),
                recovered: recovered.remove(&partition),
                status: status_tx,
                members: if holds_types { members_tx.clone() } else { watch::channel(Members::new()).0 },
                components: Wasm { runtime: config.runtime.clone(), types: types.clone() },
                holds_types,
                live_max: per_partition,
                metrics: config.metrics.clone(),
            });
            workers.push(tokio::spawn(worker.run(rx)));
            mailboxes.push(tx);
            groups.push(status);
        }
        for group in recovered.keys() {
            tracing::warn!(
                "the Raft log holds group {group}, which this cluster does not have; it is ignored"
            );
        }
        tokio::spawn(follow_addresses(members.clone(), raft.clone(), config.raft_id));
        Ok(Self {
            cluster: config.cluster,
            node_id: config.node_id,
            raft_id: config.raft_id,
            address: config.address.to_string(),
            partitions: config.partitions,
            replicas: config.replicas,
            types,
            mailboxes,
            raft,
            groups,
            members,
            recovered_meta,
            peers: Arc::new(Peers::new(config.tls, config.address.ip())),
            started: std::time::Instant::now(),
            dead_after: config.dead_after,
            leaving: std::sync::atomic::AtomicBool::new(false),
            workers: Mutex::new(workers),
            metrics: config.metrics,
            deploying: Mutex::new(()),
        })
    }

    /// Whether this node is already a member of a cluster (its metadata group exists).
    pub(crate) fn is_member(&self) -> bool {
        self.recovered_meta
    }

    /// Creates this node's replica of every group that has none yet: as their only
    /// voter when it founds the cluster, or empty, to be filled by the groups' leaders,
    /// when it joins one. Founding waits until this node leads every group.
    pub(crate) async fn found(&self, founder: bool) -> Result<(), NodeError> {
        let me = MemberRecord { id: self.raft_id, name: self.node_id.clone(), addr: self.address.clone() };
        for mailbox in &self.mailboxes {
            let founder = founder.then(|| me.clone());
            let _ = mailbox.send(Message::Found { founder }).await;
        }
        if !founder {
            return Ok(());
        }
        let deadline = std::time::Duration::from_millis(casty_core::limits::JOIN_DEADLINE_MS);
        for status in &self.groups {
            let mut status = status.clone();
            let led = tokio::time::timeout(deadline, status.wait_for(|s| s.leading)).await;
            if !matches!(led, Ok(Ok(_))) {
                return Err(NodeError::Config("a group of the new cluster elected no leader".into()));
            }
        }
        Ok(())
    }

    pub(crate) async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Invoke(invoke) => match self.invoke(invoke).await {
                Ok(reply) => Response::Reply(reply),
                Err(e) => Response::Error(e),
            },
            Request::Status => Response::Status(self.status()),
            Request::Forwarded(invoke) => match self.invoke_passed(invoke, Pass::Serve).await {
                Ok(reply) => Response::Reply(reply),
                Err(e) => Response::Error(e),
            },
            Request::Relayed(invoke) => match self.invoke_passed(invoke, Pass::Forward).await {
                Ok(reply) => Response::Reply(reply),
                Err(e) => Response::Error(e),
            },
            Request::Join(join) => match self.admit(join).await {
                Ok(()) => Response::Reply(Vec::new()),
                Err(e) => Response::Error(e),
            },
            Request::Ping => Response::Reply(Vec::new()),
            Request::Leave { node_id } => {
                match self.remove_member(crate::peers::node_id_of(&node_id)).await {
                    Ok(()) => Response::Reply(Vec::new()),
                    Err(e) => Response::Error(e),
                }
            }
            Request::Deploy(deployment) => match self.deploy(deployment).await {
                Ok(report) => Response::Deployed(report),
                Err(e) => Response::Error(e),
            },
            Request::Types => Response::Types(self.types.list()),
            // The server takes a deploy's chunks in; one that gets here came on its own.
            Request::ComponentChunk(_) => Response::Error(invalid(
                "a component chunk must come ahead of its deploy, on the deploy's own stream".into(),
            )),
            Request::CommitDeploy(deployment) => match self.commit_deploy(deployment).await {
                Ok(report) => Response::Deployed(report),
                Err(e) => Response::Error(e),
            },
        }
    }

    /// Checks a request, sends it to its partition's leader and waits for the answer.
    pub(crate) async fn invoke(&self, invoke: Invoke) -> Result<Vec<u8>, WireError> {
        self.invoke_passed(invoke, Pass::Relay).await
    }

    /// As [`Self::invoke`], for a request that may be passed on only as `pass` says.
    async fn invoke_passed(&self, invoke: Invoke, pass: Pass) -> Result<Vec<u8>, WireError> {
        let result = self.route(invoke, pass).await;
        self.count(&result);
        result
    }

    fn count(&self, result: &Result<Vec<u8>, WireError>) {
        let outcome = match result {
            Ok(_) => &self.metrics.requests_ok,
            Err(e) if e.kind == ErrorKind::Overloaded => &self.metrics.requests_overloaded,
            Err(_) => &self.metrics.requests_failed,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    async fn route(&self, invoke: Invoke, pass: Pass) -> Result<Vec<u8>, WireError> {
        invoke.address.validate().map_err(|e| invalid(e.to_string()))?;
        if invoke.command.len() > COMMAND_SIZE_MAX_BYTES {
            return Err(invalid(format!(
                "the command is {} bytes; the limit is {COMMAND_SIZE_MAX_BYTES} bytes",
                invoke.command.len()
            )));
        }
        for (what, value) in [("caller", &invoke.caller), ("request id", &invoke.request_id)] {
            if value.is_empty() || value.len() > CALLER_LEN_MAX_BYTES {
                return Err(invalid(format!("the {what} must be 1 to {CALLER_LEN_MAX_BYTES} bytes long")));
            }
        }
        if !self.types.contains(&invoke.address.entity_type) {
            return Err(WireError::new(
                ErrorKind::UnknownEntityType,
                format!(
                    "no entity type named {:?} is deployed; known types: {}",
                    invoke.address.entity_type,
                    self.types.names().join(", ")
                ),
            ));
        }
        let partition = invoke.address.shard_key().partition(self.partitions);
        match (self.leader_elsewhere(partition), pass) {
            (Some(to @ Elsewhere::Leader(_)), Pass::Relay | Pass::Forward)
            | (Some(to @ Elsewhere::Replica(_)), Pass::Relay) => {
                return self.forward(partition, to, invoke).await;
            }
            _ => {}
        }
        let (reply, answer) = oneshot::channel();
        self.mailboxes[partition as usize].try_send(Message::Job(Job { invoke, reply })).map_err(
            |e| match e {
                TrySendError::Full(_) => WireError::new(
                    ErrorKind::Overloaded,
                    format!("partition {partition} has {MAILBOX_LEN_MAX} commands waiting; retry later"),
                ),
                TrySendError::Closed(_) => {
                    WireError::new(ErrorKind::Unavailable, "the node is shutting down")
                }
            },
        )?;
        answer
            .await
            .map_err(|_| WireError::new(ErrorKind::Unavailable, "the partition stopped before answering"))?
    }

    pub(crate) fn status(&self) -> StatusReport {
        let entity_types = self.types.names();
        StatusReport {
            cluster: self.cluster.clone(),
            node_id: self.node_id.clone(),
            metadata_leader: self.meta_leader_name(),
            members: self.member_report(),
            groups: self.group_report(),
            partitions: self.partitions,
            entity_types,
            live_instances: self.metrics.live_instances.load(Ordering::Relaxed).max(0) as u64,
        }
    }

    /// Tells every worker to stop after the commands already queued and waits for them.
    pub(crate) async fn shutdown(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().await);
        for mailbox in &self.mailboxes {
            // A worker that already stopped has dropped its receiver; nothing to tell it.
            let _ = mailbox.send(Message::Stop).await;
        }
        for worker in workers {
            if let Err(e) = worker.await {
                tracing::error!("a partition worker failed: {e}");
            }
        }
        self.raft.stop().await;
    }
}

/// Tells the Raft loop where every member serves, as the metadata group learns it.
async fn follow_addresses(mut members: watch::Receiver<Members>, raft: RaftLoop, me: NodeId) {
    loop {
        let addrs: Vec<(NodeId, String)> =
            members.borrow_and_update().values().map(|m| (m.id, m.addr.clone())).collect();
        for (id, addr) in addrs {
            match addr.parse() {
                Ok(addr) if id != me => drop(raft.set_address(id, addr).await),
                Ok(_) => {}
                Err(e) => tracing::warn!("member {id:016x} has a bad address {addr:?}: {e}"),
            }
        }
        if members.changed().await.is_err() {
            return;
        }
    }
}
