//! `cargo bench --bench node`: throughput and latency of every structure's operations
//! against one durable `casty-host` with 1 and 64 callers, and the time a node holding
//! 1,000,000 journaled increments takes to recover from `kill -9`; with each phase, the
//! node's CPU per operation (with more than one caller) and what an operation cost its
//! Raft loop and log (syncs, writes, rounds), from its metrics. Prints figures; asserts
//! nothing about speed.
//!
//! Options (environment): CASTY_BENCH_SECONDS (default 10) per load phase,
//! CASTY_BENCH_ONLY (run only the operations whose label contains it),
//! CASTY_BENCH_RECOVERY_EVENTS (default 1000000; 0 skips the recovery phase),
//! CASTY_BENCH_CALLERS (the numbers of concurrent callers, default `1,64`),
//! CASTY_BENCH_HOST_ARGS (extra `casty-host` flags for the load phases, such as
//! `--in-memory` to separate the cost of durability), CASTY_BENCH_NODES=3 (instead: a
//! three-node cluster with replicas 3, counter and map figures, the nodes' CPU per
//! operation and operations per Raft entry with more than one caller, the frames and
//! Raft messages between them per operation, and the failover time; CASTY_BENCH_ONLY,
//! CASTY_BENCH_CALLERS and CASTY_BENCH_HOST_ARGS apply there too).

#[path = "common.rs"]
mod common;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use casty_client::{BoxFuture, Distributed};
use common::{callers, env_or, load, report};
use hdrhistogram::Histogram;
use support::Host;

/// One benchmarked operation: what a caller does once, given its number and a round.
type Op = fn(Distributed, usize, u64) -> BoxFuture<'static, ()>;

/// Runs `callers` concurrent loops of `op` for `seconds`; returns (ops, latencies).
async fn run(host: &Host, callers: usize, seconds: u64, op: Op) -> (u64, Histogram<u64>) {
    let client = Arc::new(host.client().await);
    let latencies = load(&client, callers, Instant::now() + Duration::from_secs(seconds), op).await;
    (latencies.len(), latencies)
}

/// The operations measured: (label, operation).
fn operations() -> Vec<(&'static str, Op)> {
    vec![
        ("counter increment, one counter each", |d, c, _| {
            Box::pin(async move {
                d.counter(&format!("bench-{c}")).increment(1).await.expect("increment");
            })
        }),
        ("counter increment, one shared counter", |d, _, _| {
            Box::pin(async move {
                d.counter("bench").increment(1).await.expect("increment");
            })
        }),
        ("map put", |d, c, r| {
            Box::pin(async move {
                d.map::<String, u64>("bench-map").put(&format!("{c}-{}", r % 1000), &r).await.expect("put");
            })
        }),
        ("map get", |d, c, r| {
            Box::pin(async move {
                d.map::<String, u64>("bench-map").get(&format!("{c}-{}", r % 1000)).await.expect("get");
            })
        }),
        ("set add", |d, c, r| {
            Box::pin(async move {
                d.set::<String>("bench-set").add(&format!("{c}-{r}")).await.expect("add");
            })
        }),
        ("queue enqueue+dequeue (a queue each)", |d, c, r| {
            Box::pin(async move {
                let q = d.queue::<u64>(&format!("bench-q-{c}"));
                q.enqueue(&r).await.expect("enqueue");
                q.dequeue().await.expect("dequeue");
            })
        }),
        ("lock acquire+release cycle (a lock each)", |d, c, _| {
            Box::pin(async move {
                let lock = d.lock(&format!("bench-lock-{c}")).owner(format!("owner-{c}"));
                lock.acquire().await.expect("acquire");
                lock.release().await.expect("release");
            })
        }),
        ("semaphore acquire+release (8 permits, shared)", |d, c, _| {
            Box::pin(async move {
                let sem =
                    d.semaphore("bench-sem", 8).owner(format!("owner-{c}")).timeout(Duration::from_secs(60));
                sem.acquire().await.expect("acquire");
                sem.release().await.expect("release");
            })
        }),
        ("barrier round of one party (a barrier each)", |d, c, _| {
            Box::pin(async move {
                d.barrier(&format!("bench-barrier-{c}")).arrive(1).await.expect("arrive");
            })
        }),
    ]
}

