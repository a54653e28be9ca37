//! The node's part in the cluster: forwarding commands to partition leaders, admitting
//! nodes that join, and placing partition replicas. Consensus itself is openraft's; this
//! module only decides *what* the groups should look like and asks Raft to get there.
//!
//! The cluster's members are the members of the metadata group. The replicas of a
//! partition are chosen by rendezvous hashing over the members, so every node computes
//! the same placement from the same membership, and a member that joins or leaves moves
//! only the replicas it gains or loses. Each partition's leader moves its own group
//! towards that placement, one membership change at a time; Raft's joint consensus keeps
//! a majority through every change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use casty_cluster::openraft::ChangeMembers;
use casty_cluster::{NodeId, NodeInfo, Peers, Raft};
use casty_core::limits::{
    COMMIT_WAIT_MAX_MS, LEAVE_DEADLINE_MS, META_VOTERS_MAX, PEER_SILENCE_MAX_MS, PLACEMENT_INTERVAL_MS,
    REJOIN_ASKED_MAX, REJOIN_CHECK_INTERVAL_MS,
};
use casty_core::protocol::{
    ErrorKind, GroupReport, Invoke, JoinRequest, Member, MemberState, Request, Response, WireError,
};

use crate::dispatch::Dispatcher;

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

/// The `replicas` members that replicate `partition`, most preferred first.
/// Another node to pass a command to: (its id, its address).
#[derive(Debug)]
pub(crate) enum Elsewhere {
    /// The partition's leader, as this node knows it.
    Leader((NodeId, String)),
    /// A replica by the placement, which knows the leader better than this node can.
    Replica((NodeId, String)),
}

fn placement(partition: u32, members: &BTreeMap<NodeId, NodeInfo>, replicas: u32) -> Vec<NodeId> {
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

fn members_of(raft: &Raft) -> BTreeMap<NodeId, NodeInfo> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.clone())).collect()
}

fn voters_of(raft: &Raft) -> BTreeSet<NodeId> {
    raft.metrics().borrow().membership_config.membership().voter_ids().collect()
}

impl Dispatcher {
    pub(crate) fn meta(&self) -> &Raft {
        self.rafts.last().expect("the metadata group is the last group")
    }

    /// Whether this node leads the metadata group, as far as it knows.
    pub(crate) fn leads_meta(&self) -> bool {
        self.meta().metrics().borrow().current_leader == Some(self.raft_id)
    }

