//! A partition worker: owns the shard instances of one partition and its slice of the
//! journal, and decides commands one batch at a time.
//!
//! Each worker is an async task. Component calls run on fibers and yield at every epoch
//! tick, so a runaway entity delays only its own partition (until its deadline), never a
//! runtime thread.
//!
//! A batch is decided in order, each command's events applied to the live instance as
//! soon as they are decided (so the next command sees them), and the whole batch is
//! committed in one journal write before any of its replies is sent. A reply therefore
//! never reveals state that is not durable.
//!
//! The invariant that makes passivation and recovery simple: an entity that is not live
//! has a stored snapshot (or none, if new) that holds every event it ever had, except
//! while a batch that snapshots it is in flight, when `unsaved` holds that snapshot.
//! Every live entity's state is its snapshot plus the log entries after the partition's
//! checkpoint, so a crash loses nothing: replay from the checkpoint rebuilds it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use tokio::sync::{mpsc, oneshot};

use casty_core::limits::{
    BATCH_LEN_MAX, CHECKPOINT_INTERVAL_ENTRIES, PARK_DEADLINE_MARGIN_MS, REPLAY_CHUNK_ENTRIES,
};
use casty_core::parked::{ParkedTable, Timers};
use casty_core::protocol::{ErrorKind, Invoke, WireError};
use casty_core::record::{CompletedRequest, EntitySnapshot, LogEntry, PartitionState};
use casty_core::requests::RecentRequests;
use casty_core::{Decision, EntityKey, Reply, ShardKey};
use casty_journal::{Checkpoint, Journal, PartitionWrite};
use casty_runtime::{CallContext, InvokeError, Runtime, ShardInstance};

use crate::dispatch::Types;
use crate::metrics::Metrics;

/// Where an answer goes.
pub(crate) type Waiter = oneshot::Sender<Result<Vec<u8>, WireError>>;

/// One command waiting in a partition's mailbox.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) invoke: Invoke,
    pub(crate) reply: Waiter,
}

/// What the host tells an entity on its own initiative.
#[derive(Debug)]
enum Notice {
    /// The wake-up time it asked for has come.
    Wake,
    /// The caller of this parked request stopped waiting.
    Withdraw(String),
}

/// What a partition's mailbox carries.
#[derive(Debug)]
pub(crate) enum Message {
    Job(Job),
    /// Finish the current batch and stop.
    Stop,
}

/// A live shard: its instance and the entities changed since they were last snapshotted,
/// with the log index of each one's last event.
struct Shard {
    instance: ShardInstance,
    dirty: HashMap<String, u64>,
}

