//! The Raft loop alone, measured as the cluster will use it: three node processes on
//! loopback QUIC, each with a real Raft log on disk and 65 groups (64 partitions and the
//! metadata group) of three voters. 64 callers, one per partition, each propose a small
//! entry to their group's leader and wait for it to commit before the next, as 64
//! clients on counters of their own do.
//!
//! `cargo bench -p casty-raft --bench raft_loop`. It prints commits per second, the three
//! processes' CPU time per commit, and the p50 and p99 commit latency.
//! `CASTY_BENCH_SECONDS` (default 5) sets the measured phase, `CASTY_BENCH_CALLERS`
//! (default 64) the callers.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use casty_journal::raft_log::LogFiles;
use casty_raft::{Event, GroupLog, LoopConfig, RaftLoop};
use casty_transport::tls::Tls;
use tokio::sync::mpsc;

// The allocator casty-host runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: u64 = 3;
const GROUPS: u32 = 65;
const WARMUP: Duration = Duration::from_secs(3);

fn main() {
    match std::env::var("CASTY_RAFT_BENCH_NODE") {
        Ok(node) => node_main(node.parse().expect("a node number")),
        Err(_) => parent(),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn parent() {
    let seconds = env_u64("CASTY_BENCH_SECONDS", 5);
    let callers = env_u64("CASTY_BENCH_CALLERS", 64);
    let ports: Vec<u16> = (0..NODES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port())
        .collect();
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let start = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_millis() as u64 + 1000;
    let children: Vec<_> = (1..=NODES)
        .map(|node| {
            Command::new(std::env::current_exe().expect("this bench's path"))
                .env("CASTY_RAFT_BENCH_NODE", node.to_string())
                .env("CASTY_RAFT_BENCH_PORTS", &ports)
                .env("CASTY_RAFT_BENCH_DIR", dir.path().join(format!("node-{node}")))
                .env("CASTY_RAFT_BENCH_START_MS", start.to_string())
                .env("CASTY_BENCH_SECONDS", seconds.to_string())
                .env("CASTY_BENCH_CALLERS", callers.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a node process")
        })
        .collect();
    let (mut commits, mut cpu_us, mut latencies) =
        (0u64, 0u64, hdrhistogram::Histogram::<u64>::new(3).unwrap());
    for child in children {
        let output = child.wait_with_output().expect("a node process's output");
        assert!(output.status.success(), "a node process failed: {}", output.status);
        let text = String::from_utf8_lossy(&output.stdout);
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some("commits"), Some(n)) => commits += n.parse::<u64>().unwrap(),
                (Some("cpu_us"), Some(n)) => cpu_us += n.parse::<u64>().unwrap(),
                (Some("latency_us"), Some(n)) => latencies.record(n.parse().unwrap()).unwrap(),
                _ => {}
            }
        }
    }
    println!(
        "raft loop, {NODES} nodes, {GROUPS} groups, {callers} callers, {seconds} s: {:.0} commits/s, {:.1} µs CPU per commit, p50 {:.2} ms, p99 {:.2} ms",
        commits as f64 / seconds as f64,
        cpu_us as f64 / commits.max(1) as f64,
        latencies.value_at_quantile(0.5) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
    );
}

