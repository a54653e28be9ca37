//! A component that traps, loops forever or allocates without bound fails only that
//! command, names the limit it hit, and leaves its entity's state intact.

mod support;

use casty_client::ErrorKind;
use support::{Host, stdout_ok, test_component};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_entities_fail_alone_and_keep_their_state() {
    let entity = format!("faulty={}", test_component("faulty").display());
    let host =
        Host::start(&["--entity", &entity, "--call-deadline", "200ms", "--instance-memory-mib", "32"]).await;
    // The same component under a deadline allocating cannot reach, so only the memory
    // cap stops it, however slow the machine.
    let faulty = test_component("faulty").display().to_string();
    stdout_ok(&host.cli(&["deploy", &faulty, "--type", "faulty-patient", "--call-deadline", "60s"]));
    let send = |ty: &str, command: &str| host.cli(&["entity", ty, "f1", "send", command]);
    for ty in ["faulty", "faulty-patient"] {
        assert_eq!(stdout_ok(&send(ty, r#"{"add":{"n":5}}"#)), "5");
    }

    let cases = [
        ("faulty", "\"trap\"", "entity trapped"),
        ("faulty", "\"spin\"", "deadline of 200 ms"),
        ("faulty-patient", "\"allocate\"", "memory limit of 33554432 bytes"),
    ];
    let counter = host.client().await.distributed().counter("bystander");
    for (ty, command, named) in cases {
        let out = send(ty, command);
        assert!(!out.status.success(), "{command} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{command}: {stderr}");
        assert!(stderr.contains("state is unchanged"), "{command}: {stderr}");
        // Everyone else keeps being served, and the entity's state is intact.
        counter.increment(1).await.unwrap();
        assert_eq!(stdout_ok(&send(ty, "\"get\"")), "5", "after {command}");
    }
    assert_eq!(counter.get().await.unwrap(), 3);
    assert_eq!(stdout_ok(&send("faulty", r#"{"add":{"n":1}}"#)), "6");

    // The same through the Rust client, with the kind to match on.
    let d = host.client().await.distributed();
    let address = casty_core::routing::Address {
        entity_type: "faulty".into(),
        region: "faulty".into(),
        shards: 100,
        id: "f1".into(),
    };
    let err =
        d.send_raw(address, b"\"spin\"".to_vec(), std::time::Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::DeadlineExceeded), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_entity_does_not_hold_up_other_partitions() {
    let entity = format!("faulty={}", test_component("faulty").display());
    let host = Host::start(&["--entity", &entity, "--call-deadline", "3s", "--partitions", "8"]).await;
    let spinner = casty_core::routing::Address {
        entity_type: "faulty".into(),
        region: "faulty".into(),
        shards: 100,
        id: "spinner".into(),
    };
    let spinner_partition = spinner.shard_key().partition(8);
    // A counter in another partition than the spinner.
    let name = (0..)
        .map(|i| format!("busy-{i}"))
        .find(|name| support::counter_partition(name, 100, 8) != spinner_partition)
        .unwrap();
    let client = host.client().await;
    let d = client.distributed();
    let spin = tokio::spawn({
        let d = d.clone();
        async move { d.send_raw(spinner, b"\"spin\"".to_vec(), std::time::Duration::from_secs(30)).await }
    });
    let counter = d.counter(&name);
    for expected in 1..=3 {
        assert_eq!(counter.increment(1).await.unwrap(), expected);
    }
    assert!(!spin.is_finished(), "the other partition was served while the entity spun");
    let err = spin.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::DeadlineExceeded), "{err}");
}