pub(crate) struct PartitionWorker {
    id: u32,
    journal: Journal,
    runtime: Runtime,
    types: Arc<Types>,
    shards: LruCache<ShardKey, Shard>,
    live_max: usize,
    metrics: Arc<Metrics>,
    /// The index the next log entry gets.
    next_index: u64,
    /// Every entity's snapshot is complete through this index; the log after it is the tail.
    checkpoint: u64,
    /// What the next commit writes.
    pending: PartitionWrite,
    /// Snapshots in `pending`, readable before they commit.
    unsaved: HashMap<EntityKey, EntitySnapshot>,
    /// Answers to send once `pending` commits.
    replies: Vec<(Waiter, Result<Vec<u8>, WireError>)>,
    parked: ParkedTable<Waiter>,
    timers: Timers,
    /// Requests that persisted events, with their replies, for answering retries.
    recent: RecentRequests,
    /// Shards whose instance failed while dirty; rebuilt from the journal after the
    /// commit, and until then their commands wait in `deferred`.
    broken: HashSet<ShardKey>,
    deferred: VecDeque<Job>,
    /// Shards that could not be rebuilt; their commands fail with this reason.
    failed: HashMap<ShardKey, String>,
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

impl PartitionWorker {
    pub(crate) fn new(
        id: u32,
        journal: Journal,
        runtime: Runtime,
        types: Arc<Types>,
        live_max: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            id,
            journal,
            runtime,
            types,
            shards: LruCache::unbounded(),
            live_max: live_max.max(1),
            metrics,
            next_index: 1,
            checkpoint: 0,
            pending: PartitionWrite::new(id),
            unsaved: HashMap::new(),
            replies: Vec::new(),
            parked: ParkedTable::default(),
            timers: Timers::default(),
            recent: RecentRequests::default(),
            broken: HashSet::new(),
            deferred: VecDeque::new(),
            failed: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self, mut mailbox: mpsc::Receiver<Message>) {
        if let Err(e) = self.recover().await {
            tracing::error!(partition = self.id, "recovery failed; the partition refuses commands: {e}");
        }
        let mut stopping = false;
        while !stopping {
            let mut jobs: Vec<Job> = self.deferred.drain(..).collect();
            if jobs.is_empty() {
                let wait =
                    self.next_deadline_ms().map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
                tokio::select! {
                    message = mailbox.recv() => match message {
                        Some(Message::Job(job)) => jobs.push(job),
                        Some(Message::Stop) | None => stopping = true,
                    },
                    () = sleep_or_forever(wait) => {}
                }
            }
            while !stopping && jobs.len() < BATCH_LEN_MAX {
                match mailbox.try_recv() {
                    Ok(Message::Job(job)) => jobs.push(job),
                    Ok(Message::Stop) => stopping = true,
                    Err(_) => break,
                }
            }
            let now = now_ms();
            for job in jobs {
                self.decide(job, now).await;
            }
            self.fire_timers(now).await;
            self.withdraw_expired(now).await;
            self.maybe_checkpoint().await;
            self.commit().await;
        }
        for waiter in self.parked.drain() {
            let _ = waiter.send(Err(unavailable("the node is shutting down".into())));
        }
        for job in self.deferred.drain(..) {
            let _ = job.reply.send(Err(unavailable("the node is shutting down".into())));
        }
        self.unload_all();
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        match (self.timers.next_ms(), self.parked.next_deadline_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Rebuilds live state from the journal, then checkpoints so the tail starts short.
    async fn recover(&mut self) -> Result<(), String> {
        let replayed = self.reset_from_journal().await?;
        if replayed > 0 {
            tracing::info!(partition = self.id, entries = replayed, "replayed the log tail");
            self.checkpoint_now().await;
            self.commit().await;
        }
        Ok(())
    }

    /// Drops all live state and replays the log tail after the stored checkpoint.
    async fn reset_from_journal(&mut self) -> Result<usize, String> {
        self.unload_all();
        self.unsaved.clear();
        self.pending = PartitionWrite::new(self.id);
        self.broken.clear();
        let checkpoint = self.journal.checkpoint(self.id).map_err(|e| e.to_string())?;
        self.checkpoint = checkpoint.index;
        let state = if checkpoint.state.is_empty() {
            PartitionState::default()
        } else {
            PartitionState::decode(&checkpoint.state).map_err(|e| e.to_string())?
        };
        self.recent = RecentRequests::from_state(state);
        // Wake-ups of entities whose last events are behind the checkpoint; the log tail
        // replayed next restores the newer ones.
        self.timers = Timers::default();
        for (key, at) in self.journal.wakeups(self.id).map_err(|e| e.to_string())? {
            let key = EntityKey::decode(&key).map_err(|e| e.to_string())?;
            self.timers.set(&key, Some(at)).map_err(|e| e.to_string())?;
        }
        self.next_index = self.journal.last_index(self.id).map_err(|e| e.to_string())? + 1;
        self.replay(None).await
    }

    /// Applies the log tail to the entities it names (only those of `only`, if given),
    /// skipping events a restored snapshot already holds. Returns the entries applied.
    async fn replay(&mut self, only: Option<&ShardKey>) -> Result<usize, String> {
        let mut floors: HashMap<EntityKey, u64> = HashMap::new();
        let mut after = self.checkpoint;
        let mut applied = 0;
        loop {
            let entries =
                self.journal.read_log(self.id, after, REPLAY_CHUNK_ENTRIES).map_err(|e| e.to_string())?;
            let Some(&(last, _)) = entries.last() else { break };
            after = last;
            for (index, bytes) in entries {
                let entry = LogEntry::decode(&bytes).map_err(|e| format!("log index {index}: {e}"))?;
                let key = &entry.entity;
                if only.is_some_and(|shard| *shard != key.shard) {
                    continue;
                }
                for completed in &entry.completed {
                    self.recent.insert(completed.clone());
                }
                let restored = self.activate(key).await.map_err(|e| e.message)?;
                let floor = *floors
                    .entry(key.clone())
                    .and_modify(|f| *f = restored.unwrap_or(*f))
                    .or_insert(restored.unwrap_or(0));
                if index <= floor {
                    continue;
                }
                let shard = self.shards.get_mut(&key.shard).expect("activate made the shard live");
                for event in &entry.events {
                    shard
                        .instance
                        .apply(&key.id, event)
                        .await
                        .map_err(|e| format!("log index {index}: {e}"))?;
                }
                shard.dirty.insert(key.id.clone(), index);
                self.timers.set(key, entry.wake_at_ms).map_err(|e| e.to_string())?;
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Makes an entity live. Returns the log index its state was restored at when it had
    /// to be loaded (0 for a new entity), `None` when it was live already.
    async fn activate(&mut self, key: &EntityKey) -> Result<Option<u64>, WireError> {
        if let Some(reason) = self.failed.get(&key.shard) {
            return Err(WireError::new(ErrorKind::EntityTrapped, reason.clone()));
        }
        if !self.shards.contains(&key.shard) {
            while self.shards.len() >= self.live_max {
                self.passivate_lru().await;
            }
            let ty = self.types.get(&key.shard.entity_type).ok_or_else(|| {
                WireError::new(
                    ErrorKind::UnknownEntityType,
                    format!("no entity type {:?}", key.shard.entity_type),
                )
            })?;
            let instance = self.runtime.instantiate(ty).await.map_err(|e| invoke_error(&e))?;
            self.shards.put(key.shard.clone(), Shard { instance, dirty: HashMap::new() });
            self.metrics.live_instances.fetch_add(1, Ordering::Relaxed);
        }
        let shard = self.shards.get_mut(&key.shard).expect("made live above");
        if shard.instance.contains(&key.id) {
            return Ok(None);
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
        Ok(Some(stored.map_or(0, |s| s.index)))
    }

    /// Passivates the least recently used shard: its changed entities are snapshotted
    /// into the pending write, then the instance is dropped.
    async fn passivate_lru(&mut self) {
        let Some((shard_key, _)) = self.shards.peek_lru() else { return };
        let shard_key = shard_key.clone();
        let mut shard = self.unload(&shard_key).expect("peeked above");
        self.metrics.instances_passivated.fetch_add(1, Ordering::Relaxed);
        for (id, index) in std::mem::take(&mut shard.dirty) {
            let key = EntityKey { shard: shard_key.clone(), id };
            match shard.instance.snapshot(&key.id).await {
                Ok(state) => self.stage_snapshot(key, EntitySnapshot { index, state }),
                Err(e) => {
                    tracing::warn!(partition = self.id, entity = ?key, "snapshot on passivation failed, rebuilding: {e}");
                    self.broken.insert(shard_key);
                    return;
                }
            }
        }
    }

    fn stage_snapshot(&mut self, key: EntityKey, snapshot: EntitySnapshot) {
        let encoded_key = key.encode();
        self.pending.wakeups.push((encoded_key.clone(), self.timers.get(&key)));
        self.pending.snapshots.push((encoded_key, snapshot.encode()));
        self.unsaved.insert(key, snapshot);
    }

    /// Takes a shard out of the live set, keeping the live-instance gauge true.
    fn unload(&mut self, shard_key: &ShardKey) -> Option<Shard> {
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
        if self.broken.contains(&key.shard) {
            self.deferred.push_back(job);
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
                let error = WireError::new(ErrorKind::Timeout, "superseded by a retry of the same request");
                self.replies.push((previous, Err(error)));
                return;
            }
            Err(reply) => Job { invoke: job.invoke, reply },
        };
        if let Err(e) = self.activate(&key).await {
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
            let index = self.next_index;
            self.next_index += 1;
            shard.dirty.insert(key.id.clone(), index);
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
            let entry = LogEntry {
                entity: key.clone(),
                events: decision.events,
                wake_at_ms: decision.wake_at_ms,
                completed,
            };
            self.pending.appends.push((index, entry.encode()));
        }
        if let Err(e) = self.timers.set(key, decision.wake_at_ms) {
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
                        let error =
                            WireError::new(ErrorKind::Timeout, "superseded by a retry of the same request");
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

    async fn fire_timers(&mut self, now: u64) {
        for key in self.timers.due(now) {
            self.notify(&key, Notice::Wake, now).await;
        }
    }

    /// Answers parked requests whose callers are about to give up, and tells their
    /// entities to forget them.
    async fn withdraw_expired(&mut self, now: u64) {
        for (key, request_id, waiter) in self.parked.expire(now) {
            let error =
                WireError::new(ErrorKind::Timeout, "the request's timeout passed while it was parked");
            self.replies.push((waiter, Err(error)));
            self.notify(&key, Notice::Withdraw(request_id), now).await;
        }
    }

    /// Tells an entity something no caller waits on, and carries out its decision.
    async fn notify(&mut self, key: &EntityKey, notice: Notice, now: u64) {
        if self.broken.contains(&key.shard) || self.activate(key).await.is_err() {
            return;
        }
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

    async fn maybe_checkpoint(&mut self) {
        if self.next_index - 1 - self.checkpoint >= CHECKPOINT_INTERVAL_ENTRIES && self.broken.is_empty() {
            self.checkpoint_now().await;
        }
    }

    /// Snapshots every changed live entity into the pending write and moves the
    /// checkpoint to the last staged index, truncating the log behind it.
    async fn checkpoint_now(&mut self) {
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
            self.checkpoint = self.next_index - 1;
            let state = self.recent.to_state().encode();
            self.pending.checkpoint = Some(Checkpoint { index: self.checkpoint, state });
        }
    }

    /// Writes the pending batch, then sends its replies. When the write fails, nothing
    /// of the batch was acknowledged, so live state is rebuilt from the journal.
    async fn commit(&mut self) {
        let write = std::mem::replace(&mut self.pending, PartitionWrite::new(self.id));
        let appended = write.appends.len() as u64;
        let result = if write.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let result = self.journal.write(write).await;
            self.metrics.journal_writes.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .journal_write_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            result
        };
        self.unsaved.clear();
        let replies = std::mem::take(&mut self.replies);
        match result {
            Ok(()) => {
                self.metrics.entries_appended.fetch_add(appended, Ordering::Relaxed);
                for (waiter, answer) in replies {
                    let _ = waiter.send(answer);
                }
                for shard_key in std::mem::take(&mut self.broken) {
                    if let Err(reason) = self.replay(Some(&shard_key)).await {
                        self.fail_shard(shard_key, reason);
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    partition = self.id,
                    "journal write failed, rebuilding from the journal: {e}"
                );
                for (waiter, _) in replies {
                    let _ = waiter.send(Err(unavailable(format!(
                        "the journal write failed ({e}); the request may not have been persisted"
                    ))));
                }
                if let Err(reason) = self.reset_from_journal().await {
                    tracing::error!(partition = self.id, "rebuilding from the journal failed: {reason}");
                }
            }
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

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
