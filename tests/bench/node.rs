//! `cargo bench --bench node`: counter throughput and latency against one durable
//! `casty-host`, and the time a node holding 1,000,000 journaled increments takes to
//! recover from `kill -9`. Prints figures; asserts nothing about speed.
//!
//! Options (environment): CASTY_BENCH_SECONDS (default 10) per load phase,
//! CASTY_BENCH_RECOVERY_EVENTS (default 1000000; 0 skips the recovery phase),
//! CASTY_BENCH_HOST_ARGS (extra `casty-host` flags for the load phases, such as
//! `--in-memory` to separate the cost of durability).

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use support::Host;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `callers` concurrent loops of increments for `seconds`; returns (ops, latencies).
async fn load(host: &Host, callers: usize, seconds: u64, spread: bool) -> (u64, Histogram<u64>) {
    let client = Arc::new(host.client().await);
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let d = client.distributed();
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("a histogram");
                let name = if spread { format!("bench-{caller}") } else { "bench".to_owned() };
                let counter = d.counter(&name);
                while Instant::now() < until {
                    let started = Instant::now();
                    counter.increment(1).await.expect("increment");
                    histogram.record(started.elapsed().as_micros() as u64).expect("record");
                }
                histogram
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("a histogram");
    for task in tasks {
        all.add(task.await.expect("caller")).expect("merge");
    }
    (all.len(), all)
}

fn report(label: &str, ops: u64, seconds: u64, histogram: &Histogram<u64>) {
    println!(
        "{label:<44} {:>9.0} ops/s   p50 {:>6} µs   p99 {:>6} µs",
        ops as f64 / seconds as f64,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );
}

async fn recovery(events: u64) {
    let mut host = Host::start(&[]).await;
    let client = Arc::new(host.client().await);
    let callers = 64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let d = client.distributed();
            tokio::spawn(async move {
                let counter = d.counter(&format!("recovery-{}", caller % 8));
                for _ in (caller..events).step_by(callers as usize) {
                    counter.increment(1).await.expect("increment");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    println!("journaled {events} increments in {:.1} s", started.elapsed().as_secs_f64());
    drop(client);
    host.kill();

    let restarted = Instant::now();
    host.spawn().await;
    let ready = restarted.elapsed();
    let d = host.client().await.distributed();
    let mut total = 0;
    for c in 0..8 {
        total += d.counter(&format!("recovery-{c}")).get().await.expect("get");
    }
    let first_reads = restarted.elapsed();
    assert_eq!(total as u64, events, "every journaled increment is recovered");
    println!(
        "recovery after kill -9: serving after {:.0} ms (process start included), all {events} increments read back after {:.0} ms",
        ready.as_secs_f64() * 1000.0,
        first_reads.as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let seconds = env_or("CASTY_BENCH_SECONDS", 10);
    let extra = std::env::var("CASTY_BENCH_HOST_ARGS").unwrap_or_default();
    let host = Host::start(&extra.split_whitespace().collect::<Vec<_>>()).await;
    // Warm up: compile caches, connections, instances.
    load(&host, 8, 1, true).await;
    for (callers, spread) in [(1, false), (64, true), (64, false)] {
        let (ops, histogram) = load(&host, callers, seconds, spread).await;
        let target = if spread { "one counter each" } else { "one shared counter" };
        report(&format!("counter increment, {callers} callers, {target}"), ops, seconds, &histogram);
    }
    drop(host);
    let events = env_or("CASTY_BENCH_RECOVERY_EVENTS", 1_000_000);
    if events > 0 {
        recovery(events).await;
    }
}
