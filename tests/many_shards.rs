//! Far more shards than the node keeps live: idle instances are passivated and rebuilt
//! on demand, every value stays readable, and memory stays bounded.

mod support;

use std::sync::Arc;

use support::Host;

const COUNTERS: usize = 20_000;
const CALLERS: usize = 64;
const LIVE_INSTANCES: &str = "512";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_shards_on_one_node() {
    let host = Host::start(&["--live-instances", LIVE_INSTANCES]).await;
    let client = Arc::new(host.client().await);
    // Each counter is its own structure, so each lives in a shard of its own: 20,000
    // distinct shard instances, forty times the live bound.
    let run = |op: &'static str| {
        let tasks: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let d = client.distributed();
                tokio::spawn(async move {
                    for i in (caller..COUNTERS).step_by(CALLERS) {
                        let counter = d.counter(&format!("c{i}"));
                        let value = match op {
                            "increment" => counter.increment(i as i64 + 1).await,
                            _ => counter.get().await,
                        };
                        assert_eq!(value.unwrap(), i as i64 + 1, "{op} c{i}");
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    run("increment").await;
    let rss_after_writes = host.rss_bytes();
    run("get").await;
    let rss_after_reads = host.rss_bytes();

    let status = client.status().await.unwrap();
    assert!(status.live_instances <= 512, "{} live instances", status.live_instances);
    // Passivation keeps at most 512 instances live however many shards were touched, so
    // memory stays flat between the writes and the reads that rebuild every shard.
    let rss =
        format!("RSS after writes {} MiB, after reads {} MiB", rss_after_writes >> 20, rss_after_reads >> 20);
    assert!(rss_after_writes < 768 << 20, "{rss}");
    assert!(
        rss_after_reads <= rss_after_writes + rss_after_writes / 10,
        "memory grew with the shards read: {rss}"
    );
    eprintln!("{rss}");
}
