//! Locks and semaphores against a real node: FIFO grants, fencing tokens, leases that
//! end when a holder dies, waiters that give up, and `casty lock run`.

mod support;

use std::time::{Duration, Instant};

use casty_client::{ClientError, Distributed};
use support::{Host, stdout_ok};

/// Polls until `n` requests wait for the lock (bounded).
async fn until_waiting(d: &Distributed, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.lock(name).waiting().await.unwrap() != n {
        assert!(Instant::now() < deadline, "{n} waiters never queued on {name}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_handles_as_in_the_original_suite() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let (first, second) = (d.lock("deploy-lock"), d.lock("deploy-lock"));
    let token = first.try_acquire().await.unwrap().expect("the free lock is granted");
    assert_eq!(second.try_acquire().await.unwrap(), None);
    assert!(!second.release().await.unwrap(), "only the holder releases");
    assert!(first.release().await.unwrap());
    let second_token = second.try_acquire().await.unwrap().unwrap();
    assert!(second_token > token, "fencing tokens increase");
    assert_eq!(second.acquire().await.unwrap(), second_token, "re-acquiring is reentrant, same token");
    assert!(second.release().await.unwrap());
    assert!(!second.release().await.unwrap(), "one release frees a re-acquired lock");

    // A guard releases the lock when dropped.
    let guard = first.lock().await.unwrap();
    assert!(guard.token() > second_token);
    assert_eq!(second.try_acquire().await.unwrap(), None);
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_acquire().await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the dropped guard never released the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(second.release().await.unwrap());
    assert!(d.lock("deploy-lock").lock().await.unwrap().release().await.unwrap());

    // Three waiters are granted in the order they arrived.
    let holder = d.lock("fifo");
    holder.acquire().await.unwrap();
    let mut waiters = Vec::new();
    for n in 1..=3u64 {
        let waiter = d.lock("fifo").timeout(Duration::from_secs(30));
        let task = tokio::spawn({
            let waiter = waiter.clone();
            async move { waiter.acquire().await }
        });
        until_waiting(&d, "fifo", n).await;
        waiters.push((waiter, task));
    }
    holder.release().await.unwrap();
    let mut last_token = 0;
    for (waiter, task) in waiters {
        let token = task.await.unwrap().unwrap();
        assert!(token > last_token, "granted in FIFO order with increasing tokens");
        last_token = token;
        assert!(waiter.release().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphores_count_permits_and_refuse_another_size() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let handles: Vec<_> = (0..3).map(|_| d.semaphore("db-pool", 2)).collect();
    assert!(handles[0].try_acquire().await.unwrap().is_some());
    assert!(handles[1].try_acquire().await.unwrap().is_some());
    assert!(handles[2].try_acquire().await.unwrap().is_none());
    assert_eq!(handles[2].available().await.unwrap(), 0);
    assert!(!handles[2].release().await.unwrap(), "a handle holding nothing releases nothing");
    assert!(handles[0].release().await.unwrap());
    assert!(handles[2].try_acquire().await.unwrap().is_some());
    let err = d.semaphore("db-pool", 3).try_acquire().await.unwrap_err();
    assert!(matches!(&err, ClientError::Rejected { code, .. } if code == "permits-mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gave_up_is_never_granted() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let holder = d.lock("l");
    holder.acquire().await.unwrap();
    let impatient = d.lock("l").timeout(Duration::from_millis(300));
    let err = impatient.acquire().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { timeout_ms: 300 }), "{err:?}");
    until_waiting(&d, "l", 0).await;
    holder.release().await.unwrap();
    // Had the impatient waiter been granted, this would find the lock held.
    assert!(d.lock("l").try_acquire().await.unwrap().is_some());
    assert!(!impatient.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_ends_and_the_waiter_gets_a_higher_token() {
    let host = Host::start(&[]).await;
    let (mut holder, held) = support::hold_lock(host.addr, "deploy");
    let d = host.client().await.distributed();
    assert_eq!(d.lock("deploy").try_acquire().await.unwrap(), None, "the holder keeps renewing");

    holder.kill().unwrap(); // kill -9: no release, no more renewals
    holder.wait().unwrap();
    let waiter = d.lock("deploy").timeout(Duration::from_secs(30));
    let token = waiter.acquire().await.unwrap();
    assert!(token > held, "token {token} after {held}");
}

#[test]
fn lock_run_holds_the_lock_and_passes_the_exit_code_on() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let host = runtime.block_on(Host::start(&[]));
    // The command itself tries to take the lock as another owner, while `run` holds it.
    let other = format!(
        "{} --connect {} lock job try-acquire --owner other; exit 3",
        env!("CARGO_BIN_EXE_casty"),
        host.addr
    );
    let out = host.cli(&["lock", "job", "run", "--", "sh", "-c", &other]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null", "another owner took the lock run held");
    assert!(stdout_ok(&host.cli(&["lock", "job", "try-acquire", "--owner", "next"])).parse::<u64>().is_ok());
    assert_eq!(stdout_ok(&host.cli(&["lock", "job", "try-acquire", "--owner", "other"])), "null");
    assert_eq!(stdout_ok(&host.cli(&["lock", "job", "release", "--owner", "other"])), "false");
    assert_eq!(stdout_ok(&host.cli(&["lock", "job", "release", "--owner", "next"])), "true");
    assert_eq!(
        stdout_ok(&host.cli(&["semaphore", "pool", "--permits", "5", "try-acquire", "--owner", "w1"])),
        "1"
    );
    assert_eq!(stdout_ok(&host.cli(&["semaphore", "pool", "--permits", "5", "available"])), "4");
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquire_keeps_its_place_in_line() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let holder = d.lock("line");
    holder.acquire().await.unwrap();
    let address = casty_core::routing::Address {
        entity_type: "lock".into(),
        region: "line".into(),
        shards: 100,
        id: "line".into(),
    };
    let acquire = br#"{"acquire":{"permits":1,"ttl_ms":30000}}"#.to_vec();
    let first = d.request_as("first", address.clone(), acquire, Duration::from_secs(30));
    let original = tokio::spawn({
        let (d, first) = (d.clone(), first.clone());
        async move { d.invoke(first).await }
    });
    until_waiting(&d, "line", 1).await;
    // The same request again, as a client does after losing its connection: the first
    // waiter is told it was superseded, and the retry waits in the first one's place.
    let retry = tokio::spawn({
        let d = d.clone();
        async move { d.invoke(first).await }
    });
    let superseded = original.await.unwrap().unwrap_err();
    assert_eq!(superseded.kind(), Some(&casty_client::ErrorKind::Superseded), "{superseded}");
    let second = d.lock("line").timeout(Duration::from_secs(30));
    let later = tokio::spawn({
        let second = second.clone();
        async move { second.acquire().await }
    });
    until_waiting(&d, "line", 2).await;
    holder.release().await.unwrap();
    let granted: serde_json::Value = serde_json::from_slice(&retry.await.unwrap().unwrap()).unwrap();
    assert!(granted["token"].is_u64(), "{granted}");
    assert!(!later.is_finished(), "the later waiter is still behind the retried one");
    assert!(d.lock("line").owner("first").release().await.unwrap());
    assert!(later.await.unwrap().is_ok());
}

/// A waiter whose timeout passes in a round where its partition has no room to make the
/// lock's shard live (every live shard has events in flight) is still withdrawn, so the
/// lock is not granted later to a caller that left. One partition keeping one shard live,
/// and a counter in another shard of it kept busy, make those rounds the common case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_while_its_partition_is_busy_is_withdrawn() {
    let host = Host::start(&["--partitions", "1", "--live-instances", "1"]).await;
    let d = host.client().await.distributed();
    let holder = d.lock("busy-lock");
    holder.acquire().await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (counter, stop) = (d.counter("busy"), stop.clone());
        load.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                counter.increment(1).await.expect("the busy counter increments");
            }
        });
    }
    for round in 1..=5 {
        let waiter = d.lock("busy-lock").timeout(Duration::from_millis(1500));
        let gave_up = waiter.acquire().await;
        let timed_out = matches!(gave_up, Err(ClientError::Timeout { timeout_ms: 1500 }));
        assert!(timed_out, "round {round}: the waiter should time out, got {gave_up:?}");
        // The client may give up on its own clock a little before the partition's round
        // that withdraws the waiter comes; a lost withdrawal leaves it in line for good.
        let line = d.lock("busy-lock");
        support::poll_until(
            || {
                format!(
                    "round {round}: the waiter that gave up is still in line, so it would be granted the lock"
                )
            },
            || async {
                match line.waiting().await {
                    Ok(0) => Ok(()),
                    Ok(n) => Err(format!("{n} waiting")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(task) = load.join_next().await {
        task.unwrap();
    }
    assert!(holder.release().await.unwrap());
    let next = d.lock("busy-lock").try_acquire().await.unwrap();
    assert!(next.is_some(), "the released lock went to a waiter that had left");
}

/// A handle dropped while it holds the lock stops renewing the lease, so the lease ends
/// and the next caller is granted the lock (with a higher token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_stops_renewing_so_its_lease_ends() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let first = d.lock("dropped").ttl(Duration::from_secs(1));
    let token = first.acquire().await.unwrap();
    drop(first);
    let next = d.lock("dropped").timeout(Duration::from_secs(30));
    let granted = next.acquire().await.expect("the dropped handle's lease ends and the lock is granted");
    assert!(granted > token, "token {granted} after {token}");
}
