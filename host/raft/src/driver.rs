//! The node's one Raft loop: a tokio task that owns every group ([`Groups`]) and runs
//! rounds over a bounded inbox, the journal and one QUIC stream per peer.
//!
//! Each pass takes what the inbox holds (up to a bound), then runs rounds while any group
//! has work: it sends each peer one frame holding every group's messages, hands events
//! to the groups' owners, and gives the Raft log's writer the round's one buffer. The
//! writer reports durability through a watch of the newest durable round, which never
//! fills and so never makes the writer thread wait.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use casty_core::limits::{
    FRAME_SIZE_MAX_BYTES, RAFT_FOLLOWER_BYTES_HELD_MAX, RAFT_FOLLOWER_ENTRIES_HELD_MAX,
    RAFT_GROUP_EVENTS_QUEUED_MAX, RAFT_INBOX_LEN_MAX, RAFT_INPUTS_PER_ROUND_MAX, RAFT_PEER_FRAMES_QUEUED_MAX,
    RAFT_SNAPSHOT_BYTES_MAX, RAFT_SNAPSHOT_CHUNK_BYTES,
};
use casty_journal::JournalError;
use casty_journal::raft_log::{LogFiles, LogWriter, RoundBuffer, WriterStats};
use casty_transport::tls::Tls;
use raft::eraftpb::{Entry, Message};
use tokio::sync::{mpsc, oneshot, watch};

use crate::groups::{Event, GroupStatus, Groups, Round, TICK_MS};
use crate::log::GroupLog;
use crate::wire::{self, ConfChange, Frame, StreamHead, WireMessage};

/// What the loop is asked to do.
#[derive(Debug)]
enum Input {
    Add { log: Box<GroupLog>, applied: u64, owner: GroupOwner },
    Propose { group: u32, context: Vec<u8>, data: Vec<u8> },
    ReadIndex { group: u32, context: Vec<u8> },
    Campaign(u32),
    ConfChange { group: u32, change: ConfChange },
    Transfer { group: u32, to: u64 },
    Exported { group: u32, index: u64, data: Vec<u8> },
    Compact { group: u32, index: u64 },
    Entries { group: u32, from: u64, to: u64, answer: oneshot::Sender<Result<Vec<Entry>, String>> },
    Peer(Vec<(u32, Message)>),
    Address { id: u64, addr: SocketAddr },
    Stop(oneshot::Sender<()>),
}

/// Why the loop could not take an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    #[error("the Raft loop has stopped; the node is shutting down")]
    Stopped,
}

/// A handle to the node's Raft loop; cheap to clone.
#[derive(Debug, Clone)]
pub struct RaftLoop {
    inbox: mpsc::Sender<Input>,
    /// Why the first failed write of the Raft log failed, once one has.
    failure: watch::Receiver<Option<String>>,
    stats: Arc<LoopStats>,
}

/// What the loop has done since it started, for the node's metrics: beside a count of
/// writes, how many rounds, frames, messages and syncs each cost.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Rounds that had work.
    pub rounds: AtomicU64,
    /// Frames of Raft messages sent to peers (snapshots go apart).
    pub frames_sent: AtomicU64,
    /// Raft messages sent to peers.
    pub messages_sent: AtomicU64,
    /// The Raft log's writer.
    pub log: Arc<WriterStats>,
}

/// What the loop needs from the node.
#[derive(Debug)]
pub struct LoopConfig {
    /// This node's Raft id.
    pub id: u64,
    /// The Raft log, and where its next write goes ([`LogFiles::open`]).
    pub files: Arc<LogFiles>,
    pub next_write: RoundBuffer,
    pub tls: Tls,
    /// Where this node serves: peers answer it there.
    pub listen: SocketAddr,
    /// The address peers are dialed from, so that traffic between two nodes can be told
    /// apart from all other.
    pub local_ip: IpAddr,
}

