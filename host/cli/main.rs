//! `casty`: the command-line client. Prints results as JSON on stdout, errors on stderr
//! with a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use casty_client::{Client, ClientError, Distributed, StatusReport};
use casty_core::limits::SHARDS_DEFAULT;
use casty_core::routing::Address;

#[derive(Debug, Parser)]
#[command(version, about = "The Casty command-line client.")]
struct Cli {
    /// A node to connect to (repeatable; the first that answers is used).
    #[arg(
        long = "connect",
        env = "CASTY_CONNECT",
        value_delimiter = ',',
        default_value = "127.0.0.1:25520",
        global = true
    )]
    connect: Vec<String>,
    /// How long one operation may take (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    /// Shards of the structure; every caller of one structure must use the same number.
    #[arg(long, default_value_t = SHARDS_DEFAULT, global = true)]
    shards: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A distributed counter.
    Counter {
        name: String,
        #[command(subcommand)]
        op: CounterOp,
    },
    /// Send a raw JSON command to any entity type.
    Entity {
        /// The entity type (`counter`, or a custom type).
        entity_type: String,
        /// The entity's id.
        id: String,
        #[command(subcommand)]
        op: EntityOp,
        /// The structure the entity belongs to (default: the type's name).
        #[arg(long)]
        region: Option<String>,
    },
    /// Show the cluster's members, partitions and entity types.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CounterOp {
    /// Add N (default 1); prints the new value.
    Increment { n: Option<i64> },
    /// Subtract N (default 1); prints the new value.
    Decrement { n: Option<i64> },
    /// Print the value (0 if never written).
    Get,
    /// Set the value back to 0.
    Reset,
}

#[derive(Debug, Subcommand)]
enum EntityOp {
    /// Send a command, given as JSON; prints the reply as JSON.
    Send { command: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<String, ClientError> {
    let client = Client::connect_timeout(cli.connect.iter().map(String::as_str), cli.timeout).await?;
    let d = client.distributed();
    match cli.command {
        Command::Counter { name, op } => {
            let counter = d.counter(&name).shards(cli.shards).timeout(cli.timeout);
            let value = match op {
                CounterOp::Increment { n } => Value::from(counter.increment(n.unwrap_or(1)).await?),
                CounterOp::Decrement { n } => Value::from(counter.decrement(n.unwrap_or(1)).await?),
                CounterOp::Get => Value::from(counter.get().await?),
                CounterOp::Reset => {
                    counter.reset().await?;
                    Value::Null
                }
            };
            Ok(value.to_string())
        }
        Command::Entity { entity_type, id, op: EntityOp::Send { command }, region } => {
            send_raw(&d, entity_type, region, id, cli.shards, &command, cli.timeout).await
        }
        Command::Status { json } => {
            let report = client.status().await?;
            Ok(if json { status_json(&report) } else { status_table(&report) })
        }
    }
}

async fn send_raw(
    d: &Distributed,
    entity_type: String,
    region: Option<String>,
    id: String,
    shards: u32,
    command: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let command: Value = serde_json::from_str(command)
        .map_err(|e| ClientError::Decode(format!("the command is not valid JSON: {e}")))?;
    let region = region.unwrap_or_else(|| entity_type.clone());
    let address = Address { entity_type, region, shards, id };
    let reply = d.send_raw(address, command.to_string().into_bytes(), timeout).await?;
    let reply: Value = serde_json::from_slice(&reply).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(reply.to_string())
}

fn status_json(report: &StatusReport) -> String {
    let members: Vec<Value> = report
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "node_id": m.node_id, "address": m.address, "state": format!("{:?}", m.state).to_lowercase(), "leads": m.leads,
            })
        })
        .collect();
    serde_json::json!({
        "cluster": report.cluster,
        "node_id": report.node_id,
        "partitions": report.partitions,
        "entity_types": report.entity_types,
        "live_instances": report.live_instances,
        "members": members,
    })
    .to_string()
}

fn status_table(report: &StatusReport) -> String {
    let mut out = format!(
        "cluster {}  (answered by {})\npartitions {}  live instances {}  entity types: {}\n\n{:<24} {:<24} {:<8} {}\n",
        report.cluster,
        report.node_id,
        report.partitions,
        report.live_instances,
        report.entity_types.join(", "),
        "NODE",
        "ADDRESS",
        "STATE",
        "LEADS"
    );
    for m in &report.members {
        let state = format!("{:?}", m.state).to_lowercase();
        out.push_str(&format!("{:<24} {:<24} {:<8} {}\n", m.node_id, m.address, state, m.leads));
    }
    out.trim_end().to_owned()
}
