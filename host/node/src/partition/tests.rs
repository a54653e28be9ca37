//! The partition worker's logic, run on native fakes of its ports: a counter entity in
//! plain Rust, and a Raft group that records what it is asked. The journal is the real
//! one, in memory. No async runtime: the tests poll the worker's futures themselves, and
//! hand it the loop's events as the loop would.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use casty_core::limits::PIPELINE_BATCH_MIN;
use casty_core::protocol::{ErrorKind, Invoke};
use casty_core::record::{LogEntry, MemberRecord, Proposal, TypeRecord};
use casty_core::routing::Address;
use casty_core::{Decision, Reply, WakeUp};
use casty_journal::Journal;
use casty_raft::{Entry, Event, GroupLog, GroupStatus, LoopError};
use casty_runtime::{CallContext, InvokeError};
use tokio::sync::{mpsc, oneshot, watch};

use super::ports::{Components, Group, Instance, TypeVersion};
use super::{Job, PartitionWorker, Setup};
use crate::metrics::Metrics;

const ME: u64 = 1;
const OTHER: u64 = 2;
const NOW_MS: u64 = 1_000_000;

/// Polls `future` to its end on this thread, sleeping until it is woken (the journal's
/// writer thread wakes it).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// The one entity type: a counter. `add N` adds N (one event) and answers the total,
/// `get` answers it, `trap` fails the way a trapping component does.
#[derive(Clone)]
struct CounterType;

impl TypeVersion for CounterType {
    fn name(&self) -> &str {
        "counter"
    }

    fn version(&self) -> u32 {
        1
    }
}

#[derive(Default)]
struct Counters {
    totals: HashMap<String, i64>,
    poisoned: bool,
}

fn reply(total: i64) -> Decision {
    Decision {
        events: Vec::new(),
        reply: Reply::Ok(total.to_string().into_bytes()),
        wake_parked: Vec::new(),
        wake: WakeUp::Keep,
    }
}

fn trapped() -> InvokeError {
    InvokeError::Trapped { entity_type: "counter".into(), reason: "unreachable".into() }
}

impl Instance for Counters {
    fn version(&self) -> u32 {
        1
    }

    fn contains(&self, id: &str) -> bool {
        self.totals.contains_key(id)
    }

    fn entity_ids(&self) -> Vec<String> {
        self.totals.keys().cloned().collect()
    }

    fn len(&self) -> usize {
        self.totals.len()
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    async fn create(&mut self, id: &str) -> Result<(), InvokeError> {
        self.totals.insert(id.into(), 0);
        Ok(())
    }

    async fn restore(&mut self, id: &str, snapshot: &[u8]) -> Result<(), InvokeError> {
        let total = std::str::from_utf8(snapshot).ok().and_then(|s| s.parse().ok());
        let restore = || InvokeError::Restore {
            entity_type: "counter".into(),
            id: id.into(),
            reason: "not a total".into(),
        };
        self.totals.insert(id.into(), total.ok_or_else(restore)?);
        Ok(())
    }

    async fn handle(&mut self, id: &str, _: &CallContext, command: &[u8]) -> Result<Decision, InvokeError> {
        let total = self.totals[id];
        match std::str::from_utf8(command).unwrap_or_default().split_once(' ') {
            Some(("add", by)) => {
                let by: i64 = by.parse().expect("the tests add numbers");
                Ok(Decision { events: vec![by.to_le_bytes().to_vec()], ..reply(total + by) })
            }
            _ if command == b"get" => Ok(reply(total)),
            _ => {
                self.poisoned = true;
                Err(trapped())
            }
        }
    }

    async fn apply(&mut self, id: &str, event: &[u8]) -> Result<(), InvokeError> {
        let by = i64::from_le_bytes(event.try_into().map_err(|_| trapped())?);
        *self.totals.get_mut(id).expect("applied to a live entity") += by;
        Ok(())
    }

    async fn wake(&mut self, id: &str, _: &CallContext) -> Result<Decision, InvokeError> {
        Ok(reply(self.totals[id]))
    }

    async fn withdraw(&mut self, id: &str, _: &CallContext, _: &str) -> Result<Decision, InvokeError> {
        Ok(reply(self.totals[id]))
    }

    async fn snapshot(&mut self, id: &str) -> Result<Vec<u8>, InvokeError> {
        Ok(self.totals[id].to_string().into_bytes())
    }
}

struct Native;

impl Components for Native {
    type Type = CounterType;
    type Instance = Counters;

    fn current(&self, name: &str) -> Option<CounterType> {
        (name == "counter").then_some(CounterType)
    }

    async fn at_least(&self, name: &str, version: u32) -> Result<CounterType, String> {
        self.current(name).filter(|_| version <= 1).ok_or_else(|| format!("no {name:?} version {version}"))
    }

    async fn instantiate(&self, _: &CounterType) -> Result<Counters, InvokeError> {
        Ok(Counters::default())
    }