impl RaftLoop {
    /// Starts the loop on the current tokio runtime.
    pub fn start(config: LoopConfig) -> Result<Self, JournalError> {
        let (inbox, rx) = mpsc::channel(RAFT_INBOX_LEN_MAX);
        let core = Groups::new(config.id, crate::logger(), config.next_write);
        let writer = LogWriter::start(&config.files)?;
        let stats = Arc::new(LoopStats { log: writer.stats(), ..LoopStats::default() });
        let links = Links {
            me: (config.id, config.listen.to_string()),
            tls: config.tls,
            local_ip: config.local_ip,
            addrs: HashMap::new(),
            links: HashMap::new(),
            stats: stats.clone(),
        };
        let (failed, failure) = watch::channel(None);
        tokio::spawn(run(core, rx, writer, links, failed));
        Ok(Self { inbox, failure, stats })
    }

    /// What the loop has done since it started.
    pub fn stats(&self) -> Arc<LoopStats> {
        self.stats.clone()
    }

    /// Returns, with the reason, once a write of the Raft log has failed. After a failed
    /// fdatasync nothing says which writes reached the disk, so nothing more becomes
    /// durable here and nothing held back is sent; the node should stop at once
    /// (fail-stop) and recover from what the disk holds, as after a failed journal commit.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The loop is gone without a failure: never.
            Err(_) => std::future::pending().await,
        }
    }

    async fn send(&self, input: Input) -> Result<(), LoopError> {
        self.inbox.send(input).await.map_err(|_| LoopError::Stopped)
    }

    /// Starts driving a group; its events go to `events`, and what it looks like from
    /// here to `status`: after a round that changed its leader, term or replicas, and at
    /// every tick (its progress only then).
    pub async fn add(
        &self,
        log: GroupLog,
        applied: u64,
        events: mpsc::Sender<Event>,
        status: watch::Sender<GroupStatus>,
    ) -> Result<(), LoopError> {
        let owner = GroupOwner::new(events, status);
        self.send(Input::Add { log: Box::new(log), applied, owner }).await
    }

    /// Proposes `data` to `group`. It comes back in [`Event::Committed`] with `context`,
    /// or, if raft-rs refuses it (this node does not lead), as [`Event::Refused`].
    pub async fn propose(&self, group: u32, context: Vec<u8>, data: Vec<u8>) -> Result<(), LoopError> {
        self.send(Input::Propose { group, context, data }).await
    }

    pub async fn read_index(&self, group: u32, context: Vec<u8>) -> Result<(), LoopError> {
        self.send(Input::ReadIndex { group, context }).await
    }

    pub async fn campaign(&self, group: u32) -> Result<(), LoopError> {
        self.send(Input::Campaign(group)).await
    }

    /// Proposes a membership change; a refusal comes back as [`Event::Refused`] with an
    /// empty context.
    pub async fn propose_conf_change(&self, group: u32, change: ConfChange) -> Result<(), LoopError> {
        self.send(Input::ConfChange { group, change }).await
    }

    /// Asks this node's leadership of `group` to move to `to`.
    pub async fn transfer_leader(&self, group: u32, to: u64) -> Result<(), LoopError> {
        self.send(Input::Transfer { group, to }).await
    }

    /// The owner's export of `group` at `index` ([`Groups::exported`]).
    pub async fn exported(&self, group: u32, index: u64, data: Vec<u8>) -> Result<(), LoopError> {
        self.send(Input::Exported { group, index, data }).await
    }

    /// The owner of `group` has a durable checkpoint through `index` ([`Groups::compact`]).
    pub async fn compact(&self, group: u32, index: u64) -> Result<(), LoopError> {
        self.send(Input::Compact { group, index }).await
    }

    /// The entries `from..=to` of `group`'s log, for an owner that rebuilds its state
    /// from its checkpoint. Entries that left memory are read from the log files.
    pub async fn entries(&self, group: u32, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        let (answer, answered) = oneshot::channel();
        self.send(Input::Entries { group, from, to, answer }).await.map_err(|e| e.to_string())?;
        answered.await.map_err(|_| LoopError::Stopped.to_string())?
    }

    /// Stops the loop once the rounds it wrote are on disk, and closes the log files.
    /// Owners stop first: what they proposed afterwards is answered by no one.
    pub async fn stop(&self) {
        let (ack, stopped) = oneshot::channel();
        if self.send(Input::Stop(ack)).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Where the node with Raft id `id` listens.
    pub async fn set_address(&self, id: u64, addr: SocketAddr) -> Result<(), LoopError> {
        self.send(Input::Address { id, addr }).await
    }

    /// Serves every peer that connects to `endpoint` (an endpoint of the loop's own; a
    /// node's server shares its endpoint with clients and calls
    /// [`RaftLoop::serve_connection`] itself).
    pub fn serve(&self, endpoint: quinn::Endpoint) {
        let raft = self.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let raft = raft.clone();
                tokio::spawn(async move {
                    if let Ok(connection) = incoming.await {
                        raft.serve_connection(connection).await;
                    }
                });
            }
        });
    }

    /// Serves each stream a peer opens on `connection`, until the connection ends.
    pub async fn serve_connection(&self, connection: quinn::Connection) {
        while let Ok(recv) = connection.accept_uni().await {
            let raft = self.clone();
            tokio::spawn(async move { raft.serve_peer(recv).await });
        }
    }

    /// Reads a stream a peer opened until it ends: a stream of rounds' frames, or one
    /// snapshot. A frame that does not decode ends the stream: the peer breaks the
    /// protocol.
    pub async fn serve_peer(&self, mut recv: quinn::RecvStream) {
        let head = match read_body(&mut recv)
            .await
            .and_then(|b| wire::decode_body("stream head", &b).map_err(|e| e.to_string()))
        {
            Ok(head) => head,
            Err(e) => return stream_ended(&e),
        };
        match head {
            StreamHead::Rounds { from, addr } => {
                if let Ok(addr) = addr.parse() {
                    let _ = self.send(Input::Address { id: from, addr }).await;
                }
                self.serve_rounds(recv).await;
            }
            StreamHead::Snapshot { group, mut message, len } => {
                let data = match read_snapshot(&mut recv, len).await {
                    Ok(data) => data,
                    Err(e) => return stream_ended(&e),
                };
                if !message.set_snapshot_data(data) {
                    return stream_ended(&"a snapshot stream's message is no snapshot");
                }
                match message.into_raft() {
                    Ok(message) => drop(self.send(Input::Peer(vec![(group, message)])).await),
                    Err(e) => stream_ended(&e),
                }
            }
        }
    }

    /// Hands every round's frame on a peer's stream to the loop, until the stream ends or
    /// a frame does not decode (the peer breaks the protocol).
    async fn serve_rounds(&self, mut recv: quinn::RecvStream) {
        loop {
            let messages = match read_body(&mut recv)
                .await
                .and_then(|b| wire::decode_frame(&b).map_err(|e| e.to_string()))
            {
                Ok(messages) => messages,
                Err(e) => return stream_ended(&e),
            };
            if self.send(Input::Peer(messages)).await.is_err() {
                return;
            }
        }
    }
}

