//! Starting real `casty-host` processes on loopback and running the `casty` CLI, for the
//! end-to-end tests. Every wait polls with a deadline; nothing sleeps and hopes.
#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part of this.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use casty_client::{Client, Tls};
use casty_core::protocol::{MemberState, StatusReport};

/// How long a node may take to start (the first start compiles the built-in components).
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// A `casty-host` process with its own data directory, killed when dropped.
pub struct Host {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables the process gets besides the test's own.
    extra_env: Vec<(String, String)>,
    /// How the tests' own clients of this node authenticate.
    tls: Tls,
    _temp: Option<tempfile::TempDir>,
}

/// How long a cluster may take to form or settle after a change.
pub const FORM_DEADLINE: Duration = Duration::from_secs(120);
/// The pause between two looks at a condition being waited for.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Checks `check` until it gives `Ok`, then returns its value. Once `FORM_DEADLINE` has
/// passed, fails the test with `what` and the last reason `check` gave (`what` is only
/// worked out then, so it may read logs).
pub async fn poll_until<T, Fut>(what: impl Fn() -> String, mut check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(started.elapsed() < FORM_DEADLINE, "{}: {why}", what()),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Checks `check` throughout `window`, a look every poll interval, and fails the test
/// with the reason it gives the first time it does not hold: for what must not happen
/// within a time, such as a member removed by a node that is no majority.
pub async fn holds_throughout<Fut>(window: Duration, mut check: impl FnMut() -> Fut)
where
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    while started.elapsed() < window {
        if let Err(why) = check().await {
            panic!("{why}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The status as the node at `host` reports it, if it answers.
pub async fn status(host: &Host) -> Option<StatusReport> {
    host.connect(Duration::from_secs(2)).await.ok()?.status().await.ok()
}

/// Starts three nodes, the second and third joining through the first, and waits until
/// every partition has all three as replicas and a leader.
pub async fn three_nodes() -> Vec<Host> {
    three_nodes_with(&[]).await
}

/// [`three_nodes`], each started with `extra` flags too.
pub async fn three_nodes_with(extra: &[&str]) -> Vec<Host> {
    let first = Host::start(&[&["--node-id", "node-1"], extra].concat()).await;
    let seed = first.addr.to_string();
    let second = Host::start(&[&["--node-id", "node-2", "--seed", &seed], extra].concat()).await;
    let third = Host::start(&[&["--node-id", "node-3", "--seed", &seed], extra].concat()).await;
    let hosts = vec![first, second, third];
    wait_formed(&hosts, 3).await;
    hosts
}

/// Waits until every running node sees `members` members up, every partition it
/// replicates with `min(members, 3)` replicas and a leader, every member leading some,
/// and (when every member holds every partition) every partition placed.
pub async fn wait_formed(hosts: &[Host], members: usize) {
    // First what any script would wait for (`casty status --wait-ready --members N`),
    // then the placement and balance the tests rely on.
    let asked = hosts.iter().find(|h| h.is_running()).expect("a node of the cluster runs");
    let ready = async {
        asked.connect(Duration::from_secs(2)).await?.admin().timeout(FORM_DEADLINE).wait_ready(members).await
    };
    if let Err(e) = ready.await {
        panic!("{e} (log of {}:\n{})", asked.addr, asked.log());
    }
    let replicas = members.min(3);
    let settled = || async move {
        for host in hosts.iter().filter(|h| h.is_running()) {
            let report = status(host).await.ok_or_else(|| format!("{} does not answer status", host.addr))?;
            let up = report.members.iter().filter(|m| m.state == MemberState::Up).count();
            let placed = report.groups.iter().all(|g| g.replicas.len() == replicas && g.leader.is_some())
                && (members > replicas || report.groups.len() == report.partitions as usize);
            let leading = report.members.iter().all(|m| m.leads > 0);
            if up != members || !placed || !leading {
                return Err(format!(
                    "as {} sees it, {up} members are up, placed: {placed}, leading: {leading}: {report:?}",
                    host.addr
                ));
            }
        }
        Ok(())
    };
    poll_until(
        || format!("the cluster did not settle (log of {}:\n{})", hosts[0].addr, hosts[0].log()),
        settled,
    )
    .await;
}

/// Which of `hosts` leads the partition of entity `id` of a custom type (its region is
/// the type's name, with the default shards), as `hosts[asked]` sees it.
pub async fn leader_of(hosts: &[Host], asked: usize, entity_type: &str, id: &str) -> usize {
    let host = &hosts[asked];
    let report = status(host).await.expect("the node answers status");
    let address = casty_core::routing::Address {
        entity_type: entity_type.into(),
        region: entity_type.into(),
        shards: casty_core::limits::SHARDS_DEFAULT,
        id: id.into(),
    };
    let partition = address.shard_key().partition(report.partitions);
    let group = report.groups.iter().find(|g| g.partition == partition).expect("the partition is reported");
    let leader = group.leader.as_deref().expect("the partition has a leader");
    let member = report.members.iter().find(|m| m.node_id == leader).expect("the leader is a member");
    hosts.iter().position(|h| h.addr.to_string() == member.address).expect("the leader is one of the hosts")
}

/// The partition that the counter `name` (of `shards` shards) lands in, in a cluster of
/// `partitions` partitions.
pub fn counter_partition(name: &str, shards: u32, partitions: u32) -> u32 {
    let address = casty_core::routing::Address {
        entity_type: "counter".into(),
        region: name.into(),
        shards,
        id: name.into(),
    };
    address.shard_key().partition(partitions)
}

/// The first counter name `prefix-N` whose counter (of `shards` shards) lands in
/// `partition`.
pub fn counter_in_partition(prefix: &str, shards: u32, partitions: u32, partition: u32) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| counter_partition(name, shards, partitions) == partition)
        .expect("some name lands in every partition")
}

/// How many ports below the kernel's ephemeral range nodes are given ports from.
const NODE_PORTS: u16 = 10_000;

/// A free UDP port on loopback for a node (QUIC runs over UDP, so that is the port to
/// probe). It lies below the kernel's ephemeral range, so while a node is down to be
/// restarted, no client endpoint (those bind ephemeral ports) can take its port.
pub fn free_addr() -> SocketAddr {
    free_addr_on([127, 0, 0, 1].into())
}

/// [`free_addr`] on another loopback address (`127.0.0.11`, ...): nodes on addresses of
/// their own can be told apart by their packets.
pub fn free_addr_on(ip: std::net::IpAddr) -> SocketAddr {
    use std::hash::{BuildHasher, RandomState};
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low = range.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(32768);
    let Some(first) = ephemeral_low.checked_sub(NODE_PORTS).filter(|p| *p >= 1024) else {
        let socket = UdpSocket::bind((ip, 0)).expect("bind an ephemeral port");
        return socket.local_addr().expect("a bound socket has an address");
    };
    for attempt in 0..1000u32 {
        let port = first + (RandomState::new().hash_one(attempt) % u64::from(NODE_PORTS)) as u16;
        if let Ok(socket) = UdpSocket::bind((ip, port)) {
            return socket.local_addr().expect("a bound socket has an address");
        }
    }
    panic!("no free UDP port on {ip} in {first}..{ephemeral_low} after 1000 tries");
}

/// Starts another process that holds the lock `name` (through the node at `addr`) and
/// renews its 2 s lease while it runs; returns it and its fencing token. Its command
/// outlives it briefly after a kill, so it gets no pipes of ours and ends by itself.
pub fn hold_lock(addr: SocketAddr, name: &str) -> (Child, u64) {
    let mut holder = Command::new(env!("CARGO_BIN_EXE_casty"))
        .args(["--connect", &addr.to_string(), "lock", name, "run", "--ttl", "2s", "--", "sleep", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the casty CLI");
    let mut stderr = std::io::BufReader::new(holder.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("read the holder's first line");
    let token = line.split("fencing token ").nth(1).and_then(|t| t.split(';').next());
    (holder, token.and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("no token in {line:?}")))
}

/// A free TCP port on loopback.
pub fn free_tcp_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a bound listener has an address")
}

impl Host {
    /// Starts a node in a fresh temporary data directory.
    pub async fn start(extra_args: &[&str]) -> Host {
        Self::start_tls(extra_args, Tls::Development).await
    }

    /// [`Host::start`] for a node whose flags turn on verified TLS: the tests' clients
    /// of it authenticate with `tls`.
    pub async fn start_tls(extra_args: &[&str], tls: Tls) -> Host {
        let mut host = Host::new(free_addr(), extra_args);
        host.tls = tls;
        // The free port may be taken by another test's node before this one binds it.
        for _ in 0..5 {
            match host.try_spawn().await {
                Ok(()) => return host,
                Err(log) if log.contains("Address already in use") => host.addr = free_addr(),
                Err(log) => panic!("casty-host exited before it was ready:\n{log}"),
            }
        }
        panic!("no free port for casty-host after 5 attempts");
    }

    /// Starts a node on `addr` (which other nodes were told, as a seed) in a fresh
    /// temporary data directory.
    pub async fn start_at(addr: SocketAddr, extra_args: &[&str]) -> Host {
        Self::start_at_env(addr, extra_args, &[]).await
    }

    /// [`Host::start_at`], the process getting the environment variables `env` too (on
    /// every start).
    pub async fn start_at_env(addr: SocketAddr, extra_args: &[&str], env: &[(&str, &str)]) -> Host {
        let mut host = Host::new(addr, extra_args);
        host.extra_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        host.spawn().await;
        host
    }

    fn new(addr: SocketAddr, extra_args: &[&str]) -> Host {
        let temp = tempfile::tempdir().expect("a temp dir");
        Host {
            child: None,
            addr,
            data_dir: temp.path().join("data"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: Vec::new(),
            tls: Tls::Development,
            _temp: Some(temp),
        }
    }

    /// Starts the node's process (again) on the same address and data directory.
    pub async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!("casty-host exited before it was ready:\n{log}");
        }
    }

    /// Starts the node's process; if it exits before it is ready, returns its log.
    async fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the node is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the node's log");
        let child = Command::new(env!("CARGO_BIN_EXE_casty-host"))
            .arg("--bind")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("NO_COLOR", "1")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start casty-host");
        self.child = Some(child);
        self.wait_ready().await
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// What the node wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for the node's "listening" log line, then for it to answer. Connecting
    /// before the socket is bound would cost a QUIC retransmission timeout (about 1 s).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let runs_before = self.log().matches("listening on").count();
        while self.log().matches("listening on").count() == runs_before {
            self.check_alive(started)?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        loop {
            if let Ok(client) = self.connect(Duration::from_secs(5)).await
                && client.status().await.is_ok()
            {
                return Ok(());
            }
            self.check_alive(started)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fails with the log if the process exited; panics past the start deadline.
    fn check_alive(&mut self, started: Instant) -> Result<(), String> {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("poll the child")) {
            self.child = None;
            return Err(format!("(exit {status})\n{}", self.log()));
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "casty-host not ready after {START_DEADLINE:?}:\n{}",
            self.log()
        );
        Ok(())
    }

    /// Starts a node that must refuse to start; returns what it logged.
    pub async fn start_expecting_failure(extra_args: &[&str]) -> String {
        let temp = tempfile::tempdir().expect("a temp dir");
        let addr = free_addr();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_casty-host"))
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(temp.path().join("data"))
            .args(extra_args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(START_DEADLINE, output)
            .await
            .expect("the node gave up within the start deadline")
            .expect("run casty-host");
        assert!(!output.status.success(), "casty-host started when it should not have");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to the node's process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the node's process to exit by itself, within `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("the node is running");
        loop {
            if let Some(status) = child.try_wait().expect("poll the child") {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < deadline, "casty-host did not exit within {deadline:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// If the process has exited by itself, how; it is then no longer running.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("poll the child")?;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// `kill -9`: the process gets no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the node");
            child.wait().expect("reap the node");
        }
    }

    pub async fn client(&self) -> Client {
        self.connect(Duration::from_secs(5)).await.expect("connect to the node")
    }

    async fn connect(&self, timeout: Duration) -> Result<Client, casty_client::ClientError> {
        Client::builder().timeout(timeout).tls(self.tls.clone()).connect([self.addr]).await
    }

    /// Runs the `casty` CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&[&["--connect", &self.addr.to_string()], args].concat())
    }

    /// Resident memory of the node's process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS is reported");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB");
        kib * 1024
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the `casty` CLI.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_casty")).args(args).output().expect("run casty")
}

/// The CLI's stdout, asserting it succeeded.
pub fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "casty failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output").trim().to_owned()
}

/// The path of a component built for tests.
pub fn test_component(name: &str) -> &'static Path {
    Path::new(casty_builtins::test_component_path(name).expect("a test component by that name"))
}
