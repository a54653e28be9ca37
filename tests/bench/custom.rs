//! `cargo bench --bench custom`: the figures of custom (deployed) entity types. Prints
//! figures; asserts nothing about speed.
//!
//! - the built-in counter's component deployed as a custom type, against the built-in:
//!   the cost of user code beyond the component call itself;
//! - the first command to a never-touched shard of a deployed type, against the next;
//! - a bystander's latency beside runaway entities (loops, unbounded allocation, traps)
//!   on the same node, against its latency alone;
//! - on three nodes: the time from a deploy to the first successful call on every node.
//!
//! Options (environment): CASTY_BENCH_SECONDS (default 10) per load phase,
//! CASTY_BENCH_CALLERS (the numbers of concurrent callers, default `1,64`).

#[path = "common.rs"]
mod common;
#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use casty_client::{Client, Distributed};
use common::{callers, env_or, histogram, load, report};
use serde_json::{Value, json};
use support::{Host, test_component};

async fn increment_builtin(d: Distributed, caller: usize, _: u64) {
    d.counter(&format!("c-{caller}")).increment(1).await.expect("increment");
}

async fn increment_deployed(d: Distributed, caller: usize, _: u64) {
    let counters = d.entity::<Value, Option<i64>>("my-counter");
    counters.get(&format!("c-{caller}")).send(json!({"increment": {"by": 1}})).await.expect("increment");
}

/// The built-in counter against the same component deployed as a custom type.
async fn custom_against_builtin(client: &Arc<Client>, seconds: u64) {
    let counter = casty_builtins::BUILTINS.iter().find(|(name, _)| *name == "counter").expect("built in").1;
    client.deploy(counter.to_vec(), "my-counter").await.expect("deploy");
    for callers in callers() {
        for (label, deployed) in
            [("counter increment, built-in", false), ("the same component deployed", true)]
        {
            let warm = Instant::now() + Duration::from_secs(1);
            let measured = Instant::now() + Duration::from_secs(seconds);
            let latencies = if deployed {
                load(client, callers, warm, increment_deployed).await;
                load(client, callers, measured + Duration::from_secs(1), increment_deployed).await
            } else {
                load(client, callers, warm, increment_builtin).await;
                load(client, callers, measured + Duration::from_secs(1), increment_builtin).await
            };
            report(&format!("{label}, {callers} callers"), latencies.len(), seconds as f64, &latencies);
        }
    }
}

/// The first command to each of many never-touched shards, and the command after it.
async fn first_calls(client: &Arc<Client>) {
    client
        .deploy(std::fs::read(test_component("bank-account")).expect("built"), "bank-account")
        .await
        .expect("deploy");
    let accounts = client.entity::<bank_account::Command, u64>("bank-account").shards(65_536);
    let (mut first_reads, mut next_reads, mut first_writes, mut next_writes) =
        (histogram(), histogram(), histogram(), histogram());
    for i in 0..2000 {
        let account = accounts.get(&format!("never-{i}"));
        // A read (refused: the account is not open) persists nothing: the instance alone.
        let (read, read_again) = (bank_account::Command::Balance, bank_account::Command::Balance);
        let started = Instant::now();
        let _ = account.send(read).await;
        first_reads.record(started.elapsed().as_micros() as u64).expect("record");
        let started = Instant::now();
        let _ = account.send(read_again).await;
        next_reads.record(started.elapsed().as_micros() as u64).expect("record");

        let fresh = accounts.get(&format!("fresh-{i}"));
        let started = Instant::now();
        fresh.send(bank_account::Command::Open { owner: "ada".into() }).await.expect("open");
        first_writes.record(started.elapsed().as_micros() as u64).expect("record");
        let started = Instant::now();
        fresh.send(bank_account::Command::Deposit { amount: 1 }).await.expect("deposit");
        next_writes.record(started.elapsed().as_micros() as u64).expect("record");
    }
    for (label, latencies) in [
        ("first read of a never-touched shard (instantiate + restore)", &first_reads),
        ("next read of that shard", &next_reads),
        ("first write to a never-touched shard", &first_writes),
        ("next write to that shard", &next_writes),
    ] {
        println!(
            "{label:<64} p50 {:>6} µs   p99 {:>6} µs",
            latencies.value_at_quantile(0.5),
            latencies.value_at_quantile(0.99)
        );
    }
}