/// A peer's stream ended, or broke the protocol: the peer opens a new one.
fn stream_ended(why: &dyn std::fmt::Display) {
    tracing::debug!("a peer's Raft stream ended: {why}");
}

/// The next frame's body; the end of the stream is an error here too.
async fn read_body(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    match casty_transport::read_frame(recv).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err("the stream ended".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A snapshot's data, `len` bytes in chunk frames.
async fn read_snapshot(recv: &mut quinn::RecvStream, len: u64) -> Result<Vec<u8>, String> {
    if len > RAFT_SNAPSHOT_BYTES_MAX {
        return Err(format!("a snapshot of {len} bytes is over the limit of {RAFT_SNAPSHOT_BYTES_MAX}"));
    }
    // Grown as chunks arrive, not sized by what the peer claims.
    let mut data = Vec::with_capacity(RAFT_SNAPSHOT_CHUNK_BYTES.min(len as usize));
    while (data.len() as u64) < len {
        let chunk: Vec<u8> =
            wire::decode_body("snapshot chunk", &read_body(recv).await?).map_err(|e| e.to_string())?;
        if data.len() as u64 + chunk.len() as u64 > len {
            return Err("a snapshot's chunks run past its length".into());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// A group's owner: where its events and status go, and the events it has not taken yet.
#[derive(Debug)]
struct GroupOwner {
    events: mpsc::Sender<Event>,
    status: watch::Sender<GroupStatus>,
    backlog: VecDeque<Event>,
    /// Committed entries of a group this node follows, not yet handed over: they go in
    /// one event at the next tick, once they reach a bound, or before any other event.
    held: Vec<Entry>,
    held_bytes: usize,
}

impl GroupOwner {
    fn new(events: mpsc::Sender<Event>, status: watch::Sender<GroupStatus>) -> Self {
        Self { events, status, backlog: VecDeque::new(), held: Vec::new(), held_bytes: 0 }
    }

    fn publish(&self, status: Option<GroupStatus>) {
        if let Some(status) = status {
            self.status.send_if_modified(|old| {
                let changed = *old != status;
                *old = status;
                changed
            });
        }
    }

    /// Hands `event` over, or holds it if it is a follower's committed entries: a
    /// leader's replies wait on its entries, but nobody waits on a follower's apply, and
    /// waking its worker once per entry cost more than the apply.
    fn deliver(&mut self, event: Event) {
        match event {
            Event::Committed(entries) if !self.status.borrow().leading => {
                self.held_bytes += entries.iter().map(|e| e.data.len()).sum::<usize>();
                self.held.extend(entries);
                if self.held.len() >= RAFT_FOLLOWER_ENTRIES_HELD_MAX
                    || self.held_bytes >= RAFT_FOLLOWER_BYTES_HELD_MAX
                {
                    self.release_held();
                }
            }
            event => {
                self.release_held();
                self.queue(event);
            }
        }
    }

    /// Hands over the committed entries held, in one event.
    fn release_held(&mut self) {
        if !self.held.is_empty() {
            self.held_bytes = 0;
            let entries = std::mem::take(&mut self.held);
            self.queue(Event::Committed(entries));
        }
    }

    fn queue(&mut self, event: Event) {
        if self.backlog.is_empty() {
            if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
                self.backlog.push_back(event);
            }
        } else {
            self.backlog.push_back(event);
        }
    }

    fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
                self.backlog.push_front(event);
                return;
            }
        }
    }

    /// An owner this far behind takes no more messages from peers until it catches up.
    fn behind(&self) -> bool {
        self.backlog.len() >= RAFT_GROUP_EVENTS_QUEUED_MAX
    }
}

async fn run(
    mut core: Groups,
    mut inbox: mpsc::Receiver<Input>,
    writer: LogWriter,
    mut links: Links,
    failed: watch::Sender<Option<String>>,
) {
    let failed = Arc::new(failed);
    let mut owners: BTreeMap<u32, GroupOwner> = BTreeMap::new();
    let (durable_tx, mut durable) = watch::channel(0u64);
    let mut ticks = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut stop = None;
        tokio::select! {
            input = inbox.recv() => match input {
                Some(input) => stop = take(&mut core, &mut owners, &mut links, input),
                None => return,
            },
            changed = durable.changed() => {
                if changed.is_err() { return; }
            }
            _ = ticks.tick() => {
                core.tick();
                for (group, owner) in &mut owners {
                    owner.publish(core.status(*group));
                    owner.release_held();
                }
            }
        }
        for _ in 1..RAFT_INPUTS_PER_ROUND_MAX {
            if stop.is_some() {
                break;
            }
            match inbox.try_recv() {
                Ok(input) => stop = take(&mut core, &mut owners, &mut links, input),
                Err(_) => break,
            }
        }
        if let Some(ack) = stop {
            // Dropping the writer waits for its thread, which finishes what is queued.
            drop(writer);
            let _ = ack.send(());
            return;
        }
        let through = *durable.borrow_and_update();
        core.persisted(through);
        for owner in owners.values_mut() {
            owner.flush();
        }
        while core.has_work() {
            let Round { number, messages, write, events, touched } = core.round();
            links.stats.rounds.fetch_add(1, Ordering::Relaxed);
            links.send(messages);
            // A change of leader, term or replicas is published at once: callers wait on
            // it. Progress alone waits for the next tick; building and comparing a status
            // for every group of every round was a few percent of a write's CPU.
            for group in touched {
                let Some(owner) = owners.get(&group) else { continue };
                // The read lock is released before `publish` takes the write lock.
                let moved = !core.same_role(group, &owner.status.borrow());
                if moved {
                    owner.publish(core.status(group));
                }
            }
            for (group, event) in events {
                if let Some(owner) = owners.get_mut(&group) {
                    owner.deliver(event);
                }
            }
            let Some(write) = write else { continue };
            let (durable_tx, failed) = (durable_tx.clone(), failed.clone());
            // Blocks only when the writer is a whole queue of rounds behind, when the
            // loop has to wait for the disk anyway.
            let submitted = writer.submit(
                write,
                Box::new(move |result| match result {
                    Ok(()) => durable_tx.send_modify(|through| *through = (*through).max(number)),
                    // The round is never durable: nothing it holds back is sent.
                    Err(e) => drop(failed.send_if_modified(|first| {
                        first.get_or_insert_with(|| format!("a Raft log write failed: {e}"));
                        true
                    })),
                }),
            );
            if submitted.is_err() {
                return;
            }
        }
    }
}

