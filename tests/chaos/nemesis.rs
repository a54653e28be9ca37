//! The nemesis: injects one fault at a time into a running cluster, from a seeded
//! schedule, holds it for a while, heals it, and waits for the cluster to recover before
//! the next. It writes down every fault, so a failing run says what was done to it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use casty_checker::fencing::FencedResource;
use casty_client::Client;
use casty_core::routing::Address;

use crate::chaos::net::Net;
use crate::chaos::nodes::Cluster;
use crate::chaos::schedule::{Plan, Rng};
use crate::support::hold_lock;

/// The entity whose partition the targeted faults aim at: the first register key of the
/// workload, so the partition under test is one the checkers look at closely.
pub fn under_test() -> Address {
    Address { entity_type: "register".into(), region: "r0".into(), shards: 100, id: "r0".into() }
}

/// Where the disk-fault shim looks for node `i`'s flag file: while it exists, that node's
/// fsync and fdatasync fail.
pub fn disk_flag(dir: &std::path::Path, node: usize) -> PathBuf {
    dir.join(format!("fail-fsync-node-{}", node + 1))
}

pub struct Nemesis {
    pub cluster: Cluster,
    pub rng: Rng,
    net: Option<Net>,
    started: Instant,
    deadline: Instant,
    log: Vec<String>,
    faults: usize,
}

impl Nemesis {
    /// A nemesis for `cluster` that schedules faults from `plan`'s seed for its length.
    pub fn new(cluster: Cluster, plan: &Plan) -> Nemesis {
        let started = Instant::now();
        Nemesis {
            cluster,
            rng: Rng::new(plan.seed),
            net: None,
            started,
            deadline: started + Duration::from_secs(plan.seconds),
            log: Vec::new(),
            faults: 0,
        }
    }

    /// Whether the schedule still has time for another fault.
    pub fn more(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// What the nemesis did and saw so far, one a line with when.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// How many faults it injected.
    pub fn faults(&self) -> usize {
        self.faults
    }

    /// Writes down a fault as it is injected.
    fn fault(&mut self, what: String) {
        self.faults += 1;
        self.note(what);
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>7.2} s  {what}", self.started.elapsed().as_secs_f64());
        eprintln!("nemesis: {line}");
        self.log.push(line);
    }

    /// The nftables rules of this run, made on first use.
    fn net(&mut self) -> &Net {
        self.net.get_or_insert_with(Net::new)
    }

    /// A calm spell between two faults, of a seeded length.
    pub async fn calm(&mut self) {
        tokio::time::sleep(self.rng.millis(300, 1500)).await;
    }

    /// Holds a fault for a seeded time between `lo` and `hi` ms.
    async fn hold(&mut self, lo: u64, hi: u64) {
        tokio::time::sleep(self.rng.millis(lo, hi)).await;
    }

    /// A random node, or the one leading the partition under test (a random one while
    /// it has no leader).
    pub async fn pick(&mut self, leader: bool) -> usize {
        let random = self.rng.below(self.cluster.len());
        if leader { self.cluster.leader_of(&under_test()).await.unwrap_or(random) } else { random }
    }

    /// kill -9, then a restart on the same data directory.
    pub async fn kill(&mut self, leader: bool) {
        let node = self.pick(leader).await;
        self.fault(format!("kill -9 node-{}{}", node + 1, if leader { " (leader under test)" } else { "" }));
        self.cluster.kill(node);
        self.hold(200, 3000).await;
        self.cluster.restart(node).await;
        self.recover().await;
    }

    /// SIGSTOP for between `lo` and `hi` ms, then SIGCONT.
    pub async fn pause(&mut self, leader: bool, lo: u64, hi: u64) {
        let node = self.pick(leader).await;
        let length = self.rng.millis(lo, hi);
        self.fault(format!("pause node-{} for {} ms", node + 1, length.as_millis()));
        self.cluster.pause(node);
        tokio::time::sleep(length).await;
        self.cluster.resume(node);
        self.recover().await;
    }

    /// Cuts every link between `side` and the other nodes.
    pub async fn split(&mut self, side: Vec<usize>, why: &str) {
        let others: Vec<usize> = (0..self.cluster.len()).filter(|n| !side.contains(n)).collect();
        self.fault(format!("partition {} | {} ({why})", names(&side), names(&others)));
        self.cut_between(&side, &others).await;
    }

    /// Cuts every link between a node of `left` and one of `right`, for a while.
    async fn cut_between(&mut self, left: &[usize], right: &[usize]) {
        for a in left {
            for b in right {
                let (a, b) = (self.cluster.ip(*a), self.cluster.ip(*b));
                self.net().cut(a, b);
            }
        }
        // Long enough for the majority to elect (about 1.5 s) and commit, and for a cut-off
        // leader to give up the writes it holds (3 s), and then a while more with a
        // minority that may still think it leads.
        self.hold(3000, 7000).await;
        self.recover().await;
    }

