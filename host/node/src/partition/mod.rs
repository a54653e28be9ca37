//! A partition worker: owns the shard instances of one partition and is, on this node,
//! the state machine of the partition's Raft group.
//!
//! Each worker is an async task. Component calls run on fibers and yield at every epoch
//! tick, so a runaway entity delays only its own partition (until its deadline), never a
//! runtime thread.
//!
//! **As leader** it decides a batch of commands in order, applying each command's events
//! to the live instance as soon as they are decided (so the next command sees them), and
//! proposes the batch's log entries to the node's Raft loop as one entry, tagged with its
//! leadership epoch. Replies are sent only once the loop hands that entry back committed,
//! which it does only once a majority has it on disk, so a reply never reveals state that
//! could be lost. The epoch says the entry is already applied here. If the proposal fails
//! (leadership moved), the live state is rebuilt from the checkpoint and the committed
//! log.
//!
//! **As follower** it applies every committed entry as the loop hands it over, so its
//! instances are hot: a failover replays nothing. How the worker talks to the loop is in
//! [`replication`].
//!
//! The invariant that makes passivation and recovery simple: an entity that is not live
//! has a stored snapshot (or none, if new) that holds every committed event it had up to
//! the snapshot's index, and the log after the partition's checkpoint holds the rest.
//! Snapshots are only ever taken of committed state (never of a shard with events in
//! flight), and written locally: they are this replica's business, not Raft's.

mod ports;
mod replication;
#[cfg(test)]
mod tests;

pub(crate) use ports::Wasm;
use ports::{Components, Group, Instance, TypeVersion};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use tokio::sync::{mpsc, oneshot, watch};

use casty_core::limits::{
    BATCH_LEN_MAX, CHECKPOINT_INTERVAL_ENTRIES, LEADER_WAIT_MAX_MS, MAILBOX_LEN_MAX, PARK_DEADLINE_MARGIN_MS,
    PIPELINE_BATCH_MIN, UPGRADE_CHECK_ENTITIES_MAX,
};
use casty_core::parked::{ParkedTable, Timers};
use casty_core::pipeline::Pipeline;
use casty_core::protocol::{ErrorKind, Invoke, WireError};
use casty_core::record::{
    CompletedRequest, EntitySnapshot, LogEntry, MemberRecord, PartitionState, TypeRecord,
};
use casty_core::requests::RecentRequests;
use casty_core::{Decision, EntityKey, Reply, ShardKey};
use casty_journal::raft_log::RecoveredGroup;
use casty_journal::{Checkpoint, Journal, PartitionWrite};
use casty_raft::log::Cold;
use casty_raft::{Event, GroupStatus, RaftLoop};
use casty_runtime::{CallContext, EntityType, InvokeError};

use crate::metrics::Metrics;
use crate::peers::NodeId;

/// Where an answer goes.
pub(crate) type Waiter = oneshot::Sender<Result<Vec<u8>, WireError>>;

/// One command waiting in a partition's mailbox.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) invoke: Invoke,
    pub(crate) reply: Waiter,
}

/// Where the answer to an upgrade check goes: the entities restored, or why not.
pub(crate) type UpgradeAnswer = oneshot::Sender<Result<usize, String>>;

/// What the host tells an entity on its own initiative.
#[derive(Debug)]
enum Notice {
    /// The wake-up time it asked for has come.
    Wake,
    /// The caller of this parked request stopped waiting.
    Withdraw(String),
}

/// Where the answer to a deployment goes, once its entry is committed.
pub(crate) type DeployAnswer = oneshot::Sender<Result<(), WireError>>;

/// The cluster's members, as the metadata group's worker has applied them.
pub(crate) type Members = BTreeMap<NodeId, MemberRecord>;

/// What a partition's mailbox carries; `T` is a version of an entity type.
pub(crate) enum Message<T = Arc<EntityType>> {
    Job(Job),
    /// This node has no replica of the group yet: found it, as its only voter (`founder`
    /// is this node), or join it (start empty, and wait for its leader's snapshot).
    Found {
        founder: Option<MemberRecord>,
    },
    /// Commit a numbered deployment (to the metadata group, on its leader).
    Deploy(TypeRecord, DeployAnswer),
    /// Can this new version of a type take over the state of the type's entities here?
    /// Answered with the number of entities it restored, or why it could not.
    CheckUpgrade(T, UpgradeAnswer),
    /// Finish the current batch and stop.
    Stop,
}

/// Entities restored into one instance while checking an upgrade, before a fresh one.
const UPGRADE_CHECK_BATCH: usize = 256;

/// The dirty index of an entity changed by a batch not yet committed, whose log index is
/// not known until Raft assigns it: this bit, and the number of the batch.
const PENDING: u64 = 1 << 63;

/// What a batch in flight answers once its turn comes.
struct Answers {
    replies: Vec<(Waiter, Result<Vec<u8>, WireError>)>,
    deploys: Vec<DeployAnswer>,
    /// The entities its entries changed.
    changed: Vec<EntityKey>,
}

/// A live shard: its instance, the entities changed since they were last snapshotted with
/// the log index of each one's last event, and the index each restored entity's snapshot
/// already holds (log entries at or below it are not applied again).
struct Shard<I> {
    instance: I,
    dirty: HashMap<String, u64>,
    floors: HashMap<String, u64>,
}

/// Where this replica stands in its group, as far as taking commands goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Leader, with every entry of earlier terms applied: it may decide.
    Leader,
    /// Another node leads.
    Follower(NodeId),
    /// No leader yet, or this node just won and is catching up: commands wait.
    Electing,
}

