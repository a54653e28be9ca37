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

use casty_cluster::{NodeId, NodeInfo, Raft};
use casty_core::limits::{META_VOTERS_MAX, PLACEMENT_INTERVAL_MS};
use casty_core::protocol::{
    ErrorKind, GroupReport, Invoke, JoinRequest, Member, MemberState, Request, Response, WireError,
};

use crate::dispatch::Dispatcher;

fn unavailable(message: String) -> WireError {
    WireError::new(ErrorKind::Unavailable, message)
}

/// The `replicas` members that replicate `partition`, most preferred first.
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
    fn meta(&self) -> &Raft {
        self.rafts.last().expect("the metadata group is the last group")
    }

    /// The cluster's members, as this node knows them.
    pub(crate) fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        members_of(self.meta())
    }

    /// Where to send a command for `partition` when this node does not lead it: the
    /// leader's address, or a replica's when this node is not one (it forwards on).
    pub(crate) fn leader_elsewhere(&self, partition: u32) -> Option<String> {
        let raft = &self.rafts[partition as usize];
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        match metrics.current_leader {
            Some(leader) if leader == self.raft_id => None,
            Some(leader) => membership.get_node(&leader).map(|n| n.addr.clone()),
            None if membership.get_node(&self.raft_id).is_some() => None,
            None => {
                // Not a replica: ask the one the placement prefers.
                let members = self.members();
                let first = placement(partition, &members, self.replicas).into_iter().next()?;
                (first != self.raft_id).then(|| members[&first].addr.clone())
            }
        }
    }

    /// Sends a command to the node that leads (or replicates) its partition.
    pub(crate) async fn forward(&self, addr: &str, invoke: Invoke) -> Result<Vec<u8>, WireError> {
        let client = self.peers.client(addr).map_err(unavailable)?;
        match client.request(&Request::Forwarded(invoke)).await {
            Ok(Response::Reply(reply)) => Ok(reply),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(unavailable(format!("node {addr} answered a forwarded command with {other:?}"))),
            Err(e) => Err(unavailable(format!("cannot forward the command to the leader at {addr}: {e}"))),
        }
    }

    /// Admits a node into the cluster: it becomes a learner of the metadata group (and a
    /// voter, while the group has fewer than [`META_VOTERS_MAX`]). Answered by the
    /// metadata leader; other nodes pass the request on to it.
    pub(crate) async fn admit(&self, join: JoinRequest) -> Result<(), WireError> {
        if join.cluster != self.cluster {
            return Err(WireError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "node {:?} asked to join cluster {:?}, but this is cluster {:?}; start it with --name {}",
                    join.node_id, join.cluster, self.cluster, self.cluster
                ),
            ));
        }
        let meta = self.meta();
        let leader = meta.metrics().borrow().current_leader;
        match leader {
            Some(leader) if leader == self.raft_id => {}
            Some(leader) => {
                let addr = self.members().get(&leader).map(|n| n.addr.clone());
                let addr =
                    addr.ok_or_else(|| unavailable("the metadata leader's address is unknown".into()))?;
                let client = self.peers.client(&addr).map_err(unavailable)?;
                return match client.request(&Request::Join(join)).await {
                    Ok(Response::Reply(_)) => Ok(()),
                    Ok(Response::Error(e)) => Err(e),
                    Ok(other) => Err(unavailable(format!("unexpected answer to a join: {other:?}"))),
                    Err(e) => Err(unavailable(format!("cannot reach the metadata leader at {addr}: {e}"))),
                };
            }
            None => return Err(unavailable("the cluster is electing its metadata leader".into())),
        }
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
                        Some(silent) if silent < Duration::from_millis(PLACEMENT_INTERVAL_MS * 3) => {
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

    /// The partitions this node replicates: leader, voters and (on the leader) lag.
    pub(crate) fn group_report(&self) -> Vec<GroupReport> {
        let members = self.members();
        let name = |id: &NodeId| members.get(id).map_or_else(|| format!("{id:016x}"), |n| n.name.clone());
        let mut groups = Vec::new();
        for (partition, raft) in self.rafts[..self.partitions as usize].iter().enumerate() {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            if !voters.contains(&self.raft_id) {
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
        let members = self.members();
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
            if !self.place_once().await && !self.balance_once().await {
                tokio::time::sleep(Duration::from_millis(PLACEMENT_INTERVAL_MS)).await;
            }
        }
    }

    /// One pass of leader balancing: the first partition this node leads whose preferred
    /// leader (first in the placement) is another voter that is caught up is asked to
    /// stand for election. Returns whether it asked.
    async fn balance_once(&self) -> bool {
        let members = self.members();
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
            let Ok(client) = self.peers.client(&members[&preferred].addr) else { continue };
            let _ = client.request(&Request::Campaign { group: partition as u32 }).await;
            return true;
        }
        false
    }
}

/// Joins the cluster through its seeds: asks each in turn until one admits this node.
/// A refusal that retrying cannot fix (another cluster's name) ends the attempt.
pub(crate) async fn join(
    peers: &casty_cluster::Peers,
    seeds: &[String],
    join: JoinRequest,
    deadline: Duration,
) -> Result<(), String> {
    let until = tokio::time::Instant::now() + deadline;
    let mut last = String::from("no seed answered");
    while tokio::time::Instant::now() < until {
        for seed in seeds {
            let client = match peers.client(seed) {
                Ok(client) => client,
                Err(e) => return Err(e),
            };
            match client.request(&Request::Join(join.clone())).await {
                Ok(Response::Reply(_)) => return Ok(()),
                Ok(Response::Error(e)) if e.kind == ErrorKind::InvalidRequest => {
                    return Err(format!("seed {seed} refused: {}", e.message));
                }
                Ok(Response::Error(e)) => last = format!("seed {seed}: {}", e.message),
                Ok(other) => last = format!("seed {seed} answered {other:?}"),
                Err(e) => last = format!("seed {seed}: {e}"),
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
