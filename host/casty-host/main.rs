//! `casty-host`: runs one Casty node. With no flags it starts a one-node cluster on
//! 127.0.0.1:25520 that persists to `./casty-data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use casty_core::limits;
use casty_node::Node;

#[path = "../tls_args.rs"]
mod tls_args;

// Every command allocates a little at many hops (frames, Raft entries, component calls);
// glibc's allocator took about a tenth of a loaded node's time, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(version, about = "Runs a Casty node: sharded, replicated entities whose logic is WebAssembly.")]
struct Args {
    /// The cluster's name; a data directory belongs to one cluster.
    #[arg(long, env = "CASTY_NAME", default_value = "casty")]
    name: String,
    /// Address to serve clients and peers on (QUIC).
    #[arg(long, env = "CASTY_BIND", default_value = "127.0.0.1:25520")]
    bind: SocketAddr,
    /// This node's id (default: the bind address).
    #[arg(long, env = "CASTY_NODE_ID")]
    node_id: Option<String>,
    /// A seed node of the cluster to join (repeatable).
    #[arg(long = "seed", env = "CASTY_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// Where the journal, compiled components and TLS identity live.
    #[arg(long, env = "CASTY_DATA_DIR", default_value = "./casty-data")]
    data_dir: PathBuf,
    /// Keep everything in memory (ignoring --data-dir); nothing survives the process.
    #[arg(long, env = "CASTY_IN_MEMORY")]
    in_memory: bool,
    #[arg(
        long,
        env = "CASTY_PARTITIONS",
        help = format!(
            "Partitions of a new cluster, fixed once created; a restart or a joining node takes the cluster's [default: {}]",
            limits::PARTITIONS_DEFAULT
        )
    )]
    partitions: Option<u32>,
    /// Replicas per partition, capped at the cluster's size.
    #[arg(long, env = "CASTY_REPLICAS", default_value_t = 3)]
    replicas: u32,
    /// How long a member may answer nothing before it is removed and its replicas are
    /// re-created on the others.
    #[arg(long, env = "CASTY_DEAD_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    dead_after: std::time::Duration,
    /// Serve a custom entity type from a component file: TYPE=PATH (repeatable).
    #[arg(long = "entity", env = "CASTY_ENTITIES", value_delimiter = ',', value_parser = parse_entity)]
    entities: Vec<(String, PathBuf)>,
    /// Shard instances kept live before idle ones are passivated.
    #[arg(long, env = "CASTY_LIVE_INSTANCES", default_value_t = limits::LIVE_INSTANCES_DEFAULT)]
    live_instances: usize,
    /// Wall time one call into an entity may take (e.g. 500ms).
    #[arg(long, env = "CASTY_CALL_DEADLINE", default_value = "500ms", value_parser = humantime::parse_duration)]
    call_deadline: Duration,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics).
    #[arg(long, env = "CASTY_METRICS")]
    metrics: Option<SocketAddr>,
    /// Linear memory one shard instance may grow to, in MiB.
    #[arg(long, env = "CASTY_INSTANCE_MEMORY_MIB", default_value_t = limits::INSTANCE_MEMORY_MAX_BYTES >> 20)]
    instance_memory_mib: usize,
    #[command(flatten)]
    tls: tls_args::TlsArgs,
}

fn parse_entity(value: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = value.split_once('=').ok_or_else(|| format!("expected TYPE=PATH, got {value:?}"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let mut builder = Node::builder()
        .name(&args.name)
        .bind(args.bind)
        .seeds(args.seeds.clone())
        .replicas(args.replicas)
        .dead_after(args.dead_after)
        .live_instances(args.live_instances)
        .call_deadline(args.call_deadline)
        .instance_memory(args.instance_memory_mib << 20)
        .tls(args.tls.tls().map_err(anyhow::Error::msg)?);
    if let Some(id) = &args.node_id {
        builder = builder.node_id(id);
    }
    if !args.in_memory {
        builder = builder.data_dir(&args.data_dir);
    }
    if let Some(addr) = args.metrics {
        builder = builder.metrics(addr);
    }
    if let Some(partitions) = args.partitions {
        builder = builder.partitions(partitions);
    }
    for (name, path) in &args.entities {
        let wasm = std::fs::read(path)
            .with_context(|| format!("cannot read entity type {name} from {}", path.display()))?;
        builder = builder.entity_type(name, wasm);
    }
    let node = builder.start().await.context("the node could not start")?;

    tokio::select! {
        signal = shutdown_signal() => signal?,
        reason = node.failed() => {
            // Fail-stop: what the disk took is all a restart needs (as after kill -9),
            // and a hand-over would only ask the failed journal for more.
            tracing::error!("{reason}; stopping now so that nothing the disk did not take is acknowledged; start the node again once its disk is healthy");
            std::process::exit(1);
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}