    /// The cluster's members, as this node knows them.
    pub(crate) fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        members_of(self.meta())
    }

    /// The members replicas are placed on: all of them, except this node once it is
    /// leaving (its own view of the metadata group may never learn it was removed).
    fn placed_members(&self) -> BTreeMap<NodeId, NodeInfo> {
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
        let raft = &self.rafts[partition as usize];
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader == Some(self.raft_id) {
            return None;
        }
        let members = self.members();
        let placed = placement(partition, &members, self.replicas);
        let membership = metrics.membership_config.membership();
        let replica = || {
            let replica = placed.iter().copied().find(|id| *id != self.raft_id && self.is_alive(*id))?;
            Some(Elsewhere::Replica((replica, members[&replica].addr.clone())))
        };
        match metrics.current_leader {
            _ if !placed.contains(&self.raft_id) => replica(),
            // The cluster's membership is newer than the group's when the leader joined late.
            Some(leader) => members
                .get(&leader)
                .or_else(|| membership.get_node(&leader))
                .map(|n| Elsewhere::Leader((leader, n.addr.clone()))),
            None if membership.voter_ids().next().is_some() => None,
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
        let mut leadership = self.rafts[partition as usize].metrics();
        let leader_moved = leadership.wait_for(|m| !relayed && m.current_leader.is_some_and(|l| l != node));
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
        let leader = self.meta().metrics().borrow().current_leader;
        let leader = match leader {
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
    /// its replicas to the remaining members.
    pub(crate) async fn remove_member(&self, node: NodeId) -> Result<(), WireError> {
        let name = self.members().get(&node).map_or_else(|| format!("{node:016x}"), |n| n.name.clone());
        if let Some(forwarded) = self.to_meta_leader(Request::Leave { node_id: name.clone() }).await {
            return forwarded.map(drop);
        }
        let meta = self.meta();
        let failed = |e: &dyn std::fmt::Display| unavailable(format!("removing node {name:?} failed: {e}"));
        let change = if voters_of(meta).contains(&node) {
            ChangeMembers::RemoveVoters(BTreeSet::from([node]))
        } else if members_of(meta).contains_key(&node) {
            ChangeMembers::RemoveNodes(BTreeSet::from([node]))
        } else {
            return Ok(());
        };
        meta.change_membership(change, false).await.map_err(|e| failed(&e))?;
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
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader == Some(self.raft_id) {
                return false;
            }
            if metrics.membership_config.membership().voter_ids().any(|v| v == self.raft_id) {
                remaining.insert(partition as u32);
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
    /// promotes learners while the metadata group has room for voters.
    async fn tend_members(&self) {
        let meta = self.meta();
        if meta.metrics().borrow().current_leader != Some(self.raft_id) {
            return;
        }
        let silent_for =
            |id: NodeId| self.peers.last_answer(id).is_none_or(|at| at.elapsed() > self.dead_after);
        let silent: Vec<(NodeId, NodeInfo)> =
            self.members().into_iter().filter(|(id, _)| *id != self.raft_id && silent_for(*id)).collect();
        if self.started.elapsed() > self.dead_after && !silent.is_empty() && self.hears_a_majority(meta).await
        {
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
        let voters = voters_of(meta);
        let learner = self.members().into_keys().find(|id| !voters.contains(id));
        if let Some(learner) = learner.filter(|_| voters.len() < META_VOTERS_MAX) {
            let _ =
                meta.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([learner])), false).await;
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
        let others: Vec<NodeInfo> =
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
    async fn hears_a_majority(&self, meta: &Raft) -> bool {
        let wait = Duration::from_millis(COMMIT_WAIT_MAX_MS);
        matches!(tokio::time::timeout(wait, meta.get_read_log_id()).await, Ok(Ok(_)))
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
        let meta = self.meta();
        let id = casty_cluster::node_id_of(&join.node_id);
        let info = NodeInfo { name: join.node_id.clone(), addr: join.address };
        let failed =
            |e: &dyn std::fmt::Display| unavailable(format!("admitting node {:?} failed: {e}", join.node_id));
        if members_of(meta).get(&id) != Some(&info) {
            meta.add_learner(id, info, true).await.map_err(|e| failed(&e))?;
        }
        let voters = voters_of(meta);
        if !voters.contains(&id) && voters.len() < META_VOTERS_MAX {
            let mut next = voters;
            next.insert(id);
            meta.change_membership(next, true).await.map_err(|e| failed(&e))?;
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
        for raft in &self.rafts[..self.partitions as usize] {
            if let Some(leader) = raft.metrics().borrow().current_leader {
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
        let name = |id: &NodeId| members.get(id).map_or_else(|| format!("{id:016x}"), |n| n.name.clone());
        let mut groups = Vec::new();
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            if !voters.contains(&self.raft_id)
                || !placement(partition as u32, &members, self.replicas).contains(&self.raft_id)
            {
                continue;
            }
            let last = metrics.last_log_index.unwrap_or(0);
            let lag = metrics
                .replication
                .iter()
                .flatten()
                .map(|(id, matched)| (name(id), last.saturating_sub(matched.map_or(0, |m| m.index))))
                .collect();
            groups.push(GroupReport {
                partition: partition as u32,
                leader: metrics.current_leader.as_ref().map(name),
                replicas: voters.iter().map(name).collect(),
                lag,
            });
        }
        groups
    }

    /// One pass of placement: the first partition this node leads whose replicas differ
    /// from the placement gets one membership change. Returns whether it changed one.
    async fn place_once(&self) -> bool {
        let members = self.placed_members();
        if members.is_empty() {
            return false;
        }
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            if raft.metrics().borrow().current_leader != Some(self.raft_id) {
                continue;
            }
            let wanted: BTreeSet<NodeId> =
                placement(partition as u32, &members, self.replicas).into_iter().collect();
            let voters = voters_of(raft);
            if wanted == voters {
                continue;
            }
            let result = match wanted.difference(&voters).next() {
                // Add a missing replica first (as a learner that catches up, then a
                // voter), so the group never shrinks below what it had.
                Some(&add) => match raft.add_learner(add, members[&add].clone(), true).await {
                    Ok(_) => {
                        let mut next = voters;
                        next.insert(add);
                        raft.change_membership(next, false).await.map(drop)
                    }
                    Err(e) => Err(e),
                },
                None if !wanted.contains(&self.raft_id) => {
                    // This node is leaving the group: hand the leadership to a replica
                    // that stays, which then removes this one without an election gap.
                    let Some(&heir) = wanted.iter().next() else { continue };
                    let _ = call(
                        &self.peers,
                        &members[&heir].addr,
                        &Request::Campaign { group: partition as u32 },
                    )
                    .await;
                    Ok(())
                }
                None => raft.change_membership(wanted, false).await.map(drop),
            };
            match result {
                Ok(()) => tracing::info!(partition, "moved a replica towards the placement"),
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
            self.quiet_left_groups();
            self.tend_members().await;
            if !self.place_once().await && !self.balance_once().await {
                tokio::time::sleep(Duration::from_millis(PLACEMENT_INTERVAL_MS)).await;
            }
        }
    }

    /// Keeps this node from standing for election in groups the placement moves it out
    /// of: once removed, it hears no leader, and its elections would only disturb the
    /// group it left. (It still votes, so a group it is leaving keeps its majority.)
    fn quiet_left_groups(&self) {
        let members = self.placed_members();
        if members.is_empty() {
            return;
        }
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            let placed = placement(partition as u32, &members, self.replicas).contains(&self.raft_id);
            raft.runtime_config().elect(placed);
        }
    }

    /// One pass of leader balancing: the first partition this node leads whose preferred
    /// leader (first in the placement) is another voter that is caught up is asked to
    /// stand for election. Returns whether it asked.
    async fn balance_once(&self) -> bool {
        let members = self.placed_members();
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            let preferred = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow();
                if metrics.current_leader != Some(self.raft_id) {
                    continue;
                }
                let Some(&preferred) = placement(partition as u32, &members, self.replicas).first() else {
                    continue;
                };
                let caught_up = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&preferred).copied().flatten())
                    .is_some_and(|m| Some(m.index) == metrics.last_log_index);
                if preferred == self.raft_id || !caught_up {
                    continue;
                }
                preferred
            };
            let _ =
                call(&self.peers, &members[&preferred].addr, &Request::Campaign { group: partition as u32 })
                    .await;
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

    fn members(n: u64) -> BTreeMap<NodeId, NodeInfo> {
        (1..=n).map(|id| (id, NodeInfo { name: format!("node-{id}"), addr: String::new() })).collect()
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
}
