//! Every Raft group of one node, driven in rounds, without I/O.
//!
//! The loop ([`crate::driver`]) feeds this core what arrived (peer messages, proposals,
//! ticks, journal completions) and then asks it for a [`Round`]: the messages to send,
//! one journal write holding every ready group's entries and hard state, and the events
//! for the groups' owners. The round's order is what keeps Raft safe with one fsync for
//! many groups:
//!
//! 1. a leader's messages go out before its own append is durable (the Raft thesis,
//!    §10.2.1); raft-rs counts the leader's own copy towards the majority only once
//!    [`Groups::persisted`] reports the write durable;
//! 2. every other message (a follower's acknowledgement, a vote) is held until the write
//!    of its round, and of every round before it, is durable (a write of commit indexes
//!    alone, which raft-rs does not ask to be synced, counts as durable at once);
//! 3. committed entries reach the owners only once raft-rs hands them over, that is, once
//!    a majority (counting this node only when its own copy is durable) has them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use casty_core::limits::RAFT_ENTRY_BYTES_MAX;
use casty_journal::raft_log::RoundBuffer;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};

use crate::log::{GroupLog, conf_change_of};
use crate::wire::ConfChange;

/// Ticks of the node's one Raft clock.
pub const TICK_MS: u64 = 50;

/// What the loop hands a group's owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The group's leader or this node's role in it changed.
    Role { term: u64, leader: u64, leading: bool },
    /// Entries a majority has on disk, in log order. Conf changes among them are
    /// already applied to the group by the loop.
    Committed(Vec<Entry>),
    /// A read index request was answered: a read made after the owner has applied
    /// `index` observes every write committed before the request.
    ReadIndex { context: Vec<u8>, index: u64 },
    /// raft-rs did not take the proposal with this context (this node does not lead,
    /// or a leadership transfer is under way). Made by the loop, not by a round.
    Refused { context: Vec<u8>, reason: String },
    /// The leader sent a snapshot through `index`: the owner's state becomes `data`, and
    /// committed entries follow from `index + 1`. The log files keep the snapshot until
    /// the owner exports one of its own past it.
    Install { index: u64, data: Vec<u8> },
    /// A replica is behind the log's start: the owner should export its state at its
    /// last checkpoint ([`Groups::exported`]) for raft-rs to send.
    SnapshotWanted,
}

/// Why raft-rs did not take a proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("this node has no Raft group {0}")]
    NoGroup(u32),
    #[error("group {group} refused the proposal: {reason}")]
    Refused { group: u32, reason: String },
}

/// What a group looks like from this node: for its owner, and for the node's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub term: u64,
    pub leader: Option<u64>,
    pub leading: bool,
    /// The voters, as this replica has applied the configuration.
    pub voters: BTreeSet<u64>,
    /// While a change is under way (joint consensus): the voters it leaves behind.
    pub outgoing: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub last_index: u64,
    /// On the leader: how far each other replica's log is known to match.
    pub matched: BTreeMap<u64, u64>,
    /// On the leader: the other replicas it heard from within the last election timeout.
    pub active: BTreeSet<u64>,
}

impl GroupStatus {
    /// Every replica of the group: voters on either side of a change, and learners.
    pub fn replicas(&self) -> BTreeSet<u64> {
        self.voters.iter().chain(&self.outgoing).chain(&self.learners).copied().collect()
    }
}

/// One round's work for the I/O around the core.
#[derive(Debug, Default)]
pub struct Round {
    /// Numbers the round; [`Groups::persisted`] takes it back.
    pub number: u64,
    /// Messages to send now, in order: (group, message).
    pub messages: Vec<(u32, Message)>,
    /// The round's records for the Raft log, if it has any.
    pub write: Option<RoundBuffer>,
    pub events: Vec<(u32, Event)>,
    /// The groups that were ready, whose status may have changed.
    pub touched: Vec<u32>,
}

/// A round whose journal write is not yet durable.
#[derive(Debug)]
struct Unsynced {
    number: u64,
    /// Whether its write must reach the disk before the round counts as durable.
    must_sync: bool,
    /// (group, ready number, last entry index of the ready, snapshot index or 0)
    readies: Vec<(u32, u64, u64, u64)>,
    held: Vec<(u32, Message)>,
    /// Installs of snapshots the round writes: the owner takes one only once the log
    /// files have it, so that a restart finds either the old log and the owner's old
    /// state, or the snapshot in the log files to restore from.
    installs: Vec<(u32, Event)>,
}

