//! `casty`: the command-line client. Prints results as JSON on stdout, errors on stderr
//! with a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use casty_client::{Client, ClientError, Deployment, Distributed, StatusReport, Zero, duration_ms, retrying};
use casty_core::limits::{
    CLIENT_TIMEOUT_DEFAULT_MS, COMPONENT_SIZE_MAX_BYTES, DEPLOY_TIMEOUT_DEFAULT_MS, SHARDS_DEFAULT,
};
use casty_core::routing::Address;

#[path = "../tls_args.rs"]
mod tls_args;
mod values;

use values::Given;

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
    /// How long one operation may take, retries included (e.g. 5s, 500ms; at least 1ms,
    /// at most 30 days). Default: 5s; 60s for `deploy` and `status --wait-ready`.
    #[arg(long, value_parser = timeout_arg, global = true)]
    timeout: Option<Duration>,
    /// Shards of the structure; every caller of one structure must use the same number.
    #[arg(long, default_value_t = SHARDS_DEFAULT, global = true)]
    shards: u32,
    /// Take every KEY and VALUE (and an entity's command) as a string, even one that
    /// looks like JSON.
    #[arg(long, global = true)]
    string: bool,
    #[command(flatten)]
    tls: tls_args::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The `--timeout` given, or the command's default: a deploy compiles the component
    /// on every node, and a cluster that was just started takes seconds to be ready.
    fn timeout(&self) -> Duration {
        let long = matches!(self.command, Command::Deploy { .. } | Command::Status { wait_ready: true, .. });
        let default_ms = if long { DEPLOY_TIMEOUT_DEFAULT_MS } else { CLIENT_TIMEOUT_DEFAULT_MS };
        self.timeout.unwrap_or(Duration::from_millis(default_ms))
    }

    /// A client of the first node that answers. Waiting for a ready cluster also waits
    /// for a node to answer at all, as one just started may not yet listen.
    async fn connect(&self) -> Result<Client, ClientError> {
        let tls = self.tls.tls().map_err(ClientError::InvalidArgument)?;
        let builder = Client::builder().timeout(self.timeout()).tls(tls);
        let addrs = || self.connect.iter().map(String::as_str);
        match self.command {
            Command::Status { wait_ready: true, .. } => {
                retrying(self.timeout(), || builder.clone().connect(addrs())).await
            }
            _ => builder.connect(addrs()).await,
        }
    }
}

/// A value: the argument, or the contents of a file.
#[derive(Debug, clap::Args)]
struct ValueArg {
    /// JSON, or a string when it does not look like JSON.
    #[arg(required_unless_present = "value_file")]
    value: Option<String>,
    /// Read the value from PATH instead (`-`: stdin), whole and exactly as it is.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    value_file: Option<PathBuf>,
}

impl ValueArg {
    fn given(&self, name: &str) -> Result<Given, String> {
        match (&self.value, &self.value_file) {
            (_, Some(path)) => Given::file(path, name),
            (Some(text), None) => Ok(Given::arg(text, name)),
            (None, None) => unreachable!("clap requires one of them"),
        }
    }

    /// The value: JSON if it looks like JSON, a string otherwise or `as_string`.
    fn json_or_string(&self, name: &str, as_string: bool) -> Result<Value, ClientError> {
        self.given(name)
            .and_then(|given| given.json_or_string(as_string))
            .map_err(ClientError::InvalidArgument)
    }

    /// The value, which must be JSON unless taken `as_string`.
    fn json(&self, name: &str, as_string: bool) -> Result<Value, ClientError> {
        self.given(name).and_then(|given| given.json(as_string)).map_err(ClientError::InvalidArgument)
    }
}

/// A `--timeout` or `--ttl`: a duration of at least 1 ms and at most 30 days.
fn timeout_arg(text: &str) -> Result<Duration, String> {
    duration_arg(text, Zero::Refused)
}

/// A `--wait`: a duration of at most 30 days; zero does not wait.
fn wait_arg(text: &str) -> Result<Duration, String> {
    duration_arg(text, Zero::Allowed)
}

