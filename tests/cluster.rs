//! Three `casty-host` processes on loopback forming one cluster: joining through a seed,
//! every partition replicated on all three, any node serving any request, and a leader's
//! kill -9 losing no acknowledged write.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use casty_client::Client;
use support::{
    FORM_DEADLINE, Host, free_addr, holds_throughout, poll_until, status, three_nodes, three_nodes_with,
    wait_formed,
};

#[path = "../examples/seed.rs"]
#[allow(dead_code)]
mod seed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_read_back_through_any() {
    let hosts = three_nodes().await;
    let report = status(&hosts[2]).await.unwrap();
    assert_eq!(report.members.len(), 3, "{report:?}");
    let names: Vec<_> = report.members.iter().map(|m| m.node_id.as_str()).collect();
    for name in ["node-1", "node-2", "node-3"] {
        assert!(names.contains(&name), "{names:?}");
    }
    // Leaders are still being balanced (a hand-over is an election, with a moment of no
    // leader), so every partition has one leader once the moves are done.
    let one_leader_each = || async {
        let report = status(&hosts[2]).await.unwrap();
        let leads: u32 = report.members.iter().map(|m| m.leads).sum();
        if leads == report.partitions { Ok(()) } else { Err(format!("{report:?}")) }
    };
    poll_until(|| "a partition has no leader".into(), one_leader_each).await;

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
async fn seeds_started_together_form_one_cluster() {
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let args: Vec<Vec<String>> = (0..3)
        .map(|me| {
            let mut args = vec!["--node-id".to_owned(), format!("node-{}", me + 1)];
            for (_, seed) in addrs.iter().enumerate().filter(|(other, _)| *other != me) {
                args.extend(["--seed".to_owned(), seed.to_string()]);
            }
            args
        })
        .collect();
    let args: Vec<Vec<&str>> = args.iter().map(|a| a.iter().map(String::as_str).collect()).collect();
    // Each lists the other two, and none finds a cluster to join: the one with the lowest
    // address founds it and the others join it, rather than three clusters forming.
    let (first, second, third) = tokio::join!(
        Host::start_at(addrs[0], &args[0]),
        Host::start_at(addrs[1], &args[1]),
        Host::start_at(addrs[2], &args[2]),
    );
    let hosts = vec![first, second, third];
    wait_formed(&hosts, 3).await;
    for host in &hosts {
        let report = status(host).await.unwrap();
        let mut members: Vec<_> = report.members.iter().map(|m| m.node_id.as_str()).collect();
        members.sort_unstable();
        assert_eq!(members, ["node-1", "node-2", "node-3"], "one cluster of three: {report:?}");
    }
    let founder = addrs.iter().map(ToString::to_string).min().unwrap();
    let founded = hosts.iter().find(|h| h.addr.to_string() == founder).unwrap();
    assert!(founded.log().contains("founding it, as the seed with the lowest address"), "{}", founded.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_node_is_refused_with_a_clear_error() {
    let first = Host::start(&["--node-id", "node-1"]).await;
    let seed = first.addr.to_string();
    let out =
        Host::start_expecting_failure(&["--name", "other", "--node-id", "node-2", "--seed", &seed]).await;
    assert!(out.contains("cluster \"other\"") && out.contains("this is cluster \"casty\""), "{out}");
    assert!(
        first.log().contains("refused a node of cluster \"other\""),
        "the seed says so too:\n{}",
        first.log()
    );
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
                let mut successes = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop {
                    attempted.fetch_add(1, Ordering::SeqCst);
                    if counter.increment(1).await.is_ok() {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                        successes.push(Instant::now());
                    }
                    let key = format!("{caller}-{i}");
                    if map.put(&key, &i).await.is_ok() {
                        puts.push((key, i));
                    }
                    i += 1;
                }
                (puts, successes)
            })
        })
        .collect();
    until_acknowledged(&acknowledged, 50).await;
    let killed_at = Instant::now();
    hosts[victim].kill();
    let mut puts = Vec::new();
    let mut successes = Vec::new();
    for caller in callers {
        let (caller_puts, caller_successes) = caller.await.unwrap();
        puts.extend(caller_puts);
        successes.extend(caller_successes);
    }
    // Writes resumed on every partition: report when the last caller (each one stalls
    // while its current partition has no leader) got its first write through.
    let resumed = successes.iter().filter(|at| **at > killed_at).min().copied();
    let resumed = resumed.expect("writes resumed after the kill");
    eprintln!("first acknowledged write {} ms after the kill", (resumed - killed_at).as_millis());
    let d = client.distributed();
    let counter = d.counter("failover").shards(16);
    let after = counter.increment(0).await.unwrap();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let attempted = attempted.load(Ordering::SeqCst);
    assert!(after >= acknowledged && after <= attempted, "{acknowledged} ≤ {after} ≤ {attempted}");
    let map = d.map::<String, u64>("failover-map").shards(16);
    for (key, value) in &puts {
        assert_eq!(map.get(key).await.unwrap(), Some(*value), "acknowledged put {key}");
    }
    assert!(!puts.is_empty() && acknowledged > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_writes_and_a_healed_cluster_loses_nothing() {
    let hosts = three_nodes().await;
    let d = hosts[0].client().await.distributed();
    let counter = d.counter("quorum").shards(8).timeout(Duration::from_secs(8));
    for _ in 0..20 {
        counter.increment(1).await.unwrap();
    }
    hosts[1].signal("STOP");
    hosts[2].signal("STOP");
    let mut attempted = 0;
    for _ in 0..3 {
        attempted += 1;
        let err = counter.increment(1).await.unwrap_err();
        assert_eq!(err.kind(), Some(&casty_client::ErrorKind::Unavailable), "{err}");
    }
    let err = counter.get().await.unwrap_err();
    assert_eq!(err.kind(), Some(&casty_client::ErrorKind::Unavailable), "a stale read is refused too: {err}");
    hosts[1].signal("CONT");
    hosts[2].signal("CONT");
    wait_formed(&hosts, 3).await;
    let healed = counter.get().await.unwrap();
    assert!((20..=20 + attempted).contains(&healed), "20 acknowledged, {attempted} unanswered: {healed}");
    for i in 1..=10 {
        assert_eq!(counter.increment(1).await.unwrap(), healed + i, "each write applied once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_silent_longer_than_dead_after_are_kept_when_no_majority_saw_them_die() {
    let dead_after = Duration::from_secs(3);
    let hosts = three_nodes_with(&["--dead-after", "3s"]).await;
    // Nodes 2 and 3 pause past the dead-after time: node 1, alone, is no majority and
    // must not remove them, or the removal would take effect as they come back.
    hosts[1].signal("STOP");
    hosts[2].signal("STOP");
    holds_throughout(2 * dead_after, || async {
        let report = status(&hosts[0]).await.ok_or("node 1 does not answer status")?;
        match report.members.len() {
            3 => Ok(()),
            _ => Err(format!("node 1 removed a member on its own: {report:?}")),
        }
    })
    .await;
    hosts[1].signal("CONT");
    hosts[2].signal("CONT");
    wait_formed(&hosts, 3).await;
    let d = hosts[0].client().await.distributed();
    assert_eq!(d.counter("after-the-pause").increment(1).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_paused_joins_again_when_it_is_back() {
    let hosts = three_nodes_with(&["--dead-after", "3s"]).await;
    hosts[2].signal("STOP");
    // The majority removes it once it has been silent for the dead-after time.
    let removed = || async {
        match status(&hosts[0]).await {
            Some(report) if report.members.len() == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    poll_until(|| format!("node 3 was never removed:\n{}", hosts[0].log()), removed).await;
    let d = hosts[0].client().await.distributed();
    assert_eq!(d.counter("while-removed").increment(1).await.unwrap(), 1);
    // Back, it finds it was removed and joins again; it gets its replicas back.
    hosts[2].signal("CONT");
    wait_formed(&hosts, 3).await;
    assert!(hosts[2].log().contains("joining it again"), "{}", hosts[2].log());
    let d = hosts[2].client().await.distributed();
    assert_eq!(d.counter("while-removed").increment(1).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_every_acknowledged_write() {
    let mut hosts = three_nodes().await;
    {
        let d = hosts[1].client().await.distributed();
        d.counter("restart").increment(42).await.unwrap();
        let map = d.map::<String, String>("restart-map");
        let set = d.set::<String>("restart-set");
        for i in 0..50 {
            map.put(&format!("k{i}"), &format!("v{i}")).await.unwrap();
            set.add(&format!("m{i}")).await.unwrap();
        }
        let queue = d.queue::<String>("restart-queue");
        for item in ["a", "b", "c"] {
            queue.enqueue(&item.to_owned()).await.unwrap();
        }
        assert_eq!(queue.dequeue().await.unwrap().as_deref(), Some("a"));
        d.register::<String>("restart-register").set(&"kept".to_owned()).await.unwrap();
    }
    for host in &mut hosts {
        host.kill();
    }
    for host in &mut hosts {
        host.spawn().await;
    }
    wait_formed(&hosts, 3).await;
    let d = hosts[2].client().await.distributed();
    assert_eq!(d.counter("restart").get().await.unwrap(), 42);
    let map = d.map::<String, String>("restart-map");
    assert_eq!(map.size().await.unwrap(), 50);
    for i in 0..50 {
        assert_eq!(map.get(&format!("k{i}")).await.unwrap(), Some(format!("v{i}")));
    }
    assert_eq!(d.set::<String>("restart-set").size().await.unwrap(), 50);
    let queue = d.queue::<String>("restart-queue");
    assert_eq!(queue.dequeue().await.unwrap().as_deref(), Some("b"));
    assert_eq!(queue.dequeue().await.unwrap().as_deref(), Some("c"));
    assert_eq!(d.register::<String>("restart-register").get().await.unwrap().as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_takes_a_fair_share_while_the_cluster_serves() {
    let mut hosts = three_nodes().await;
    let writer = steady_writes(hosts[0].client().await, "during-join", Duration::from_secs(8));
    let seed = hosts[0].addr.to_string();
    let joined = Instant::now();
    hosts.push(Host::start(&["--node-id", "node-4", "--seed", &seed]).await);
    wait_formed(&hosts, 4).await;
    // Leaderships keep moving towards their preferred leaders after every member
    // leads some, so the fair share is waited for, not read at once.
    let fair_share = || async {
        let report = status(&hosts[3]).await.ok_or("node-4 does not answer status")?;
        let leads: Vec<_> =
            report.members.iter().map(|m| format!("{} leads {}", m.node_id, m.leads)).collect();
        let fourth = report.members.iter().find(|m| m.node_id == "node-4").ok_or("node-4 is no member")?;
        if fourth.leads < report.partitions / 8 {
            return Err(format!("{leads:?}"));
        }
        if report.groups.len() < report.partitions as usize / 2 {
            return Err(format!("node-4 replicates {}", report.groups.len()));
        }
        Ok(leads)
    };
    let leads = poll_until(|| "node-4 did not get a fair share".into(), fair_share).await;
    eprintln!("placed {} ms after the fourth node started: {leads:?}", joined.elapsed().as_millis());
    let (acknowledged, _, value) = writer.task.await.unwrap();
    assert_eq!(value, acknowledged);

    // Every node serves every partition, those the placement moved it out of included
    // (its view of those groups stopped when it was removed from them).
    let partitions = status(&hosts[0]).await.expect("node-1 answers").partitions;
    for host in &hosts {
        let d = host.client().await.distributed();
        for partition in 0..partitions {
            let name = support::counter_in_partition(
                "route",
                casty_core::limits::SHARDS_DEFAULT,
                partitions,
                partition,
            );
            let counter = d.counter(&name).timeout(Duration::from_secs(10));
            let result = counter.increment(1).await;
            assert!(result.is_ok(), "{} cannot serve partition {partition}: {result:?}", host.addr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_holder_dies_passes_to_a_waiter_on_another_node() {
    let hosts = three_nodes().await;
    let (mut holder, held) = support::hold_lock(hosts[0].addr, "deploy");
    let d = hosts[2].client().await.distributed();
    let waiter =
        tokio::spawn(async move { d.lock("deploy").timeout(Duration::from_secs(30)).acquire().await });
    // The waiter is queued behind the holder before the holder dies.
    let observer = hosts[1].client().await.distributed();
    let started = Instant::now();
    while observer.lock("deploy").waiting().await.unwrap() != 1 {
        assert!(started.elapsed() < FORM_DEADLINE, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.kill().unwrap(); // kill -9: no release, no more renewals
    holder.wait().unwrap();
    let token = waiter.await.unwrap().unwrap();
    assert!(token > held, "token {token} after {held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_over_and_no_request_fails_for_long() {
    let mut hosts = three_nodes().await;
    let writer = steady_writes(hosts[0].client().await, "during-leave", Duration::from_secs(10));
    until_acknowledged(&writer.acknowledged, 20).await;
    hosts[2].signal("TERM");
    let status = hosts[2].wait_exit(Duration::from_secs(90));
    assert!(status.success(), "{status}:\n{}", hosts[2].log());
    assert!(hosts[2].log().contains("left the cluster"), "{}", hosts[2].log());
    wait_formed(&hosts, 2).await;
    let (acknowledged, longest, value) = writer.task.await.unwrap();
    eprintln!("longest write while a node left: {} ms", longest.as_millis());
    assert_eq!(value, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_replicas_are_recreated_on_the_others() {
    let dead_after = ["--dead-after", "3s"];
    let first = Host::start(&[&["--node-id", "node-1"][..], &dead_after].concat()).await;
    let seed = first.addr.to_string();
    let mut hosts = vec![first];
    for n in 2..=4 {
        let id = format!("node-{n}");
        hosts.push(
            Host::start(&[&["--node-id", id.as_str(), "--seed", &seed][..], &dead_after].concat()).await,
        );
    }
    wait_formed(&hosts, 4).await;
    let d = hosts[0].client().await.distributed();
    d.counter("survives").increment(7).await.unwrap();
    hosts[3].kill();
    wait_formed(&hosts, 3).await;
    let report = status(&hosts[0]).await.unwrap();
    assert_eq!(report.members.len(), 3, "the dead node is no longer a member: {report:?}");
    assert_eq!(report.groups.len(), report.partitions as usize, "three members hold every partition");
    assert_eq!(d.counter("survives").get().await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_joins_a_cluster_through_its_seeds() {
    let host = Host::start(&["--node-id", "node-1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let node = casty_node::Node::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .node_id("embedded")
        .seeds([host.addr.to_string()])
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let joined = || async {
        let report = node.status();
        let placed = report.groups.len() == report.partitions as usize;
        if report.members.len() == 2 && placed { Ok(()) } else { Err(format!("{report:?}")) }
    };
    poll_until(|| "the embedded node did not join".into(), joined).await;
    node.distributed().counter("embedded").increment(5).await.unwrap();
    assert_eq!(host.client().await.distributed().counter("embedded").get().await.unwrap(), 5);
    node.shutdown().await;
    let report = status(&host).await.unwrap();
    assert_eq!(report.members.len(), 1, "the embedded node left as it shut down: {report:?}");
}

/// A task writing to one counter until `lasting` passes, every write required to succeed,
/// and how many it got acknowledged so far.
struct SteadyWrites {
    acknowledged: Arc<AtomicI64>,
    /// (acknowledged, the longest single write, the counter's final value).
    task: tokio::task::JoinHandle<(i64, Duration, i64)>,
}

fn steady_writes(client: Client, name: &'static str, lasting: Duration) -> SteadyWrites {
    let acknowledged = Arc::new(AtomicI64::new(0));
    let count = acknowledged.clone();
    let task = tokio::spawn(async move {
        let counter = client.distributed().counter(name).shards(32);
        let mut longest = Duration::ZERO;
        let until = Instant::now() + lasting;
        while Instant::now() < until {
            let started = Instant::now();
            counter.increment(1).await.unwrap_or_else(|e| panic!("a write to {name} failed: {e}"));
            longest = longest.max(started.elapsed());
            count.fetch_add(1, Ordering::SeqCst);
        }
        (count.load(Ordering::SeqCst), longest, counter.get().await.unwrap())
    });
    SteadyWrites { acknowledged, task }
}

/// Waits until `n` writes were acknowledged, so what follows happens under load.
async fn until_acknowledged(acknowledged: &AtomicI64, n: i64) {
    let started = Instant::now();
    while acknowledged.load(Ordering::SeqCst) < n {
        assert!(started.elapsed() < FORM_DEADLINE, "no writes were acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