/// CPU time (user + system) the process `pid` has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 12th and 13th of them, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // The kernel's tick rate; 100 on Linux when it cannot be asked.
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// The counters the nodes' Prometheus metrics give, summed over `nodes`:
/// `casty_journal_writes_total` counts the Raft entries their partition leaders proposed
/// (one per batch), the `casty_raft_*` ones their rounds, frames, messages and Raft log
/// writes and syncs.
fn counters(nodes: &[std::net::SocketAddr]) -> HashMap<String, u64> {
    use std::io::{Read, Write};
    let mut sums = HashMap::new();
    for node in nodes {
        let mut stream = std::net::TcpStream::connect(node).expect("connect to the metrics endpoint");
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("ask for the metrics");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("read the metrics");
        for line in body.lines().filter(|l| l.starts_with("casty_") && !l.contains('{')) {
            let (name, value) = line.split_once(' ').expect("a sample");
            *sums.entry(name.to_owned()).or_default() += value.parse::<u64>().expect("a count");
        }
    }
    sums
}

/// Runs `callers` loops of `op` through `hosts[0]` for `seconds` and reports the phase:
/// its throughput and latencies; with more than one caller the CPU `hosts` spent per
/// operation and the operations per Raft entry; and what an operation cost their Raft
/// loops and logs (syncs and writes, rounds, frames and Raft messages between them),
/// from their `metrics`.
async fn phase(
    hosts: &[Host],
    metrics: &[std::net::SocketAddr],
    label: &str,
    callers: usize,
    seconds: u64,
    op: Op,
) {
    let cpu_before: Duration = hosts.iter().map(|h| cpu_time(h.pid())).sum();
    let before = counters(metrics);
    let (ops, histogram) = run(&hosts[0], callers, seconds, op).await;
    let cpu = hosts.iter().map(|h| cpu_time(h.pid())).sum::<Duration>() - cpu_before;
    let after = counters(metrics);
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let per = |name: &str| delta(name) as f64 / ops.max(1) as f64;
    report(label, ops, seconds as f64, &histogram);
    if callers > 1 {
        println!(
            "{label}: {:.0} µs of the nodes' CPU per operation, {:.2} operations per Raft entry",
            cpu.as_micros() as f64 / ops.max(1) as f64,
            ops as f64 / delta("casty_journal_writes_total").max(1) as f64
        );
    }
    let syncs = delta("casty_raft_log_syncs_total");
    println!(
        "{label}: per operation {:.2} fdatasyncs ({:.0} µs each), {:.2} log writes, {:.2} rounds, {:.2} frames, {:.2} Raft messages",
        per("casty_raft_log_syncs_total"),
        delta("casty_raft_log_sync_microseconds_total") as f64 / syncs.max(1) as f64,
        per("casty_raft_log_writes_total"),
        per("casty_raft_rounds_total"),
        per("casty_raft_frames_sent_total"),
        per("casty_raft_messages_sent_total"),
    );
}

