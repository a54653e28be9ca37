//! The robustness suite: real `casty-host` processes on loopback under faults (kill -9,
//! pauses, network partitions, packet loss, a disk whose fsync fails, a lock holder that
//! stalls past its lease) while ten clients work, every call recorded and the histories
//! checked afterwards: linearizability for registers and counters, mutual exclusion and
//! fencing for locks and semaphores, nothing acknowledged lost from sets and queues.
//!
//! Scenarios run one at a time (they share the machine's two cores and the nodes'
//! loopback addresses). Each prints its seed; `CASTY_CHAOS_SEED` replays a schedule,
//! `CASTY_CHAOS_SECONDS` lengthens it and `CASTY_CHAOS_NODES` adds nodes (see
//! ARCHITECTURE.md for the long run).

mod chaos;
mod support;

use chaos::nemesis::{Nemesis, disk_flag};
use chaos::nodes::Cluster;
use chaos::schedule::Plan;
use chaos::workload::Workload;

/// One scenario at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Flags of every node in the suite: few partitions, so three nodes start quickly on two
/// cores; the partition under test is still one of many groups per node.
const NODE_ARGS: [&str; 2] = ["--partitions", "8"];

/// Starts `plan.nodes` nodes and the workload, runs `faults` until the schedule's time is
/// up, heals everything, and checks the histories.
async fn run_scenario<F>(
    name: &str,
    plan: Plan,
    extra: &[&str],
    env: F,
    mut faults: impl AsyncFnMut(&mut Nemesis),
) where
    F: Fn(usize) -> Vec<(String, String)>,
{
    let args = [&NODE_ARGS[..], extra].concat();
    let cluster = Cluster::start(plan.nodes, &args, env).await;
    let addrs = cluster.addrs();
    let mut nemesis = Nemesis::new(cluster, &plan);
    let workload = Workload::start(&addrs, &mut nemesis.rng.fork()).await;
    while nemesis.more() {
        nemesis.calm().await;
        faults(&mut nemesis).await;
    }
    nemesis.recover().await;
    let report = workload.finish(&nemesis.cluster).await;
    eprintln!(
        "scenario {name}: {} s, {} faults:\n{}\nchecked:\n{report}",
        plan.seconds,
        nemesis.faults(),
        nemesis.log().join("\n")
    );
}

fn no_env(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nodes_and_the_leader_under_test() {
    let _one = ONE_AT_A_TIME.lock().await;
    let plan = Plan::of("kills", 3);
    run_scenario("kills", plan, &[], no_env, async |n: &mut Nemesis| {
        let leader = n.rng.below(2) == 0;
        n.kill(leader).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_nodes_shorter_and_longer_than_the_election_timeout_and_dead_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let plan = Plan::of("pauses", 3);
    // A short --dead-after, so a long pause gets the node removed, and it must join again.
    run_scenario("pauses", plan, &["--dead-after", "4s"], no_env, async |n: &mut Nemesis| {
        match n.rng.below(4) {
            // Election timeouts are 500-750 ms.
            0 => n.pause(false, 100, 400).await,
            1 => n.pause(true, 100, 400).await,
            2 => n.pause(true, 1000, 2500).await,
            _ => n.pause(false, 5000, 7000).await,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_the_network_and_lose_packets() {
    let _one = ONE_AT_A_TIME.lock().await;
    let plan = Plan::of("partitions", 5);
    run_scenario("partitions", plan, &[], no_env, async |n: &mut Nemesis| match n.rng.below(4) {
        0 => n.split_minority().await,
        1 => n.isolate_leader().await,
        2 => n.bridge().await,
        _ => n.lossy_link().await,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fsync_on_a_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let shim = chaos::disk::shim();
    let flags = tempfile::tempdir().expect("a temp dir for the disk fault's flags");
    let plan = Plan::of("disk", 3);
    let env = |node: usize| {
        vec![
            ("LD_PRELOAD".to_owned(), shim.display().to_string()),
            ("CASTY_FAIL_FSYNC_FLAG".to_owned(), disk_flag(flags.path(), node).display().to_string()),
        ]
    };
    run_scenario("disk", plan, &[], env, async |n: &mut Nemesis| {
        let leader = n.rng.below(2) == 0;
        n.fail_disk(flags.path(), leader).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_paused_past_its_lease_is_fenced_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let plan = Plan::of("leases", 3);
    run_scenario("leases", plan, &[], no_env, async |n: &mut Nemesis| match n.rng.below(3) {
        0 => n.pause(false, 100, 400).await,
        _ => n.stall_lock_holder().await,
    })
    .await;
}
