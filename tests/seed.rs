//! The seed scenario against a real `casty-host`, with the values the seed's comments give.

mod support;

#[path = "../examples/seed.rs"]
#[allow(dead_code)]
mod seed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_produces_the_seeds_values() {
    let host = support::Host::start(&[]).await;
    let lines = seed::scenario(&host.client().await.distributed()).await.unwrap();
    let expected = [
        "views.get() => 90",
        r#"users.get(alice) => Some(User { name: "Alice", email: "alice@example.com" })"#,
        "users.contains(alice) => true",
        "users.delete(alice) => true",
        "tags.add(python) => true",
        "tags.add(python) => false",
        "tags.size() => 1",
        r#"jobs.peek() => Some("task-1")"#,
        r#"jobs.dequeue() => Some("task-1")"#,
        "jobs.dequeue() => None",
    ];
    assert_eq!(&lines[..expected.len()], &expected);
    let rest = &lines[expected.len()..];
    assert!(rest[0].starts_with("lock.acquire() => token "), "{rest:?}");
    assert_eq!(rest[1], "lock.release() => true");
    assert_eq!(rest[2], "lock.try_acquire() => true");
    assert!(rest[3].starts_with("sem.acquire() => token "), "{rest:?}");
    assert_eq!(rest[4], "sem.release() => true");
    assert_eq!(&rest[5..], ["barrier.arrive(expected=3) => round 0"; 3]);
}