pub struct Groups {
    id: u64,
    logger: slog::Logger,
    groups: BTreeMap<u32, RawNode<GroupLog>>,
    unsynced: VecDeque<Unsynced>,
    /// Messages a durable write released; they leave with the next round.
    released: Vec<(u32, Message)>,
    /// Events made outside a round (a proposal refused), for the next round.
    early_events: Vec<(u32, Event)>,
    next_round: u64,
    /// Where the next round's records go.
    next_write: RoundBuffer,
    /// Every group's states are to be written again at the start of the next round: at
    /// start-up, and when a round starts a new segment.
    dump_pending: bool,
    /// The segment of the last such dump, and every segment before this one is deleted
    /// or about to be.
    dumped_in: u32,
    deleted_below: u32,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<_> = self.groups.keys().collect();
        f.debug_struct("Groups").field("id", &self.id).field("groups", &groups).finish_non_exhaustive()
    }
}

impl Groups {
    /// The core of node `id` (its Raft id in every group); its first round writes to
    /// `next_write`.
    pub fn new(id: u64, logger: slog::Logger, next_write: RoundBuffer) -> Self {
        Self {
            id,
            logger,
            groups: BTreeMap::new(),
            unsynced: VecDeque::new(),
            released: Vec::new(),
            early_events: Vec::new(),
            next_round: 1,
            dumped_in: next_write.segment(),
            deleted_below: 0,
            next_write,
            dump_pending: true,
        }
    }

    /// Starts driving `group` on `log`; its owner has applied entries through `applied`.
    pub fn add(&mut self, log: GroupLog, applied: u64) -> Result<(), raft::Error> {
        let group = log.group();
        let config = raft::Config {
            id: self.id,
            election_tick: (casty_core::limits::RAFT_ELECTION_TIMEOUT_MIN_MS / TICK_MS) as usize,
            min_election_tick: (casty_core::limits::RAFT_ELECTION_TIMEOUT_MIN_MS / TICK_MS) as usize,
            max_election_tick: (casty_core::limits::RAFT_ELECTION_TIMEOUT_MAX_MS / TICK_MS) as usize,
            heartbeat_tick: (casty_core::limits::RAFT_HEARTBEAT_MS / TICK_MS) as usize,
            applied,
            max_size_per_msg: casty_core::limits::RAFT_MESSAGE_ENTRIES_MAX_BYTES,
            max_inflight_msgs: casty_core::limits::RAFT_APPENDS_IN_FLIGHT_MAX,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            // The commit index rides the next append or heartbeat.
            skip_bcast_commit: true,
            // Off: merging a group's appends to one peer is the frame's job, and raft-rs's
            // merge can join entries onto an empty append that names another index (the
            // simulation below caught followers acknowledging entries they never had).
            batch_append: false,
            ..raft::Config::default()
        };
        let logger = self.logger.new(slog::o!("group" => group));
        let node = RawNode::new(&config, log, &logger)?;
        self.groups.insert(group, node);
        Ok(())
    }

    /// Hands a peer's message to its group. Messages for a group this node does not
    /// drive, or that raft-rs refuses, are dropped: Raft resends what matters.
    pub fn step(&mut self, group: u32, message: Message) {
        let Some(node) = self.groups.get_mut(&group) else { return };
        if message.to != self.id {
            return;
        }
        if let Err(e) = node.step(message) {
            tracing::debug!("group {group} dropped a message: {e}");
        }
    }

    /// Proposes `data` as one entry; `context` comes back with it when it commits.
    /// An entry larger than [`RAFT_ENTRY_BYTES_MAX`] is refused: it could not travel.
    pub fn propose(&mut self, group: u32, context: Vec<u8>, data: Vec<u8>) -> Result<(), ProposeError> {
        let node = self.groups.get_mut(&group).ok_or(ProposeError::NoGroup(group))?;
        let size = context.len() + data.len();
        if size > RAFT_ENTRY_BYTES_MAX {
            let reason = format!("an entry of {size} bytes is over the limit of {RAFT_ENTRY_BYTES_MAX}");
            return Err(ProposeError::Refused { group, reason });
        }
        node.propose(context, data).map_err(|e| ProposeError::Refused { group, reason: e.to_string() })
    }

