//! The node's part in the cluster: forwarding commands to partition leaders, admitting
//! nodes that join, and placing partition replicas. Consensus itself is raft-rs's, driven
//! by the node's Raft loop; this module only decides *what* the groups should look like
//! and asks the loop to get there.
//!
//! The cluster's members are the members of the metadata group. The replicas of a
//! partition are chosen by rendezvous hashing over the members, so every node computes
//! the same placement from the same membership, and a member that joins or leaves moves
//! only the replicas it gains or loses. Each partition's leader moves its own group
//! towards that placement, one membership change at a time: a new replica joins as a
//! learner, is promoted once it has caught up, and only then does a replica leave, so the
//! group keeps a majority through every change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use casty_core::limits::{
    COMMIT_WAIT_MAX_MS, LEAVE_DEADLINE_MS, META_VOTERS_MAX, PEER_SILENCE_MAX_MS, PLACEMENT_INTERVAL_MS,
    REJOIN_ASKED_MAX, REJOIN_CHECK_INTERVAL_MS,
};
use casty_core::protocol::{
    ErrorKind, GroupReport, Invoke, JoinRequest, Member, MemberState, Request, Response, WireError,
};
use casty_core::record::{MemberChange, MemberRecord};
use casty_raft::{ConfChange, GroupStatus};

use crate::dispatch::Dispatcher;
use crate::partition::Members;
use crate::peers::{NodeId, Peers, node_id_of};

/// A learner this many entries or fewer behind its leader has caught up: it is promoted
/// to a voter, or handed the leadership.
const CAUGHT_UP_LAG_ENTRIES: u64 = 64;

pub(crate) fn unavailable(message: String) -> WireError {
    WireError::new(ErrorKind::Unavailable, message)
}

/// Sends one request to the node at `addr` and reads the answer as a reply or an error; a
/// node that cannot be reached, or answers something else, is `Unavailable`.
async fn call(peers: &Peers, addr: &str, request: &Request) -> Result<Vec<u8>, WireError> {
    match ask(peers, addr, request).await? {
        Response::Reply(reply) => Ok(reply),
        other => Err(unavailable(format!("node {addr} answered {other:?}"))),
    }
}

/// Sends one request to the node at `addr`; its error answer, or failing to reach it, is
/// an error.
pub(crate) async fn ask(peers: &Peers, addr: &str, request: &Request) -> Result<Response, WireError> {
    let client = peers.client(addr).map_err(unavailable)?;
    match client.request(request).await {
        Ok(Response::Error(e)) => Err(e),
        Ok(response) => Ok(response),
        Err(e) => Err(unavailable(format!("cannot reach node {addr}: {e}"))),
    }
}

/// Another node to pass a command to: (its id, its address).
#[derive(Debug)]
pub(crate) enum Elsewhere {
    /// The partition's leader, as this node knows it.
    Leader((NodeId, String)),
    /// A replica by the placement, which knows the leader better than this node can.
    Replica((NodeId, String)),
}

/// The `replicas` members that replicate `partition`, by rendezvous hashing: a member
/// that joins or leaves moves only the replicas it takes or gives up.
fn placement(partition: u32, members: &Members, replicas: u32) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> = members
        .keys()
        .map(|&id| {
            let mut key = partition.to_le_bytes().to_vec();
            key.extend_from_slice(&id.to_le_bytes());
            (xxhash_rust::xxh3::xxh3_64(&key), id)
        })
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().take(replicas as usize).map(|(_, id)| id).collect()
}