fn duration_arg(text: &str, zero: Zero) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write it as 5s, 500ms or 2m)"))?;
    match duration_ms("the duration", duration, zero) {
        Ok(_) => Ok(duration),
        Err(ClientError::InvalidArgument(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A distributed counter.
    Counter {
        name: String,
        #[command(subcommand)]
        op: CounterOp,
    },
    /// A distributed map. KEY and VALUE are JSON; a KEY that is not JSON is a string.
    Map {
        name: String,
        #[command(subcommand)]
        op: MapOp,
    },
    /// A distributed set. Members are JSON; one that is not JSON is a string.
    Set {
        name: String,
        #[command(subcommand)]
        op: SetOp,
    },
    /// A register: one value under a name. Values are JSON; one that is not is a string.
    Register {
        name: String,
        #[command(subcommand)]
        op: RegisterOp,
    },
    /// A FIFO queue. Values are JSON; one that is not JSON is a string.
    Queue {
        name: String,
        #[command(subcommand)]
        op: QueueOp,
    },
    /// A reusable barrier.
    Barrier {
        name: String,
        #[command(subcommand)]
        op: BarrierOp,
    },
    /// A distributed lock with leases and fencing tokens.
    Lock {
        name: String,
        #[command(subcommand)]
        op: LockOp,
    },
    /// A distributed semaphore: like a lock with several permits.
    Semaphore {
        name: String,
        /// The semaphore's size; every caller must use the same number.
        #[arg(long)]
        permits: u32,
        #[command(subcommand)]
        op: LockOp,
    },
    /// Send a raw JSON command to any entity type.
    Entity {
        /// The entity type (`counter`, or a custom type).
        entity_type: String,
        /// The entity's id.
        id: String,
        #[command(subcommand)]
        op: EntityOp,
        /// The structure the entity belongs to. Default: for a counter, register, lock,
        /// semaphore or barrier, the one named ID (what `casty counter ID` reaches);
        /// for any other type, the one named after the type (what the Rust client's
        /// `d.entity(TYPE)` reaches).
        #[arg(long)]
        region: Option<String>,
    },
    /// Deploy a component as an entity type: the first deployment creates the type, a
    /// later one upgrades it live. Prints the version it runs as.
    Deploy {
        /// The component (`cargo build --target wasm32-wasip2 --release` makes one).
        path: std::path::PathBuf,
        /// The entity type's name.
        #[arg(long = "type")]
        entity_type: String,
        /// Linear memory one shard instance may grow to, in MiB (default: the node's).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Wall time one call may take, e.g. 200ms (default: the node's).
        #[arg(long, value_parser = timeout_arg)]
        call_deadline: Option<Duration>,
    },
    /// List the entity types the cluster runs, every version.
    Types {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster's members, partitions and entity types.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// First wait (up to --timeout) until the metadata group and every partition
        /// have a leader; exit 1, saying what is missing, if they do not in time.
        #[arg(long)]
        wait_ready: bool,
        /// With --wait-ready: also wait until at least N members are up.
        #[arg(long, value_name = "N", requires = "wait_ready")]
        members: Option<usize>,
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
enum MapOp {
    /// Store VALUE under KEY; prints the previous value or null.
    Put {
        key: String,
        #[command(flatten)]
        value: ValueArg,
    },
    /// Print the value under KEY, or null.
    Get { key: String },
    /// Print whether KEY is present.
    Contains { key: String },
    /// Remove KEY; prints whether it was present.
    Delete { key: String },
    /// Print how many keys the map holds.
    Size,
    /// Print every key, one JSON value per line.
    Keys,
    /// Print every entry as a JSON [key, value] line.
    Scan,
    /// Remove every key; prints how many there were.
    Clear,
}

#[derive(Debug, Subcommand)]
enum SetOp {
    /// Add a member; prints whether it was newly added.
    Add(ValueArg),
    /// Remove a member; prints whether it was present.
    Remove(ValueArg),
    /// Print whether the member is present.
    Contains(ValueArg),
    /// Print how many members the set holds.
    Size,
    /// Print every member, one JSON value per line.
    Scan,
    /// Remove every member; prints how many there were.
    Clear,
}

#[derive(Debug, Subcommand)]
enum RegisterOp {
    /// Print the value, or null if it was never set.
    Get,
    /// Set the value.
    Set(ValueArg),
    /// Set NEW if the register holds --expected (or, without it, was never set); prints
    /// whether it did.
    CompareAndSet {
        #[arg(long)]
        expected: Option<String>,
        /// The new value.
        #[command(flatten)]
        new: ValueArg,
    },
    /// Set the value; prints the previous one or null.
    GetAndSet(ValueArg),
}

#[derive(Debug, Subcommand)]
enum QueueOp {
    /// Append a value.
    Enqueue(ValueArg),
    /// Print the oldest value without removing it, or null.
    Peek,
    /// Remove and print the oldest value, or null when empty.
    Dequeue,
    /// Like dequeue, but wait up to --wait for a value to arrive.
    DequeueWait {
        /// At most 30 days; 0s does not wait.
        #[arg(long, default_value = "5s", value_parser = wait_arg)]
        wait: Duration,
    },
    /// Print how many values are queued.
    Size,
    /// Remove and print up to MAX of the oldest values, as a JSON array.
    Drain {
        #[arg(default_value_t = 100)]
        max: u32,
    },
}

#[derive(Debug, Subcommand)]
enum BarrierOp {
    /// Wait until EXPECTED parties arrived in this round; prints the round number.
    Arrive {
        #[arg(long)]
        expected: u32,
        /// The party arriving (default: this client's id).
        #[arg(long)]
        party: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LockOp {
    /// Wait (up to --timeout) for a permit; prints its fencing token. The CLI does not
    /// renew the lease: it ends after --ttl unless renewed with `renew`.
    Acquire {
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "30s", value_parser = timeout_arg)]
        ttl: Duration,
    },
    /// Take a permit if one is free now; prints its token, or null.
    TryAcquire {
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "30s", value_parser = timeout_arg)]
        ttl: Duration,
    },
    /// Give back a permit; prints false when the owner holds none.
    Release {
        #[arg(long)]
        owner: String,
    },
    /// Extend the owner's lease by --ttl; prints false when it holds nothing.
    Renew {
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "30s", value_parser = timeout_arg)]
        ttl: Duration,
    },
    /// Print how many permits are free.
    Available,
    /// Hold a permit while COMMAND runs, renewing the lease, then release it; exits with
    /// the command's status.
    Run {
        #[arg(long, default_value = "30s", value_parser = timeout_arg)]
        ttl: Duration,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum EntityOp {
    /// Send a command (VALUE, which must be JSON); prints the reply as JSON.
    Send(ValueArg),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Outcome::Print(output)) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Exit(code)) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a command leaves: output to print, or (for `run`) the exit code to pass on.
enum Outcome {
    Print(String),
    Exit(ExitCode),
}

async fn run(cli: Cli) -> Result<Outcome, ClientError> {
    let inputs = Inputs::of(&cli.command, cli.string)?;
    if let Command::Lock { name, op } = &cli.command {
        return lock_op(&cli, name, 1, "lock", op).await;
    }
    if let Command::Semaphore { name, permits, op } = &cli.command {
        return lock_op(&cli, name, *permits, "semaphore", op).await;
    }
    run_print(cli, inputs).await.map(Outcome::Print)
}

async fn run_print(cli: Cli, mut inputs: Inputs) -> Result<String, ClientError> {
    let client = cli.connect().await?;
    let d = client.distributed();
    let timeout = cli.timeout();
    let admin = client.admin().timeout(timeout);
    match cli.command {
        Command::Counter { name, op } => {
            let counter = d.counter(&name).shards(cli.shards).timeout(timeout);
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
        Command::Map { name, op } => {
            let map = d.map::<Value, Value>(&name).shards(cli.shards).timeout(timeout);
            Ok(match op {
                MapOp::Put { .. } => json_or_null(map.put(inputs.key(), inputs.value()).await?),
                MapOp::Get { .. } => json_or_null(map.get(inputs.key()).await?),
                MapOp::Contains { .. } => Value::from(map.contains(inputs.key()).await?).to_string(),
                MapOp::Delete { .. } => Value::from(map.delete(inputs.key()).await?).to_string(),
                MapOp::Size => map.size().await?.to_string(),
                MapOp::Keys => print_pages(map.keys()).await?,
                MapOp::Scan => print_pages(map.scan()).await?,
                MapOp::Clear => map.clear().await?.to_string(),
            })
        }
        Command::Set { name, op } => {
            let set = d.set::<Value>(&name).shards(cli.shards).timeout(timeout);
            Ok(match op {
                SetOp::Add(_) => set.add(inputs.value()).await?.to_string(),
                SetOp::Remove(_) => set.remove(inputs.value()).await?.to_string(),
                SetOp::Contains(_) => set.contains(inputs.value()).await?.to_string(),
                SetOp::Size => set.size().await?.to_string(),
                SetOp::Scan => print_pages(set.scan()).await?,
                SetOp::Clear => set.clear().await?.to_string(),
            })
        }
        Command::Register { name, op } => {
            let register = d.register::<Value>(&name).shards(cli.shards).timeout(timeout);
            Ok(match op {
                RegisterOp::Get => json_or_null(register.get().await?),
                RegisterOp::Set(_) => {
                    register.set(inputs.value()).await?;
                    Value::Null.to_string()
                }
                RegisterOp::CompareAndSet { .. } => {
                    register.compare_and_set(inputs.expected.as_ref(), inputs.value()).await?.to_string()
                }
                RegisterOp::GetAndSet(_) => json_or_null(register.get_and_set(inputs.value()).await?),
            })
        }
        Command::Entity { entity_type, id, op: EntityOp::Send(_), region } => {
            let address = entity_address(entity_type, region, id, cli.shards);
            send_raw(&d, address, inputs.value(), timeout).await
        }
        Command::Queue { name, op } => {
            let queue = d.queue::<Value>(&name).shards(cli.shards).timeout(timeout);
            Ok(match op {
                QueueOp::Enqueue(_) => {
                    queue.enqueue(inputs.value()).await?;
                    Value::Null.to_string()
                }
                QueueOp::Peek => json_or_null(queue.peek().await?),
                QueueOp::Dequeue => json_or_null(queue.dequeue().await?),
                QueueOp::DequeueWait { wait } => json_or_null(queue.dequeue_wait(wait).await?),
                QueueOp::Size => queue.size().await?.to_string(),
                QueueOp::Drain { max } => Value::Array(queue.drain(max).await?).to_string(),
            })
        }
        Command::Barrier { name, op: BarrierOp::Arrive { expected, party } } => {
            let mut barrier = d.barrier(&name).shards(cli.shards).timeout(timeout);
            if let Some(party) = party {
                barrier = barrier.party(party);
            }
            Ok(barrier.arrive(expected).await?.to_string())
        }
        Command::Lock { .. } | Command::Semaphore { .. } => unreachable!("handled in run"),
        Command::Status { json, wait_ready, members } => {
            let report = match wait_ready {
                true => admin.wait_ready(members.unwrap_or(0)).await?,
                false => admin.status().await?,
            };
            Ok(if json { status_json(&report) } else { status_table(&report) })
        }
        Command::Deploy { entity_type, memory_mib, call_deadline, .. } => {
            let deployment = Deployment {
                entity_type,
                wasm: inputs.wasm.take().expect("Inputs::of reads the component of a deploy"),
                memory_max_bytes: memory_mib.map(|mib| mib.saturating_mul(1 << 20)),
                call_deadline_ms: call_deadline.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
            };
            let report = admin.deploy_with(deployment).await?;
            serde_json::to_string(&report).map_err(|e| ClientError::Encode(e.to_string()))
        }
        Command::Types { json } => {
            let types = admin.types().await?;
            if json {
                return serde_json::to_string(&types).map_err(|e| ClientError::Encode(e.to_string()));
            }
            let mut out = format!(
                "{:<20} {:>7}  {:<8} {:>10} {:>9} {:>9}  {}\n",
                "TYPE", "VERSION", "", "SIZE", "MEMORY", "DEADLINE", "DIGEST"
            );
            for t in types {
                let role = match (t.builtin, t.current) {
                    (true, _) => "built-in",
                    (false, true) => "current",
                    (false, false) => "",
                };
                out.push_str(&format!(
                    "{:<20} {:>7}  {:<8} {:>10} {:>8}M {:>7}ms  {}\n",
                    t.entity_type,
                    t.version,
                    role,
                    t.size_bytes,
                    t.memory_max_bytes >> 20,
                    t.call_deadline_ms,
                    &t.digest[..t.digest.len().min(16)]
                ));
            }
            Ok(out.trim_end().to_owned())
        }
    }
}

async fn lock_op(
    cli: &Cli,
    name: &str,
    permits: u32,
    kind: &str,
    op: &LockOp,
) -> Result<Outcome, ClientError> {
    let client = cli.connect().await?;
    let d = client.distributed();
    let timeout = cli.timeout();
    let handle = |owner: Option<&str>, ttl: Duration| {
        let semaphore = match kind {
            "lock" => d.lock_as_semaphore(name),
            _ => d.semaphore(name, permits),
        };
        let semaphore = semaphore.shards(cli.shards).timeout(timeout).ttl(ttl);
        match owner {
            Some(owner) => semaphore.owner(owner),
            None => semaphore,
        }
    };
    let default_ttl = casty_client::LEASE_TTL_DEFAULT;
    let print = |value: Value| Ok(Outcome::Print(value.to_string()));
    match op {
        LockOp::Acquire { owner, ttl } => print(Value::from(handle(Some(owner), *ttl).acquire().await?)),
        LockOp::TryAcquire { owner, ttl } => {
            print(json_value(handle(Some(owner), *ttl).try_acquire().await?))
        }
        LockOp::Release { owner } => print(Value::from(handle(Some(owner), default_ttl).release().await?)),
        LockOp::Renew { owner, ttl } => print(Value::from(handle(Some(owner), *ttl).renew().await?)),
        LockOp::Available => print(Value::from(handle(None, default_ttl).available().await?)),
        LockOp::Run { ttl, command } => {
            let holder = handle(None, *ttl);
            let token = holder.acquire().await?;
            eprintln!("holding {kind} {name} with fencing token {token}; running {}", command.join(" "));
            let status = tokio::process::Command::new(&command[0]).args(&command[1..]).status().await;
            let released = holder.release().await;
            let status = status
                .map_err(|e| ClientError::InvalidArgument(format!("cannot run {}: {e}", command[0])))?;
            if let Err(e) = released {
                eprintln!("warning: releasing {kind} {name} failed ({e}); its lease ends after {ttl:?}");
            }
            let code = status.code().map_or(ExitCode::FAILURE, |c| ExitCode::from(c.clamp(0, 255) as u8));
            Ok(Outcome::Exit(code))
        }
    }
}

fn json_value<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

/// A key or value given as an argument: JSON if it looks like JSON, a string otherwise.
fn arg_value(text: &str, name: &str, as_string: bool) -> Result<Value, ClientError> {
    Given::arg(text, name).json_or_string(as_string).map_err(ClientError::InvalidArgument)
}

/// The keys, values and component a command carries, read and checked before connecting:
/// a mistake in them is reported as what it is even when no node answers, and nothing is
/// sent until all of them are good.
#[derive(Debug, Default)]
struct Inputs {
    key: Option<Value>,
    value: Option<Value>,
    expected: Option<Value>,
    wasm: Option<Vec<u8>>,
}

impl Inputs {
    fn of(command: &Command, as_string: bool) -> Result<Inputs, ClientError> {
        let key = |text: &str| arg_value(text, "the key", as_string).map(Some);
        let value = |value: &ValueArg, name: &str| value.json_or_string(name, as_string).map(Some);
        let mut inputs = Inputs::default();
        match command {
            Command::Map { op: MapOp::Put { key: k, value: v }, .. } => {
                inputs.key = key(k)?;
                inputs.value = value(v, "the value")?;
            }
            Command::Map {
                op: MapOp::Get { key: k } | MapOp::Contains { key: k } | MapOp::Delete { key: k },
                ..
            } => {
                inputs.key = key(k)?;
            }
            Command::Set { op: SetOp::Add(v) | SetOp::Remove(v) | SetOp::Contains(v), .. } => {
                inputs.value = value(v, "the member")?;
            }
            Command::Register { op: RegisterOp::Set(v) | RegisterOp::GetAndSet(v), .. }
            | Command::Queue { op: QueueOp::Enqueue(v), .. } => inputs.value = value(v, "the value")?,
            Command::Register { op: RegisterOp::CompareAndSet { expected, new }, .. } => {
                inputs.expected =
                    expected.as_deref().map(|e| arg_value(e, "the expected value", as_string)).transpose()?;
                inputs.value = value(new, "the value")?;
            }
            Command::Entity { op: EntityOp::Send(v), .. } => {
                inputs.value = Some(v.json("the command", as_string)?);
            }
            Command::Deploy { path, .. } => inputs.wasm = Some(read_component(path)?),
            _ => {}
        }
        Ok(inputs)
    }

    fn key(&self) -> &Value {
        self.key.as_ref().expect("Inputs::of reads the key of every command that has one")
    }

    fn value(&self) -> &Value {
        self.value.as_ref().expect("Inputs::of reads the value of every command that has one")
    }
}

/// A component file, read whole unless it is over the size a node takes (then refused
/// without reading it all).
fn read_component(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| ClientError::InvalidArgument(format!("cannot read {}: {e}", path.display()));
    let mut wasm = Vec::new();
    let file = std::fs::File::open(path).map_err(unreadable)?;
    file.take(COMPONENT_SIZE_MAX_BYTES as u64 + 1).read_to_end(&mut wasm).map_err(unreadable)?;
    if wasm.len() > COMPONENT_SIZE_MAX_BYTES {
        return Err(ClientError::InvalidArgument(format!(
            "{} is over {COMPONENT_SIZE_MAX_BYTES} bytes; the limit is {COMPONENT_SIZE_MAX_BYTES} bytes",
            path.display()
        )));
    }
    Ok(wasm)
}

/// The built-in structures that are one entity named after the structure: `casty
/// counter NAME` is entity NAME of structure NAME.
const ONE_ENTITY_STRUCTURES: [&str; 5] = ["counter", "register", "lock", "semaphore", "barrier"];

/// Where `casty entity TYPE ID` sends: entity ID of structure `region`, by default the
/// structure the type's own facade would reach for that id.
fn entity_address(entity_type: String, region: Option<String>, id: String, shards: u32) -> Address {
    let region = region.unwrap_or_else(|| match ONE_ENTITY_STRUCTURES.contains(&entity_type.as_str()) {
        true => id.clone(),
        false => entity_type.clone(),
    });
    Address { entity_type, region, shards, id }
}

fn json_or_null(value: Option<Value>) -> String {
    value.unwrap_or(Value::Null).to_string()
}

/// Prints a scan page by page, one JSON line per item, as pages arrive; returns what is
/// left to print (nothing).
async fn print_pages<T: serde::Serialize>(mut scan: casty_client::Scan<T>) -> Result<String, ClientError> {
    while let Some(page) = scan.next_page().await? {
        for item in page {
            println!("{}", serde_json::to_string(&item).map_err(|e| ClientError::Encode(e.to_string()))?);
        }
    }
    Ok(String::new())
}

async fn send_raw(
    d: &Distributed,
    address: Address,
    command: &Value,
    timeout: Duration,
) -> Result<String, ClientError> {
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
        "metadata_leader": report.metadata_leader,
        "partitions": report.partitions,
        "entity_types": report.entity_types,
        "live_instances": report.live_instances,
        "members": members,
        "partition_groups": report.groups.iter().map(|g| serde_json::json!({
            "partition": g.partition, "leader": g.leader, "replicas": g.replicas,
            "lag": g.lag.iter().map(|(node, lag)| (node.clone(), Value::from(*lag))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

fn status_table(report: &StatusReport) -> String {
    let mut out = format!(
        "cluster {}  (answered by {}; metadata leader {})\npartitions {}  live instances {}  entity types: {}\n\n{:<24} {:<24} {:<8} {}\n",
        report.cluster,
        report.node_id,
        report.metadata_leader.as_deref().unwrap_or("(electing)"),
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
    out.push_str(&format!("\n{:<10} {:<24} {}\n", "PARTITION", "LEADER", "REPLICAS (LAG)"));
    for g in &report.groups {
        let replicas: Vec<String> = g
            .replicas
            .iter()
            .map(|r| match g.lag.iter().find(|(node, _)| node == r) {
                Some((_, lag)) => format!("{r} ({lag})"),
                None => r.clone(),
            })
            .collect();
        let leader = g.leader.as_deref().unwrap_or("(electing)");
        out.push_str(&format!("{:<10} {:<24} {}\n", g.partition, leader, replicas.join(", ")));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use casty_core::limits::CALLER_DURATION_MAX_MS;
    use proptest::prelude::*;

    /// A command line of every kind, with `{s}` (a string), `{n}` (a number) and `{d}` (a
    /// duration) to fill.
    const TEMPLATES: &[&str] = &[
        "--timeout {d} counter {s} increment {n}",
        "--shards {n} counter {s} decrement {n}",
        "map {s} put {s} {s}",
        "--string map {s} get {s}",
        "map {s} put {s} --value-file {s}",
        "set {s} add {s}",
        "register {s} compare-and-set --expected {s} {s}",
        "register {s} get-and-set {s}",
        "queue {s} enqueue {s}",
        "queue {s} dequeue-wait --wait {d}",
        "queue {s} drain {n}",
        "barrier {s} arrive --expected {n} --party {s}",
        "lock {s} acquire --owner {s} --ttl {d}",
        "lock {s} run --ttl {d} -- {s}",
        "semaphore {s} --permits {n} try-acquire --owner {s} --ttl {d}",
        "entity {s} {s} send {s} --region {s}",
        "deploy {s} --type {s} --memory-mib {n} --call-deadline {d}",
        "status --json",
    ];

    fn fill(template: &str, strings: &[String], numbers: &[String], durations: &[String]) -> Vec<String> {
        let (mut s, mut n, mut d) =
            (strings.iter().cycle(), numbers.iter().cycle(), durations.iter().cycle());
        let mut args = vec!["casty".to_owned()];
        for word in template.split(' ') {
            args.push(match word {
                "{s}" => s.next().unwrap().clone(),
                "{n}" => n.next().unwrap().clone(),
                "{d}" => d.next().unwrap().clone(),
                word => word.to_owned(),
            });
        }
        args
    }

    fn durations() -> impl Strategy<Value = String> {
        let unit = prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y", ""]);
        prop_oneof![
            (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
            (0u64..3_000_000, unit).prop_map(|(n, u)| format!("{n}{u}")),
            any::<String>(),
        ]
    }

    fn numbers() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u128>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            any::<String>(),
        ]
    }

    fn in_bounds(duration: Duration, zero_allowed: bool) -> bool {
        duration <= Duration::from_millis(CALLER_DURATION_MAX_MS)
            && (zero_allowed || duration >= Duration::from_millis(1))
    }

    proptest! {
        #[test]
        fn any_command_line_parses_or_is_refused_and_its_values_too(
            template in prop::sample::select(TEMPLATES),
            strings in prop::collection::vec(any::<String>(), 1..4),
            numbers in prop::collection::vec(numbers(), 1..3),
            durations in prop::collection::vec(durations(), 1..3),
        ) {
            let Ok(cli) = Cli::try_parse_from(fill(template, &strings, &numbers, &durations)) else {
                return Ok(());
            };
            prop_assert!(in_bounds(cli.timeout(), false), "{:?}", cli.timeout);
            let _ = Inputs::of(&cli.command, cli.string);
            match cli.command {
                Command::Queue { op: QueueOp::DequeueWait { wait }, .. } => {
                    prop_assert!(in_bounds(wait, true), "{wait:?}");
                }
                Command::Lock { op: LockOp::Acquire { ttl, .. } | LockOp::Run { ttl, .. }, .. }
                | Command::Semaphore { op: LockOp::TryAcquire { ttl, .. }, .. } => {
                    prop_assert!(in_bounds(ttl, false), "{ttl:?}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn durations_out_of_range_are_refused_naming_the_bound() {
        let parse = |args: &str| Cli::try_parse_from(args.split(' ')).map_err(|e| e.to_string());
        let err = parse("casty --timeout 0s counter c get").unwrap_err();
        assert!(err.contains("the duration is 0ns; it must be at least 1ms"), "{err}");
        let err = parse("casty queue q dequeue-wait --wait 10000000000000000000s").unwrap_err();
        assert!(err.contains("the longest allowed is 30 days (2592000s)"), "{err}");
        let err = parse("casty lock l acquire --owner o --ttl 0ms").unwrap_err();
        assert!(err.contains("at least 1ms"), "{err}");
        let err = parse("casty --timeout soon counter c get").unwrap_err();
        assert!(err.contains("write it as 5s, 500ms or 2m"), "{err}");
        let cli = parse("casty queue q dequeue-wait --wait 0s").unwrap();
        assert!(
            matches!(cli.command, Command::Queue { op: QueueOp::DequeueWait { wait }, .. } if wait.is_zero())
        );
    }

    #[tokio::test]
    async fn values_are_checked_before_connecting() {
        // Nothing listens at port 9: a value's mistake must be reported, not the network.
        let args = ["casty", "--connect", "127.0.0.1:9", "map", "m", "put", "k", r#"{"name": "#];
        let Err(err) = run(Cli::try_parse_from(args).unwrap()).await else { panic!("the value was taken") };
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let args = ["casty", "--connect", "127.0.0.1:9", "deploy", "/nonexistent.wasm", "--type", "t"];
        let Err(err) = run(Cli::try_parse_from(args).unwrap()).await else { panic!("deployed nothing") };
        assert!(err.to_string().contains("cannot read /nonexistent.wasm"), "{err}");
    }

    #[test]
    fn a_value_comes_from_the_argument_or_a_file_never_both() {
        let parse = |args: &str| Cli::try_parse_from(args.split(' ')).map_err(|e| e.to_string());
        assert!(parse("casty queue q enqueue").unwrap_err().contains("required arguments were not provided"));
        assert!(parse("casty queue q enqueue v --value-file f").unwrap_err().contains("cannot be used with"));
        assert!(parse("casty queue q enqueue --value-file -").is_ok());
    }

    #[test]
    fn an_entity_of_a_one_entity_structure_is_the_structure_its_facade_reaches() {
        let address = entity_address("counter".into(), None, "page-views".into(), 100);
        assert_eq!((address.region.as_str(), address.id.as_str()), ("page-views", "page-views"));
        let address = entity_address("bank-account".into(), None, "acct-1".into(), 100);
        assert_eq!((address.region.as_str(), address.id.as_str()), ("bank-account", "acct-1"));
        let address = entity_address("counter".into(), Some("other".into()), "c".into(), 100);
        assert_eq!(address.region, "other");
    }
}