    /// A random minority cut off from the majority.
    pub async fn split_minority(&mut self) {
        let n = self.cluster.len();
        let size = 1 + self.rng.below((n - 1) / 2);
        let mut nodes: Vec<usize> = (0..n).collect();
        let side: Vec<usize> = (0..size).map(|_| nodes.remove(self.rng.below(nodes.len()))).collect();
        self.split(side, "minority against majority").await;
    }

    /// The leader of the partition under test, alone.
    pub async fn isolate_leader(&mut self) {
        let node = self.pick(true).await;
        self.split(vec![node], "an isolated leader").await;
    }

    /// Two halves that cannot see each other, and one node that sees both.
    pub async fn bridge(&mut self) {
        let n = self.cluster.len();
        let bridge = self.rng.below(n);
        let rest: Vec<usize> = (0..n).filter(|x| *x != bridge).collect();
        let (left, right) = rest.split_at(rest.len() / 2);
        self.fault(format!("bridge: {} | node-{} | {}", names(left), bridge + 1, names(right)));
        self.cut_between(left, right).await;
    }

    /// 30% of the packets lost on the link between the leader under test and another node.
    pub async fn lossy_link(&mut self) {
        let leader = self.pick(true).await;
        let other = (leader + 1 + self.rng.below(self.cluster.len() - 1)) % self.cluster.len();
        self.fault(format!("30% packet loss between node-{} and node-{}", leader + 1, other + 1));
        let (a, b) = (self.cluster.ip(leader), self.cluster.ip(other));
        self.net().lose(a, b, 30);
        self.hold(2000, 5000).await;
        self.recover().await;
    }

    /// A disk whose fsyncs fail, for a while, under node `node` (it runs with the shim,
    /// looking at the flag files in `dir`). The node must stop acknowledging or exit; if
    /// it exited it is restarted once the disk works again.
    pub async fn fail_disk(&mut self, dir: &std::path::Path, leader: bool) {
        let node = self.pick(leader).await;
        self.fault(format!("fsync fails on node-{}", node + 1));
        let flag = disk_flag(dir, node);
        std::fs::write(&flag, b"").expect("create the disk fault's flag file");
        self.hold(500, 3000).await;
        std::fs::remove_file(&flag).expect("remove the disk fault's flag file");
        if let Some(status) = self.cluster.hosts[node].exited() {
            self.note(format!("node-{} exited ({status}); restarting it", node + 1));
            self.cluster.restart(node).await;
        }
        self.recover().await;
    }

    /// A lock holder (another process, with a 2 s lease) stalls past its lease: the next
    /// holder must get a higher token, and the stalled holder's late write must be
    /// refused by the resource the lock fences.
    pub async fn stall_lock_holder(&mut self) {
        let name = "stalled-lock";
        let node = self.rng.below(self.cluster.len());
        let (mut holder, stale) = hold_lock(self.cluster.hosts[node].addr, name);
        self.fault(format!("the holder of {name} (token {stale}) stalls past its lease"));
        signal(holder.id(), "STOP");
        let fence = FencedResource::default();
        fence.write(stale, 1).expect("the holder's first write goes through");
        let client = Client::builder().connect(self.cluster.addrs()).await.expect("connect to the cluster");
        let next = client.distributed().lock(name).timeout(Duration::from_secs(30));
        let token = next.acquire().await.expect("the lock is granted once the stalled holder's lease ends");
        assert!(token > stale, "the next holder's token {token} is not above the stalled holder's {stale}");
        fence.write(token, 2).expect("the new holder's write goes through");
        signal(holder.id(), "CONT");
        assert!(
            fence.write(stale, 3).is_err(),
            "the stalled holder's late write (token {stale}) was accepted"
        );
        assert!(next.release().await.expect("release the lock"), "the new holder lost the lock");
        holder.kill().expect("end the stalled holder");
        holder.wait().expect("reap the stalled holder");
        self.recover().await;
    }

    /// Heals every fault (links, paused and killed nodes) and waits for the cluster to
    /// be healthy.
    pub async fn recover(&mut self) {
        self.cluster.revive_all().await;
        if let Some(net) = &self.net {
            net.heal();
        }
        self.cluster.wait_healthy().await;
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a process of ours.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid} failed");
}

fn names(nodes: &[usize]) -> String {
    nodes.iter().map(|n| format!("node-{}", n + 1)).collect::<Vec<_>>().join(",")
}
