//! Three `casty-host` processes on loopback forming one cluster: joining through a seed,
//! every partition replicated on all three, any node serving any request, and a leader's
//! kill -9 losing no acknowledged write.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use casty_client::Client;
use casty_core::protocol::{MemberState, StatusReport};
use support::Host;

#[path = "../examples/seed.rs"]
#[allow(dead_code)]
mod seed;

const FORM_DEADLINE: Duration = Duration::from_secs(120);

async fn status(host: &Host) -> Option<StatusReport> {
    Client::connect_timeout([host.addr], Duration::from_secs(2)).await.ok()?.status().await.ok()
}

/// Starts three nodes, the second and third joining through the first, and waits until
/// every partition has all three as replicas and a leader.
async fn three_nodes() -> Vec<Host> {
    let first = Host::start(&["--node-id", "node-1"]).await;
    let seed = first.addr.to_string();
    let second = Host::start(&["--node-id", "node-2", "--seed", &seed]).await;
    let third = Host::start(&["--node-id", "node-3", "--seed", &seed]).await;
    let hosts = vec![first, second, third];
    wait_formed(&hosts, 3).await;
    hosts
}

/// Waits until every running node sees `members` members up and every partition with
/// `members` replicas and a leader.
async fn wait_formed(hosts: &[Host], members: usize) {
    let started = Instant::now();
    'poll: loop {
        assert!(started.elapsed() < FORM_DEADLINE, "the cluster did not form:\n{}", hosts[0].log());
        for host in hosts.iter().filter(|h| h.is_running()) {
            let Some(report) = status(host).await else { continue 'poll };
            let up = report.members.iter().filter(|m| m.state == MemberState::Up).count();
            let placed = report.groups.len() == report.partitions as usize
                && report.groups.iter().all(|g| g.replicas.len() == members && g.leader.is_some());
            if up != members || !placed {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'poll;
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_read_back_through_any() {
    let hosts = three_nodes().await;
    let report = status(&hosts[2]).await.unwrap();
    assert_eq!(report.members.len(), 3, "{report:?}");
    let names: Vec<_> = report.members.iter().map(|m| m.node_id.as_str()).collect();
    for name in ["node-1", "node-2", "node-3"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let leads: u32 = report.members.iter().map(|m| m.leads).sum();
    assert_eq!(leads, report.partitions, "every partition has one leader: {report:?}");

    // The seed scenario, written through node 1.
    let lines = seed::scenario(&hosts[0].client().await.distributed()).await.unwrap();
    assert_eq!(lines[0], "views.get() => 90");

    // Read back through node 3, and through a client that knows only node 2.
    for host in [&hosts[2], &hosts[1]] {
        let d = host.client().await.distributed();
        assert_eq!(d.counter("page-views").shards(50).get().await.unwrap(), 90);
        assert_eq!(d.set::<String>("active-tags").shards(50).size().await.unwrap(), 1);
        assert!(!d.map::<String, seed::User>("users").shards(50).contains(&"alice".into()).await.unwrap());
        assert_eq!(d.queue::<String>("work-queue").shards(50).size().await.unwrap(), 0);
    }
    let out = hosts[2].cli(&["counter", "page-views", "--shards", "50", "get"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "90", "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_node_is_refused_with_a_clear_error() {
    let first = Host::start(&["--node-id", "node-1"]).await;
    let seed = first.addr.to_string();
    let out =
        Host::start_expecting_failure(&["--name", "other", "--node-id", "node-2", "--seed", &seed]).await;
    assert!(out.contains("cluster \"other\"") && out.contains("this is cluster \"casty\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_leader_loses_no_acknowledged_write() {
    let mut hosts = three_nodes().await;
    let addrs: Vec<_> = hosts.iter().map(|h| h.addr).collect();
    let client = Arc::new(Client::connect(addrs.clone()).await.unwrap());
    // The connection goes to the first node; the busiest leader is killed, so make sure
    // it is not the one the client holds (any other node serves it through forwarding).
    let report = status(&hosts[0]).await.unwrap();
    let busiest = report.members.iter().max_by_key(|m| m.leads).unwrap().address.clone();
    let victim = hosts.iter().position(|h| h.addr.to_string() == busiest).unwrap();
    let survivor = hosts.iter().position(|h| h.addr.to_string() != busiest).unwrap();
    let client = if victim == 0 { Arc::new(hosts[survivor].client().await) } else { client };

    let acknowledged = Arc::new(AtomicI64::new(0));
    let attempted = Arc::new(AtomicI64::new(0));
    let stop = Instant::now() + Duration::from_secs(6);
    let callers: Vec<_> = (0..16)
        .map(|caller| {
            let d = client.distributed();
            let (acknowledged, attempted) = (acknowledged.clone(), attempted.clone());
            tokio::spawn(async move {
                let counter = d.counter("failover").shards(16);
                let map = d.map::<String, u64>("failover-map").shards(16);
                let mut puts = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    attempted.fetch_add(1, Ordering::SeqCst);
                    if counter.increment(1).await.is_ok() {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    let key = format!("{caller}-{i}");
                    if map.put(&key, &i).await.is_ok() {
                        puts.push((key, i));
                    }
                    i += 1;
                }
                puts
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    hosts[victim].kill();
    let mut puts = Vec::new();
    for caller in callers {
        puts.extend(caller.await.unwrap());
    }
    let d = client.distributed();
    // Writes resume: time the first write after the kill.
    let counter = d.counter("failover").shards(16);
    let after = counter.increment(0).await.unwrap();
    eprintln!("first write after the kill answered {} ms after it", killed_at.elapsed().as_millis());
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let attempted = attempted.load(Ordering::SeqCst);
    assert!(after >= acknowledged && after <= attempted, "{acknowledged} ≤ {after} ≤ {attempted}");
    let map = d.map::<String, u64>("failover-map").shards(16);
    for (key, value) in &puts {
        assert_eq!(map.get(key).await.unwrap(), Some(*value), "acknowledged put {key}");
    }
    assert!(!puts.is_empty() && acknowledged > 0);
}
