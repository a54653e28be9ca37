//! The node embedded in-process: the counter through the facade, persistence across a
//! restart, passivation under many shards, and misbehaving entities.

use std::time::Duration;

use casty_client::{ClientError, ErrorKind};
use casty_core::routing::Address;
use casty_node::Node;

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_through_an_embedded_node() {
    let node = Node::builder().bind(local()).start().await.unwrap();
    let d = node.distributed();
    let views = d.counter("page-views").shards(50);
    assert_eq!(views.get().await.unwrap(), 0);
    assert_eq!(views.increment(100).await.unwrap(), 100);
    assert_eq!(views.decrement(10).await.unwrap(), 90);
    assert_eq!(views.get().await.unwrap(), 90);
    assert_eq!(d.counter("other").get().await.unwrap(), 0);
    views.reset().await.unwrap();
    assert_eq!(views.get().await.unwrap(), 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_with_passivation_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let start = || Node::builder().bind(local()).data_dir(dir.path()).partitions(4).live_instances(8).start();
    let node = start().await.unwrap();
    let d = node.distributed();
    // 40 counters over 4 partitions with 2 live instances each: constant passivation.
    // 3000 increments cross the checkpoint interval, so recovery starts from a checkpoint.
    for round in 0..75 {
        for c in 0..40 {
            let value = d.counter(&format!("c{c}")).increment(1).await.unwrap();
            assert_eq!(value, round + 1);
        }
    }
    node.shutdown().await;

    let node = start().await.unwrap();
    let d = node.distributed();
    for c in 0..40 {
        assert_eq!(d.counter(&format!("c{c}")).get().await.unwrap(), 75, "counter c{c}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_malformed_commands_are_named() {
    let node = Node::builder().bind(local()).start().await.unwrap();
    let d = node.distributed();
    let address = |entity_type: &str| Address {
        entity_type: entity_type.into(),
        region: "r".into(),
        shards: 1,
        id: "x".into(),
    };
    let err = d.send_raw(address("nope"), b"\"get\"".to_vec(), Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::UnknownEntityType), "{err}");
    assert!(err.to_string().contains("counter"), "{err}");
    let err = d
        .send_raw(address("counter"), b"{\"explode\":1}".to_vec(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::MalformedCommand), "{err}");
    let err = d.counter("c").shards(0).get().await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::InvalidRequest), "{err}");
    let big = d.counter("c").increment(i64::MAX).await.unwrap();
    assert_eq!(big, i64::MAX);
    let err = d.counter("c").increment(1).await.unwrap_err();
    assert!(matches!(&err, ClientError::Rejected { code, .. } if code == "overflow"), "{err}");
    assert_eq!(d.counter("c").get().await.unwrap(), i64::MAX);
    node.shutdown().await;
}