/// Three nodes, replicas 3: counter increments and map puts (or the operations
/// CASTY_BENCH_ONLY names) through a client of the first node, each node started with
/// `extra` flags too; with more than one caller also the CPU the three nodes spent per
/// operation and the operations per Raft entry. Then the time from a kill -9 of the busiest leader to
/// the first successful write on each partition it led.
async fn cluster(seconds: u64, extra: &[&str], only: &str) {
    let metrics: Vec<_> = (0..3).map(|_| support::free_tcp_addr()).collect();
    let first =
        Host::start(&[&["--node-id", "node-1", "--metrics", &metrics[0].to_string()], extra].concat()).await;
    let seed = first.addr.to_string();
    let mut hosts = vec![first];
    for (i, addr) in metrics.iter().enumerate().skip(1) {
        let (id, addr) = (format!("node-{}", i + 1), addr.to_string());
        hosts.push(
            Host::start(&[&["--node-id", &id, "--seed", &seed, "--metrics", &addr], extra].concat()).await,
        );
    }
    support::wait_formed(&hosts, 3).await;
    let chosen = |label: &str| match only {
        "" => label.starts_with("counter") || label == "map put",
        only => label.contains(only),
    };
    for (label, op) in operations().into_iter().filter(|(label, _)| chosen(label)) {
        run(&hosts[0], 8, 1, op).await;
        for callers in callers() {
            phase(&hosts, &metrics, &format!("3 nodes: {label}, {callers} callers"), callers, seconds, op)
                .await;
        }
    }
    let report = support::status(&hosts[0]).await.expect("status");
    let busiest = report.members.iter().max_by_key(|m| m.leads).expect("members").clone();
    let victim = hosts.iter().position(|h| h.addr.to_string() == busiest.address).expect("the busiest node");
    let survivor = hosts.iter().position(|h| h.addr.to_string() != busiest.address).expect("another node");
    // One counter per partition the victim leads, named so it lands there.
    let led: Vec<u32> = report
        .groups
        .iter()
        .filter(|g| g.leader.as_deref() == Some(&busiest.node_id))
        .map(|g| g.partition)
        .collect();
    let names: Vec<String> =
        led.iter().map(|&p| support::counter_in_partition("failover", 1, report.partitions, p)).collect();
    let d = hosts[survivor].client().await.distributed();
    let killed = Instant::now();
    hosts[victim].kill();
    let writes: Vec<_> = names
        .into_iter()
        .map(|name| {
            let counter = d.counter(&name).shards(1).timeout(Duration::from_secs(30));
            tokio::spawn(async move {
                match counter.increment(1).await {
                    Ok(_) => Ok(killed.elapsed()),
                    Err(e) => Err(format!(
                        "{name}: a write {} ms after the kill failed: {e}",
                        killed.elapsed().as_millis()
                    )),
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for write in writes {
        match write.await.expect("writer") {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => {
                for host in hosts.iter().filter(|h| h.is_running()) {
                    let log = host.log();
                    let lines: Vec<_> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
                    eprintln!("--- {}:\n{}", host.addr, lines[lines.len().saturating_sub(30)..].join("\n"));
                }
                panic!("{e}");
            }
        }
    }
    println!(
        "3 nodes: kill -9 of {} (leading {} partitions) to the first write on each of them: {} ms (slowest partition)",
        busiest.node_id,
        led.len(),
        slowest.as_millis()
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

// The nodes' allocator (host/casty-host/main.rs): the bench's callers allocate on the
// same two cores, and glibc's allocator was a sixth of their time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread for every caller, as redis-benchmark runs one event loop: the
// bench shares the two cores with the nodes it measures, and callers spread
// over worker threads cost the nodes CPU in cross-thread wake-ups and send
// their requests in smaller bursts. At 50,000 operations a second the thread
// is busy about a quarter of the time, so it is not what limits the figures.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Ok(filter) = std::env::var("CASTY_BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    }
    let seconds = env_or("CASTY_BENCH_SECONDS", 10);
    let extra = std::env::var("CASTY_BENCH_HOST_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let only = std::env::var("CASTY_BENCH_ONLY").unwrap_or_default();
    if env_or("CASTY_BENCH_NODES", 1) == 3 {
        return cluster(seconds, &extra, &only).await;
    }
    let metrics = [support::free_tcp_addr()];
    let host = [Host::start(&[&["--metrics", &metrics[0].to_string()], &extra[..]].concat()).await];
    for (label, op) in operations().into_iter().filter(|(label, _)| label.contains(only.as_str())) {
        // Warm up: compile caches, connections, instances.
        run(&host[0], 8, 1, op).await;
        for callers in callers() {
            phase(&host, &metrics, &format!("{label}, {callers} callers"), callers, seconds, op).await;
        }
    }
    drop(host);
    let events = env_or("CASTY_BENCH_RECOVERY_EVENTS", 1_000_000);
    if events > 0 {
        recovery(events).await;
    }
}
