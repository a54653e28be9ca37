//! Three nodes' Raft loops in one process over loopback QUIC with real Raft log files: a
//! replica added to a group catches up from a snapshot larger than a frame, which
//! travels on a stream of its own in chunks.

use std::net::SocketAddr;
use std::time::Duration;

use casty_journal::raft_log::LogFiles;
use casty_raft::wire::ConfChange;
use casty_raft::{Event, GroupLog, GroupStatus, LoopConfig, RaftLoop};
use casty_transport::tls::Tls;
use tokio::sync::{mpsc, oneshot, watch};

const GROUP: u32 = 7;

struct Node {
    raft: RaftLoop,
    events: mpsc::Receiver<Event>,
    status: watch::Receiver<GroupStatus>,
    _dir: tempfile::TempDir,
}

async fn node(id: u64, addr: SocketAddr, founders: &[u64]) -> Node {
    let dir = tempfile::tempdir().expect("a directory");
    let (files, _, next_write) = LogFiles::open(dir.path()).expect("open the Raft log");
    let config = LoopConfig {
        id,
        files: files.clone(),
        next_write,
        tls: Tls::Development,
        listen: addr,
        local_ip: addr.ip(),
    };
    let raft = RaftLoop::start(config).expect("start the loop");
    let endpoint = casty_transport::server_endpoint(addr, &Tls::Development, None).expect("bind");
    raft.serve(endpoint);
    let log = match founders.contains(&id) {
        true => GroupLog::new(GROUP, founders.to_vec(), Some(files)),
        false => GroupLog::joining(GROUP, Some(files)),
    };
    let (events_tx, events) = mpsc::channel(64);
    let (status_tx, status) = watch::channel(GroupStatus::default());
    raft.add(log, 0, events_tx, status_tx).await.unwrap();
    Node { raft, events, status, _dir: dir }
}

fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    socket.local_addr().expect("an address")
}

/// Answers a node's events as a partition's owner would: it tracks what it applied and
/// exports `state` when raft-rs wants a snapshot. Reports the first install it gets.
async fn own(mut node: Node, state: Vec<u8>, installed: Option<oneshot::Sender<(u64, Vec<u8>)>>) {
    let (mut applied, mut installed) = (0, installed);
    while let Some(event) = node.events.recv().await {
        match event {
            Event::Committed(entries) => applied = entries.last().map_or(applied, |e| e.index),
            Event::SnapshotWanted => node.raft.exported(GROUP, applied, state.clone()).await.unwrap(),
            Event::Install { index, data } => {
                if let Some(tx) = installed.take() {
                    let _ = tx.send((index, data));
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_from_a_snapshot_larger_than_a_frame() {
    let addrs = [free_addr(), free_addr(), free_addr()];
    let mut nodes = Vec::new();
    for (id, addr) in (1..=3).zip(addrs) {
        let node = node(id, addr, &[1, 2]).await;
        // Node 3 is told no addresses: it learns its leader's from the leader's stream.
        for (peer, addr) in (1..=3).zip(addrs) {
            if peer != id && id != 3 {
                node.raft.set_address(peer, addr).await.unwrap();
            }
        }
        nodes.push(node);
    }
    let state: Vec<u8> =
        (0..casty_core::limits::FRAME_SIZE_MAX_BYTES + 12_345).map(|i| (i % 251) as u8).collect();
    let mut leader = nodes.remove(0);
    leader.raft.campaign(GROUP).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Node 1 leads once its term's first entry commits; then it adds node 3.
    loop {
        let event = tokio::time::timeout_at(deadline, leader.events.recv()).await.expect("node 1 never led");
        if matches!(event, Some(Event::Committed(_))) {
            break;
        }
    }
    let (installed_tx, installed) = oneshot::channel();
    let joiner = nodes.pop().unwrap();
    tokio::spawn(own(joiner, Vec::new(), Some(installed_tx)));
    tokio::spawn(own(nodes.pop().unwrap(), state.clone(), None));
    let raft = leader.raft.clone();
    let mut status = leader.status.clone();
    tokio::spawn(own(leader, state.clone(), None));
    raft.propose_conf_change(GROUP, ConfChange::new(&[], &[3], &[])).await.unwrap();
    let (index, data) = tokio::time::timeout_at(deadline, installed)
        .await
        .expect("node 3 installed no snapshot in 30 s")
        .expect("node 3's owner reported");
    assert!(index >= 2, "the snapshot is past the founding one");
    assert_eq!(data.len(), state.len());
    assert!(data == state, "the snapshot arrived whole and in order");
    let answered = status.wait_for(|s| s.matched.get(&3).is_some_and(|m| *m >= index));
    tokio::time::timeout_at(deadline, answered)
        .await
        .expect("the leader never heard that node 3 has the snapshot")
        .expect("the leader's status is published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_of_the_raft_log_is_reported_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("a directory");
    let (files, _, next_write) = LogFiles::open(dir.path()).expect("open the Raft log");
    let config = LoopConfig {
        id: 1,
        files: files.clone(),
        next_write,
        tls: Tls::Development,
        listen: free_addr(),
        local_ip: free_addr().ip(),
    };
    let raft = RaftLoop::start(config).expect("start the loop");
    // The directory is gone, so the first segment cannot be created.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (events_tx, mut events) = mpsc::channel(64);
    raft.add(GroupLog::new(GROUP, vec![1], Some(files)), 0, events_tx, watch::channel(Default::default()).0)
        .await
        .unwrap();
    raft.campaign(GROUP).await.unwrap();
    let reason =
        tokio::time::timeout(Duration::from_secs(30), raft.failed()).await.expect("no failure reported");
    assert!(reason.contains("Raft log"), "{reason}");
    // A single voter commits once its own write is durable, which it never is: nothing
    // it handed its owner by the time the failure was reported is a commit.
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, Event::Committed(_)), "an entry committed without a durable copy");
    }
}