/// Takes one input; returns where to acknowledge a stop, when it is one.
fn take(
    core: &mut Groups,
    owners: &mut BTreeMap<u32, GroupOwner>,
    links: &mut Links,
    input: Input,
) -> Option<oneshot::Sender<()>> {
    match input {
        Input::Add { log, applied, owner } => {
            let group = log.group();
            match core.add(*log, applied) {
                Ok(()) => {
                    owner.publish(core.status(group));
                    owners.insert(group, owner);
                }
                Err(e) => tracing::error!("cannot start Raft group {group}: {e}"),
            }
        }
        Input::Propose { group, context, data } => {
            if let Err(e) = core.propose(group, context.clone(), data)
                && let Some(owner) = owners.get_mut(&group)
            {
                owner.deliver(Event::Refused { context, reason: e.to_string() });
            }
        }
        Input::ReadIndex { group, context } => {
            let _ = core.read_index(group, context);
        }
        Input::Campaign(group) => core.campaign(group),
        Input::ConfChange { group, change } => {
            if let Err(e) = core.propose_conf_change(group, change)
                && let Some(owner) = owners.get_mut(&group)
            {
                owner.deliver(Event::Refused { context: Vec::new(), reason: e.to_string() });
            }
        }
        Input::Transfer { group, to } => core.transfer_leader(group, to),
        Input::Exported { group, index, data } => {
            if let Err(e) = core.exported(group, index, data) {
                tracing::warn!("group {group}'s export at {index} was not taken: {e}");
            }
        }
        Input::Compact { group, index } => core.compact(group, index),
        Input::Entries { group, from, to, answer } => drop(answer.send(core.entries(group, from, to))),
        Input::Peer(messages) => {
            for (group, message) in messages {
                if owners.get(&group).is_some_and(|o| !o.behind()) {
                    core.step(group, message);
                }
            }
        }
        Input::Address { id, addr } => links.set_address(id, addr),
        Input::Stop(ack) => return Some(ack),
    }
    None
}