/// A bystander's latency alone, then beside entities that spin, allocate and trap.
async fn runaway(client: &Arc<Client>, seconds: u64) {
    let faulty = std::fs::read(test_component("faulty")).expect("built");
    let deployment = casty_client::Deployment {
        entity_type: "faulty".into(),
        wasm: faulty,
        memory_max_bytes: Some(32 << 20),
        call_deadline_ms: Some(200),
    };
    client.deploy_with(deployment).await.expect("deploy");
    let alone = load(client, 8, Instant::now() + Duration::from_secs(seconds), increment_builtin).await;
    let stop = Arc::new(AtomicBool::new(false));
    let runaways: Vec<_> = ["spin", "allocate", "trap"]
        .into_iter()
        .map(|command| {
            let (d, stop) = (client.distributed(), stop.clone());
            tokio::spawn(async move {
                let entities = d.entity::<Value, u64>("faulty");
                let mut failed = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let entity = entities.get(&format!("runaway-{command}-{failed}"));
                    entity.send(json!(command)).await.expect_err("a runaway fails");
                    failed += 1;
                }
                failed
            })
        })
        .collect();
    let beside = load(client, 8, Instant::now() + Duration::from_secs(seconds), increment_builtin).await;
    stop.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for task in runaways {
        failed += task.await.expect("runaway");
    }
    report("bystander counter increments, 8 callers, alone", alone.len(), seconds as f64, &alone);
    report(
        &format!("the same beside runaways ({failed} spins, allocations, traps)"),
        beside.len(),
        seconds as f64,
        &beside,
    );
    println!(
        "bystander p99 beside runaways / alone: {:.2}",
        beside.value_at_quantile(0.99) as f64 / alone.value_at_quantile(0.99) as f64
    );
}

/// Three nodes: from the start of a deploy to the first successful call through each
/// node, for components never compiled on those nodes before.
async fn deploy_spread() {
    let hosts = support::three_nodes().await;
    let clients: Vec<Arc<Client>> = {
        let mut clients = Vec::new();
        for host in &hosts {
            clients.push(Arc::new(host.client().await));
        }
        clients
    };
    for (entity_type, component, command) in [
        ("bank-account", "bank-account", json!({"Open": {"owner": "ada"}})),
        ("session", "session", json!({"Start": {"user": "ada", "ttl_ms": 60000}})),
        ("faulty", "faulty", json!({"add": {"n": 1}})),
        ("account-v2", "bank-account-v2", json!({"Open": {"owner": "ada"}})),
    ] {
        let wasm = std::fs::read(test_component(component)).expect("built");
        let started = Instant::now();
        let deploy = {
            let client = clients[0].clone();
            tokio::spawn(async move {
                client.deploy(wasm, entity_type).await.expect("deployed");
                started.elapsed()
            })
        };
        let mut callers = Vec::new();
        for (n, client) in clients.iter().enumerate() {
            let (client, command) = (client.clone(), command.clone());
            callers.push(tokio::spawn(async move {
                let entity = client.entity::<Value, Value>(entity_type).get(&format!("first-{n}"));
                while entity.send(command.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                started.elapsed()
            }));
        }
        let mut slowest = Duration::ZERO;
        for caller in callers {
            slowest = slowest.max(caller.await.expect("caller"));
        }
        let answered = deploy.await.expect("deploy");
        println!(
            "deploy {entity_type:<13} → first successful call on every node: {:>4} ms (the deploy answered after {} ms)",
            slowest.as_millis(),
            answered.as_millis()
        );
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_or("CASTY_BENCH_SECONDS", 10);
    {
        let host = Host::start(&[]).await;
        let client = Arc::new(host.client().await);
        custom_against_builtin(&client, seconds).await;
        first_calls(&client).await;
        runaway(&client, seconds).await;
    }
    deploy_spread().await;
}
