//! The dispatcher: checks each request, routes it to its partition's mailbox, and
//! answers status. It never blocks on a full mailbox: a full one answers `Overloaded`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use casty_cluster::{BasicNode, LogStore, Network, NodeId, Raft, StateMachine};
use casty_core::limits::{
    CALLER_LEN_MAX_BYTES, COMMAND_SIZE_MAX_BYTES, MAILBOX_LEN_MAX, STATE_MACHINE_QUEUE_LEN_MAX,
};
use casty_core::protocol::{
    ErrorKind, Invoke, Member, MemberState, Request, Response, StatusReport, WireError,
};
use casty_journal::Journal;
use casty_runtime::{EntityType, Runtime};

use crate::NodeError;
use crate::metrics::Metrics;
use crate::partition::{Job, Message, PartitionWorker, Setup};

pub(crate) type Types = HashMap<String, Arc<EntityType>>;

pub(crate) struct Config {
    pub(crate) cluster: String,
    pub(crate) node_id: String,
    pub(crate) raft_id: NodeId,
    pub(crate) address: String,
    pub(crate) partitions: u32,
    pub(crate) journal: Journal,
    pub(crate) runtime: Runtime,
    pub(crate) types: Types,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) struct Dispatcher {
    cluster: String,
    node_id: String,
    raft_id: NodeId,
    address: String,
    partitions: u32,
    types: Arc<Types>,
    mailboxes: Vec<mpsc::Sender<Message>>,
    rafts: Vec<Raft>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("node_id", &self.node_id)
            .field("partitions", &self.partitions)
            .finish()
    }
}

fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, message)
}

impl Dispatcher {
    /// Starts one worker task and one Raft group per partition. A group that was never
    /// initialised starts as a one-voter group of this node.
    pub(crate) async fn start(config: Config) -> Result<Self, NodeError> {
        let types = Arc::new(config.types);
        let per_partition = (config.runtime.config().live_instances_max / config.partitions as usize).max(1);
        let raft_config = casty_cluster::raft_config(&config.cluster);
        let mut mailboxes = Vec::with_capacity(config.partitions as usize);
        let mut workers = Vec::with_capacity(config.partitions as usize);
        let mut rafts = Vec::with_capacity(config.partitions as usize);
        for partition in 0..config.partitions {
            let (tx, rx) = mpsc::channel(MAILBOX_LEN_MAX);
            let (sm_tx, sm_rx) = mpsc::channel(STATE_MACHINE_QUEUE_LEN_MAX);
            let worker = PartitionWorker::new(Setup {
                id: partition,
                me: config.raft_id,
                journal: config.journal.clone(),
                runtime: config.runtime.clone(),
                types: types.clone(),
                live_max: per_partition,
                metrics: config.metrics.clone(),
                sm: sm_rx,
            });
            // The worker runs before its group: Raft asks the state machine as it starts.
            workers.push(tokio::spawn(worker.run(rx)));
            let raft = Raft::new(
                config.raft_id,
                raft_config.clone(),
                Network,
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
        for raft in &rafts {
            bootstrap(raft, config.raft_id, &config.address).await?;
        }
        Ok(Self {
            cluster: config.cluster,
            node_id: config.node_id,
            raft_id: config.raft_id,
            address: config.address,
            partitions: config.partitions,
            types,
            mailboxes,
            rafts,
            workers: Mutex::new(workers),
            metrics: config.metrics,
        })
    }

    pub(crate) async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Invoke(invoke) => match self.invoke(invoke).await {
                Ok(reply) => Response::Reply(reply),
                Err(e) => Response::Error(e),
            },
            Request::Status => Response::Status(self.status()),
        }
    }

    /// Checks a request, sends it to its partition and waits for the answer.
    pub(crate) async fn invoke(&self, invoke: Invoke) -> Result<Vec<u8>, WireError> {
        let result = self.route(invoke).await;
        let outcome = match &result {
            Ok(_) => &self.metrics.requests_ok,
            Err(e) if e.kind == ErrorKind::Overloaded => &self.metrics.requests_overloaded,
            Err(_) => &self.metrics.requests_failed,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn route(&self, invoke: Invoke) -> Result<Vec<u8>, WireError> {
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
        if !self.types.contains_key(&invoke.address.entity_type) {
            let mut known: Vec<_> = self.types.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(WireError::new(
                ErrorKind::UnknownEntityType,
                format!(
                    "no entity type named {:?} is deployed; known types: {}",
                    invoke.address.entity_type,
                    known.join(", ")
                ),
            ));
        }
        let partition = invoke.address.shard_key().partition(self.partitions);
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
        let mut entity_types: Vec<_> = self.types.keys().cloned().collect();
        entity_types.sort_unstable();
        StatusReport {
            cluster: self.cluster.clone(),
            node_id: self.node_id.clone(),
            members: vec![Member {
                node_id: self.node_id.clone(),
                address: self.address.clone(),
                state: MemberState::Up,
                leads: self
                    .rafts
                    .iter()
                    .filter(|raft| raft.metrics().borrow().current_leader == Some(self.raft_id))
                    .count() as u32,
            }],
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

/// Makes a new group a one-voter group of this node, and has a group whose only voter is
/// this node elect itself at once rather than after an election timeout.
async fn bootstrap(raft: &Raft, me: NodeId, address: &str) -> Result<(), NodeError> {
    let fatal = |e: &dyn std::fmt::Display| NodeError::Config(format!("a Raft group failed to start: {e}"));
    if !raft.is_initialized().await.map_err(|e| fatal(&e))? {
        let members = std::collections::BTreeMap::from([(me, BasicNode { addr: address.to_owned() })]);
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