    /// Proposes a membership change through joint consensus.
    /// A leader may not remove itself (raft-rs's leader cannot step down that way): it
    /// hands its leadership to another replica first.
    pub fn propose_conf_change(&mut self, group: u32, change: ConfChange) -> Result<(), ProposeError> {
        let node = self.groups.get_mut(&group).ok_or(ProposeError::NoGroup(group))?;
        let refused = |reason: String| ProposeError::Refused { group, reason };
        if change.removes(self.id) {
            return Err(refused("a leader cannot remove itself; it transfers its leadership first".into()));
        }
        let cc: ConfChangeV2 = change.into_raft().map_err(|e| refused(e.to_string()))?;
        node.propose_conf_change(Vec::new(), cc).map_err(|e| refused(e.to_string()))
    }

    /// Asks for a read index; it comes back as [`Event::ReadIndex`] with `context`.
    /// raft-rs drops the request when this node does not lead, or leads but has not yet
    /// committed an entry of its term; the owner asks again then (partition workers take
    /// commands only once their term's first entry is applied).
    pub fn read_index(&mut self, group: u32, context: Vec<u8>) -> Result<(), ProposeError> {
        let node = self.groups.get_mut(&group).ok_or(ProposeError::NoGroup(group))?;
        node.read_index(context);
        Ok(())
    }

    /// The owner's export of `group` at `index` (applied, and in a durable checkpoint of
    /// the owner's): raft-rs sends it to replicas behind, and the log is compacted
    /// through `index`.
    pub fn exported(&mut self, group: u32, index: u64, data: Vec<u8>) -> Result<(), ProposeError> {
        let node = self.groups.get_mut(&group).ok_or(ProposeError::NoGroup(group))?;
        let refused = |e: raft::StorageError| ProposeError::Refused { group, reason: e.to_string() };
        node.mut_store().exported(index, data, &mut self.next_write).map_err(refused)
    }

    /// The owner of `group` has a durable checkpoint through `index`: the log may drop
    /// the entries through it. A leader keeps what a replica that is in touch still
    /// lacks, so that it catches up from the log rather than from a snapshot.
    pub fn compact(&mut self, group: u32, index: u64) {
        let Some(node) = self.groups.get_mut(&group) else { return };
        let mut through = index.min(node.raft.raft_log.applied);
        if node.raft.state == StateRole::Leader {
            let lagging = node.raft.prs().iter().filter(|(id, p)| **id != self.id && p.recent_active);
            through = lagging.map(|(_, p)| p.matched).fold(through, u64::min);
        }
        node.mut_store().compact_through(through, &mut self.next_write);
    }

    /// The entries `from..=to` of `group`'s log, for an owner that rebuilds its state.
    pub fn entries(&self, group: u32, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        let node = self.groups.get(&group).ok_or_else(|| format!("this node has no Raft group {group}"))?;
        let context = raft::GetEntriesContext::empty(false);
        raft::Storage::entries(node.store(), from, to + 1, None, context)
            .map_err(|e| format!("group {group}'s entries {from} to {to}: {e}"))
    }

    /// What `group` looks like from here.
    pub fn status(&self, group: u32) -> Option<GroupStatus> {
        let node = self.groups.get(&group)?;
        let conf = node.store().conf_state();
        let (term, leader, leading) = role(node);
        let others = || node.raft.prs().iter().filter(|(id, _)| leading && **id != self.id);
        let matched = others().map(|(id, p)| (*id, p.matched)).collect();
        let active = others().filter(|(_, p)| p.recent_active).map(|(id, _)| *id).collect();
        Some(GroupStatus {
            term,
            leader,
            leading,
            voters: conf.voters.iter().copied().collect(),
            outgoing: conf.voters_outgoing.iter().copied().collect(),
            learners: learners(conf).copied().collect(),
            last_index: node.raft.raft_log.last_index(),
            matched,
            active,
        })
    }

