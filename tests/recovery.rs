//! Acknowledged writes survive `kill -9`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use support::Host;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_increment_survives_kill_9() {
    let mut host = Host::start(&[]).await;
    let client = host.client().await;
    let acknowledged = Arc::new(AtomicI64::new(0));
    // 32 concurrent callers: half on one hot counter, half spread over many, so the
    // hot counter's partition and many others commit together.
    let callers: Vec<_> = (0..32)
        .map(|caller| {
            let d = client.distributed();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let name =
                        if caller % 2 == 0 { "hot".to_owned() } else { format!("spread-{caller}-{}", i % 7) };
                    d.counter(&name).increment(1).await.expect("increment");
                    if caller % 2 == 0 {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let hot = acknowledged.load(Ordering::Relaxed);
    assert_eq!(hot, 16 * 60);
    drop(client);
    host.kill();

    host.spawn().await;
    let d = host.client().await.distributed();
    assert_eq!(d.counter("hot").get().await.unwrap(), hot);
    let mut spread = 0;
    for caller in (1..32).step_by(2) {
        for k in 0..7 {
            spread += d.counter(&format!("spread-{caller}-{k}")).get().await.unwrap();
        }
    }
    assert_eq!(spread, 16 * 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_in_flight_at_the_kill_are_either_kept_or_never_acknowledged() {
    let mut host = Host::start(&["--partitions", "4"]).await;
    let client = host.client().await;
    let acknowledged = Arc::new(AtomicI64::new(0));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let d = client.distributed();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                // Runs until the node dies under it; 5000 is a bound, not a target.
                for _ in 0..5000 {
                    if d.counter("busy").increment(1).await.is_err() {
                        return;
                    }
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill once a good number of increments went through, while the callers still run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.load(Ordering::Relaxed) < 2000 {
        assert!(std::time::Instant::now() < deadline, "too few increments acknowledged");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    host.kill();
    for caller in callers {
        caller.await.unwrap();
    }
    let acked = acknowledged.load(Ordering::Relaxed);
    host.spawn().await;
    let value = host.client().await.distributed().counter("busy").get().await.unwrap();
    // Acknowledged increments are all there; at most the 16 in flight may have landed
    // without their acknowledgement reaching the caller.
    assert!(value >= acked && value <= acked + 16, "value {value}, acknowledged {acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_applied_once_even_across_a_crash_and_a_checkpoint() {
    let mut host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let address = casty_core::routing::Address {
        entity_type: "counter".into(),
        region: "once".into(),
        shards: 100,
        id: "once".into(),
    };
    let increment = br#"{"increment":{"by":1}}"#.to_vec();
    let request = d.request(address, increment, std::time::Duration::from_secs(10));
    assert_eq!(d.invoke(request.clone()).await.unwrap(), b"1");
    assert_eq!(d.invoke(request.clone()).await.unwrap(), b"1", "a retry gets the original reply");
    // Enough later writes on the same counter that its partition checkpoints
    // (CHECKPOINT_INTERVAL_ENTRIES) and truncates the log entry that named the request,
    // and few enough that the request is still in the window.
    let counter = d.counter("once");
    for expected in 2..=3500 {
        assert_eq!(counter.increment(1).await.unwrap(), expected);
    }
    host.kill();
    host.spawn().await;
    let d = host.client().await.distributed();
    assert_eq!(d.invoke(request).await.unwrap(), b"1", "still recognised after the restart");
    assert_eq!(d.counter("once").get().await.unwrap(), 3500);
}
