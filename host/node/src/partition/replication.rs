//! How a partition worker takes part in its Raft group through the node's Raft loop:
//! it adds the group, proposes batches and waits until they come back committed,
//! confirms its leadership for reads, applies what the loop hands over (committed
//! entries, a leader's snapshot), and exports the partition when a replica needs one.
//!
//! The loop hands an entry over only once a majority of the group, this node counted
//! only once its own write is durable, has it on disk; that is what makes a reply sent
//! here after the entry came back safe.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use casty_core::limits::{COMMIT_WAIT_MAX_MS, REPLAY_CHUNK_ENTRIES};
use casty_core::protocol::{Deployment, WireError};
use casty_core::record::{ComponentPart, MemberChange, MemberRecord, PartitionExport, Proposal, TypeRecord};
use casty_core::routing::{EntityKey, ShardKey};
use casty_journal::raft_log::RecoveredGroup;
use casty_journal::{Checkpoint, PartitionWrite};
use casty_raft::log::FIRST_INDEX;
use casty_raft::{ConfChange, Entry, Event, GroupLog};

use super::ports::{Components, Group};
use super::{Answers, DeployAnswer, PENDING, PartitionWorker, unavailable};

impl<C: Components, G: Group> PartitionWorker<C, G> {
    /// Adds the group as the log files held it at start-up. A snapshot a leader sent
    /// that is newer than the checkpoint was installed in the log files but perhaps not
    /// here (the node stopped in between): it is restored first.
    pub(super) async fn attach_recovered(&mut self, recovered: RecoveredGroup) {
        let Some(files) = self.files.clone() else {
            tracing::error!(partition = self.id, "a group recovered from log files the worker was not given");
            return;
        };
        let log = match GroupLog::recover(self.id, recovered, files, self.applied.0) {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(
                    partition = self.id,
                    "the Raft log does not recover; the partition stays down: {e}"
                );
                return;
            }
        };
        match log.installed_snapshot() {
            Some(Ok((index, data))) if index > self.checkpoint => {
                if let Err(e) = self.install(index, &data).await {
                    tracing::error!(
                        partition = self.id,
                        "the snapshot in the Raft log does not install: {e}"
                    );
                }
            }
            Some(Err(e)) => {
                tracing::error!(partition = self.id, "the snapshot in the Raft log is damaged: {e}")
            }
            _ => {}
        }
        self.attach(log).await;
    }

    /// Founds the group, as its only voter (`founder` names this node), or joins it: a
    /// joining replica starts empty and waits for its leader's snapshot. A founded group
    /// starts from the empty partition at the log's first index, checkpointed here; in
    /// the metadata group, that state holds the founder as the cluster's only member.
    pub(super) async fn found(&mut self, founder: Option<MemberRecord>) {
        if self.attached {
            return;
        }
        let log = match founder {
            Some(me) => {
                if self.holds_types {
                    self.members.send_replace([(me.id, me)].into());
                }
                self.applied = (FIRST_INDEX, 1);
                self.checkpoint_now().await;
                self.flush_local().await;
                GroupLog::new(self.id, vec![self.me], self.files.clone())
            }
            None => GroupLog::joining(self.id, self.files.clone()),
        };
        self.attach(log).await;
    }

    async fn attach(&mut self, log: GroupLog) {
        // A group whose only voter is this node elects it at once, not after a timeout.
        let sole_voter = log.conf_state().voters == [self.me];
        let added = self.raft.add(log, self.applied.0, self.events_tx.clone(), self.status.clone()).await;
        self.attached = added.is_ok();
        if self.attached && sole_voter {
            let _ = self.raft.campaign(self.id).await;
        }
    }

    /// Proposes the batch just decided (or, for a batch that only read, asks for a read
    /// index) and queues its replies, which go out once it is committed (or confirmed)
    /// and every batch before it has been answered.
    pub(super) async fn commit(&mut self) {
        let entries = std::mem::take(&mut self.proposal);
        let replies = std::mem::take(&mut self.replies);
        let (records, mut deploys): (Vec<TypeRecord>, Vec<DeployAnswer>) = self.deploys.drain(..).unzip();
        let records = match self.propose_components(records).await {
            Ok(logged) => logged,
            Err(why) => {
                for answer in deploys.drain(..) {
                    let _ = answer.send(Err(why.clone()));
                }
                Vec::new()
            }
        };
        if entries.is_empty() && replies.is_empty() && records.is_empty() {
            if self.pipeline.is_empty() {
                self.flush_local().await;
            }
            return;
        }
        let changed: Vec<EntityKey> = entries.iter().map(|e| e.entity.clone()).collect();
        let answers = Answers { replies, deploys, changed };
        let asked = if entries.is_empty() && records.is_empty() {
            // A batch that changed nothing needs no entry, only the leader's word that it
            // still leads, confirmed by a majority.
            let number = self.pipeline.reading(answers, Instant::now());
            self.raft.read_index(self.id, number.to_le_bytes().to_vec()).await
        } else {
            let epoch = self.epoch.expect("only a leader decides");
            self.metrics.entries_appended.fetch_add(entries.len() as u64, Ordering::Relaxed);
            let proposal = Proposal { entries, deploys: records, part: None };
            self.pipeline.proposed(answers, Instant::now());
            self.raft.propose(self.id, epoch.to_le_bytes().to_vec(), proposal.encode()).await
        };
        if let Err(e) = asked {
            self.fail_uncommitted(unavailable(e.to_string())).await;
        }
    }

    /// Proposes the components of deployed `records` piece by piece, ahead of the records,
    /// which leave them out: a component may be far larger than one entry. Returns the
    /// records as they go into the log. The pieces are no batches (nobody waits on one:
    /// the record that follows them answers the deploy), so they stay out of the pipeline;
    /// one leader's entries commit in order, so the record commits after its pieces.
    async fn propose_components(&mut self, records: Vec<TypeRecord>) -> Result<Vec<TypeRecord>, WireError> {
        let mut logged = Vec::with_capacity(records.len());
        for record in records {
            let epoch = self
                .epoch
                .ok_or_else(|| unavailable("this node no longer leads the metadata group".into()))?;
            let (parts, record) = ComponentPart::split(record);
            for part in parts {
                let proposal = Proposal { entries: Vec::new(), deploys: Vec::new(), part: Some(part) };
                let proposed =
                    self.raft.propose(self.id, epoch.to_le_bytes().to_vec(), proposal.encode()).await;
                proposed.map_err(|e| {
                    unavailable(format!("a piece of the component was not proposed ({e}); deploy again"))
                })?;
            }
            logged.push(record);
        }
        Ok(logged)
    }

    /// How long until the oldest batch in flight has waited [`COMMIT_WAIT_MAX_MS`].
    pub(super) fn commit_wait_left(&self) -> Option<Duration> {
        self.pipeline.commit_wait_left(Instant::now())
    }

    /// Fails every batch in flight once the oldest has waited too long for a majority.
    pub(super) async fn give_up_if_uncommitted(&mut self) {
        if self.commit_wait_left().is_some_and(|left| left.is_zero()) {
            self.fail_uncommitted(self.no_majority()).await;
        }
    }

    /// Answers every batch whose turn has come: a batch of writes once its entry came
    /// back committed, one that only read once its read index came back and is applied,
    /// each only after every batch before it.
    fn release(&mut self) {
        while let Some(batch) = self.pipeline.next_answered(self.applied.0) {
            if let Some(index) = batch.committed {
                self.settle_batch(batch.number, index, &batch.payload.changed);
                self.metrics.journal_writes.fetch_add(1, Ordering::Relaxed);
                let took = batch.sent.elapsed().as_micros() as u64;
                self.metrics.journal_write_micros.fetch_add(took, Ordering::Relaxed);
            }
            for (waiter, answer) in batch.payload.replies {
                let _ = waiter.send(answer);
            }
            for answer in batch.payload.deploys {
                let _ = answer.send(Ok(()));
            }
        }
    }

    /// The entities batch `number` changed now have a log index, unless a later batch
    /// in flight changed them again; shards no later batch changed are settled.
    fn settle_batch(&mut self, number: u64, index: u64, changed: &[EntityKey]) {
        for key in changed {
            if let Some(shard) = self.shards.peek_mut(&key.shard)
                && let Some(dirty) = shard.dirty.get_mut(&key.id)
                && *dirty == PENDING | number
            {
                *dirty = index;
            }
        }
        self.in_flight.retain(|_, newest| *newest != number);
    }

    /// Answers every batch in flight with `error`: none was acknowledged. The live state
    /// holds their events, so it is rebuilt from the checkpoint and the committed log.
    pub(super) async fn fail_uncommitted(&mut self, error: WireError) {
        if self.answer_uncommitted(&error) {
            self.rebuild().await;
        }
    }

    /// Answers every batch in flight with `error`; returns whether there was one.
    pub(super) fn answer_uncommitted(&mut self, error: &WireError) -> bool {
        if self.pipeline.is_empty() {
            return false;
        }
        let count = self.pipeline.len();
        tracing::info!(partition = self.id, "{count} batches were not committed: {}", error.message);
        for answers in self.pipeline.take_all() {
            for (waiter, _) in answers.replies {
                let _ = waiter.send(Err(error.clone()));
            }
            for answer in answers.deploys {
                let _ = answer.send(Err(error.clone()));
            }
        }
        true
    }

    pub(super) fn no_majority(&self) -> WireError {
        unavailable(format!(
            "partition {}'s leader heard from no majority of its replicas within {COMMIT_WAIT_MAX_MS} ms; \
             the request may or may not have been applied, retry it",
            self.id
        ))
    }

    /// Takes one event from the loop.
    pub(super) async fn serve(&mut self, event: Event) {
        match event {
            Event::Role { term, leader, leading } => {
                self.term = term;
                self.leader = Some(leader).filter(|l| *l != 0);
                self.leading = leading;
            }
            Event::Committed(entries) => {
                self.apply_committed(entries).await;
                self.release();
            }
            Event::ReadIndex { context, index } => {
                if let Ok(asked) = <[u8; 8]>::try_from(context.as_slice()) {
                    self.pipeline.read_index(u64::from_le_bytes(asked), index);
                }
                self.release();
            }
            // Only a proposal of the current epoch waits on a refusal; a refused conf
            // change (placement proposes those) is retried by the placement itself.
            Event::Refused { context, reason } => {
                if self.epoch.is_some_and(|epoch| context == epoch.to_le_bytes()) {
                    let why = format!(
                        "partition {}'s Raft group did not take a batch ({reason}); retry it",
                        self.id
                    );
                    self.fail_uncommitted(unavailable(why)).await;
                }
            }
            Event::Install { index, data } => {
                if let Err(e) = self.install(index, &data).await {
                    tracing::error!(partition = self.id, "a snapshot from the leader does not install: {e}");
                }
            }
            Event::SnapshotWanted => self.export().await,
        }
    }

    /// Applies committed entries. Entries this replica decided under its current epoch
    /// are already applied; any other entry means another leader decided it, so what this
    /// replica may have decided on its own is void and it rebuilds first.
    async fn apply_committed(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let index = entry.index;
            if let Some(change) = ConfChange::of_entry(&entry) {
                if self.holds_types {
                    self.apply_member_change(change.context());
                }
            } else if !entry.data.is_empty() {
                let decided_here = decided_here(self.epoch, &entry);
                if decided_here && !self.holds_types {
                    // Applied here already: it need not be decoded (the metadata group's
                    // entries are, to store the deployments they carry).
                    self.pipeline.committed(index);
                } else {
                    match Proposal::decode(&entry.data) {
                        Ok(proposal) => self.apply_proposal(index, decided_here, proposal).await,
                        // Only this code makes entries, so this is damage the checksums missed.
                        Err(e) => tracing::error!(
                            partition = self.id,
                            index,
                            "a committed entry does not decode: {e}"
                        ),
                    }
                }
            }
            self.applied = (index, entry.term);
        }
        if self.epoch.is_none() {
            self.flush_local().await;
            self.maybe_checkpoint().await;
        }
    }

    async fn apply_proposal(&mut self, index: u64, decided_here: bool, mut proposal: Proposal) {
        if let Some(part) = &proposal.part {
            // A piece of a component is no batch: the pipeline does not count it.
            self.store_part(part).await;
            return;
        }
        for record in &proposal.deploys {
            self.install_logged_type(record).await;
        }
        if decided_here {
            self.pipeline.committed(index);
            return;
        }
        if proposal.entries.is_empty() {
            return;
        }
        // The rebuild answers any batch of this replica's still in flight first.
        if self.epoch.is_some() || !self.in_flight.is_empty() {
            self.rebuild().await;
        }
        for logged in &mut proposal.entries {
            if let Err(reason) = self.apply_logged(index, logged).await {
                self.fail_shard(logged.entity.shard.clone(), reason);
            }
        }
    }

    /// The metadata group's state: who the cluster's members are. A change's context says
    /// what it does to them; an empty one (raft-rs leaving a joint configuration) nothing.
    fn apply_member_change(&mut self, context: &[u8]) {
        if context.is_empty() {
            return;
        }
        match MemberChange::decode(context) {
            Ok(MemberChange::Admit(member)) => {
                self.members.send_modify(|m| drop(m.insert(member.id, member)))
            }
            Ok(MemberChange::Remove(id)) => self.members.send_modify(|m| drop(m.remove(&id))),
            Ok(MemberChange::Promote(_)) => {}
            Err(e) => tracing::error!("a membership change does not decode: {e}"),
        }
    }

    /// Applies the committed log after the checkpoint (through the applied index) to the
    /// entities it names (only those of `only`, if given). Returns the entries applied.
    pub(super) async fn replay(&mut self, only: Option<&ShardKey>) -> Result<usize, String> {
        let last = self.applied.0;
        let mut from = self.checkpoint + 1;
        let mut applied = 0;
        while from <= last {
            let to = last.min(from.saturating_add(REPLAY_CHUNK_ENTRIES as u64 - 1));
            let entries = self.raft.entries(self.id, from, to).await?;
            if entries.is_empty() {
                return Err(format!("the log lacks entries {from} to {to}, which were applied"));
            }
            for entry in entries {
                from = entry.index + 1;
                if ConfChange::of_entry(&entry).is_some() || entry.data.is_empty() {
                    continue;
                }
                let mut proposal =
                    Proposal::decode(&entry.data).map_err(|e| format!("log index {}: {e}", entry.index))?;
                for logged in &mut proposal.entries {
                    if only.is_none_or(|shard| *shard == logged.entity.shard) {
                        self.apply_logged(entry.index, logged).await?;
                        applied += 1;
                    }
                }
            }
        }
        Ok(applied)
    }

    /// Hands the loop the partition as of a checkpoint (taken now, when nothing is in
    /// flight), with every stored entity snapshot, for a replica that is behind the log's
    /// start. Snapshots stored after the checkpoint hold later entries too; the receiver
    /// skips those entries by each snapshot's index, as recovery does.
    async fn export(&mut self) {
        if self.in_flight.is_empty() && self.broken.is_empty() && self.applied.0 > self.checkpoint {
            self.checkpoint_now().await;
            self.flush_local().await;
        }
        let exported = (|| {
            let checkpoint = self.journal.checkpoint(self.id)?;
            let export = PartitionExport {
                checkpoint_index: checkpoint.index,
                state: checkpoint.state,
                snapshots: self.journal.snapshots(self.id)?,
                wakeups: self.journal.wakeups(self.id)?,
                types: if self.holds_types { self.journal.types()? } else { Vec::new() },
                parts: if self.holds_types { self.journal.parts(None)? } else { Vec::new() },
            };
            Ok::<_, casty_journal::JournalError>((checkpoint.index, export.encode()))
        })();
        match exported {
            Ok((index, data)) => drop(self.raft.exported(self.id, index, data).await),
            Err(e) => tracing::error!(partition = self.id, "cannot export the partition for a replica: {e}"),
        }
    }

    /// Replaces the partition with a snapshot from the group's leader, through `index`.
    pub(super) async fn install(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        let export = PartitionExport::decode(data).map_err(|e| e.to_string())?;
        if export.checkpoint_index != index {
            return Err(format!(
                "the snapshot at index {index} holds a checkpoint at {}",
                export.checkpoint_index
            ));
        }
        self.step_down("the partition is being replaced by a snapshot");
        let parts = export
            .parts
            .iter()
            .map(|bytes| {
                let part = ComponentPart::decode(bytes).map_err(|e| e.to_string())?;
                Ok((part.entity_type, part.version, part.offset, bytes.clone()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let write = PartitionWrite {
            replace_entities: true,
            parts,
            snapshots: export.snapshots,
            wakeups: export.wakeups.into_iter().map(|(key, at)| (key, Some(at))).collect(),
            checkpoint: Some(Checkpoint { index, state: export.state }),
            ..PartitionWrite::new(self.id)
        };
        self.journal.write(write).await.map_err(|e| e.to_string())?;
        for bytes in &export.types {
            self.install_type(&TypeRecord::decode(bytes).map_err(|e| e.to_string())?).await;
        }
        self.reset_from_journal(false).await?;
        tracing::info!(partition = self.id, index, "installed a snapshot from the leader");
        Ok(())
    }

    /// Stores a committed piece of a deployed component, until its record joins them. The
    /// first piece starts the component afresh.
    async fn store_part(&mut self, part: &ComponentPart) {
        let of = (part.entity_type.clone(), part.version);
        let write = PartitionWrite {
            parts_cleared: if part.offset == 0 { vec![of.clone()] } else { Vec::new() },
            parts: vec![(of.0, of.1, part.offset, part.encode())],
            ..PartitionWrite::new(self.id)
        };
        if let Err(e) = self.journal.write(write).await {
            tracing::error!(
                "cannot store a piece of entity type {:?}'s component; the log still holds it: {e}",
                part.entity_type
            );
        }
    }

    /// Installs a type version as the log records it: its component joined from the
    /// pieces that committed before it.
    async fn install_logged_type(&mut self, logged: &TypeRecord) {
        let (name, version) = (&logged.deployment.entity_type, logged.version);
        let joined =
            self.journal.parts(Some((name, version))).map_err(|e| e.to_string()).and_then(|stored| {
                let parts: Vec<ComponentPart> = stored
                    .iter()
                    .map(|bytes| ComponentPart::decode(bytes))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                ComponentPart::join(&parts)
            });
        match joined {
            Ok(wasm) => {
                let deployment = Deployment { wasm, ..logged.deployment.clone() };
                self.install_type(&TypeRecord { version, deployment }).await;
            }
            Err(e) => tracing::error!(
                "version {version} of entity type {name:?} is committed, but its component cannot be joined: {e}"
            ),
        }
    }

    /// Stores a deployed type version (the metadata group's state) and loads it; its
    /// component's pieces, if any are left, go. Storing the same version again (the log
    /// is re-applied after a restart) changes nothing.
    async fn install_type(&mut self, record: &TypeRecord) {
        let name = &record.deployment.entity_type;
        let stored = (name.clone(), record.version, record.encode());
        let write = PartitionWrite {
            parts_cleared: vec![(name.clone(), record.version)],
            types: vec![stored],
            ..PartitionWrite::new(self.id)
        };
        if let Err(e) = self.journal.write(write).await {
            tracing::error!(
                "cannot store version {} of entity type {:?}; the log still holds it: {e}",
                record.version,
                name
            );
        }
        self.components.install(record).await;
    }
}

/// Whether this replica decided `entry` in its current leadership `epoch`, which every
/// proposal names as its context; such an entry is applied here already.
fn decided_here(epoch: Option<u64>, entry: &Entry) -> bool {
    epoch.is_some_and(|epoch| entry.context[..] == epoch.to_le_bytes())
}
