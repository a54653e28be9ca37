//! Queues and barriers: callers that wait for one another, against a real node.

mod support;

use std::time::Duration;

use casty_client::ClientError;
use support::{Host, stdout_ok};

/// Waits until a `dequeue_wait` is parked on `q`, so the value that follows takes the
/// waiting path rather than a plain dequeue.
async fn wait_parked<T: serde::Serialize + serde::de::DeserializeOwned>(q: &casty_client::Queue<T>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while q.waiting().await.unwrap() != 1 {
        assert!(std::time::Instant::now() < deadline, "the waiting dequeue never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_as_in_the_original_suite_and_waiting_dequeues() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let q = d.queue::<String>("jobs");
    assert_eq!(q.size().await.unwrap(), 0);
    assert_eq!(q.dequeue().await.unwrap(), None);
    for v in ["a", "b", "c"] {
        q.enqueue(&v.into()).await.unwrap();
    }
    assert_eq!(q.peek().await.unwrap().as_deref(), Some("a"));
    assert_eq!(q.size().await.unwrap(), 3, "peek does not remove");
    for v in ["a", "b", "c"] {
        assert_eq!(q.dequeue().await.unwrap().as_deref(), Some(v));
    }
    assert_eq!(q.dequeue_wait(Duration::from_millis(200)).await.unwrap(), None, "nothing arrived");

    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.dequeue_wait(Duration::from_secs(30)).await }
    });
    wait_parked(&q).await;
    q.enqueue(&"late".into()).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().as_deref(), Some("late"));
    assert_eq!(q.size().await.unwrap(), 0);

    assert_eq!(stdout_ok(&host.cli(&["queue", "jobs", "enqueue", "x"])), "null");
    assert_eq!(stdout_ok(&host.cli(&["queue", "jobs", "enqueue", "y"])), "null");
    assert_eq!(stdout_ok(&host.cli(&["queue", "jobs", "drain", "10"])), r#"["x","y"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_dequeued_queue_recovers_after_kill_9() {
    let mut host = Host::start(&[]).await;
    {
        let q = host.client().await.distributed().queue::<String>("q");
        for v in ["a", "b", "c"] {
            q.enqueue(&v.into()).await.unwrap();
        }
        assert_eq!(q.dequeue().await.unwrap().as_deref(), Some("a"));
    }
    host.kill();
    host.spawn().await;
    let q = host.client().await.distributed().queue::<String>("q");
    assert_eq!(q.size().await.unwrap(), 2);
    assert_eq!(q.dequeue().await.unwrap().as_deref(), Some("b"));
    assert_eq!(q.dequeue().await.unwrap().as_deref(), Some("c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_release_together_repeat_and_forget_who_left() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    assert_eq!(d.barrier("solo").arrive(1).await.unwrap(), 0, "one party passes at once");

    for round in 0..2 {
        let parties: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|p| {
                let barrier = d.barrier("pair").party(p).timeout(Duration::from_secs(30));
                tokio::spawn(async move { barrier.arrive(2).await })
            })
            .collect();
        for party in parties {
            assert_eq!(party.await.unwrap().unwrap(), round, "the same name serves round after round");
        }
    }

    // An arrival whose timeout passed is withdrawn and does not count.
    let gone = d.barrier("b").party("gone").timeout(Duration::from_millis(300));
    let err = gone.arrive(2).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { timeout_ms: 300 }), "{err:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while d.barrier("b").arrived().await.unwrap() != 0 {
        assert!(std::time::Instant::now() < deadline, "the arrival that gave up was never withdrawn");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alone = d.barrier("b").party("alone").timeout(Duration::from_millis(500));
    let err = alone.arrive(2).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { .. }),
        "the withdrawn party must not complete the round: {err:?}"
    );

    let waiting = tokio::spawn({
        let b = d.barrier("m").party("one").timeout(Duration::from_secs(30));
        async move { b.arrive(2).await }
    });
    // Once the first arrival waits, another `expected` in the same round is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while d.barrier("m").arrived().await.unwrap() != 1 {
        assert!(std::time::Instant::now() < deadline, "the first arrival never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = match d.barrier("m").party("two").arrive(3).await {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(err, "expected-mismatch");
    assert_eq!(stdout_ok(&host.cli(&["barrier", "m", "arrive", "--expected", "2", "--party", "two"])), "0");
    assert_eq!(waiting.await.unwrap().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_items_drain_in_order() {
    const ITEMS: u64 = 10_000;
    let host = Host::start(&[]).await;
    let q = host.client().await.distributed().queue::<u64>("big");
    for i in 0..ITEMS {
        q.enqueue(&i).await.unwrap();
    }
    assert_eq!(q.size().await.unwrap(), ITEMS);
    let mut drained = Vec::new();
    loop {
        let batch = q.drain(1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        drained.extend(batch);
    }
    assert_eq!(drained, (0..ITEMS).collect::<Vec<_>>());
    assert_eq!(q.size().await.unwrap(), 0);

    // Every segment is full and drained now: a waiting dequeue moves past them and gets
    // the next item, which opens a new segment.
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.dequeue_wait(Duration::from_secs(30)).await }
    });
    wait_parked(&q).await;
    q.enqueue(&ITEMS).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Some(ITEMS));
}