    async fn install(&self, _: &TypeRecord) {}
}

/// What the worker asked of its group.
#[derive(Default)]
struct Asked {
    /// Proposals: (context, data).
    proposals: Vec<(Vec<u8>, Vec<u8>)>,
    /// Read index contexts.
    reads: Vec<Vec<u8>>,
    /// The committed log the tests handed over, for a rebuild to read back.
    log: Vec<Entry>,
}

#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Asked>>);

impl Group for Recorder {
    async fn add(
        &self,
        _: GroupLog,
        _: u64,
        _: mpsc::Sender<Event>,
        _: watch::Sender<GroupStatus>,
    ) -> Result<(), LoopError> {
        Ok(())
    }

    async fn campaign(&self, _: u32) -> Result<(), LoopError> {
        Ok(())
    }

    async fn propose(&self, _: u32, context: Vec<u8>, data: Vec<u8>) -> Result<(), LoopError> {
        self.0.borrow_mut().proposals.push((context, data));
        Ok(())
    }

    async fn read_index(&self, _: u32, context: Vec<u8>) -> Result<(), LoopError> {
        self.0.borrow_mut().reads.push(context);
        Ok(())
    }

    async fn compact(&self, _: u32, _: u64) -> Result<(), LoopError> {
        Ok(())
    }

    async fn exported(&self, _: u32, _: u64, _: Vec<u8>) -> Result<(), LoopError> {
        Ok(())
    }

    async fn entries(&self, _: u32, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        Ok(self.0.borrow().log.iter().filter(|e| (from..=to).contains(&e.index)).cloned().collect())
    }
}

type Answer = oneshot::Receiver<Result<Vec<u8>, casty_core::protocol::WireError>>;

/// One partition's worker, founded by this node and leading its group in term 1.
struct Partition {
    worker: PartitionWorker<Native, Recorder>,
    group: Recorder,
    jobs: Vec<Job>,
    requests: u64,
    /// The log index the next committed entry gets.
    next_index: u64,
}

impl Partition {
    fn leading() -> Self {
        let group = Recorder::default();
        let mut worker = PartitionWorker::new(Setup {
            id: 0,
            me: ME,
            journal: Journal::in_memory().expect("an in-memory journal opens"),
            raft: group.clone(),
            files: None,
            recovered: None,
            status: watch::channel(GroupStatus::default()).0,
            members: watch::channel(super::Members::new()).0,
            components: Native,
            holds_types: false,
            live_max: 16,
            metrics: Arc::new(Metrics::default()),
        });
        let me = MemberRecord { id: ME, name: "me".into(), addr: "127.0.0.1:1".into() };
        block_on(worker.found(Some(me)));
        let mut partition = Self { worker, group, jobs: Vec::new(), requests: 0, next_index: 2 };
        partition.event(Event::Role { term: 1, leader: ME, leading: true });
        partition
    }

    fn event(&mut self, event: Event) {
        block_on(self.worker.serve(event));
    }

    /// Queues a command for the next round.
    fn send(&mut self, id: &str, command: &str) -> Answer {
        self.requests += 1;
        let (reply, answer) = oneshot::channel();
        let invoke = Invoke {
            address: address(id),
            command: command.as_bytes().to_vec(),
            caller: "test".into(),
            request_id: format!("request-{}", self.requests),
            timeout_ms: 10_000,
        };
        self.jobs.push(Job { invoke, reply });
        answer
    }

    /// Queues enough commands that they are proposed while an earlier batch is in flight.
    fn send_batch(&mut self, id: &str, command: &str) -> Vec<Answer> {
        (0..PIPELINE_BATCH_MIN).map(|_| self.send(id, command)).collect()
    }

    fn round(&mut self) {
        block_on(self.worker.round(&mut self.jobs, NOW_MS));
    }

    /// Sends a command that persists nothing, decides it, confirms its read index, and
    /// returns its answer.
    fn ask(&mut self, id: &str, command: &str) -> Option<Result<String, ErrorKind>> {
        let mut answer = self.send(id, command);
        self.round();
        let newest = self.group.0.borrow().reads.len() - 1;
        self.confirm_read(newest);
        answered(&mut answer)
    }

    fn proposals(&self) -> usize {
        self.group.0.borrow().proposals.len()
    }

    /// Hands the worker proposal `n` (from 0) back committed, as the loop does once a
    /// majority has it on disk.
    fn commit(&mut self, n: usize) {
        let (context, data) = self.group.0.borrow().proposals[n].clone();
        self.commit_entry(1, context, data);
    }

    fn commit_entry(&mut self, term: u64, context: Vec<u8>, data: Vec<u8>) {
        let entry = Entry {
            index: self.next_index,
            term,
            context: context.into(),
            data: data.into(),
            ..Entry::default()
        };
        self.next_index += 1;
        self.group.0.borrow_mut().log.push(entry.clone());
        self.event(Event::Committed(vec![entry]));
    }