    /// Whether `status` still says who leads `group`, in which term, and who its replicas
    /// are; its progress (last index, what peers matched) may have moved on. Checked
    /// without building a status, so a round publishes only what waiters need at once.
    pub fn same_role(&self, group: u32, status: &GroupStatus) -> bool {
        let Some(node) = self.groups.get(&group) else { return true };
        let conf = node.store().conf_state();
        (status.term, status.leader, status.leading) == role(node)
            && holds_exactly(&status.voters, conf.voters.iter())
            && holds_exactly(&status.outgoing, conf.voters_outgoing.iter())
            && holds_exactly(&status.learners, learners(conf))
    }

    /// Asks the leader of `group` to hand its leadership to `to`.
    pub fn transfer_leader(&mut self, group: u32, to: u64) {
        if let Some(node) = self.groups.get_mut(&group) {
            node.transfer_leader(to);
        }
    }

    /// Starts an election in `group` at once.
    pub fn campaign(&mut self, group: u32) {
        if let Some(node) = self.groups.get_mut(&group)
            && let Err(e) = node.campaign()
        {
            tracing::debug!("group {group} could not campaign: {e}");
        }
    }

    /// One tick of the clock for every group.
    pub fn tick(&mut self) {
        for node in self.groups.values_mut() {
            node.tick();
        }
    }

    /// Who leads `group`, as far as this node knows, and in which term.
    pub fn leader(&self, group: u32) -> Option<(u64, u64)> {
        let (term, leader, _) = role(self.groups.get(&group)?);
        leader.map(|leader| (leader, term))
    }

    /// The configuration `group` is in, as this node has applied it.
    #[cfg(test)]
    pub(crate) fn conf_state(&self, group: u32) -> raft::eraftpb::ConfState {
        raft::Storage::initial_state(self.groups[&group].store()).expect("in memory").conf_state
    }

    /// The index of the last entry in `group`'s log.
    #[cfg(test)]
    pub(crate) fn last_index(&self, group: u32) -> u64 {
        raft::Storage::last_index(self.groups[&group].store()).expect("the log's last index is in memory")
    }

    /// The journal write of round `number` is durable (and with it every earlier one).
    pub fn persisted(&mut self, number: u64) {
        while let Some(front) = self.unsynced.front() {
            // A round that wrote nothing it must sync was waiting only for the rounds
            // before it.
            if front.number > number && front.must_sync {
                break;
            }
            let round = self.unsynced.pop_front().expect("the queue is not empty");
            for (group, ready, last, snapshot) in round.readies {
                if let Some(node) = self.groups.get_mut(&group) {
                    node.on_persist_ready(ready);
                    node.mut_store().persisted(last);
                    if snapshot > node.raft.raft_log.applied {
                        // The owner was handed the snapshot with the round: it is applied.
                        node.advance_apply_to(snapshot);
                    }
                }
            }
            self.released.extend(round.held);
            self.early_events.extend(round.installs);
        }
    }

    /// Whether a round now would have work: a group is ready or messages wait to go.
    pub fn has_work(&self) -> bool {
        !self.released.is_empty()
            || !self.early_events.is_empty()
            || self.groups.values().any(RawNode::has_ready)
    }

    /// Collects the work of every ready group. The caller sends `messages` at once,
    /// writes `write` (if any) and reports it durable with [`Groups::persisted`].
    pub fn round(&mut self) -> Round {
        let number = self.next_round;
        self.next_round += 1;
        let mut round = Round {
            number,
            messages: std::mem::take(&mut self.released),
            events: std::mem::take(&mut self.early_events),
            ..Round::default()
        };
        let mut unsynced = Unsynced {
            number,
            must_sync: false,
            readies: Vec::new(),
            held: Vec::new(),
            installs: Vec::new(),
        };
        if std::mem::take(&mut self.dump_pending) {
            for node in self.groups.values_mut() {
                node.mut_store().dump(&mut self.next_write);
            }
            self.dumped_in = self.next_write.segment();
        }
        for (&group, node) in &mut self.groups {
            if node.has_ready() {
                take_ready(group, node, &mut self.next_write, &mut round, &mut unsynced);
                round.touched.push(group);
            }
        }
        for (&group, node) in &self.groups {
            if node.store().take_wanted() {
                round.events.push((group, Event::SnapshotWanted));
            }
        }
        if !self.next_write.is_empty() {
            let mut write = self.next_write.take();
            self.dump_pending = self.next_write.segment() != write.segment();
            let needed = self.groups.values().filter_map(|n| n.store().oldest_segment()).min();
            let needed = needed.unwrap_or(self.dumped_in).min(self.dumped_in);
            if needed > self.deleted_below {
                write.delete_segments_below(needed);
                self.deleted_below = needed;
            }
            round.write = Some(write);
        }
        // A round whose write needs no sync (commit indexes alone) waits, as one that
        // wrote nothing, only for the rounds before it.
        unsynced.must_sync = round.write.as_ref().is_some_and(RoundBuffer::must_sync);
        if !unsynced.readies.is_empty() || !unsynced.held.is_empty() {
            self.unsynced.push_back(unsynced);
        }
        if self.unsynced.iter().all(|u| !u.must_sync) {
            // No write of this round or an earlier one is pending: what this round holds
            // back is as durable as it will be.
            self.persisted(number);
            round.messages.append(&mut self.released);
            round.events.append(&mut self.early_events);
        }
        round
    }
}