/// The node's links to its peers: one task and one long-lived stream each.
#[derive(Debug)]
struct Links {
    /// This node's Raft id and address, which every stream it opens names first.
    me: (u64, String),
    tls: Tls,
    local_ip: IpAddr,
    addrs: HashMap<u64, SocketAddr>,
    links: HashMap<u64, mpsc::Sender<Outgoing>>,
    stats: Arc<LoopStats>,
}

/// What a link sends: a round's frame on its long-lived stream, or a snapshot on a
/// stream of its own, so that a large one does not hold up the rounds behind it.
#[derive(Debug)]
enum Outgoing {
    Frame(Vec<u8>),
    Snapshot { group: u32, message: Box<WireMessage> },
}

/// A frame is closed once its messages' entries pass this many bytes, so that it stays
/// well inside the frame size limit.
const FRAME_FILL_BYTES: usize = FRAME_SIZE_MAX_BYTES / 4;

/// How many of the messages, of `bytes` each, the next frame takes: those that fit
/// within the fill, and at least one, so a frame holds at most one large message and
/// stays within the limit.
fn frame_len(bytes: impl ExactSizeIterator<Item = usize>) -> usize {
    let all = bytes.len();
    let mut filled = 0;
    bytes
        .enumerate()
        .find(|(_, b)| {
            filled += b;
            filled > FRAME_FILL_BYTES
        })
        .map_or(all, |(i, _)| i.max(1))
}