/// The member each partition's leadership is handed to: the first replica by the
/// placement that leads fewer than its share of the partitions before it (the partitions
/// over the members, rounded down, or up for as many members as the division leaves
/// over); when every replica of a partition has its share, the one that leads fewest.
/// Why not simply the first replica: ARCHITECTURE.md, "The partition map".
fn preferred_leaders(partitions: u32, members: &Members, replicas: u32) -> Vec<Option<NodeId>> {
    let share = partitions.checked_div(members.len() as u32).unwrap_or(0);
    let mut left_over = partitions - share * members.len() as u32;
    let mut leads = BTreeMap::<NodeId, u32>::new();
    (0..partitions)
        .map(|partition| {
            let placed = placement(partition, members, replicas);
            let leads_of = |id: &NodeId| leads.get(id).copied().unwrap_or(0);
            let chosen = placed
                .iter()
                .copied()
                .find(|id| leads_of(id) < share || (leads_of(id) == share && left_over > 0))
                .or_else(|| placed.iter().copied().min_by_key(leads_of))?;
            if leads_of(&chosen) == share {
                left_over = left_over.saturating_sub(1);
            }
            *leads.entry(chosen).or_default() += 1;
            Some(chosen)
        })
        .collect()
}

/// Whether what `watched` holds comes to satisfy `made` within [`COMMIT_WAIT_MAX_MS`].
async fn within_commit_wait<T>(
    mut watched: tokio::sync::watch::Receiver<T>,
    made: impl Fn(&T) -> bool,
) -> bool {
    let wait = Duration::from_millis(COMMIT_WAIT_MAX_MS);
    matches!(tokio::time::timeout(wait, watched.wait_for(made)).await, Ok(Ok(_)))
}

/// Whether the leader's status shows `id` within [`CAUGHT_UP_LAG_ENTRIES`] of its log.
fn caught_up(status: &GroupStatus, id: NodeId) -> bool {
    status.matched.get(&id).is_some_and(|m| m + CAUGHT_UP_LAG_ENTRIES >= status.last_index)
}

/// A member's name, or its raft id when it is not (or no longer) a member.
fn name_of(members: &Members, id: &NodeId) -> String {
    members.get(id).map_or_else(|| format!("{id:016x}"), |m| m.name.clone())
}

impl Dispatcher {
    /// What `group` looks like from here.
    pub(crate) fn group(&self, group: u32) -> GroupStatus {
        self.groups[group as usize].borrow().clone()
    }

    /// The metadata group's id: the one after the partitions.
    fn meta_group(&self) -> u32 {
        self.partitions
    }

    pub(crate) fn meta(&self) -> GroupStatus {
        self.group(self.meta_group())
    }

    /// The metadata group's leader by name, if known.
    pub(crate) fn meta_leader_name(&self) -> Option<String> {
        let leader = self.meta().leader?;
        Some(name_of(&self.members(), &leader))
    }

    /// Whether this node leads the metadata group, as far as it knows.
    pub(crate) fn leads_meta(&self) -> bool {
        self.meta().leading
    }

    /// The cluster's members, as this node knows them.
    pub(crate) fn members(&self) -> Members {
        self.members.borrow().clone()
    }

    /// Proposes a membership change of a group this node leads, and waits until the
    /// group shows it made (`made`), for at most [`COMMIT_WAIT_MAX_MS`].
    async fn change(
        &self,
        group: u32,
        change: ConfChange,
        made: impl Fn(&GroupStatus) -> bool,
    ) -> Result<(), String> {
        self.raft.propose_conf_change(group, change).await.map_err(|e| e.to_string())?;
        self.wait_for(group, made).await
    }

    /// Waits until `group` shows `made`, for at most [`COMMIT_WAIT_MAX_MS`].
    async fn wait_for(&self, group: u32, made: impl Fn(&GroupStatus) -> bool) -> Result<(), String> {
        if within_commit_wait(self.groups[group as usize].clone(), made).await {
            Ok(())
        } else {
            Err(format!("group {group} did not make the change within {COMMIT_WAIT_MAX_MS} ms"))
        }
    }

