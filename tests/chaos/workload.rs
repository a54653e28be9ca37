//! The clients of a fault test: ten at once, over registers (one client only reads
//! them), a counter, a lock, a semaphore, a set and a queue. Each records what it saw (a call that timed out or failed
//! as an unknown outcome); once the faults are over, [`Workload::finish`] reads the final
//! state and hands everything to the checkers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use casty_checker::collections::{check_queue, check_set};
use casty_checker::fencing::{FencedResource, Hold, check_holds};
use casty_checker::models::{Counter, CounterInput, Register, RegisterInput, RegisterOutput};
use casty_checker::{Outcome, Recorder, Verdict, check};
use casty_client::{Client, ClientError, Distributed};
use tokio::task::JoinSet;

use crate::chaos::nodes::Cluster;
use crate::chaos::schedule::Rng;

/// How long one call may take before its caller gives up (its outcome is then unknown).
/// Short, so a client cut off with its node gets on to its next call soon: a client
/// that waits out each call tries few reads where a stale one could show.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The lease of the workload's locks and semaphores: short, so a grant nobody knows of
/// (its caller gave up) ends soon.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// The time the linearizability checker may spend on each history.
const CHECK_BUDGET: Duration = Duration::from_secs(60);
const REGISTER_KEYS: [&str; 3] = ["r0", "r1", "r2"];
const COUNTER_KEY: &str = "c0";
const LOCK: &str = "l0";
const SEMAPHORE: &str = "s0";
/// The semaphore's permits: four clients compete for two (and for the lock).
const SEMAPHORE_PERMITS: u32 = 2;
const SET: &str = "tags";
const QUEUE: &str = "jobs";

/// Everything the clients saw.
#[derive(Default)]
struct Histories {
    registers: Recorder<RegisterInput<i64>, RegisterOutput<i64>>,
    counters: Recorder<CounterInput, i64>,
    lock_holds: Mutex<Vec<Hold>>,
    semaphore_holds: Mutex<Vec<Hold>>,
    /// What the lock protects: its holders increment it through the fence.
    fenced: FencedResource,
    set_adds: Recorder<String, bool>,
    /// Enqueues, by producer (`client`); every item is unique.
    enqueues: Recorder<String, ()>,
    dequeues: Recorder<(), Option<String>>,
}

impl Histories {
    /// Now, on the clock the holds are timed by (they are compared only with each other).
    fn now(&self) -> u64 {
        self.registers.now()
    }
}

fn push(holds: &Mutex<Vec<Hold>>, hold: Hold) {
    holds.lock().unwrap_or_else(PoisonError::into_inner).push(hold);
}

fn outcome<T>(result: Result<T, ClientError>) -> Outcome<T> {
    // Every failure counts as unknown: even a definite-looking error may follow a first
    // attempt that was applied and whose answer was lost.
    result.map_or(Outcome::Unknown, Outcome::Ok)
}

/// The running clients.
pub struct Workload {
    histories: Arc<Histories>,
    stop: Arc<AtomicBool>,
    clients: JoinSet<()>,
}

/// Connects a client that knows every node, so it can reach the cluster whichever are
/// down. It connects to the first that answers: client `id` tries them from node
/// `id % nodes` on, so the clients spread over the nodes and each learns where leaders
/// are from a different one, a node cut off from the others included.
async fn connect(addrs: &[SocketAddr], id: u32) -> Distributed {
    let mut addrs = addrs.to_vec();
    let first = id as usize % addrs.len();
    addrs.rotate_left(first);
    let client = Client::builder().timeout(Duration::from_secs(2)).connect(addrs).await;
    client.expect("a workload client connects").distributed()
}

/// A short, seeded pause between two calls of a client, so histories stay small enough
/// to check.
async fn think(rng: &mut Rng) {
    tokio::time::sleep(rng.millis(5, 25)).await;
}

