//! Several nodes' Raft cores in one process over a simulated network, each with real Raft
//! log files (on tmpfs, so a sync costs nothing), seeded: messages are delayed, dropped
//! and cut by partitions, writes take a while, nodes crash and restart from their files
//! (losing what was not durable), and Raft's own invariants are checked throughout and at
//! the end.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use casty_journal::raft_log::{LogFiles, LogWriter, RoundBuffer};
use raft::eraftpb::{EntryType, Message, MessageType};

use crate::groups::{Event, Groups};
use crate::log::GroupLog;
use crate::wire::ConfChange;

const NODES: u64 = 3;
const GROUPS: u32 = 3;
/// Small segments, so that the log files start new ones and delete old ones all the time.
const SEGMENT_BYTES: u64 = 4096;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Node {
    /// The node's log files, and the writer that makes them durable.
    dir: tempfile::TempDir,
    files: Arc<LogFiles>,
    writer: LogWriter,
    core: Groups,
    /// Journal writes not yet durable: (round, when it becomes durable, the write).
    writing: VecDeque<(u64, u64, RoundBuffer)>,
    /// The owner's state per group: what it saw committed, index → (term, data), and
    /// the index it applied through (entries, or a snapshot it installed).
    committed: BTreeMap<u32, BTreeMap<u64, (u64, Vec<u8>)>>,
    applied: BTreeMap<u32, u64>,
    /// Whether the node founded the groups (or joined them later, starting empty).
    founding: bool,
    /// A stalled disk finishes no write until it is unstalled.
    stalled: bool,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: BTreeMap<u64, Node>,
    /// (deliver at, from, to, group, message)
    network: VecDeque<(u64, u64, u64, u32, Message)>,
    cut: HashSet<(u64, u64)>,
    /// Out of 100: the share of messages lost.
    loss: u64,
    /// (group, term) → the one node that led it.
    leaders: HashMap<(u32, u64), u64>,
    proposed: u64,
    /// Answered read index requests: (node, group, context, index).
    reads: Vec<(u64, u32, Vec<u8>, u64)>,
}