impl Links {
    fn set_address(&mut self, id: u64, addr: SocketAddr) {
        if self.addrs.insert(id, addr) != Some(addr) {
            // A peer that moved gets a new link; the old one ends with its queue.
            self.links.remove(&id);
        }
    }

    /// Sends every message of a round: one frame per peer, or more if it is large.
    fn send(&mut self, messages: Vec<(u32, Message)>) {
        self.stats.messages_sent.fetch_add(messages.len() as u64, Ordering::Relaxed);
        let mut by_peer: BTreeMap<u64, Vec<(u32, WireMessage)>> = BTreeMap::new();
        for (group, message) in &messages {
            let wire = WireMessage::from_raft(message);
            if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                match self.link(message.to) {
                    Some(link) => {
                        drop(link.try_send(Outgoing::Snapshot { group: *group, message: Box::new(wire) }))
                    }
                    None => tracing::debug!("no address for Raft peer {}; dropping a snapshot", message.to),
                }
                continue;
            }
            by_peer
                .entry(message.to)
                .or_insert_with(|| Vec::with_capacity(messages.len()))
                .push((*group, wire));
        }
        for (peer, mut messages) in by_peer {
            let Some(link) = self.link(peer) else {
                tracing::debug!("no address for Raft peer {peer}; dropping {} messages", messages.len());
                continue;
            };
            // Mostly all of them fit, and the peer's messages are its frame as they are.
            while !messages.is_empty() {
                let rest = messages.split_off(frame_len(messages.iter().map(|(_, m)| m.entries_bytes())));
                self.queue(&link, &Frame { messages });
                messages = rest;
            }
        }
    }

    fn queue(&self, link: &mpsc::Sender<Outgoing>, frame: &Frame) {
        let mut bytes = Vec::new();
        wire::encode_frame(&mut bytes, frame);
        if link.try_send(Outgoing::Frame(bytes)).is_ok() {
            self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!("a Raft peer's link is full; dropping a frame");
        }
    }

    fn link(&mut self, peer: u64) -> Option<mpsc::Sender<Outgoing>> {
        if let Some(link) = self.links.get(&peer).filter(|l| !l.is_closed()) {
            return Some(link.clone());
        }
        let addr = *self.addrs.get(&peer)?;
        let (tx, rx) = mpsc::channel(RAFT_PEER_FRAMES_QUEUED_MAX);
        let head = StreamHead::Rounds { from: self.me.0, addr: self.me.1.clone() };
        tokio::spawn(link_task(addr, self.tls.clone(), self.local_ip, head, rx));
        self.links.insert(peer, tx.clone());
        Some(tx)
    }
}