/// CPU time (user + system) this process has used, from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn node_main(node: u64) {
    let ports: Vec<u16> =
        std::env::var("CASTY_RAFT_BENCH_PORTS").unwrap().split(',').map(|p| p.parse().unwrap()).collect();
    let dir = std::path::PathBuf::from(std::env::var("CASTY_RAFT_BENCH_DIR").unwrap());
    let start = UNIX_EPOCH + Duration::from_millis(env_u64("CASTY_RAFT_BENCH_START_MS", 0));
    let seconds = env_u64("CASTY_BENCH_SECONDS", 5);
    let callers = env_u64("CASTY_BENCH_CALLERS", 64) as u32;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let addr = SocketAddr::new(ip, ports[node as usize - 1]);
        let (files, _, next_write) = LogFiles::open(&dir.join("raft")).expect("open the Raft log");
        let config = LoopConfig {
            id: node,
            files: files.clone(),
            next_write,
            tls: Tls::Development,
            listen: addr,
            local_ip: ip,
        };
        let raft = RaftLoop::start(config).expect("start the Raft loop");
        let endpoint = casty_transport::server_endpoint(addr, &Tls::Development, None).expect("bind");
        raft.serve(endpoint);
        for (peer, port) in (1..=NODES).zip(&ports) {
            if peer != node {
                raft.set_address(peer, SocketAddr::new(ip, *port)).await.unwrap();
            }
        }
        let measuring = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (latency_tx, mut latency_rx) = mpsc::channel::<u64>(1 << 20);
        for group in 0..GROUPS {
            let (events_tx, events) = mpsc::channel(1024);
            let log = GroupLog::new(group, (1..=NODES).collect(), Some(files.clone()));
            raft.add(log, 0, events_tx, tokio::sync::watch::channel(Default::default()).0).await.unwrap();
            let caller = Caller {
                group,
                node,
                raft: raft.clone(),
                events,
                load: group < callers,
                measuring: measuring.clone(),
                commits: commits.clone(),
                latencies: latency_tx.clone(),
            };
            tokio::spawn(caller.run());
            // Spread the leaderships: node n campaigns for every third group.
            if u64::from(group) % NODES == node - 1 {
                raft.campaign(group).await.unwrap();
            }
        }
        drop(latency_tx);
        let until =
            |at: SystemTime| tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default());
        until(start + WARMUP).await;
        measuring.store(true, Ordering::SeqCst);
        let (cpu_before, began) = (cpu_time(), Instant::now());
        until(start + WARMUP + Duration::from_secs(seconds)).await;
        measuring.store(false, Ordering::SeqCst);
        let cpu = cpu_time() - cpu_before;
        let took = began.elapsed();
        let commits = commits.load(Ordering::SeqCst);
        println!("commits {commits}");
        println!("cpu_us {}", cpu.as_micros());
        eprintln!("node {node}: {commits} commits in {took:?}, CPU {cpu:?}");
        while let Ok(latency) = latency_rx.try_recv() {
            println!("latency_us {latency}");
        }
        // Every node stays up until the others are done measuring.
        until(start + WARMUP + Duration::from_secs(seconds + 1)).await;
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
}

/// One partition's caller: while this node leads the group, it proposes an entry and
/// waits for it to commit, then the next.
struct Caller {
    group: u32,
    node: u64,
    raft: RaftLoop,
    events: mpsc::Receiver<Event>,
    load: bool,
    measuring: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    latencies: mpsc::Sender<u64>,
}

impl Caller {
    async fn run(mut self) {
        let mut leading = false;
        let mut seq = 0u64;
        let mut waiting: Option<(Vec<u8>, Instant)> = None;
        loop {
            if leading && self.load && waiting.is_none() {
                seq += 1;
                let context = [self.node.to_le_bytes(), seq.to_le_bytes()].concat();
                if self.raft.propose(self.group, context.clone(), vec![7u8; 16]).await.is_err() {
                    return;
                }
                waiting = Some((context, Instant::now()));
            }
            let Some(event) = self.events.recv().await else { return };
            match event {
                Event::Role { leading: now, .. } => {
                    leading = now;
                    if !now {
                        waiting = None;
                    }
                }
                Event::Committed(entries) => {
                    let Some((context, since)) = &waiting else { continue };
                    if entries.iter().any(|e| e.context == context.as_slice()) {
                        if self.measuring.load(Ordering::Relaxed) {
                            self.commits.fetch_add(1, Ordering::Relaxed);
                            let _ = self.latencies.try_send(since.elapsed().as_micros() as u64);
                        }
                        waiting = None;
                    }
                }
                Event::Refused { .. } => waiting = None,
                Event::ReadIndex { .. } | Event::Install { .. } | Event::SnapshotWanted => {}
            }
        }
    }
}
