//! The dispatcher: checks each request, routes it to its partition's mailbox, and
//! answers status. It never blocks on a full mailbox: a full one answers `Overloaded`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use casty_client::Tls;
use casty_cluster::{LogStore, Network, NodeId, NodeInfo, Peers, Raft, StateMachine};
use casty_core::limits::{
    CALLER_LEN_MAX_BYTES, COMMAND_SIZE_MAX_BYTES, MAILBOX_LEN_MAX, STATE_MACHINE_QUEUE_LEN_MAX,
};
use casty_core::protocol::{ErrorKind, Invoke, Request, Response, StatusReport, WireError};
use casty_journal::Journal;
use casty_runtime::Runtime;

use crate::NodeError;
use crate::cluster::Elsewhere;
use crate::metrics::Metrics;
use crate::partition::{Job, Message, PartitionWorker, Setup};
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
    /// One group per partition, then the metadata group (whose membership is the
    /// cluster's membership).
    pub(crate) rafts: Vec<Raft>,
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
    /// Starts one worker task and one Raft group per partition, and the metadata group
    /// (served by a worker that holds no entities). The groups start empty until the node
    /// founds a cluster or is made a member of one.
    pub(crate) async fn start(config: Config) -> Result<Self, NodeError> {
        let types = config.types;
        let per_partition = (config.runtime.config().live_instances_max / config.partitions as usize).max(1);
        let raft_config = casty_cluster::raft_config(&config.cluster);
        let mut mailboxes = Vec::with_capacity(config.partitions as usize);
        let mut workers = Vec::with_capacity(config.partitions as usize);
        let mut rafts = Vec::with_capacity(config.partitions as usize + 1);
        let peers = Arc::new(Peers::new(config.tls, config.address.ip()));
        for partition in 0..=config.partitions {
            let (tx, rx) = mpsc::channel(MAILBOX_LEN_MAX);
            let (sm_tx, sm_rx) = mpsc::channel(STATE_MACHINE_QUEUE_LEN_MAX);
            let worker = PartitionWorker::new(Setup {
                id: partition,
                me: config.raft_id,
                journal: config.journal.clone(),
                runtime: config.runtime.clone(),
                types: types.clone(),
                holds_types: partition == config.partitions,
                live_max: per_partition,
                metrics: config.metrics.clone(),
                sm: sm_rx,
            });
            // The worker runs before its group: Raft asks the state machine as it starts.
            workers.push(tokio::spawn(worker.run(rx)));
            let raft = Raft::new(
                config.raft_id,
                raft_config.clone(),
                Network::new(partition, peers.clone()),
                LogStore::new(config.journal.clone(), partition),
                StateMachine::new(sm_tx),
            )
            .await
            .map_err(|e| {
                NodeError::Config(format!("partition {partition}'s Raft group cannot start: {e}"))
            })?;
            let _ = tx.send(Message::Attach(raft.clone())).await;
            mailboxes.push(tx);
            rafts.push(raft);
        }
        Ok(Self {
            cluster: config.cluster,
            node_id: config.node_id,
            raft_id: config.raft_id,
            address: config.address.to_string(),
            partitions: config.partitions,
            replicas: config.replicas,
            types,
            mailboxes,
            rafts,
            peers,
            started: std::time::Instant::now(),
            dead_after: config.dead_after,
            leaving: std::sync::atomic::AtomicBool::new(false),
            workers: Mutex::new(workers),
            metrics: config.metrics,
            deploying: Mutex::new(()),
        })
    }

    /// Whether this node is already a member of a cluster (its metadata group exists).
    pub(crate) async fn is_member(&self) -> bool {
        self.rafts.last().expect("the metadata group").is_initialized().await.unwrap_or(false)
    }

    /// Founds a cluster (with `new`) or resumes membership: see [`bootstrap`].
    pub(crate) async fn found(&self, new: bool) -> Result<(), NodeError> {
        let info = NodeInfo { name: self.node_id.clone(), addr: self.address.clone() };
        for raft in &self.rafts {
            bootstrap(raft, self.raft_id, &info, new).await?;
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
            Request::Raft { group, message } => match self.rafts.get(group as usize) {
                Some(raft) => match casty_cluster::deliver(raft, &self.peers, &message).await {
                    Ok(answer) => Response::Reply(answer),
                    Err(e) => Response::Error(WireError::new(ErrorKind::Unavailable, e)),
                },
                None => Response::Error(invalid(format!("this node has no Raft group {group}"))),
            },
            Request::Join(join) => match self.admit(join).await {
                Ok(()) => Response::Reply(Vec::new()),
                Err(e) => Response::Error(e),
            },
            Request::Ping => Response::Reply(Vec::new()),
            Request::Leave { node_id } => match self.remove_member(casty_cluster::node_id_of(&node_id)).await
            {
                Ok(()) => Response::Reply(Vec::new()),
                Err(e) => Response::Error(e),
            },
            Request::Campaign { group } => match self.rafts.get(group as usize) {
                Some(raft) => {
                    let _ = raft.trigger().elect().await;
                    Response::Reply(Vec::new())
                }
                None => Response::Error(invalid(format!("this node has no Raft group {group}"))),
            },
            Request::Deploy(deployment) => match self.deploy(deployment).await {
                Ok(report) => Response::Deployed(report),
                Err(e) => Response::Error(e),
            },
            Request::Types => Response::Types(self.types.list()),
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
        // Each worker shuts its group down as it stops.
        for worker in workers {
            if let Err(e) = worker.await {
                tracing::error!("a partition worker failed: {e}");
            }
        }
    }
}

/// Makes a new group a one-voter group of this node (on the founder), and has a group
/// whose only voter is this node elect itself at once rather than after an election
/// timeout.
async fn bootstrap(raft: &Raft, me: NodeId, info: &NodeInfo, founder: bool) -> Result<(), NodeError> {
    let fatal = |e: &dyn std::fmt::Display| NodeError::Config(format!("a Raft group failed to start: {e}"));
    if founder && !raft.is_initialized().await.map_err(|e| fatal(&e))? {
        let members = std::collections::BTreeMap::from([(me, info.clone())]);
        raft.initialize(members).await.map_err(|e| fatal(&e))?;
    }
    let sole_voter = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().voter_ids().eq([me])
    };
    if sole_voter {
        raft.trigger().elect().await.map_err(|e| fatal(&e))?;
    }
    Ok(())
}