/// How long a link waits before it dials a peer again after a failure.
const REDIAL_PAUSE: Duration = Duration::from_millis(200);

/// Writes frames to one peer over one stream, and snapshots over streams of their own,
/// redialing when the connection breaks. What is queued while it cannot reach the peer
/// is dropped: it would be stale.
async fn link_task(
    addr: SocketAddr,
    tls: Tls,
    local_ip: IpAddr,
    head: StreamHead,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let local = SocketAddr::new(if addr.is_ipv4() == local_ip.is_ipv4() { local_ip } else { addr.ip() }, 0);
    loop {
        let (_endpoint, connection, mut rounds) = match dial(addr, &tls, local, &head).await {
            Ok(dialed) => dialed,
            Err(e) => {
                tracing::debug!("cannot reach Raft peer {addr}: {e}");
                tokio::time::sleep(REDIAL_PAUSE).await;
                while queue.try_recv().is_ok() {}
                if queue.is_closed() {
                    return;
                }
                continue;
            }
        };
        let mut bytes = Vec::new();
        while let Some(item) = queue.recv().await {
            bytes.clear();
            let mut next = Some(item);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Frame(frame) => bytes.extend_from_slice(&frame),
                    Outgoing::Snapshot { group, message } => {
                        tokio::spawn(send_snapshot(connection.clone(), group, message));
                    }
                }
                next = queue.try_recv().ok();
            }
            if let Err(e) = rounds.write_all(&bytes).await {
                tracing::debug!("Raft peer {addr}'s stream failed: {e}");
                break;
            }
        }
        if queue.is_closed() {
            let _ = rounds.finish();
            return;
        }
    }
}

/// Sends one snapshot on a stream of its own: its head, then its data in chunks.
async fn send_snapshot(connection: quinn::Connection, group: u32, mut message: Box<WireMessage>) {
    let data = message.take_snapshot_data().unwrap_or_default();
    let sent = async {
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, &StreamHead::Snapshot { group, message, len: data.len() as u64 });
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        for chunk in data.chunks(RAFT_SNAPSHOT_CHUNK_BYTES) {
            frame.clear();
            wire::encode_frame(&mut frame, &chunk);
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
        stream.finish().map_err(|e| e.to_string())
    };
    if let Err(e) = sent.await {
        // The leader sends it again once the replica's answers show it still behind.
        tracing::debug!("a snapshot of group {group} was not sent: {e}");
    }
}

