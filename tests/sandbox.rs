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
    let send = |command: &str| host.cli(&["entity", "faulty", "f1", "send", command]);
    assert_eq!(stdout_ok(&send(r#"{"add":{"n":5}}"#)), "5");

    let cases = [
        ("\"trap\"", "entity trapped"),
        ("\"spin\"", "deadline of 200 ms"),
        ("\"allocate\"", "memory limit of 33554432 bytes"),
    ];
    let counter = host.client().await.distributed().counter("bystander");
    for (command, named) in cases {
        let out = send(command);
        assert!(!out.status.success(), "{command} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{command}: {stderr}");
        assert!(stderr.contains("state is unchanged"), "{command}: {stderr}");
        // Everyone else keeps being served, and the entity's state is intact.
        counter.increment(1).await.unwrap();
        assert_eq!(stdout_ok(&send("\"get\"")), "5", "after {command}");
    }
    assert_eq!(counter.get().await.unwrap(), 3);
    assert_eq!(stdout_ok(&send(r#"{"add":{"n":1}}"#)), "6");

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
