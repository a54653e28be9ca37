//! Maps, sets and registers end to end: typed Rust facades, the CLI, and restarts.

mod support;

use serde::{Deserialize, Serialize};
use support::{Host, stdout_ok};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    email: String,
}

fn alice() -> User {
    User { name: "Alice".into(), email: "alice@example.com".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_set_and_register_as_in_the_original_suite() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();

    let users = d.map::<String, User>("users").shards(50);
    assert_eq!(users.put(&"alice".into(), &alice()).await.unwrap(), None);
    assert_eq!(users.get(&"alice".into()).await.unwrap(), Some(alice()));
    assert!(users.contains(&"alice".into()).await.unwrap());
    let bob = User { name: "Bob".into(), email: "bob@example.com".into() };
    assert_eq!(users.put(&"alice".into(), &bob).await.unwrap(), Some(alice()));
    assert!(users.delete(&"alice".into()).await.unwrap());
    assert!(!users.delete(&"alice".into()).await.unwrap());
    assert!(!users.contains(&"alice".into()).await.unwrap());
    assert_eq!(users.get(&"alice".into()).await.unwrap(), None);
    assert_eq!(users.put(&"alice".into(), &alice()).await.unwrap(), None, "re-put after delete");

    let tags = d.set::<String>("active-tags").shards(50);
    assert_eq!(tags.size().await.unwrap(), 0);
    assert!(tags.add(&"python".into()).await.unwrap());
    assert!(!tags.add(&"python".into()).await.unwrap());
    assert_eq!(tags.size().await.unwrap(), 1);
    assert!(tags.add(&"rust".into()).await.unwrap());
    assert!(tags.add(&"wasm".into()).await.unwrap());
    assert_eq!(tags.size().await.unwrap(), 3);
    assert!(tags.remove(&"python".into()).await.unwrap());
    assert!(!tags.remove(&"python".into()).await.unwrap());
    let mut members = tags.scan().collect().await.unwrap();
    members.sort();
    assert_eq!(members, vec!["rust".to_owned(), "wasm".to_owned()]);

    let hits = d.counter("hits");
    assert_eq!(hits.increment(1).await.unwrap(), 1);
    assert_eq!(hits.increment(5).await.unwrap(), 6);
    assert_eq!(hits.get().await.unwrap(), 6);
    assert_eq!(hits.decrement(2).await.unwrap(), 4);
    assert_eq!(
        d.counter("misses").increment(1).await.unwrap(),
        1,
        "independent counters keep separate values"
    );
    assert_eq!(hits.get().await.unwrap(), 4);

    let config = d.register::<User>("config");
    assert_eq!(config.get().await.unwrap(), None);
    assert!(!config.compare_and_set(Some(&bob), &alice()).await.unwrap());
    assert!(config.compare_and_set(None, &alice()).await.unwrap());
    assert_eq!(config.get_and_set(&bob).await.unwrap(), Some(alice()));
    assert!(config.compare_and_set(Some(&bob), &alice()).await.unwrap());
    assert_eq!(config.get().await.unwrap(), Some(alice()));

    // Independent structures keep separate values; a set and a map may share a name.
    assert!(d.set::<String>("users").add(&"alice".into()).await.unwrap());
    assert_eq!(users.size().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_rust_client_read_each_others_values() {
    let host = Host::start(&[]).await;
    let d = host.client().await.distributed();
    let users = d.map::<String, User>("users");
    users.put(&"alice".into(), &alice()).await.unwrap();
    let printed: serde_json::Value =
        serde_json::from_str(&stdout_ok(&host.cli(&["map", "users", "get", "alice"]))).unwrap();
    assert_eq!(printed, serde_json::json!({"name": "Alice", "email": "alice@example.com"}));

    // Fields in another order are the same value: equal values have equal bytes.
    let bob = r#"{"email":"bob@example.com","name":"Bob"}"#;
    assert_eq!(stdout_ok(&host.cli(&["map", "users", "put", "bob", bob])), "null");
    assert_eq!(users.get(&"bob".into()).await.unwrap().unwrap().name, "Bob");
    assert_eq!(stdout_ok(&host.cli(&["set", "tags", "add", "python"])), "true");
    assert_eq!(stdout_ok(&host.cli(&["set", "tags", "add", "python"])), "false");
    assert!(d.set::<String>("tags").contains(&"python".into()).await.unwrap());
    assert_eq!(stdout_ok(&host.cli(&["map", "users", "size"])), "2");
    let keys = stdout_ok(&host.cli(&["map", "users", "keys"]));
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, vec!["\"alice\"", "\"bob\""]);

    assert_eq!(stdout_ok(&host.cli(&["register", "flag", "compare-and-set", "on"])), "true");
    assert_eq!(
        stdout_ok(&host.cli(&["register", "flag", "compare-and-set", "--expected", "off", "on"])),
        "false"
    );
    assert_eq!(d.register::<String>("flag").get().await.unwrap().as_deref(), Some("on"));

    // A value that does not fit the caller's type is a clear error, not garbage.
    assert_eq!(stdout_ok(&host.cli(&["map", "users", "put", "carol", "42"])), "null");
    let err = users.get(&"carol".into()).await.unwrap_err();
    assert!(err.to_string().contains("does not decode as") && err.to_string().contains("User"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entries_size_and_scan_in_full() {
    const ENTRIES: u64 = 10_000;
    let host = Host::start(&[]).await;
    let client = host.client().await;
    let tasks: Vec<_> = (0..32)
        .map(|caller| {
            let map = client.distributed().map::<u64, u64>("big");
            tokio::spawn(async move {
                for key in (caller..ENTRIES).step_by(32) {
                    assert_eq!(map.put(&key, &(key * 2)).await.unwrap(), None);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let map = client.distributed().map::<u64, u64>("big");
    assert_eq!(map.size().await.unwrap(), ENTRIES);
    let mut entries = map.scan().collect().await.unwrap();
    entries.sort_unstable();
    assert_eq!(entries, (0..ENTRIES).map(|k| (k, k * 2)).collect::<Vec<_>>());
    assert_eq!(map.clear().await.unwrap(), ENTRIES);
    assert_eq!(map.size().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_structure_recovers_after_kill_9() {
    let mut host = Host::start(&[]).await;
    {
        let d = host.client().await.distributed();
        d.counter("hits").increment(7).await.unwrap();
        d.map::<String, User>("users").put(&"alice".into(), &alice()).await.unwrap();
        let tags = d.set::<String>("tags");
        for tag in ["a", "b", "c"] {
            tags.add(&tag.into()).await.unwrap();
        }
        tags.remove(&"b".into()).await.unwrap();
        d.register::<u32>("version").set(&3).await.unwrap();
        assert!(d.lock("held").owner("x").try_acquire().await.unwrap().is_some());
        assert!(d.semaphore("pool", 2).owner("y").try_acquire().await.unwrap().is_some());
    }
    host.kill();
    host.spawn().await;
    let d = host.client().await.distributed();
    assert_eq!(d.counter("hits").get().await.unwrap(), 7);
    assert_eq!(d.map::<String, User>("users").get(&"alice".into()).await.unwrap(), Some(alice()));
    let mut tags = d.set::<String>("tags").scan().collect().await.unwrap();
    tags.sort();
    assert_eq!(tags, vec!["a".to_owned(), "c".to_owned()]);
    assert_eq!(d.register::<u32>("version").get().await.unwrap(), Some(3));
    // Holders and their leases are state too.
    assert_eq!(d.lock("held").try_acquire().await.unwrap(), None);
    assert!(d.lock("held").owner("x").release().await.unwrap());
    assert_eq!(d.semaphore("pool", 2).available().await.unwrap(), 1);
}
