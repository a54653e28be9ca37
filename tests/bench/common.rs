//! What the benchmarks share: options from the environment, concurrent callers with
//! their latencies, and one line per figure.

use std::sync::Arc;
use std::time::Instant;

use casty_client::{Client, Distributed};
use hdrhistogram::Histogram;

pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The numbers of concurrent callers each phase runs with: CASTY_BENCH_CALLERS, such as
/// `1,8,64`, or 1 and 64.
pub(crate) fn callers() -> Vec<usize> {
    let Ok(list) = std::env::var("CASTY_BENCH_CALLERS") else { return vec![1, 64] };
    list.split(',')
        .map(|n| {
            n.trim().parse().unwrap_or_else(|_| panic!("CASTY_BENCH_CALLERS: {n:?} is no number of callers"))
        })
        .collect()
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("a histogram")
}

/// Runs `callers` concurrent loops of `op` (given the caller's number and its round)
/// until `until`; returns every call's latency in µs.
pub(crate) async fn load<F, Fut>(
    client: &Arc<Client>,
    callers: usize,
    until: Instant,
    op: F,
) -> Histogram<u64>
where
    F: Fn(Distributed, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (d, op) = (client.distributed(), op.clone());
            tokio::spawn(async move {
                let mut latencies = histogram();
                let mut round = 0;
                while Instant::now() < until {
                    let started = Instant::now();
                    op(d.clone(), caller, round).await;
                    latencies.record(started.elapsed().as_micros() as u64).expect("record");
                    round += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = histogram();
    for task in tasks {
        all.add(task.await.expect("caller")).expect("merge");
    }
    all
}

/// One figure: throughput over `seconds` and latency quantiles.
pub(crate) fn report(label: &str, ops: u64, seconds: f64, latencies: &Histogram<u64>) {
    println!(
        "{label:<64} {:>9.0} ops/s   p50 {:>6} µs   p99 {:>6} µs",
        ops as f64 / seconds,
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99)
    );
}