fn quiet() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Node {
    /// A node that founded every group with `NODES` voters, or one that joins them later.
    fn new(id: u64, founding: bool) -> Self {
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("a directory");
        let (files, _, next) = LogFiles::open(dir.path()).expect("open the Raft log");
        let writer = LogWriter::start(&files).expect("start the writer");
        let mut node = Self {
            dir,
            files,
            writer,
            core: Groups::new(id, quiet(), next.with_segment_bytes(SEGMENT_BYTES)),
            writing: VecDeque::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            founding,
            stalled: false,
        };
        for group in 0..GROUPS {
            let log = node.fresh_log(group);
            node.core.add(log, 0).unwrap();
        }
        node
    }

    fn fresh_log(&self, group: u32) -> GroupLog {
        match self.founding {
            true => GroupLog::new(group, (1..=NODES).collect(), Some(self.files.clone())),
            false => GroupLog::joining(group, Some(self.files.clone())),
        }
    }

    /// The owner takes a snapshot of `group` through `index`.
    fn install(&mut self, group: u32, index: u64, data: &[u8]) {
        let state: Vec<(u64, u64, Vec<u8>)> =
            crate::wire::decode("state", data).expect("a snapshot the sim made");
        assert!(state.iter().all(|(i, _, _)| *i <= index), "a snapshot holds entries after its index");
        let seen = self.committed.entry(group).or_default();
        for (i, term, data) in state {
            // What this replica had committed must be what the snapshot holds.
            let previous = seen.insert(i, (term, data.clone()));
            assert!(previous.is_none_or(|p| p == (term, data)), "a snapshot disagrees at {i}");
        }
        self.applied.insert(group, index);
    }

    /// The owner exports its state of `group` at what it applied, as at a checkpoint.
    fn export(&mut self, group: u32) {
        let Some(&applied) = self.applied.get(&group) else { return };
        let state: Vec<(u64, u64, Vec<u8>)> = self
            .committed
            .get(&group)
            .into_iter()
            .flatten()
            .map(|(index, (term, data))| (*index, *term, data.clone()))
            .collect();
        let _ = self.core.exported(group, applied, crate::wire::encode(&state));
    }

    /// Writes `buffer` and waits until it is durable.
    fn write(&self, buffer: RoundBuffer) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.writer.submit(buffer, Box::new(move |result| tx.send(result).unwrap())).unwrap();
        rx.recv().unwrap().expect("the Raft log write");
    }

    /// A crash and a restart: what was not durable is gone, and the groups come back from
    /// the log files. What this node's owner applied survives (a partition checkpoints
    /// what it applies), so raft-rs hands over only entries after it.
    fn restart(&mut self, id: u64) {
        self.writing.clear();
        let (files, mut recovered, next) = LogFiles::open(self.dir.path()).expect("reopen the Raft log");
        self.writer = LogWriter::start(&files).expect("start the writer");
        self.core = Groups::new(id, quiet(), next.with_segment_bytes(SEGMENT_BYTES));
        self.files = files;
        for group in 0..GROUPS {
            let applied = self.applied.get(&group).copied().unwrap_or(0);
            let (log, applied) = match recovered.remove(&group) {
                Some(found) => {
                    let log = GroupLog::recover(group, found, self.files.clone(), applied).expect("recover");
                    // A snapshot the log files have but the owner had not taken yet.
                    match log.installed_snapshot().map(|read| read.expect("the snapshot records")) {
                        Some((index, data)) if index > applied => {
                            self.install(group, index, &data);
                            (log, index)
                        }
                        _ => (log, applied),
                    }
                }
                None => (self.fresh_log(group), applied),
            };
            self.core.add(log, applied).unwrap();
        }
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        Self::with(seed, 0)
    }

    /// `NODES` founding nodes, and `joining` more that may be added to the groups.
    fn with(seed: u64, joining: u64) -> Self {
        Self {
            rng: Rng(seed | 1),
            now: 0,
            nodes: (1..=NODES + joining).map(|id| (id, Node::new(id, id <= NODES))).collect(),
            network: VecDeque::new(),
            cut: HashSet::new(),
            loss: 0,
            leaders: HashMap::new(),
            proposed: 0,
            reads: Vec::new(),
        }
    }

    /// One step of simulated time: ticks, deliveries, proposals, rounds, durability.
    fn step(&mut self, propose: bool) {
        self.now += 1;
        let now = self.now;
        let mut due = Vec::new();
        self.network.retain(|m| {
            let ready = m.0 <= now;
            if ready {
                due.push(m.clone());
            }
            !ready
        });
        for (_, from, to, group, message) in due {
            if !self.cut.contains(&(from, to)) && self.rng.below(100) >= self.loss {
                self.nodes.get_mut(&to).unwrap().core.step(group, message);
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let tick = self.rng.below(3) == 0;
            let value = self.proposed;
            let node = self.nodes.get_mut(&id).unwrap();
            if tick {
                node.core.tick();
            }
            // Now and then the owner checkpoints: the log is compacted behind it.
            if self.rng.below(40) == 0 {
                node.export(self.rng.below(u64::from(GROUPS)) as u32);
            }
            if propose && self.rng.below(3) == 0 {
                for group in 0..GROUPS {
                    if node.core.leader(group).is_some_and(|(leader, _)| leader == id) {
                        let _ = node.core.propose(group, Vec::new(), format!("{id}:{value}").into_bytes());
                        self.proposed += 1;
                    }
                }
            }
            while !node.stalled && node.writing.front().is_some_and(|w| w.1 <= now) {
                let (round, _, buffer) = node.writing.pop_front().unwrap();
                node.write(buffer);
                node.core.persisted(round);
            }
            let mut rounds = 0;
            while node.core.has_work() {
                rounds += 1;
                assert!(rounds < 100, "node {id} never runs out of work");
                let round = node.core.round();
                for (group, message) in round.messages {
                    // A follower acknowledges only entries its log holds.
                    if message.get_msg_type() == MessageType::MsgAppendResponse && !message.reject {
                        let last = node.core.last_index(group);
                        assert!(
                            last >= message.index,
                            "node {id} acknowledged {} of group {group} holding {last}",
                            message.index
                        );
                    }
                    let delay = 1 + self.rng.below(3);
                    self.network.push_back((now + delay, id, message.to, group, message));
                }
                for (group, event) in round.events {
                    match event {
                        Event::Role { term, leader, leading: true } => {
                            assert_eq!(leader, id);
                            let first = *self.leaders.entry((group, term)).or_insert(id);
                            assert_eq!(first, id, "group {group} had two leaders in term {term}");
                        }
                        Event::Committed(entries) => {
                            if let Some(last) = entries.last() {
                                node.applied.insert(group, last.index);
                            }
                            let seen = node.committed.entry(group).or_default();
                            for e in entries {
                                if e.get_entry_type() == EntryType::EntryNormal {
                                    let previous = seen.insert(e.index, (e.term, e.data.to_vec()));
                                    assert!(
                                        previous.is_none(),
                                        "entry {} of group {group} came twice",
                                        e.index
                                    );
                                }
                            }
                        }
                        Event::ReadIndex { context, index } => self.reads.push((id, group, context, index)),
                        Event::SnapshotWanted => node.export(group),
                        Event::Install { index, data } => node.install(group, index, &data),
                        _ => {}
                    }
                }
                if let Some(write) = round.write {
                    // Writes become durable in order, after a while.
                    let after = node.writing.back().map_or(now, |w| w.1).max(now + self.rng.below(3));
                    node.writing.push_back((round.number, after, write));
                }
            }
        }
    }

    /// `steps` steps of simulated time.
    fn run(&mut self, steps: u64, propose: bool) {
        for _ in 0..steps {
            self.step(propose);
        }
    }

    /// Steps until `done` holds, failing with `what` after `limit` steps.
    fn run_until(&mut self, limit: u64, propose: bool, what: &str, done: impl Fn(&Sim) -> bool) {
        let mut steps = 0;
        while !done(self) {
            assert!(steps < limit, "{what}");
            self.step(propose);
            steps += 1;
        }
    }

    /// No two nodes saw different entries committed at one index of one group.
    fn check_agreement(&self) {
        for group in 0..GROUPS {
            let mut by_index: BTreeMap<u64, &(u64, Vec<u8>)> = BTreeMap::new();
            for (id, node) in &self.nodes {
                for (index, entry) in node.committed.get(&group).into_iter().flatten() {
                    let first = *by_index.entry(*index).or_insert(entry);
                    assert_eq!(first, entry, "node {id} committed another entry at {index} of group {group}");
                }
            }
        }
    }

    /// Whether every node saw the same entries committed in every group.
    fn converged(&self) -> bool {
        let members: Vec<u64> = self.nodes.keys().copied().collect();
        (0..GROUPS).all(|group| self.converged_in(group, &members))
    }

    /// Whether `members` saw the same entries committed in `group`.
    fn converged_in(&self, group: u32, members: &[u64]) -> bool {
        let first = self.nodes[&members[0]].committed.get(&group);
        members.iter().all(|id| self.nodes[id].committed.get(&group) == first)
    }

    fn committed_count(&self) -> usize {
        self.nodes[&1].committed.values().map(BTreeMap::len).sum()
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    for phase in 0..12u64 {
        // Alternate calm phases with a cut node, a lossy network, or both.
        sim.cut.clear();
        sim.loss = 0;
        match phase % 4 {
            1 => {
                let isolated = 1 + sim.rng.below(NODES);
                for other in 1..=NODES {
                    sim.cut.insert((isolated, other));
                    sim.cut.insert((other, isolated));
                }
            }
            2 => sim.loss = 20,
            3 => {
                let (a, b) = (1 + sim.rng.below(NODES), 1 + sim.rng.below(NODES));
                sim.cut.insert((a, b));
                sim.loss = 10;
            }
            _ => {}
        }
        for step in 0..300 {
            if step == 150 && sim.rng.below(2) == 0 {
                let crashed = 1 + sim.rng.below(NODES);
                sim.nodes.get_mut(&crashed).unwrap().restart(crashed);
            }
            sim.step(true);
        }
        sim.check_agreement();
    }
    sim.cut.clear();
    sim.loss = 0;
    // Every group commits one more entry of a healed term, which carries the others.
    sim.run(200, true);
    let what = format!("seed {seed}: the nodes did not converge after the faults healed");
    sim.run_until(5000, false, &what, Sim::converged);
    sim.check_agreement();
    for node in sim.nodes.values() {
        let segments = std::fs::read_dir(node.dir.path()).unwrap().count();
        assert!(
            segments <= 20,
            "seed {seed}: {segments} segments of the log are left; old ones are not deleted"
        );
    }
    assert!(sim.committed_count() > 100, "seed {seed}: only {} entries committed", sim.committed_count());
    assert!(sim.leaders.len() as u32 >= GROUPS, "seed {seed}: every group elected a leader");
}

#[test]
fn three_nodes_agree_through_partitions_loss_slow_disks_and_crashes() {
    for seed in [1, 7, 42, 1234, 99_999] {
        run(seed);
    }
}

#[test]
fn nothing_commits_while_only_the_leaders_own_copy_is_durable() {
    let mut sim = Sim::new(5);
    sim.run(300, true);
    let leader = sim.nodes[&1].core.leader(0).expect("group 0 elected a leader").0;
    let count = |sim: &Sim| sim.nodes[&leader].committed.get(&0).map_or(0, BTreeMap::len);
    assert!(count(&sim) > 0, "group 0 committed entries while every disk worked");
    for (id, node) in &mut sim.nodes {
        node.stalled = *id != leader;
    }
    // Acknowledgements of what the followers made durable before are still on the way.
    sim.run(10, true);
    let before = count(&sim);
    sim.run(300, true);
    assert_eq!(count(&sim), before, "an entry committed with only the leader's copy durable");
    for node in sim.nodes.values_mut() {
        node.stalled = false;
    }
    sim.run(300, true);
    assert!(count(&sim) > before, "group 0 went on once the followers' disks did");
}

#[test]
fn a_round_that_only_moves_the_commit_index_waits_for_no_sync() {
    let mut core = Groups::new(1, quiet(), RoundBuffer::new(1, 0));
    core.add(GroupLog::new(0, vec![1], None), 0).unwrap();
    core.campaign(0);
    // Every write is reported durable at once until the lone voter leads.
    let mut rounds = 0;
    while core.has_work() {
        rounds += 1;
        assert!(rounds < 20, "the lone voter never settled into leading");
        let number = core.round().number;
        core.persisted(number);
    }
    assert_eq!(core.leader(0).map(|(leader, _)| leader), Some(1));

    core.propose(0, Vec::new(), b"x".to_vec()).unwrap();
    let appended = core.round();
    assert!(appended.write.as_ref().is_some_and(RoundBuffer::must_sync), "an entry is synced");
    assert!(!core.has_work(), "nothing commits before the entry is durable");
    core.persisted(appended.number);
    let committed = core.round();
    let delivered = committed
        .events
        .iter()
        .any(|(_, event)| matches!(event, Event::Committed(e) if e.iter().any(|e| e.data.as_ref() == b"x")));
    assert!(delivered, "the durable entry is committed: {:?}", committed.events);
    let write = committed.write.expect("the new commit index is written");
    assert!(!write.must_sync(), "a commit index alone is not synced");
}

#[test]
fn leadership_moves_where_it_is_sent_and_reads_see_every_earlier_commit() {
    let mut sim = Sim::new(11);
    sim.run(300, true);
    let (leader, term) = sim.nodes[&1].core.leader(0).expect("group 0 elected a leader");
    let target = if leader == 1 { 2 } else { 1 };
    sim.nodes.get_mut(&leader).unwrap().core.transfer_leader(0, target);
    let what = format!("node {target} did not take over group 0 from node {leader}");
    sim.run_until(300, true, &what, |sim| {
        sim.nodes[&target].core.leader(0).is_some_and(|(l, _)| l == target)
    });
    let new_term = sim.nodes[&target].core.leader(0).unwrap().1;
    assert!(new_term > term, "the transfer started a new term");
    // raft-rs drops reads until a leader has committed an entry of its own term (partition
    // workers take commands only from then on), so wait for one.
    sim.run_until(300, true, &format!("node {target} committed nothing in its term"), |sim| {
        sim.nodes[&target].committed.get(&0).is_some_and(|c| c.values().any(|(t, _)| *t == new_term))
    });
    // Everything the new leader saw committed before it asks is below the read index.
    let seen = sim.nodes[&target].committed.get(&0).and_then(|c| c.keys().next_back().copied()).unwrap_or(0);
    sim.nodes.get_mut(&target).unwrap().core.read_index(0, b"read".to_vec()).unwrap();
    sim.run_until(300, true, "the read index was never answered", |sim| {
        sim.reads.iter().any(|r| r.0 == target && r.2 == b"read")
    });
    let read = sim.reads.iter().find(|r| r.0 == target && r.2 == b"read").unwrap();
    assert!(read.3 >= seen, "read index {} is below the commit {seen} it must observe", read.3);
}

#[test]
fn a_status_keeps_its_role_while_only_progress_moves_and_loses_it_to_a_new_leader_or_replica() {
    let mut sim = Sim::new(13);
    sim.run(300, true);
    let (leader, _) = sim.nodes[&1].core.leader(0).expect("group 0 elected a leader");
    let before = sim.nodes[&leader].core.status(0).unwrap();
    sim.run(100, true);
    let core = &sim.nodes[&leader].core;
    assert!(core.status(0).unwrap().last_index > before.last_index, "group 0 took no entries");
    assert!(core.same_role(0, &before), "only its progress moved: {before:?}");
    let mut grown = before.clone();
    grown.learners.insert(99);
    assert!(!core.same_role(0, &grown), "a replica more is a change of role");
    let target = if leader == 1 { 2 } else { 1 };
    let following = sim.nodes[&target].core.status(0).unwrap();
    assert!(sim.nodes[&target].core.same_role(0, &following));
    sim.nodes.get_mut(&leader).unwrap().core.transfer_leader(0, target);
    let what = format!("node {target} did not take over group 0 from node {leader}");
    sim.run_until(300, true, &what, |sim| {
        sim.nodes[&target].core.leader(0).is_some_and(|(l, _)| l == target)
    });
    assert!(!sim.nodes[&target].core.same_role(0, &following), "the new leader still follows");
    assert!(!sim.nodes[&leader].core.same_role(0, &before), "the old leader still leads");
}

#[test]
fn a_replica_added_by_a_conf_change_catches_up_from_a_snapshot_and_one_removed_leaves() {
    let mut sim = Sim::with(21, 1);
    let joiner = NODES + 1;
    sim.run(300, true);
    let change = |sim: &mut Sim, change: ConfChange| {
        let mut steps = 0;
        let before = sim.nodes[&1].core.conf_state(0);
        loop {
            let leader =
                (1..=NODES + 1).find(|id| sim.nodes[id].core.leader(0).is_some_and(|(l, _)| l == *id));
            if let Some(leader) = leader {
                if sim.nodes[&leader].core.conf_state(0) != before {
                    return;
                }
                let _ = sim.nodes.get_mut(&leader).unwrap().core.propose_conf_change(0, change.clone());
            }
            sim.run(20, true);
            steps += 20;
            assert!(steps < 2000, "the conf change {change:?} never took effect");
        }
    };
    // Group 0's log is compacted on every replica, so the new one needs a snapshot.
    for id in 1..=NODES {
        sim.nodes.get_mut(&id).unwrap().export(0);
    }
    change(&mut sim, ConfChange::new(&[], &[joiner], &[]));
    change(&mut sim, ConfChange::new(&[joiner], &[], &[]));
    // A leader does not remove itself: node 1 hands over its leadership first.
    assert!(
        sim.nodes.get_mut(&1).unwrap().core.propose_conf_change(0, ConfChange::new(&[], &[], &[1])).is_err()
    );
    let mut steps = 0;
    while sim.nodes[&1].core.leader(0).is_some_and(|(l, _)| l == 1) {
        sim.nodes.get_mut(&1).unwrap().core.transfer_leader(0, 2);
        sim.run(20, true);
        steps += 20;
        assert!(steps < 1000, "node 1 kept group 0's leadership");
    }
    change(&mut sim, ConfChange::new(&[], &[], &[1]));
    let members = [2, 3, joiner];
    sim.run(300, true);
    sim.run_until(3000, false, "the new replica did not catch up", |sim| sim.converged_in(0, &members));
    sim.check_agreement();
    let conf = sim.nodes[&joiner].core.conf_state(0);
    assert_eq!(conf.voters.iter().copied().collect::<HashSet<_>>(), HashSet::from(members));
    assert!(sim.nodes[&joiner].applied[&0] > 10, "the new replica applied group 0's history");
}

#[test]
fn an_entry_too_large_for_a_frame_is_refused_at_the_proposal() {
    let mut sim = Sim::new(3);
    sim.run(300, false);
    let (leader, _) = sim.nodes[&1].core.leader(0).expect("group 0 elected a leader");
    let core = &mut sim.nodes.get_mut(&leader).unwrap().core;
    let too_large = vec![0u8; casty_core::limits::RAFT_ENTRY_BYTES_MAX + 1];
    let err = core.propose(0, Vec::new(), too_large).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(core.propose(0, Vec::new(), vec![0u8; 1024]).is_ok(), "a small one is taken");
}