pub(crate) struct PartitionWorker<C: Components = Wasm, G: Group = RaftLoop> {
    id: u32,
    me: NodeId,
    journal: Journal,
    raft: G,
    /// The group's log as the log files held it at start-up, until the group is added to
    /// the loop; and whether it has been.
    recovered: Option<RecoveredGroup>,
    files: Cold,
    attached: bool,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    status: watch::Sender<GroupStatus>,
    /// The group's term and leader, and whether this replica leads, as the loop last said.
    term: u64,
    leader: Option<NodeId>,
    leading: bool,
    components: C,
    /// Whether this is the metadata group's worker, whose state is the deployed types.
    holds_types: bool,
    shards: LruCache<ShardKey, Shard<C::Instance>>,
    live_max: usize,
    metrics: Arc<Metrics>,
    /// The last log entry applied here: (index, term).
    applied: (u64, u64),
    /// In the metadata group: the cluster's members, published for the node.
    members: watch::Sender<Members>,
    /// Every entity's snapshot is complete through this index; the log after it is the tail.
    checkpoint: u64,
    /// Set while this replica leads and may decide; it tags its proposals.
    epoch: Option<u64>,
    /// The log entries of the batch being decided.
    proposal: Vec<LogEntry>,
    /// Shards changed by a batch not yet committed, with the newest such batch's number:
    /// never snapshotted or passivated until it commits.
    in_flight: HashMap<ShardKey, u64>,
    /// Batches proposed (or reading) and not yet answered.
    pipeline: Pipeline<Answers>,
    /// Set when a command or notice had to wait until the batches in flight commit.
    drain: bool,
    /// Deployments for the next proposal (metadata group only), with their answers.
    deploys: Vec<(TypeRecord, DeployAnswer)>,
    /// The next local write: snapshots' wake-ups and the checkpoint.
    pending: PartitionWrite,
    /// Snapshots for the next local write, readable before it lands.
    unsaved: HashMap<EntityKey, EntitySnapshot>,
    /// Answers to send once `pending` commits.
    replies: Vec<(Waiter, Result<Vec<u8>, WireError>)>,
    parked: ParkedTable<Waiter>,
    timers: Timers,
    /// Requests that persisted events, with their replies, for answering retries.
    recent: RecentRequests,
    /// Shards whose instance failed while dirty; rebuilt from the journal after the
    /// commit, and until then their commands wait in `deferred` (as do commands that
    /// arrive while the group elects a leader).
    broken: HashSet<ShardKey>,
    deferred: VecDeque<Job>,
    /// Commands waiting for the group to elect a leader, with when they started waiting.
    electing: VecDeque<(Job, u64)>,
    /// Wake-ups and withdrawals that could not be delivered when they came due (the
    /// entity's shard was broken, or had no room to be made live), delivered next round.
    /// Each stands for a timer or a parked request taken out of their bounded tables, so
    /// this is bounded by `TIMERS_PER_PARTITION_MAX + PARKED_PER_PARTITION_MAX`.
    notices: VecDeque<(EntityKey, Notice)>,
    /// Shards that could not be rebuilt; their commands fail with this reason.
    failed: HashMap<ShardKey, String>,
    /// Shards kept on an older version because this version could not take over their
    /// state: (shard, the version that failed).
    pinned: HashMap<ShardKey, u32>,
    /// Upgrade checks to run between batches.
    checks: Vec<(C::Type, UpgradeAnswer)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(message: String) -> WireError {
    WireError::new(ErrorKind::Unavailable, message)
}

fn invoke_error(e: &InvokeError) -> WireError {
    let mut message = e.to_string();
    if e.poisons() {
        message.push_str("; the command was not applied and the entity's state is unchanged");
    }
    WireError::new(e.wire_kind(), message)
}

/// What a worker starts from.
pub(crate) struct Setup<C, G> {
    pub(crate) id: u32,
    pub(crate) me: NodeId,
    pub(crate) journal: Journal,
    pub(crate) raft: G,
    pub(crate) files: Cold,
    pub(crate) recovered: Option<RecoveredGroup>,
    pub(crate) status: watch::Sender<GroupStatus>,
    pub(crate) members: watch::Sender<Members>,
    pub(crate) components: C,
    pub(crate) holds_types: bool,
    pub(crate) live_max: usize,
    pub(crate) metrics: Arc<Metrics>,
}

impl<C: Components, G: Group> PartitionWorker<C, G> {
    pub(crate) fn new(setup: Setup<C, G>) -> Self {
        let (events_tx, events) = mpsc::channel(casty_core::limits::RAFT_GROUP_EVENTS_QUEUED_MAX);
        Self {
            id: setup.id,
            me: setup.me,
            journal: setup.journal,
            raft: setup.raft,
            recovered: setup.recovered,
            files: setup.files,
            attached: false,
            events,
            events_tx,
            status: setup.status,
            term: 0,
            leader: None,
            leading: false,
            components: setup.components,
            holds_types: setup.holds_types,
            shards: LruCache::unbounded(),
            live_max: setup.live_max.max(1),
            metrics: setup.metrics,
            applied: (0, 0),
            members: setup.members,
            checkpoint: 0,
            epoch: None,
            proposal: Vec::new(),
            in_flight: HashMap::new(),
            pipeline: Pipeline::default(),
            drain: false,
            deploys: Vec::new(),
            pending: PartitionWrite::new(setup.id),
            unsaved: HashMap::new(),
            replies: Vec::new(),
            parked: ParkedTable::default(),
            timers: Timers::default(),
            recent: RecentRequests::default(),
            broken: HashSet::new(),
            deferred: VecDeque::new(),
            electing: VecDeque::new(),
            notices: VecDeque::new(),
            failed: HashMap::new(),
            pinned: HashMap::new(),
            checks: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, mut mailbox: mpsc::Receiver<Message<C::Type>>) {
        // The loop hands over the committed entries after the checkpoint once the group
        // is added.
        if let Err(e) = self.reset_from_journal(false).await {
            tracing::error!(partition = self.id, "recovery failed; the partition refuses commands: {e}");
        }
        if let Some(recovered) = self.recovered.take() {
            self.attach_recovered(recovered).await;
        }
        let mut stopping = false;
        // Commands taken from the mailbox and not yet decided.
        let mut jobs = Vec::new();
        while !stopping {
            let full = self.pipeline_full();
            let ready = self.epoch.is_some()
                && !full
                && !(self.deferred.is_empty() && self.electing.is_empty() && self.notices.is_empty());
            if !ready {
                let deadline = match self.epoch {
                    Some(_) => self.next_deadline_ms(),
                    None => self.electing.front().map(|(_, since)| since + LEADER_WAIT_MAX_MS),
                };
                let wait = deadline.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
                let wait = match (wait, self.commit_wait_left()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokio::select! {
                    message = mailbox.recv(), if !full && jobs.len() < BATCH_LEN_MAX => match message {
                        Some(message) => stopping = self.receive(message, &mut jobs).await,
                        None => stopping = true,
                    },
                    Some(event) = self.events.recv() => self.serve(event).await,
                    () = sleep_or_forever(wait) => self.give_up_if_uncommitted().await,
                }
            }
            // Whatever else the loop has handed over, before deciding on top of it.
            for _ in 0..casty_core::limits::RAFT_GROUP_EVENTS_QUEUED_MAX {
                let Ok(event) = self.events.try_recv() else { break };
                self.serve(event).await;
            }
            let full = self.pipeline_full();
            while !stopping && !full && jobs.len() < BATCH_LEN_MAX {
                match mailbox.try_recv() {
                    Ok(message) => stopping = self.receive(message, &mut jobs).await,
                    Err(_) => break,
                }
            }
            self.round(&mut jobs, now_ms()).await;
        }
        self.step_down("the node is shutting down");
        self.answer_uncommitted(&unavailable("the node is shutting down".into()));
        let waiting = self.electing.drain(..).map(|(job, _)| job);
        for job in waiting.chain(self.deferred.drain(..)).chain(jobs).collect::<Vec<_>>() {
            let _ = job.reply.send(Err(unavailable("the node is shutting down".into())));
        }
        self.flush_local().await;
        self.unload_all();
    }

    /// One round, with the loop's events taken and the commands taken so far in `jobs`:
    /// runs the upgrade checks asked for, then, if this replica leads and the pipeline
    /// has room, decides a batch of the commands waiting and proposes it.
    async fn round(&mut self, jobs: &mut Vec<Job>, now: u64) {
        for (ty, answer) in std::mem::take(&mut self.checks) {
            let _ = answer.send(self.check_upgrade(&ty).await);
        }
        match self.follow_leadership() {
            Role::Leader => {}
            role => {
                let moved = format!(
                    "partition {}'s leadership moved while batches were being committed; \
                     the request may or may not have been applied, retry it",
                    self.id
                );
                self.fail_uncommitted(unavailable(moved)).await;
                self.hold(role, std::mem::take(jobs), now);
                return;
            }
        }
        // While batches are in flight, a new one is worth its entry only once enough
        // commands wait: on a busy machine the cost is per entry, and a batch proposed
        // for every command or two would only split the next round's batch.
        if self.pipeline_full() || (!self.pipeline.is_empty() && jobs.len() < PIPELINE_BATCH_MIN) {
            return;
        }
        if self.pipeline.is_empty() {
            self.drain = false;
            self.repair_broken().await;
            self.maybe_checkpoint().await;
        }
        // Notices first, while the fewest batches are in flight, so there is room to
        // make their entities live (one that finds none waits for the next round).
        self.fire_timers(now).await;
        self.withdraw_expired(now).await;
        let waited = self.electing.drain(..).map(|(job, _)| job);
        let jobs: Vec<Job> = waited.chain(self.deferred.drain(..)).chain(jobs.drain(..)).collect();
        for job in jobs {
            self.decide(job, now).await;
        }
        self.commit().await;
    }

    /// Takes one mailbox message; returns whether it says to stop.
    async fn receive(&mut self, message: Message<C::Type>, jobs: &mut Vec<Job>) -> bool {
        match message {
            Message::Job(job) => jobs.push(job),
            Message::Found { founder } => self.found(founder).await,
            Message::Deploy(record, answer) => self.deploys.push((record, answer)),
            Message::CheckUpgrade(ty, answer) => self.checks.push((ty, answer)),
            Message::Stop => return true,
        }
        false
    }

    fn role(&self) -> Role {
        match self.leader {
            Some(leader) if leader == self.me => {
                // Entries of earlier terms must be applied before this replica decides on
                // top of them; the first entry of its own term being applied shows it.
                let caught_up = self.applied.1 == self.term;
                if self.leading && caught_up { Role::Leader } else { Role::Electing }
            }
            Some(leader) => Role::Follower(leader),
            None => Role::Electing,
        }
    }

    /// Starts or ends this replica's leadership epoch to match Raft's view.
    fn follow_leadership(&mut self) -> Role {
        let role = self.role();
        match (role, self.epoch) {
            (Role::Leader, None) => {
                let epoch = uuid::Uuid::new_v4().as_u64_pair().0;
                tracing::debug!(partition = self.id, epoch, "leading");
                self.epoch = Some(epoch);
            }
            (Role::Leader, Some(_)) | (_, None) => {}
            (_, Some(_)) => self.step_down("the partition's leadership moved to another node"),
        }
        role
    }

    /// Keeps commands while the group elects, for a while; refers them on when another
    /// node leads. Deployments are the leader's to commit: they are refused.
    fn hold(&mut self, role: Role, jobs: Vec<Job>, now: u64) {
        for (_, answer) in self.deploys.drain(..) {
            let refused = "this node does not lead the metadata group (any more); deploy again";
            let _ = answer.send(Err(unavailable(refused.into())));
        }
        let waiting = self.deferred.drain(..).chain(jobs).collect::<Vec<_>>();
        for job in waiting {
            if self.electing.len() >= MAILBOX_LEN_MAX {
                let message =
                    format!("partition {} has {MAILBOX_LEN_MAX} commands waiting for a leader", self.id);
                let _ = job.reply.send(Err(WireError::new(ErrorKind::Overloaded, message)));
            } else {
                self.electing.push_back((job, now));
            }
        }
        let refused = match role {
            Role::Follower(leader) => {
                Some(format!("partition {} is led by node {leader:016x}, not this one; retry", self.id))
            }
            _ => None,
        };
        while let Some((_, since)) = self.electing.front() {
            let message = match &refused {
                Some(message) => message.clone(),
                None if now >= since + LEADER_WAIT_MAX_MS => format!(
                    "partition {} has had no leader for {LEADER_WAIT_MAX_MS} ms: a majority of its replicas is unreachable",
                    self.id
                ),
                None => break,
            };
            let (job, _) = self.electing.pop_front().expect("peeked");
            let _ = job.reply.send(Err(unavailable(message)));
        }
    }

    /// Ends this replica's leadership epoch: parked callers are told to retry where the
    /// partition is led now (their entities still know them, so they keep their place).
    fn step_down(&mut self, why: &str) {
        if self.epoch.take().is_some() {
            tracing::debug!(partition = self.id, "no longer leading: {why}");
        }
        for waiter in self.parked.drain() {
            let _ = waiter.send(Err(unavailable(format!("{why}; retry"))));
        }
        // A withdrawal is the leader's to make while it answers the caller; whoever
        // leads next answers the caller's retry, if any, itself.
        self.notices.retain(|(_, notice)| matches!(notice, Notice::Wake));
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        match (self.timers.next_ms(), self.parked.next_deadline_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops all live state and rebuilds it from the stored checkpoint. With `replay`,
    /// also applies the committed log after it (to rebuild after a failed proposal);
    /// without, the applied state is the checkpoint's (at start-up, where Raft applies
    /// the committed entries after it).
    async fn reset_from_journal(&mut self, replay: bool) -> Result<(), String> {
        self.unload_all();
        self.unsaved.clear();
        self.pending = PartitionWrite::new(self.id);
        self.broken.clear();
        self.in_flight.clear();
        self.proposal.clear();
        // The timers are rebuilt below, pending wake-ups with them.
        self.notices.clear();
        let checkpoint = self.journal.checkpoint(self.id).map_err(|e| e.to_string())?;
        self.checkpoint = checkpoint.index;
        let state = stored_state(&checkpoint)?;
        self.recent = RecentRequests::from_completed(state.completed);
        // Wake-ups of entities whose last events are behind the checkpoint; the log tail
        // applied next restores the newer ones.
        self.timers = Timers::default();
        for (key, at) in self.journal.wakeups(self.id).map_err(|e| e.to_string())? {
            let key = EntityKey::decode(&key).map_err(|e| e.to_string())?;
            self.timers.set(&key, Some(at)).map_err(|e| e.to_string())?;
        }
        if replay {
            let applied = self.replay(None).await?;
            tracing::info!(partition = self.id, entries = applied, "rebuilt from the checkpoint and the log");
        } else {
            self.applied = (state.applied_index, state.applied_term);
            let members = state.members.into_iter().map(|m| (m.id, m)).collect();
            self.members.send_replace(members);
        }
        Ok(())
    }

    /// Applies one committed log entry to its entity, unless a restored snapshot already
    /// holds it. Its completed requests move into the window, so they are taken out.
    async fn apply_logged(&mut self, index: u64, entry: &mut LogEntry) -> Result<(), String> {
        for completed in entry.completed.drain(..) {
            self.recent.insert(completed);
        }
        let key = &entry.entity;
        self.activate(key, Some(entry.version)).await.map_err(|e| e.message)?;
        let shard = self.shards.get_mut(&key.shard).expect("activate made the shard live");
        if shard.floors.get(&key.id).is_some_and(|floor| index <= *floor) {
            return Ok(());
        }
        for event in &entry.events {
            shard.instance.apply(&key.id, event).await.map_err(|e| format!("log index {index}: {e}"))?;
        }
        shard.dirty.insert(key.id.clone(), index);
        self.timers.set(key, entry.wake_at_ms).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Makes an entity live, in an instance of its type's newest version; or, applying an
    /// entry that version `need` decided, of at least that version. A live shard on an
    /// older version than that moves to the newer one first.
    async fn activate(&mut self, key: &EntityKey, need: Option<u32>) -> Result<(), WireError> {
        if let Some(reason) = self.failed.get(&key.shard) {
            return Err(WireError::new(ErrorKind::EntityTrapped, reason.clone()));
        }
        let name = &key.shard.entity_type;
        let ty = match need {
            Some(version) => self.components.at_least(name, version).await.map_err(unavailable)?,
            None => self.components.current(name).ok_or_else(|| {
                WireError::new(ErrorKind::UnknownEntityType, format!("no entity type {name:?}"))
            })?,
        };
        if let Some(shard) = self.shards.get(&key.shard) {
            let behind = shard.instance.version() < need.unwrap_or(ty.version());
            // A leader does not retry an upgrade that failed; a replica applying an entry
            // of the newer version must make it.
            if behind && (need.is_some() || self.pinned.get(&key.shard) != Some(&ty.version())) {
                self.upgrade(&key.shard, &ty, need.is_some()).await?;
            }
        } else {
            while self.shards.len() >= self.live_max {
                if !self.passivate_lru().await {
                    break;
                }
            }
            let instance = self.components.instantiate(&ty).await.map_err(|e| invoke_error(&e))?;
            let shard = Shard { instance, dirty: HashMap::new(), floors: HashMap::new() };
            self.shards.put(key.shard.clone(), shard);
            self.metrics.live_instances.fetch_add(1, Ordering::Relaxed);
        }
        let shard = self.shards.get_mut(&key.shard).expect("made live above");
        if shard.instance.contains(&key.id) {
            return Ok(());
        }
        let stored =
            match self.unsaved.get(key) {
                Some(snapshot) => Some(snapshot.clone()),
                None => match self.journal.snapshot(self.id, &key.encode()) {
                    Ok(Some(bytes)) => Some(EntitySnapshot::decode(&bytes).map_err(|e| {
                        WireError::new(ErrorKind::Internal, format!("entity {:?}: {e}", key.id))
                    })?),
                    Ok(None) => None,
                    Err(e) => return Err(unavailable(format!("cannot read the journal: {e}"))),
                },
            };
        let result = match &stored {
            Some(snapshot) => shard.instance.restore(&key.id, &snapshot.state).await,
            None => shard.instance.create(&key.id).await,
        };
        if let Err(e) = result {
            self.drop_shard(&key.shard);
            return Err(invoke_error(&e));
        }
        if let Some(snapshot) = stored {
            shard.floors.insert(key.id.clone(), snapshot.index);
        }
        Ok(())
    }

    /// Moves a live shard to a newer version of its type: each entity's state, taken with
    /// the old version's `snapshot`, is restored by the new one. When that fails, a leader
    /// keeps the shard on the old version (the deployment was checked against this state,
    /// so this is rare, and refusing commands would be worse); a replica applying an
    /// entry the new version decided cannot, and fails.
    async fn upgrade(&mut self, shard_key: &ShardKey, ty: &C::Type, required: bool) -> Result<(), WireError> {
        let components = &self.components;
        let shard = self.shards.get_mut(shard_key).expect("upgraded shards are live");
        let from = shard.instance.version();
        let moved = async {
            let mut next = components.instantiate(ty).await?;
            carry_over(&mut shard.instance, &mut next).await.map(|()| next)
        }
        .await;
        match moved {
            Ok(next) => {
                shard.instance = next;
                tracing::debug!(partition = self.id, shard = ?shard_key, from, to = ty.version(), "shard upgraded");
                Ok(())
            }
            Err(e) => {
                let poisoned = shard.instance.is_poisoned();
                let message = format!(
                    "version {} of entity type {:?} cannot take over the state version {from} left: {e}",
                    ty.version(),
                    ty.name()
                );
                if poisoned {
                    self.drop_shard(shard_key);
                }
                if required || poisoned {
                    return Err(WireError::new(ErrorKind::EntityTrapped, message));
                }
                tracing::warn!(partition = self.id, shard = ?shard_key, "staying on version {from}: {message}");
                self.pinned.insert(shard_key.clone(), ty.version());
                Ok(())
            }
        }
    }

    /// Restores the state of this partition's entities of `ty`'s type into `ty`, as an
    /// upgrade to it would: live entities from their instances, the others from their
    /// stored snapshots (up to a bound). Returns how many it restored.
    async fn check_upgrade(&mut self, ty: &C::Type) -> Result<usize, String> {
        let partition = self.id;
        let failed = |what: &str, e: &dyn std::fmt::Display| format!("{what} (partition {partition}): {e}");
        let mut checked = 0;
        let mut live = HashSet::new();
        let of_type: Vec<ShardKey> = self
            .shards
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.entity_type == ty.name())
            .cloned()
            .collect();
        for shard_key in of_type {
            let mut candidate = self.components.instantiate(ty).await.map_err(|e| e.to_string())?;
            let shard = self.shards.peek_mut(&shard_key).expect("listed above");
            if let Err(e) = carry_over(&mut shard.instance, &mut candidate).await {
                if shard.instance.is_poisoned() {
                    self.drop_shard(&shard_key);
                }
                return Err(failed(&format!("shard {} of {:?}", shard_key.shard, shard_key.region), &e));
            }
            checked += shard.instance.len();
            live.insert(shard_key);
        }
        let mut candidate = self.components.instantiate(ty).await.map_err(|e| e.to_string())?;
        for (key, stored) in self.journal.snapshots(self.id).map_err(|e| e.to_string())? {
            if checked >= UPGRADE_CHECK_ENTITIES_MAX {
                break;
            }
            let key = EntityKey::decode(&key).map_err(|e| e.to_string())?;
            if key.shard.entity_type != ty.name() || live.contains(&key.shard) {
                continue;
            }
            let snapshot = EntitySnapshot::decode(&stored).map_err(|e| e.to_string())?;
            if candidate.len() >= UPGRADE_CHECK_BATCH {
                candidate = self.components.instantiate(ty).await.map_err(|e| e.to_string())?;
            }
            candidate
                .restore(&key.id, &snapshot.state)
                .await
                .map_err(|e| failed(&format!("entity {:?}", key.id), &e))?;
            checked += 1;
        }
        Ok(checked)
    }

    /// Whether a shard that is not live can be made live now: either there is room, or
    /// a shard without events in flight can be passivated to make room.
    fn has_room(&self, shard: &ShardKey) -> bool {
        self.shards.contains(shard)
            || self.shards.len() < self.live_max
            || self.shards.iter().any(|(key, _)| !self.in_flight.contains_key(key))
    }

    /// Passivates the least recently used shard without events in flight: its changed
    /// entities are snapshotted for the next local write, then the instance is dropped.
    /// Returns false when every live shard has events in flight.
    async fn passivate_lru(&mut self) -> bool {
        let lru = self.shards.iter().rev().map(|(key, _)| key).find(|key| !self.in_flight.contains_key(*key));
        let Some(shard_key) = lru.cloned() else { return false };
        let mut shard = self.unload(&shard_key).expect("found above");
        self.metrics.instances_passivated.fetch_add(1, Ordering::Relaxed);
        for (id, index) in std::mem::take(&mut shard.dirty) {
            let key = EntityKey { shard: shard_key.clone(), id };
            match shard.instance.snapshot(&key.id).await {
                Ok(state) => self.stage_snapshot(key, EntitySnapshot { index, state }),
                Err(e) => {
                    tracing::warn!(partition = self.id, entity = ?key, "snapshot on passivation failed, rebuilding: {e}");
                    self.broken.insert(shard_key);
                    return true;
                }
            }
        }
        true
    }

    fn stage_snapshot(&mut self, key: EntityKey, snapshot: EntitySnapshot) {
        self.unsaved.insert(key, snapshot);
    }

    /// Takes a shard out of the live set, keeping the live-instance gauge true.
    fn unload(&mut self, shard_key: &ShardKey) -> Option<Shard<C::Instance>> {
        let shard = self.shards.pop(shard_key)?;
        self.metrics.live_instances.fetch_sub(1, Ordering::Relaxed);
        Some(shard)
    }

    /// Takes every shard out of the live set.
    fn unload_all(&mut self) {
        self.metrics.live_instances.fetch_sub(self.shards.len() as i64, Ordering::Relaxed);
        self.shards.clear();
    }

    /// Drops a shard whose instance failed. If it held changes not yet snapshotted, it
    /// is rebuilt from the journal once the pending write commits.
    fn drop_shard(&mut self, shard_key: &ShardKey) {
        if let Some(shard) = self.unload(shard_key) {
            self.metrics.instances_failed.fetch_add(1, Ordering::Relaxed);
            if !shard.dirty.is_empty() {
                self.broken.insert(shard_key.clone());
            }
        }
    }

    async fn decide(&mut self, job: Job, now: u64) {
        let key = job.invoke.address.entity_key();
        if self.broken.contains(&key.shard) || !self.has_room(&key.shard) {
            self.deferred.push_back(job);
            self.drain = true;
            return;
        }
        // A retry of a request that already completed gets the original reply; one that
        // is still parked keeps its place in line.
        if let Some(reply) = self.recent.reply(&job.invoke.request_id) {
            self.replies.push((job.reply, Ok(reply.to_vec())));
            return;
        }
        let timeout = job.invoke.timeout_ms;
        let deadline = now.saturating_add(timeout - (timeout / 10).min(PARK_DEADLINE_MARGIN_MS));
        let job = match self.parked.rewait(&job.invoke.request_id, job.reply, deadline) {
            Ok(previous) => {
                let error =
                    WireError::new(ErrorKind::Superseded, "a retry of the same request took its place");
                self.replies.push((previous, Err(error)));
                return;
            }
            Err(reply) => Job { invoke: job.invoke, reply },
        };
        if let Err(e) = self.activate(&key, None).await {
            self.replies.push((job.reply, Err(e)));
            return;
        }
        let ctx = CallContext {
            caller: job.invoke.caller.clone(),
            request_id: job.invoke.request_id.clone(),
            now_ms: now,
        };
        let shard = self.shards.get_mut(&key.shard).expect("activated above");
        match shard.instance.handle(&key.id, &ctx, &job.invoke.command).await {
            Ok(decision) => {
                self.settle(&key, decision, Some((job.reply, job.invoke.request_id, deadline))).await;
            }
            Err(e) => {
                if e.poisons() {
                    self.drop_shard(&key.shard);
                }
                self.replies.push((job.reply, Err(invoke_error(&e))));
            }
        }
    }

    /// Carries out a decision: applies and stages its events, then queues its replies.
    async fn settle(&mut self, key: &EntityKey, decision: Decision, caller: Option<(Waiter, String, u64)>) {
        let wake_at_ms = decision.wake.after(self.timers.get(key));
        if !decision.events.is_empty() {
            let shard = self.shards.get_mut(&key.shard).expect("the deciding shard is live");
            // Apply before staging: an event that cannot be applied is never persisted.
            let mut failure = None;
            for event in &decision.events {
                if let Err(e) = shard.instance.apply(&key.id, event).await {
                    failure = Some(e);
                    break;
                }
            }
            if let Some(e) = failure {
                self.drop_shard(&key.shard);
                if let Some((waiter, ..)) = caller {
                    self.replies.push((waiter, Err(invoke_error(&e))));
                }
                return;
            }
            let batch = self.pipeline.deciding();
            shard.dirty.insert(key.id.clone(), PENDING | batch);
            let version = shard.instance.version();
            self.in_flight.insert(key.shard.clone(), batch);
            let mut completed: Vec<CompletedRequest> = decision
                .wake_parked
                .iter()
                .filter_map(|p| p.reply.as_ref().ok().map(|r| (p.request_id.clone(), r.clone())))
                .map(|(request_id, reply)| CompletedRequest { request_id, reply })
                .collect();
            if let (Some((_, request_id, _)), Reply::Ok(reply)) = (&caller, &decision.reply) {
                completed.push(CompletedRequest { request_id: request_id.clone(), reply: reply.clone() });
            }
            for request in &completed {
                self.recent.insert(request.clone());
            }
            self.proposal.push(LogEntry {
                entity: key.clone(),
                version,
                events: decision.events,
                wake_at_ms,
                completed,
            });
        }
        if let Err(e) = self.timers.set(key, wake_at_ms) {
            tracing::warn!(partition = self.id, entity = ?key, "wake-up dropped: {e}");
        }
        // The caller is parked before parked requests are answered, so a decision may
        // answer its own caller's request too.
        if let Some((waiter, request_id, deadline)) = caller {
            match decision.reply {
                Reply::Ok(bytes) => self.replies.push((waiter, Ok(bytes))),
                Reply::Rejected(r) => self.replies.push((waiter, Err(rejected(r.code, r.message)))),
                Reply::Park => match self.parked.park(key.clone(), request_id, waiter, deadline) {
                    Ok(Some(previous)) => {
                        let error = WireError::new(
                            ErrorKind::Superseded,
                            "a retry of the same request took its place",
                        );
                        self.replies.push((previous, Err(error)));
                    }
                    Ok(None) => {}
                    Err((full, waiter)) => {
                        self.replies
                            .push((waiter, Err(WireError::new(ErrorKind::Overloaded, full.to_string()))));
                    }
                },
            }
        }
        for parked in decision.wake_parked {
            if let Some((_, waiter)) = self.parked.take(&parked.request_id) {
                self.replies.push((waiter, parked.reply.map_err(|r| rejected(r.code, r.message))));
            }
        }
    }

    /// Delivers the notices that had to wait, then the wake-ups that came due.
    async fn fire_timers(&mut self, now: u64) {
        for (key, notice) in std::mem::take(&mut self.notices) {
            self.notify(key, notice, now).await;
        }
        for key in self.timers.due(now) {
            self.notify(key, Notice::Wake, now).await;
        }
    }

    /// Answers parked requests whose callers are about to give up, and tells their
    /// entities to forget them.
    async fn withdraw_expired(&mut self, now: u64) {
        for (key, request_id, waiter) in self.parked.expire(now) {
            let error =
                WireError::new(ErrorKind::Timeout, "the request's timeout passed while it was parked");
            self.replies.push((waiter, Err(error)));
            self.notify(key, Notice::Withdraw(request_id), now).await;
        }
    }

    /// Tells an entity something no caller waits on, and carries out its decision. The
    /// timer or parked request behind the notice is gone already, so a notice that cannot
    /// be delivered now (the shard is being rebuilt, or there is no room to make it live
    /// until the batch in flight commits) waits for the next round rather than being lost:
    /// a lost withdrawal would grant a waiter that left.
    async fn notify(&mut self, key: EntityKey, notice: Notice, now: u64) {
        if self.broken.contains(&key.shard) || !self.has_room(&key.shard) {
            self.notices.push_back((key, notice));
            self.drain = true;
            return;
        }
        if let Err(e) = self.activate(&key, None).await {
            tracing::warn!(partition = self.id, entity = ?key, ?notice, "the entity cannot be told: {}", e.message);
            return;
        }
        let key = &key;
        let shard = self.shards.get_mut(&key.shard).expect("activated above");
        let result = match &notice {
            Notice::Wake => {
                let ctx = CallContext {
                    caller: "casty-host".into(),
                    request_id: format!("wake-{now}"),
                    now_ms: now,
                };
                shard.instance.wake(&key.id, &ctx).await
            }
            Notice::Withdraw(request_id) => {
                let ctx =
                    CallContext { caller: "casty-host".into(), request_id: request_id.clone(), now_ms: now };
                shard.instance.withdraw(&key.id, &ctx, request_id).await
            }
        };
        match result {
            Ok(decision) => self.settle(key, decision, None).await,
            Err(e) => {
                tracing::warn!(partition = self.id, entity = ?key, ?notice, "notifying the entity failed: {e}");
                if e.poisons() {
                    self.drop_shard(&key.shard);
                }
            }
        }
    }

    /// Whether the leader takes no new batch until one in flight commits: it has as many
    /// in flight as it may; or it waits for all of them to commit, to take a checkpoint,
    /// or because a command or notice could not be decided until they do (its shard is
    /// broken, or every live shard has a batch in flight), which would otherwise wait
    /// for as long as new batches keep coming.
    fn pipeline_full(&self) -> bool {
        self.pipeline.is_full() || ((self.drain || self.checkpoint_due()) && !self.pipeline.is_empty())
    }

    /// Whether the partition has applied enough since its checkpoint to take another.
    fn checkpoint_due(&self) -> bool {
        self.applied.0.saturating_sub(self.checkpoint) >= CHECKPOINT_INTERVAL_ENTRIES
    }

    async fn maybe_checkpoint(&mut self) {
        if self.checkpoint_due() && self.broken.is_empty() {
            self.checkpoint_now().await;
            self.flush_local().await;
        }
    }

    /// Snapshots every changed live entity for the next local write and moves the
    /// checkpoint to the applied index. Only called with nothing in flight, so every
    /// snapshot is of committed state.
    async fn checkpoint_now(&mut self) {
        assert!(self.in_flight.is_empty(), "checkpoints are taken between batches");
        let mut staged = Vec::new();
        let mut failed = Vec::new();
        for (shard_key, shard) in self.shards.iter_mut() {
            for (id, index) in std::mem::take(&mut shard.dirty) {
                match shard.instance.snapshot(&id).await {
                    Ok(state) => staged.push((EntityKey { shard: shard_key.clone(), id }, index, state)),
                    Err(e) => {
                        tracing::warn!(partition = self.id, shard = ?shard_key, "snapshot failed, rebuilding: {e}");
                        failed.push(shard_key.clone());
                        break;
                    }
                }
            }
        }
        for (key, index, state) in staged {
            self.stage_snapshot(key, EntitySnapshot { index, state });
        }
        for shard_key in &failed {
            // Its other changes are still in the log; the rebuild replays them.
            self.unload(shard_key);
            self.broken.insert(shard_key.clone());
        }
        if failed.is_empty() {
            self.checkpoint = self.applied.0;
            let members: Vec<MemberRecord> = self.members.borrow().values().cloned().collect();
            let state = self.recent.encode_state(self.applied.0, self.applied.1, &members);
            self.pending.checkpoint = Some(Checkpoint { index: self.checkpoint, state });
        }
    }

    /// Writes staged snapshots and the checkpoint. Raft's log already holds everything
    /// they summarise, so nobody waits on this write for durability; when it fails, live
    /// state is rebuilt from what the journal holds. Once a checkpoint is durable, the log
    /// before it may go.
    async fn flush_local(&mut self) {
        if self.unsaved.is_empty() && self.pending.checkpoint.is_none() {
            return;
        }
        let mut write = std::mem::replace(&mut self.pending, PartitionWrite::new(self.id));
        for (key, snapshot) in &self.unsaved {
            let encoded = key.encode();
            write.wakeups.push((encoded.clone(), self.timers.get(key)));
            write.snapshots.push((encoded, snapshot.encode()));
        }
        let checkpoint = write.checkpoint.as_ref().map(|c| c.index);
        let result = self.journal.write(write).await;
        self.unsaved.clear();
        match (result, checkpoint) {
            (Ok(()), Some(index)) => drop(self.raft.compact(self.id, index).await),
            (Ok(()), None) => {}
            (Err(e), _) => {
                tracing::error!(
                    partition = self.id,
                    "writing snapshots failed, rebuilding from the journal: {e}"
                );
                self.rebuild().await;
            }
        }
    }

    /// Rebuilds the shards whose instance failed while they had changes not snapshotted,
    /// from their snapshots and the log, once nothing is in flight; and writes the
    /// snapshots passivation staged.
    async fn repair_broken(&mut self) {
        for shard_key in std::mem::take(&mut self.broken) {
            if let Err(reason) = self.replay(Some(&shard_key)).await {
                self.fail_shard(shard_key, reason);
            }
        }
        self.flush_local().await;
    }

    /// Rebuilds live state from the checkpoint and the committed log. Batches in flight
    /// are answered first: their events are in the live state only.
    async fn rebuild(&mut self) {
        let why =
            "the partition is rebuilding its state; the request may or may not have been applied, retry it";
        self.answer_uncommitted(&unavailable(why.into()));
        self.step_down("the partition is rebuilding its state");
        if let Err(reason) = self.reset_from_journal(true).await {
            tracing::error!(partition = self.id, "rebuilding from the journal failed: {reason}");
        }
    }

    fn fail_shard(&mut self, shard_key: ShardKey, reason: String) {
        tracing::error!(partition = self.id, shard = ?shard_key, "cannot rebuild the shard from the journal: {reason}");
        self.unload(&shard_key);
        let message = format!(
            "the shard cannot be rebuilt from the journal ({reason}); its data is intact on disk and a restart retries"
        );
        self.failed.insert(shard_key, message);
    }
}

fn rejected(code: String, message: String) -> WireError {
    WireError::new(ErrorKind::Rejected { code }, message)
}

/// What a checkpoint holds besides snapshots (a partition that never checkpointed has
/// the default).
fn stored_state(checkpoint: &Checkpoint) -> Result<PartitionState, String> {
    if checkpoint.state.is_empty() {
        return Ok(PartitionState::default());
    }
    PartitionState::decode(&checkpoint.state).map_err(|e| e.to_string())
}

/// Restores every entity of `from` into `to` through `from`'s snapshots.
async fn carry_over<I: Instance>(from: &mut I, to: &mut I) -> Result<(), InvokeError> {
    for id in from.entity_ids() {
        let state = from.snapshot(&id).await?;
        to.restore(&id, &state).await?;
    }
    Ok(())
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