    /// Answers read index request `n` (from 0) with the index committed so far.
    fn confirm_read(&mut self, n: usize) {
        let context = self.group.0.borrow().reads[n].clone();
        let index = self.next_index - 1;
        self.event(Event::ReadIndex { context, index });
    }
}

fn address(id: &str) -> Address {
    Address { entity_type: "counter".into(), region: "r".into(), shards: 1, id: id.into() }
}

fn answered(answer: &mut Answer) -> Option<Result<String, ErrorKind>> {
    let answer = answer.try_recv().ok()?;
    Some(answer.map(|bytes| String::from_utf8(bytes).expect("totals are text")).map_err(|e| e.kind))
}

#[test]
fn a_write_is_answered_only_once_its_entry_comes_back_committed() {
    let mut partition = Partition::leading();
    let mut answer = partition.send("a", "add 5");
    partition.round();
    assert_eq!(partition.proposals(), 1);
    assert_eq!(answered(&mut answer), None, "answered before a majority had the entry");
    partition.commit(0);
    assert_eq!(answered(&mut answer), Some(Ok("5".into())));
}

#[test]
fn a_read_that_saw_a_write_in_flight_waits_for_the_write_to_commit() {
    let mut partition = Partition::leading();
    let mut write = partition.send("a", "add 5");
    partition.round();
    // A batch in flight: the next one is proposed once enough commands wait.
    let mut reads = partition.send_batch("a", "get");
    partition.round();
    assert_eq!(partition.proposals(), 1, "a batch that only read is no entry");
    partition.confirm_read(0);
    assert!(
        reads.iter_mut().all(|read| answered(read).is_none()),
        "a read revealed a write not yet committed"
    );
    partition.commit(0);
    assert_eq!(answered(&mut write), Some(Ok("5".into())));
    for read in &mut reads {
        assert_eq!(answered(read), Some(Ok("5".into())));
    }
}

#[test]
fn pipelined_batches_are_answered_in_the_order_they_were_decided() {
    let mut partition = Partition::leading();
    let mut first = partition.send("a", "add 1");
    partition.round();
    let mut second = partition.send_batch("a", "add 1");
    partition.round();
    assert_eq!(partition.proposals(), 2, "the second batch was decided while the first was in flight");
    partition.commit(0);
    assert_eq!(answered(&mut first), Some(Ok("1".into())));
    assert!(second.iter_mut().all(|answer| answered(answer).is_none()));
    partition.commit(1);
    for (n, answer) in second.iter_mut().enumerate() {
        assert_eq!(answered(answer), Some(Ok((n + 2).to_string())));
    }
}

#[test]
fn an_entry_another_leader_decided_fails_the_batches_in_flight_and_rebuilds_the_state() {
    let mut partition = Partition::leading();
    let mut lost = partition.send("a", "add 5");
    partition.round();
    // Another node led term 2 and committed its own entry where this one's was.
    let entity = address("a").entity_key();
    let foreign = LogEntry {
        entity,
        version: 1,
        events: vec![100i64.to_le_bytes().to_vec()],
        wake_at_ms: None,
        completed: Vec::new(),
    };
    let data = Proposal { entries: vec![foreign], deploys: Vec::new(), part: None }.encode();
    partition.commit_entry(2, 7u64.to_le_bytes().to_vec(), data);
    assert_eq!(answered(&mut lost), Some(Err(ErrorKind::Unavailable)));
    // Leading again in term 2, it reads the other leader's write and not its own.
    partition.event(Event::Role { term: 2, leader: ME, leading: true });
    assert_eq!(partition.ask("a", "get"), Some(Ok("100".into())));
}

#[test]
fn a_refused_proposal_fails_its_batch_and_rolls_the_live_state_back() {
    let mut partition = Partition::leading();
    let mut refused = partition.send("a", "add 5");
    partition.round();
    let context = partition.group.0.borrow().proposals[0].0.clone();
    partition.event(Event::Refused { context, reason: "not the leader".into() });
    assert_eq!(answered(&mut refused), Some(Err(ErrorKind::Unavailable)));
    assert_eq!(partition.ask("a", "get"), Some(Ok("0".into())), "the refused write stayed in the live state");
}

#[test]
fn a_follower_refers_commands_to_its_leader_and_decides_nothing() {
    let mut partition = Partition::leading();
    partition.event(Event::Role { term: 2, leader: OTHER, leading: false });
    let mut answer = partition.send("a", "add 5");
    partition.round();
    assert_eq!(answered(&mut answer), Some(Err(ErrorKind::Unavailable)));
    assert_eq!(partition.proposals(), 0);
}

#[test]
fn a_trapping_command_fails_alone_and_the_entity_keeps_its_committed_state() {
    let mut partition = Partition::leading();
    let mut write = partition.send("a", "add 5");
    partition.round();
    partition.commit(0);
    assert_eq!(answered(&mut write), Some(Ok("5".into())));
    assert_eq!(partition.ask("a", "trap"), Some(Err(ErrorKind::EntityTrapped)));
    // The poisoned instance is gone; the entity comes back from the log.
    assert_eq!(partition.ask("a", "get"), Some(Ok("5".into())));
}
