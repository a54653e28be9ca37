//! A cluster of real `casty-host` processes for the fault tests, each on a loopback
//! address of its own, and the faults that happen to processes: kill -9, restart,
//! SIGSTOP and SIGCONT.

use std::net::{IpAddr, SocketAddr};

use casty_core::protocol::MemberState;
use casty_core::routing::Address;

use crate::support::{Host, free_addr_on, poll_until, status};

/// The nodes of one scenario. Node `i` serves on `127.0.0.{11 + i}`, so packets between
/// nodes name both ends.
pub struct Cluster {
    pub hosts: Vec<Host>,
    paused: Vec<bool>,
}

impl Cluster {
    /// Starts `n` nodes with `args` (and, for node `i`, the environment `env(i)`), the
    /// others joining through the first, and waits until they form one cluster.
    pub async fn start(n: usize, args: &[&str], env: impl Fn(usize) -> Vec<(String, String)>) -> Cluster {
        let mut hosts: Vec<Host> = Vec::with_capacity(n);
        for i in 0..n {
            let ip: IpAddr = [127, 0, 0, 11 + i as u8].into();
            let node_id = format!("node-{}", i + 1);
            let mut node_args = vec!["--node-id", &node_id];
            let seed = hosts.first().map(|h| h.addr.to_string());
            if let Some(seed) = &seed {
                node_args.extend(["--seed", seed]);
            }
            node_args.extend(args);
            let env = env(i);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            hosts.push(Host::start_at_env(free_addr_on(ip), &node_args, &env).await);
        }
        let cluster = Cluster { paused: vec![false; n], hosts };
        cluster.wait_healthy().await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.hosts.iter().map(|h| h.addr).collect()
    }

    pub fn ip(&self, node: usize) -> IpAddr {
        self.hosts[node].addr.ip()
    }

    pub fn is_up(&self, node: usize) -> bool {
        self.hosts[node].is_running() && !self.paused[node]
    }

    /// `kill -9`: no flush, no hand-over.
    pub fn kill(&mut self, node: usize) {
        self.hosts[node].kill();
        self.paused[node] = false;
    }

    pub async fn restart(&mut self, node: usize) {
        if !self.hosts[node].is_running() {
            self.hosts[node].spawn().await;
        }
    }

    /// SIGSTOP: the process keeps its sockets and state but does nothing, as a node in a
    /// long garbage-collection pause or a stalled VM would.
    pub fn pause(&mut self, node: usize) {
        if self.is_up(node) {
            self.hosts[node].signal("STOP");
            self.paused[node] = true;
        }
    }

    pub fn resume(&mut self, node: usize) {
        if self.paused[node] {
            self.hosts[node].signal("CONT");
            self.paused[node] = false;
        }
    }

    /// Resumes paused nodes and restarts killed ones.
    pub async fn revive_all(&mut self) {
        for node in 0..self.len() {
            self.resume(node);
            self.restart(node).await;
        }
    }

    /// Which node leads the partition holding `address`, as the first node that answers
    /// sees it; `None` while it has no leader.
    pub async fn leader_of(&self, address: &Address) -> Option<usize> {
        for host in self.hosts.iter().enumerate().filter(|(i, _)| self.is_up(*i)).map(|(_, h)| h) {
            let Some(report) = status(host).await else { continue };
            let partition = address.shard_key().partition(report.partitions);
            let group = report.groups.iter().find(|g| g.partition == partition)?;
            let leader = group.leader.as_deref()?;
            let member = report.members.iter().find(|m| m.node_id == leader)?;
            return self.hosts.iter().position(|h| h.addr.to_string() == member.address);
        }
        None
    }

    /// Waits until every node sees every node up and each partition it replicates fully
    /// replicated and led by the one leader its other replicas see too: the cluster has
    /// recovered from whatever was done to it.
    pub async fn wait_healthy(&self) {
        let members = self.len();
        let replicas = members.min(3);
        let healthy = || async move {
            let mut leaders = std::collections::HashMap::new();
            for host in &self.hosts {
                let report =
                    status(host).await.ok_or_else(|| format!("{} does not answer status", host.addr))?;
                let up = report.members.iter().filter(|m| m.state == MemberState::Up).count();
                let settled =
                    report.groups.iter().all(|g| g.replicas.len() == replicas && g.leader.is_some());
                if up != members || !settled {
                    return Err(format!(
                        "as {} sees it, {up} members are up, settled: {settled}: {report:?}",
                        host.addr
                    ));
                }
                for group in report.groups {
                    let leader = leaders.entry(group.partition).or_insert_with(|| group.leader.clone());
                    if *leader != group.leader {
                        return Err(format!(
                            "replicas of partition {} disagree on its leader",
                            group.partition
                        ));
                    }
                }
            }
            Ok(())
        };
        poll_until(|| format!("the cluster did not recover (logs:\n{})", self.logs()), healthy).await;
    }

    /// Every node's status and the tail of its log, for a failure message.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for (i, host) in self.hosts.iter().enumerate().filter(|(i, _)| self.is_up(*i)) {
            out.push_str(&format!("--- node-{} ({}) status: {:?}\n", i + 1, host.addr, status(host).await));
        }
        out + &self.logs()
    }

    /// The tail of every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let log = host.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- node-{} ({}) ---\n", i + 1, host.addr));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