    /// The members replicas are placed on: all of them, except this node once it is
    /// leaving (its own view of the metadata group may never learn it was removed).
    fn placed_members(&self) -> Members {
        let mut members = self.members();
        if self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            members.remove(&self.raft_id);
        }
        members
    }

    /// Where to send a command for `partition` when this node does not lead it: the
    /// leader this replica knows; or, from a node the placement does not give the
    /// partition, a live replica by the placement, which passes it on. Such a node may
    /// have been a replica once, and then its view of the group is stale for good: a
    /// node removed from a group is not told. While the group elects, the command stays
    /// here and waits for the election.
    pub(crate) fn leader_elsewhere(&self, partition: u32) -> Option<Elsewhere> {
        let status = self.groups[partition as usize].borrow();
        if status.leader == Some(self.raft_id) {
            return None;
        }
        let members = self.members();
        let placed = placement(partition, &members, self.replicas);
        let replica = || {
            let replica = placed.iter().copied().find(|id| *id != self.raft_id && self.is_alive(*id))?;
            Some(Elsewhere::Replica((replica, members[&replica].addr.clone())))
        };
        match status.leader {
            _ if !placed.contains(&self.raft_id) => replica(),
            Some(leader) => members.get(&leader).map(|n| Elsewhere::Leader((leader, n.addr.clone()))),
            None if !status.voters.is_empty() => None,
            // Placed here but not made a replica yet.
            None => replica(),
        }
    }

    /// Sends a command to another node, `Forwarded` to the one that leads its partition
    /// or `Relayed` to a replica, unless that node has gone silent: then the command is
    /// refused at once rather than left to wait on a node that may never answer.
    pub(crate) async fn forward(
        &self,
        partition: u32,
        to: Elsewhere,
        invoke: Invoke,
    ) -> Result<Vec<u8>, WireError> {
        let (relayed, (node, addr)) = match to {
            Elsewhere::Leader(node) => (false, node),
            Elsewhere::Replica(node) => (true, node),
        };
        let addr = addr.as_str();
        if !self.is_alive(node) {
            return Err(unavailable(format!(
                "the partition's node at {addr} has not answered for {PEER_SILENCE_MAX_MS} ms; retry once a new leader is elected"
            )));
        }
        // Answer before the caller gives up, so it learns why and can retry elsewhere.
        let patience = Duration::from_millis(invoke.timeout_ms / 4 * 3);
        let request = if relayed { Request::Relayed(invoke) } else { Request::Forwarded(invoke) };
        // A leader that died answers nothing; once the group elects another, the caller
        // had better retry there than wait out its patience. (A relay goes to a replica,
        // which need not lead.)
        let mut status = self.groups[partition as usize].clone();
        let leader_moved = status.wait_for(|s| !relayed && s.leader.is_some_and(|l| l != node));
        let answer = tokio::select! {
            answer = tokio::time::timeout(patience, call(&self.peers, addr, &request)) => answer,
            Ok(_) = leader_moved => return Err(unavailable(format!(
                "partition {partition}'s leadership moved away from {addr} while it had the command; \
                 the request may or may not have been applied, retry it"
            ))),
        };
        answer.unwrap_or_else(|_| {
            Err(unavailable(format!(
                "the partition's node at {addr} did not answer within {} ms; the request may or may not have been applied, retry it",
                patience.as_millis()
            )))
        })
    }

    /// Passes a request to the metadata leader, when this node is not it. `None` means
    /// this node leads the metadata group and should carry the request out.
    pub(crate) async fn to_meta_leader(&self, request: Request) -> Option<Result<Response, WireError>> {
        let leader = match self.meta().leader {
            Some(leader) if leader == self.raft_id => return None,
            Some(leader) => leader,
            None => return Some(Err(unavailable("the cluster is electing its metadata leader".into()))),
        };
        let Some(addr) = self.members().get(&leader).map(|n| n.addr.clone()) else {
            return Some(Err(unavailable("the metadata leader's address is unknown".into())));
        };
        Some(ask(&self.peers, &addr, &request).await)
    }

    /// Removes a node from the cluster's membership; the partitions' leaders then move
    /// its replicas to the remaining members. The metadata leader cannot remove itself: it
    /// hands its leadership to another voter first, and the caller retries.
    pub(crate) async fn remove_member(&self, node: NodeId) -> Result<(), WireError> {
        let name = self.members().get(&node).map_or_else(|| format!("{node:016x}"), |n| n.name.clone());
        if let Some(forwarded) = self.to_meta_leader(Request::Leave { node_id: name.clone() }).await {
            return forwarded.map(drop);
        }
        let meta = self.meta();
        if !meta.replicas().contains(&node) && !self.members().contains_key(&node) {
            return Ok(());
        }
        if node == self.raft_id {
            let heir = meta.voters.iter().copied().filter(|v| *v != node).max_by_key(|v| meta.matched.get(v));
            let Some(heir) = heir else {
                return Err(unavailable(format!(
                    "node {name:?} is the cluster's only voter; it cannot leave"
                )));
            };
            let _ = self.raft.transfer_leader(self.meta_group(), heir).await;
            return Err(unavailable(format!(
                "node {name:?} leads the metadata group; it hands its leadership over before it leaves; retry"
            )));
        }
        let change = ConfChange::new(&[], &[], &[node]).with_context(MemberChange::Remove(node).encode());
        let gone = |s: &GroupStatus| !s.replicas().contains(&node);
        self.change(self.meta_group(), change, gone)
            .await
            .map_err(|e| unavailable(format!("removing node {name:?} failed: {e}")))?;
        tracing::info!(node = %name, "removed from the cluster");
        Ok(())
    }

    /// Leaves the cluster before this node stops: asks to be removed, then waits until
    /// the leader of every partition has moved this node's replica elsewhere (the
    /// placement loop hands this node's leaderships over first).
    pub(crate) async fn leave(&self) {
        if self.members().len() <= 1 {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEAVE_DEADLINE_MS);
        tracing::info!("leaving the cluster: handing replicas and leaderships over");
        self.leaving.store(true, std::sync::atomic::Ordering::Relaxed);
        // Without a metadata majority nobody can remove this node; do not wait long.
        let removal_deadline = tokio::time::Instant::now() + Duration::from_millis(LEAVE_DEADLINE_MS / 6);
        while let Err(e) = self.remove_member(self.raft_id).await {
            if tokio::time::Instant::now() > removal_deadline {
                tracing::warn!("could not leave the cluster before the deadline: {}", e.message);
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while !self.handed_over().await {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "stopping with replicas not yet moved: the deadline of {LEAVE_DEADLINE_MS} ms passed"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("left the cluster");
    }

    /// Whether no partition has this node as a replica any more, by its leader's word.
    async fn handed_over(&self) -> bool {
        let mut remaining: BTreeSet<u32> = BTreeSet::new();
        for partition in 0..self.partitions {
            let status = self.group(partition);
            if status.leader == Some(self.raft_id) {
                return false;
            }
            if status.voters.contains(&self.raft_id) {
                remaining.insert(partition);
            }
        }
        // This node's own view of a group it left is stale; the leaders' are not. (The
        // metadata group no longer lists this node, but still lists the others.)
        for info in self.members().values().filter(|n| n.name != self.node_id) {
            let Ok(client) = self.peers.client(&info.addr) else { continue };
            let Ok(Ok(Response::Status(report))) =
                tokio::time::timeout(Duration::from_secs(2), client.request(&Request::Status)).await
            else {
                continue;
            };
            for group in report.groups {
                if group.leader.as_deref() == Some(info.name.as_str())
                    && !group.replicas.contains(&self.node_id)
                {
                    remaining.remove(&group.partition);
                }
            }
        }
        remaining.is_empty()
    }

    /// On the metadata leader: removes members silent for longer than `dead_after`, and
    /// promotes learners that caught up while the metadata group has room for voters.
    async fn tend_members(&self) {
        if !self.leads_meta() {
            return;
        }
        let silent_for =
            |id: NodeId| self.peers.last_answer(id).is_none_or(|at| at.elapsed() > self.dead_after);
        let silent: Vec<(NodeId, MemberRecord)> =
            self.members().into_iter().filter(|(id, _)| *id != self.raft_id && silent_for(*id)).collect();
        if self.started.elapsed() > self.dead_after && !silent.is_empty() && self.hears_a_majority() {
            for (id, info) in silent {
                // It may have come back since the last round of pings (a paused process,
                // a healed partition): ask it once more before deciding it is dead.
                self.peers.ping(id, &info.addr).await;
                if !silent_for(id) {
                    continue;
                }
                tracing::warn!(node = %info.name, "no answer for {:?}: removing it and re-creating its replicas elsewhere", self.dead_after);
                if let Err(e) = self.remove_member(id).await {
                    tracing::warn!("{}", e.message);
                }
            }
        }
        let meta = self.meta();
        let learner = meta.learners.iter().copied().find(|id| caught_up(&meta, *id));
        if let Some(learner) =
            learner.filter(|_| meta.voters.len() < META_VOTERS_MAX && meta.outgoing.is_empty())
        {
            let change =
                ConfChange::new(&[learner], &[], &[]).with_context(MemberChange::Promote(learner).encode());
            if let Err(e) = self.change(self.meta_group(), change, |s| s.voters.contains(&learner)).await {
                tracing::debug!("promoting a member to a voter did not complete: {e}");
            }
        }
    }

    /// A node the others removed (it was silent past dead-after, on the minority side of a
    /// split, or paused) cannot learn it through Raft: nobody replicates to it any more. So
    /// it asks a few members whether it is one of them, and when most of those that answer
    /// say no, it asks to join again, as it would at start-up with seeds.
    async fn rejoin_if_removed(&self) {
        if self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let others: Vec<MemberRecord> =
            self.members().into_iter().filter(|(id, _)| *id != self.raft_id).map(|(_, info)| info).collect();
        let (mut answered, mut without_me) = (0, 0);
        for member in others.iter().take(REJOIN_ASKED_MAX) {
            if let Ok(Response::Status(report)) = ask(&self.peers, &member.addr, &Request::Status).await {
                answered += 1;
                if !report.members.iter().any(|m| m.node_id == self.node_id) {
                    without_me += 1;
                }
            }
        }
        if answered == 0 || without_me * 2 <= answered {
            return;
        }
        tracing::warn!(
            "the cluster removed this node (it was silent for longer than --dead-after); joining it again"
        );
        let request = JoinRequest {
            cluster: self.cluster.clone(),
            node_id: self.node_id.clone(),
            address: self.address.clone(),
        };
        let addrs: Vec<String> = others.into_iter().map(|info| info.addr).collect();
        let deadline = Duration::from_millis(REJOIN_CHECK_INTERVAL_MS);
        match join(&self.peers, &addrs, request, deadline).await {
            Ok(()) => tracing::info!("joined the cluster again"),
            Err(e) => tracing::warn!("joining the cluster again failed, will retry: {e}"),
        }
    }

    /// Whether this metadata leader still hears from a majority of the voters right now. A
    /// leader cut off from the others (or paused) must not remove anyone: the removal would
    /// wait in its log and take effect when the others come back, alive.
    fn hears_a_majority(&self) -> bool {
        let meta = self.meta();
        let heard = meta.voters.iter().filter(|v| **v == self.raft_id || meta.active.contains(v)).count();
        meta.leading && heard * 2 > meta.voters.len()
    }

    /// Admits a node into the cluster: it becomes a learner of the metadata group (and a
    /// voter, while the group has fewer than [`META_VOTERS_MAX`]). Answered by the
    /// metadata leader; other nodes pass the request on to it.
    pub(crate) async fn admit(&self, join: JoinRequest) -> Result<(), WireError> {
        if join.cluster != self.cluster {
            tracing::warn!(
                node = %join.node_id, address = %join.address,
                "refused a node of cluster {:?}: this is cluster {:?}", join.cluster, self.cluster
            );
            return Err(WireError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "node {:?} asked to join cluster {:?}, but this is cluster {:?}; start it with --name {}",
                    join.node_id, join.cluster, self.cluster, self.cluster
                ),
            ));
        }
        if let Some(forwarded) = self.to_meta_leader(Request::Join(join.clone())).await {
            return forwarded.map(drop);
        }
        let id = node_id_of(&join.node_id);
        let member = MemberRecord { id, name: join.node_id.clone(), addr: join.address };
        let meta = self.meta();
        if self.members().get(&id) == Some(&member) && meta.replicas().contains(&id) {
            return Ok(());
        }
        // A new node joins as a learner (promoted once it caught up); a member whose
        // address changed is made what it already is, which changes only its record.
        let change = if meta.voters.contains(&id) {
            ConfChange::new(&[id], &[], &[])
        } else {
            ConfChange::new(&[], &[id], &[])
        };
        let change = change.with_context(MemberChange::Admit(member.clone()).encode());
        self.raft
            .propose_conf_change(self.meta_group(), change)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !within_commit_wait(self.members.clone(), |m| m.get(&id) == Some(&member)).await {
            return Err(unavailable(format!(
                "admitting node {:?} did not complete within {COMMIT_WAIT_MAX_MS} ms; retry",
                join.node_id
            )));
        }
        tracing::info!(node = %join.node_id, "admitted into the cluster");
        Ok(())
    }

    /// Whether a peer answered recently (or this node has not been up long enough to tell).
    fn is_alive(&self, node: NodeId) -> bool {
        let silence = Duration::from_millis(PEER_SILENCE_MAX_MS);
        match self.peers.last_answer(node) {
            Some(at) => at.elapsed() < silence,
            None => self.started.elapsed() < silence,
        }
    }

    /// The members, with what this node knows of their health and leaderships.
    pub(crate) fn member_report(&self) -> Vec<Member> {
        let mut leads: BTreeMap<NodeId, u32> = BTreeMap::new();
        for partition in 0..self.partitions {
            if let Some(leader) = self.groups[partition as usize].borrow().leader {
                *leads.entry(leader).or_default() += 1;
            }
        }
        self.members()
            .into_iter()
            .map(|(id, info)| {
                let state = if id == self.raft_id {
                    MemberState::Up
                } else {
                    match self.peers.last_answer(id).map(|at| at.elapsed()) {
                        Some(silent) if silent < Duration::from_millis(PEER_SILENCE_MAX_MS) => {
                            MemberState::Up
                        }
                        Some(_) => MemberState::Suspect,
                        None => MemberState::Down,
                    }
                };
                Member {
                    node_id: info.name,
                    address: info.addr,
                    state,
                    leads: leads.get(&id).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// The partitions this node replicates by the placement: leader, voters and (on the
    /// leader) lag. (A node removed from a group keeps the last membership it heard of,
    /// so its own view of a group it left is stale and not shown.)
    pub(crate) fn group_report(&self) -> Vec<GroupReport> {
        let members = self.members();
        let name = |id: &NodeId| name_of(&members, id);
        let mut groups = Vec::new();
        for partition in 0..self.partitions {
            let status = self.group(partition);
            if !status.voters.contains(&self.raft_id)
                || !placement(partition, &members, self.replicas).contains(&self.raft_id)
            {
                continue;
            }
            let lag = status
                .matched
                .iter()
                .map(|(id, m)| (name(id), status.last_index.saturating_sub(*m)))
                .collect();
            groups.push(GroupReport {
                partition,
                leader: status.leader.as_ref().map(name),
                replicas: status.voters.iter().map(name).collect(),
                lag,
            });
        }
        groups
    }

    /// One pass of placement: the first partition this node leads whose replicas differ
    /// from the placement gets one membership change, and the pass waits until the group
    /// shows it. Returns whether it made one.
    async fn place_once(&self) -> bool {
        let members = self.placed_members();
        if members.is_empty() {
            return false;
        }
        for partition in 0..self.partitions {
            let status = self.group(partition);
            // One change at a time: a joint configuration is left before the next.
            if !status.leading || !status.outgoing.is_empty() {
                continue;
            }
            let wanted: BTreeSet<NodeId> =
                placement(partition, &members, self.replicas).into_iter().collect();
            let (voters, learners) = (&status.voters, &status.learners);
            let (change, what): (ConfChange, &str) = if let Some(&add) = wanted.difference(voters).next() {
                // A missing replica joins as a learner, which catches up (from a snapshot),
                // and becomes a voter only then, so the group never counts on an empty one.
                if !learners.contains(&add) {
                    (ConfChange::new(&[], &[add], &[]), "added a learner")
                } else if caught_up(&status, add) {
                    (ConfChange::new(&[add], &[], &[]), "promoted a learner that caught up")
                } else {
                    continue;
                }
            } else if let Some(&extra) = learners.difference(&wanted).next() {
                (ConfChange::new(&[], &[], &[extra]), "removed a learner")
            } else if !wanted.contains(&self.raft_id) {
                // This node is leaving the group: it hands the leadership to a replica that
                // stays, which then removes this one without an election gap.
                let Some(&heir) = wanted.iter().find(|id| caught_up(&status, **id)) else { continue };
                let _ = self.raft.transfer_leader(partition, heir).await;
                let _ = self.wait_for(partition, |s| !s.leading).await;
                return true;
            } else if let Some(&extra) = voters.difference(&wanted).next() {
                (ConfChange::new(&[], &[], &[extra]), "removed a replica")
            } else {
                continue;
            };
            let before = (status.voters.clone(), status.learners.clone());
            match self.change(partition, change, |s| (s.voters.clone(), s.learners.clone()) != before).await {
                Ok(()) => tracing::info!(partition, "moved towards the placement: {what}"),
                Err(e) => tracing::debug!(partition, "a replica move did not complete: {e}"),
            }
            return true;
        }
        false
    }

    /// Keeps this node's partitions placed and its view of the members' health fresh,
    /// for as long as the node runs.
    pub(crate) async fn place_forever(self: std::sync::Arc<Self>) {
        let mut pinged = tokio::time::Instant::now();
        let mut rejoin_checked = tokio::time::Instant::now();
        loop {
            if pinged.elapsed() >= Duration::from_millis(PLACEMENT_INTERVAL_MS) {
                pinged = tokio::time::Instant::now();
                let pings = self
                    .members()
                    .into_iter()
                    .filter(|(id, _)| *id != self.raft_id)
                    .map(|(id, info)| {
                        let peers = self.peers.clone();
                        async move { peers.ping(id, &info.addr).await }
                    })
                    .collect::<Vec<_>>();
                for ping in pings {
                    ping.await;
                }
            }
            if rejoin_checked.elapsed() >= Duration::from_millis(REJOIN_CHECK_INTERVAL_MS) {
                rejoin_checked = tokio::time::Instant::now();
                self.rejoin_if_removed().await;
            }
            self.tend_members().await;
            if !self.place_once().await && !self.balance_once().await {
                tokio::time::sleep(Duration::from_millis(PLACEMENT_INTERVAL_MS)).await;
            }
        }
    }

    /// One pass of leader balancing: the first partition this node leads whose preferred
    /// leader ([`preferred_leaders`]) is another voter that is caught up gets its
    /// leadership handed over. Returns whether it handed one over.
    async fn balance_once(&self) -> bool {
        let preferred_leaders = preferred_leaders(self.partitions, &self.placed_members(), self.replicas);
        for (partition, preferred) in (0..self.partitions).zip(preferred_leaders) {
            let status = self.group(partition);
            let Some(preferred) = preferred.filter(|_| status.leading) else { continue };
            let ready = status.voters.contains(&preferred)
                && status.matched.get(&preferred) == Some(&status.last_index);
            if preferred == self.raft_id || !ready {
                continue;
            }
            let _ = self.raft.transfer_leader(partition, preferred).await;
            let _ = self.wait_for(partition, |s| !s.leading).await;
            return true;
        }
        false
    }
}

/// Joins the cluster through its seeds: asks each in turn until one admits this node.
/// A refusal that retrying cannot fix (another cluster's name) ends the attempt.
pub(crate) async fn join(
    peers: &Peers,
    seeds: &[String],
    join: JoinRequest,
    deadline: Duration,
) -> Result<(), String> {
    for seed in seeds {
        peers.client(seed)?; // a seed that is not an address is refused at once
    }
    let until = tokio::time::Instant::now() + deadline;
    let mut last = String::from("no seed answered");
    while tokio::time::Instant::now() < until {
        for seed in seeds {
            match call(peers, seed, &Request::Join(join.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind == ErrorKind::InvalidRequest => {
                    return Err(format!("seed {seed} refused: {}", e.message));
                }
                Err(e) => last = format!("seed {seed}: {}", e.message),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("could not join within {} s: {last}", deadline.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u64) -> Members {
        (1..=n).map(|id| (id, MemberRecord { id, name: format!("node-{id}"), addr: String::new() })).collect()
    }

    /// Where replicas go is recomputed by every node of every version from the member
    /// ids: these answers were computed once and must never change.
    #[test]
    fn placement_is_pinned_across_versions() {
        let five = members(5);
        let placed: Vec<Vec<NodeId>> = [0, 1, 7, 63].iter().map(|p| placement(*p, &five, 3)).collect();
        assert_eq!(placed, [[1, 2, 4], [4, 1, 3], [3, 5, 4], [2, 1, 5]]);
    }

    #[test]
    fn placement_is_stable_and_spreads_replicas() {
        let three = members(3);
        for p in 0..64 {
            let chosen = placement(p, &three, 3);
            assert_eq!(chosen.iter().collect::<BTreeSet<_>>().len(), 3);
            assert_eq!(chosen, placement(p, &three, 3), "deterministic");
        }
        // A fourth member takes about a quarter of first places and moves nothing else.
        let four = members(4);
        let mut firsts = BTreeMap::<NodeId, u32>::new();
        for p in 0..64 {
            *firsts.entry(placement(p, &four, 3)[0]).or_default() += 1;
            let before: BTreeSet<_> = placement(p, &three, 3).into_iter().collect();
            let after: BTreeSet<_> = placement(p, &four, 3).into_iter().collect();
            assert!(before.difference(&after).count() <= 1, "partition {p} moved more than one replica");
        }
        assert_eq!(firsts.len(), 4);
        assert!(firsts.values().all(|&n| (6..=26).contains(&n)), "{firsts:?}");
        assert_eq!(placement(0, &members(2), 3).len(), 2, "replicas are capped at the cluster's size");
    }

    #[test]
    fn preferred_leaders_are_replicas_spread_evenly_even_over_few_partitions() {
        for (partitions, n) in [(3, 3), (4, 3), (6, 3), (64, 3), (5, 5), (64, 5), (4096, 7)] {
            let members = members(n);
            let mut leads = BTreeMap::<NodeId, u32>::new();
            for (partition, leader) in preferred_leaders(partitions, &members, 3).into_iter().enumerate() {
                let leader = leader.expect("a cluster with members has a leader for every partition");
                assert!(placement(partition as u32, &members, 3).contains(&leader), "partition {partition}");
                *leads.entry(leader).or_default() += 1;
            }
            let share = partitions / n as u32;
            // Where every member replicates every partition, shares are exact; where
            // members outnumber replicas, a partition's replicas may all have theirs.
            let slack = if n <= 3 { 0 } else { share / 10 + 1 };
            let within = share.saturating_sub(slack)..=share + 1 + slack;
            for id in members.keys() {
                let led = leads.get(id).copied().unwrap_or(0);
                assert!(within.contains(&led), "{partitions} partitions over {n} members: {leads:?}");
            }
        }
        assert_eq!(preferred_leaders(2, &Members::new(), 3), [None, None]);
    }

    #[test]
    fn a_member_that_joins_takes_about_its_share_of_leaders() {
        let before = preferred_leaders(64, &members(3), 3);
        let after = preferred_leaders(64, &members(4), 3);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            (16..=20).contains(&moved),
            "{moved} of 64 leaders moved, where the new member's share is 16"
        );
    }
}