async fn dial(
    addr: SocketAddr,
    tls: &Tls,
    local: SocketAddr,
    head: &StreamHead,
) -> Result<(quinn::Endpoint, quinn::Connection, quinn::SendStream), String> {
    let endpoint = casty_transport::client_endpoint(local, tls).map_err(|e| e.to_string())?;
    let connecting = endpoint.connect(addr, &addr.ip().to_string()).map_err(|e| e.to_string())?;
    let connection = connecting.await.map_err(|e| e.to_string())?;
    let mut rounds = connection.open_uni().await.map_err(|e| e.to_string())?;
    let mut frame = Vec::new();
    wire::encode_frame(&mut frame, head);
    rounds.write_all(&frame).await.map_err(|e| e.to_string())?;
    Ok((endpoint, connection, rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(leading: bool) -> (GroupOwner, mpsc::Receiver<Event>) {
        let (events, received) = mpsc::channel(RAFT_GROUP_EVENTS_QUEUED_MAX);
        let status = watch::Sender::new(GroupStatus { leading, ..GroupStatus::default() });
        (GroupOwner::new(events, status), received)
    }

    fn committed(indexes: std::ops::RangeInclusive<u64>, bytes: usize) -> Event {
        Event::Committed(
            indexes.map(|index| Entry { index, data: vec![7; bytes].into(), ..Entry::default() }).collect(),
        )
    }

    /// The frames a peer's messages of `bytes` each are cut into, as lengths.
    fn frames(mut bytes: &[usize]) -> Vec<usize> {
        let mut lens = Vec::new();
        while !bytes.is_empty() {
            let len = frame_len(bytes.iter().copied());
            lens.push(len);
            bytes = &bytes[len..];
        }
        lens
    }

    #[test]
    fn a_frame_takes_what_fits_its_fill_and_a_large_message_goes_alone() {
        let fill = FRAME_FILL_BYTES;
        assert_eq!(frames(&[10, 20, 30]), [3], "small messages share one frame");
        assert_eq!(frames(&[fill, 1]), [1, 1], "what would pass the fill goes in the next frame");
        assert_eq!(frames(&[1, fill + 5, 1]), [1, 1, 1], "a message larger than the fill goes alone");
        assert_eq!(frames(&[fill / 2, fill / 2, 1, fill]), [2, 1, 1]);
    }

    /// The indexes of every event taken so far, `0` standing for an event other than
    /// committed entries.
    fn taken(received: &mut mpsc::Receiver<Event>) -> Vec<Vec<u64>> {
        std::iter::from_fn(|| received.try_recv().ok())
            .map(|event| match event {
                Event::Committed(entries) => entries.iter().map(|e| e.index).collect(),
                _ => vec![0],
            })
            .collect()
    }

    #[test]
    fn a_leader_gets_its_committed_entries_at_once() {
        let (mut owner, mut received) = owner(true);
        owner.deliver(committed(1..=1, 10));
        owner.deliver(committed(2..=2, 10));
        assert_eq!(taken(&mut received), vec![vec![1], vec![2]]);
    }

    #[test]
    fn a_follower_gets_its_committed_entries_in_one_event_at_the_tick() {
        let (mut owner, mut received) = owner(false);
        owner.deliver(committed(1..=2, 10));
        owner.deliver(committed(3..=3, 10));
        assert_eq!(taken(&mut received), Vec::<Vec<u64>>::new(), "held until the tick");
        owner.release_held();
        assert_eq!(taken(&mut received), vec![vec![1, 2, 3]]);
        owner.release_held();
        assert_eq!(taken(&mut received), Vec::<Vec<u64>>::new(), "nothing is handed over twice");
    }

    #[test]
    fn any_other_event_comes_after_the_entries_held_before_it() {
        let (mut owner, mut received) = owner(false);
        owner.deliver(committed(1..=1, 10));
        owner.deliver(Event::Role { term: 2, leader: 1, leading: false });
        owner.deliver(committed(2..=2, 10));
        owner.deliver(Event::SnapshotWanted);
        assert_eq!(taken(&mut received), vec![vec![1], vec![0], vec![2], vec![0]]);
    }

    #[test]
    fn held_entries_go_once_they_reach_either_bound() {
        let (mut owner, mut received) = owner(false);
        let max = RAFT_FOLLOWER_ENTRIES_HELD_MAX as u64;
        owner.deliver(committed(1..=max - 1, 1));
        assert!(taken(&mut received).is_empty());
        owner.deliver(committed(max..=max, 1));
        assert_eq!(taken(&mut received), vec![(1..=max).collect::<Vec<_>>()]);

        let half = RAFT_FOLLOWER_BYTES_HELD_MAX / 2;
        owner.deliver(committed(max + 1..=max + 1, half));
        assert!(taken(&mut received).is_empty());
        owner.deliver(committed(max + 2..=max + 2, half));
        assert_eq!(taken(&mut received), vec![vec![max + 1, max + 2]]);
        assert_eq!(owner.held_bytes, 0);
    }
}