impl Workload {
    /// Starts the ten clients against the nodes at `addrs`.
    pub async fn start(addrs: &[SocketAddr], rng: &mut Rng) -> Workload {
        let histories = Arc::new(Histories::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = JoinSet::new();
        let roles = [
            Role::Register,
            Role::Reader,
            Role::Register,
            Role::Counter,
            Role::Holder,
            Role::Holder,
            Role::Holder,
            Role::Holder,
            Role::Producer,
            Role::Consumer,
        ];
        for (id, role) in (0..).zip(roles) {
            let client = ClientLoop {
                id,
                d: connect(addrs, id).await,
                h: histories.clone(),
                stop: stop.clone(),
                rng: rng.fork(),
            };
            clients.spawn(client.run(role));
        }
        Workload { histories, stop, clients }
    }

    /// Stops the clients, reads the final state through `cluster` (its faults are healed
    /// by now), and checks every history. Panics naming each violation.
    pub async fn finish(mut self, cluster: &Cluster) -> String {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.clients.join_next().await {
            done.expect("a workload client panicked");
        }
        let d = connect(&cluster.addrs(), 0).await;
        let h = &self.histories;
        let patient = Duration::from_secs(30);
        let final_read = async |what: &str, result: Result<(), ClientError>| {
            if let Err(e) = result {
                panic!("{what} failed after the faults healed: {e}\n{}", cluster.describe().await);
            }
        };
        for key in REGISTER_KEYS {
            let invoke = h.registers.begin();
            let read = d.register::<i64>(key).timeout(patient).get().await;
            if let Ok(read) = &read {
                let output = RegisterOutput::Value(*read);
                h.registers.end(99, key, invoke, RegisterInput::Get, Outcome::Ok(output));
            }
            final_read("the final register read", read.map(drop)).await;
        }
        let invoke = h.counters.begin();
        let read = d.counter(COUNTER_KEY).timeout(patient).get().await;
        if let Ok(read) = read {
            h.counters.end(99, COUNTER_KEY, invoke, CounterInput::Get, Outcome::Ok(read));
        }
        final_read("the final counter read", read.map(drop)).await;
        let members = d.set::<String>(SET).timeout(patient).scan().collect().await;
        final_read("the final set scan", members.as_ref().map(drop).map_err(Clone::clone)).await;
        let members = members.unwrap_or_default();
        let queue = d.queue::<String>(QUEUE).timeout(patient);
        let mut rest = Vec::new();
        loop {
            match queue.dequeue().await {
                Ok(Some(item)) => rest.push(item),
                Ok(None) => break,
                Err(e) => final_read("the final queue drain", Err(e)).await,
            }
        }

        let histories =
            Arc::try_unwrap(self.histories).unwrap_or_else(|_| panic!("the clients have stopped"));
        let mut problems = Vec::new();
        let mut report = Vec::new();
        let registers = histories.registers.into_history();
        let counters = histories.counters.into_history();
        for (what, verdict) in [
            ("registers", check::<Register<i64>>(&registers, CHECK_BUDGET)),
            ("counters", check::<Counter>(&counters, CHECK_BUDGET)),
        ] {
            match verdict {
                Verdict::Linearizable { .. } => report.push(format!("{what}: {verdict}")),
                other => problems.push(format!("{what}: {other}")),
            }
        }
        let holds = |holds: Mutex<Vec<Hold>>| holds.into_inner().unwrap_or_else(PoisonError::into_inner);
        for (what, holds, permits) in [
            ("lock", holds(histories.lock_holds), 1),
            ("semaphore", holds(histories.semaphore_holds), SEMAPHORE_PERMITS),
        ] {
            match check_holds(&holds, permits) {
                Ok(summary) => report.push(format!("{what}: {summary:?}")),
                Err(violations) => problems.extend(violations.iter().map(|v| format!("{what}: {v}"))),
            }
        }
        match histories.fenced.check_no_lost_update() {
            Ok(()) => report
                .push(format!("fenced resource: {} writes, none lost", histories.fenced.accepted_writes())),
            Err(why) => problems.push(format!("fenced resource: {why}")),
        }
        match check_set(&histories.set_adds.into_history(), &members) {
            Ok(summary) => report.push(format!("set: {summary:?}")),
            Err(violations) => problems.extend(violations.iter().map(|v| format!("set: {v}"))),
        }
        match check_queue(&histories.enqueues.into_history(), &histories.dequeues.into_history(), &rest) {
            Ok(summary) => report.push(format!("queue: {summary:?}")),
            Err(violations) => problems.extend(violations.iter().map(|v| format!("queue: {v}"))),
        }
        assert!(problems.is_empty(), "the histories break the guarantees:\n{}", problems.join("\n"));
        report.join("\n")
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Register,
    /// Reads registers only: a node cut off with its stale state gets no write from it
    /// that would hold up its reads, so a stale read, if the node served one, shows.
    Reader,
    Counter,
    /// Takes the lock or a permit of the semaphore, at random.
    Holder,
    /// Adds to the set and enqueues, alternately.
    Producer,
    /// Dequeues.
    Consumer,
}

/// One client: its id in the histories, its connection, and its own seeded generator.
struct ClientLoop {
    id: u32,
    d: Distributed,
    h: Arc<Histories>,
    stop: Arc<AtomicBool>,
    rng: Rng,
}

impl ClientLoop {
    async fn run(mut self, role: Role) {
        let mut seq = 0i64;
        while !self.stop.load(Ordering::Relaxed) {
            seq += 1;
            match role {
                Role::Register => self.register(seq, false).await,
                Role::Reader => self.register(seq, true).await,
                Role::Counter => self.counter().await,
                Role::Holder if self.rng.below(2) == 0 => self.hold(LOCK, 1).await,
                Role::Holder => self.hold(SEMAPHORE, SEMAPHORE_PERMITS).await,
                Role::Producer => self.produce(seq).await,
                Role::Consumer => self.consume().await,
            }
            think(&mut self.rng).await;
        }
    }

    async fn register(&mut self, seq: i64, reads_only: bool) {
        // Half the calls go to the first key, whose partition the targeted faults aim at.
        let key = match self.rng.below(2) {
            0 => REGISTER_KEYS[0],
            _ => REGISTER_KEYS[1 + self.rng.below(REGISTER_KEYS.len() - 1)],
        };
        let register = self.d.register::<i64>(key).timeout(CALL_TIMEOUT);
        // Every value written is unique, so a read names the write it saw.
        let value = i64::from(self.id + 1) * 1_000_000 + seq;
        // Half reads: a stale read is the anomaly most faults would show.
        let input = match self.rng.below(6) {
            _ if reads_only => RegisterInput::Get,
            0..3 => RegisterInput::Get,
            3 => RegisterInput::Set(value),
            4 => {
                let expected = (self.rng.below(4) > 0).then(|| value - 1);
                RegisterInput::CompareAndSet { expected, new: value }
            }
            _ => RegisterInput::GetAndSet(value),
        };
        let invoke = self.h.registers.begin();
        let result = match &input {
            RegisterInput::Get => register.get().await.map(RegisterOutput::Value),
            RegisterInput::Set(v) => register.set(v).await.map(|()| RegisterOutput::Done),
            RegisterInput::CompareAndSet { expected, new } => {
                register.compare_and_set(expected.as_ref(), new).await.map(RegisterOutput::Swapped)
            }
            RegisterInput::GetAndSet(v) => register.get_and_set(v).await.map(RegisterOutput::Value),
        };
        self.h.registers.end(self.id, key, invoke, input, outcome(result));
    }

    async fn counter(&mut self) {
        let counter = self.d.counter(COUNTER_KEY).timeout(CALL_TIMEOUT);
        let input = match self.rng.below(3) {
            0 => CounterInput::Get,
            _ => CounterInput::Increment(1),
        };
        let invoke = self.h.counters.begin();
        let result = match input {
            CounterInput::Get => counter.get().await,
            CounterInput::Increment(by) => counter.increment(by).await,
        };
        self.h.counters.end(self.id, COUNTER_KEY, invoke, input, outcome(result));
    }

    /// Takes one permit of `name`, works through the fence while holding it (the lock's
    /// holders only), and gives it back. Each hold is a handle of its own, so a grant
    /// nobody knows of (its acquire or release had an unknown outcome) stays apart from
    /// the next holds, and its lease ends it.
    async fn hold(&mut self, name: &str, permits: u32) {
        // A lock is the semaphore of one permit that `Lock` wraps.
        let semaphore = match permits {
            1 => self.d.lock_as_semaphore(name),
            _ => self.d.semaphore(name, permits),
        };
        let semaphore = semaphore.ttl(LEASE_TTL).timeout(CALL_TIMEOUT);
        let holds = if permits == 1 { &self.h.lock_holds } else { &self.h.semaphore_holds };
        let acquire_invoke = self.h.now();
        let Ok(token) = semaphore.acquire().await else { return };
        let acquire_ret = self.h.now();
        let work = self.rng.millis(0, 20);
        match permits {
            1 => {
                if let Ok(value) = self.h.fenced.read(token) {
                    tokio::time::sleep(work).await;
                    let _ = self.h.fenced.write(token, value + 1);
                }
            }
            _ => tokio::time::sleep(work).await,
        }
        let release_invoke = self.h.now();
        let released = semaphore.release().await.ok();
        let release_ret = self.h.now();
        push(
            holds,
            Hold {
                client: self.id,
                owner: semaphore.owner_id().to_owned(),
                key: name.to_owned(),
                acquire_invoke,
                acquire_ret,
                token,
                release_invoke: Some(release_invoke),
                release_ret: Some(release_ret),
                released,
            },
        );
    }

    async fn produce(&mut self, seq: i64) {
        let item = format!("p{}-{seq}", self.id);
        if seq % 2 == 0 {
            let set = self.d.set::<String>(SET).timeout(CALL_TIMEOUT);
            let invoke = self.h.set_adds.begin();
            let result = set.add(&item).await;
            self.h.set_adds.end(self.id, SET, invoke, item, outcome(result));
        } else {
            let queue = self.d.queue::<String>(QUEUE).timeout(CALL_TIMEOUT);
            let invoke = self.h.enqueues.begin();
            let result = queue.enqueue(&item).await;
            self.h.enqueues.end(self.id, QUEUE, invoke, item, outcome(result));
        }
    }

    async fn consume(&mut self) {
        let queue = self.d.queue::<String>(QUEUE).timeout(CALL_TIMEOUT);
        let invoke = self.h.dequeues.begin();
        let result = queue.dequeue().await;
        self.h.dequeues.end(self.id, QUEUE, invoke, (), outcome(result));
    }
}