/// The term `node`'s group is in, who leads it as far as this node knows, and whether
/// this node does.
fn role(node: &RawNode<GroupLog>) -> (u64, Option<u64>, bool) {
    let leader = Some(node.raft.leader_id).filter(|l| *l != raft::INVALID_ID);
    (node.raft.term, leader, node.raft.state == StateRole::Leader)
}

/// A configuration's learners, those of its next half included.
fn learners(conf: &ConfState) -> impl Iterator<Item = &u64> + Clone {
    conf.learners.iter().chain(&conf.learners_next)
}

/// Whether `set` holds exactly the `ids`.
fn holds_exactly<'a>(set: &BTreeSet<u64>, ids: impl Iterator<Item = &'a u64> + Clone) -> bool {
    ids.clone().all(|id| set.contains(id)) && set.iter().all(|id| ids.clone().any(|other| other == id))
}

/// Takes one ready group's work into the round, in the order that keeps it safe: see the
/// module's documentation.
fn take_ready(
    group: u32,
    node: &mut RawNode<GroupLog>,
    write: &mut RoundBuffer,
    round: &mut Round,
    unsynced: &mut Unsynced,
) {
    let mut ready = node.ready();
    if let Some(ss) = ready.ss() {
        let leading = ss.raft_state == StateRole::Leader;
        round.events.push((group, Event::Role { term: node.raft.term, leader: ss.leader_id, leading }));
    }
    let messages = ready.take_messages();
    let snapshots_sent: Vec<u64> =
        messages.iter().filter(|m| m.get_msg_type() == MessageType::MsgSnapshot).map(|m| m.to).collect();
    round.messages.extend(messages.into_iter().map(|m| (group, m)));
    let mut installed = 0;
    if !ready.snapshot().is_empty() {
        let snapshot = ready.snapshot();
        installed = snapshot.get_metadata().index;
        node.mut_store().install(snapshot, write);
        unsynced.installs.push((group, Event::Install { index: installed, data: snapshot.data.to_vec() }));
    }
    let committed = ready.take_committed_entries();
    if let Some(last) = committed.last().map(|e| e.index) {
        for entry in committed.iter().filter(|e| e.get_entry_type() != EntryType::EntryNormal) {
            if let Some(cc) = conf_change_of(entry) {
                match node.apply_conf_change(&cc) {
                    Ok(cs) => node.mut_store().set_conf_state(entry.index, cs, write),
                    Err(e) => tracing::warn!("group {group} could not apply a conf change: {e}"),
                }
            }
        }
        round.events.push((group, Event::Committed(committed)));
        node.advance_apply_to(last);
    }
    for state in ready.take_read_states() {
        round.events.push((group, Event::ReadIndex { context: state.request_ctx, index: state.index }));
    }
    let entries = ready.take_entries();
    let last = entries.last().map_or(0, |e| e.index);
    node.mut_store().append(entries, write);
    if let Some(hs) = ready.hs() {
        node.mut_store().set_hard_state(hs, ready.must_sync(), write);
    }
    unsynced.held.extend(ready.take_persisted_messages().into_iter().map(|m| (group, m)));
    unsynced.readies.push((group, ready.number(), last, installed));
    node.advance_append_async(ready);
    // A snapshot goes out on a stream of its own; were it lost, the replica's next answer
    // puts the leader back to probing, and it is sent again.
    for to in snapshots_sent {
        node.report_snapshot(to, SnapshotStatus::Finish);
    }
}
