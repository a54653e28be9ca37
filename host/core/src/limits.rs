//! Every limit of the system, in one place. Names end in their unit.

/// Largest frame, header included, that either side of a connection accepts.
pub const FRAME_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest command a client may send to one entity.
pub const COMMAND_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// Longest entity type name (`counter`, `bank-account`).
pub const ENTITY_TYPE_LEN_MAX_BYTES: usize = 64;
/// Longest structure (region) name.
pub const REGION_LEN_MAX_BYTES: usize = 256;
/// Longest entity id (a counter's name, a map key).
pub const ENTITY_ID_LEN_MAX_BYTES: usize = 1024;
/// Longest caller or request id a client may name.
pub const CALLER_LEN_MAX_BYTES: usize = 256;
/// Most shards one structure may be split into.
pub const SHARDS_MAX: u32 = 65_536;
/// Shards of a structure when the caller names none (as in the seed API).
pub const SHARDS_DEFAULT: u32 = 100;
/// Partitions of a new cluster when the operator names none.
pub const PARTITIONS_DEFAULT: u32 = 64;
/// Replicas of each partition when none are asked for; capped at the cluster's size.
pub const REPLICAS_DEFAULT: u32 = 3;
/// Most partitions a cluster may have.
pub const PARTITIONS_MAX: u32 = 4096;

/// Commands waiting in one partition's mailbox; past this the node answers `Overloaded`.
pub const MAILBOX_LEN_MAX: usize = 4096;
/// Commands one partition decides before it commits them together.
pub const BATCH_LEN_MAX: usize = 512;
/// Batches a partition's leader has proposed and not yet seen committed: it decides the
/// next on top of the live state while the ones before it replicate.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// Commands that must be waiting before a leader with batches in flight proposes another.
pub const PIPELINE_BATCH_MIN: usize = 16;
/// Batches waiting for the journal writer.
pub const WRITER_QUEUE_LEN_MAX: usize = 1024;
/// Requests one client stream may have in flight on the node at once. A client sends
/// all its requests to a node on one stream, so this is also what one client (or one
/// node forwarding to another) may have waiting there, parked lock waiters included.
pub const STREAM_IN_FLIGHT_MAX: usize = 16 * 1024;
/// Requests parked (waiting for a later decision) on one partition.
pub const PARKED_PER_PARTITION_MAX: usize = 65_536;
/// Completed requests one partition remembers, so a retry within this window is answered
/// with the original reply instead of being applied twice.
pub const COMPLETED_REQUESTS_PER_PARTITION_MAX: usize = 4096;
/// Wake-up times pending on one partition.
pub const TIMERS_PER_PARTITION_MAX: usize = 65_536;

/// Shard instances a node keeps live before it passivates the least recently used.
pub const LIVE_INSTANCES_DEFAULT: usize = 1024;
/// Linear memory one shard instance may grow to.
pub const INSTANCE_MEMORY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// The smallest memory limit an entity type may ask for: a Rust component needs a few
/// pages before it runs any code.
pub const INSTANCE_MEMORY_MIN_BYTES: usize = 1024 * 1024;
/// Table elements one shard instance may have.
pub const INSTANCE_TABLE_ELEMENTS_MAX: usize = 20_000;
/// Wall time one call into a component may take before it is interrupted.
pub const INVOKE_DEADLINE_MAX_MS: u64 = 500;
/// How fast an entity type's budget for failing calls refills: the share of one core
/// (in ms per second) that its calls which trap or hit a limit may take on a node, over
/// time. A type that overspends has its commands refused until the budget is back.
pub const FAILING_CALLS_MS_PER_S: u64 = 50;
/// The budget's size when full, at least: what a burst of failing calls may take.
pub const FAILING_CALLS_BURST_MS: u64 = 500;
/// The longest call deadline an entity type may ask for at deploy.
pub const CALL_DEADLINE_LIMIT_MS: u64 = 60_000;
/// How often the epoch ticks; call deadlines are counted in these ticks.
pub const EPOCH_TICK_MS: u64 = 10;
/// Events one decision may persist.
pub const EVENTS_PER_DECISION_MAX: usize = 1024;
/// Size of one event or one reply produced by an entity.
pub const EVENT_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// Log entries a partition accumulates before it checkpoints its entities' snapshots;
/// bounds replay time at start-up. Every checkpoint stores the whole completed-request
/// window (up to `COMPLETED_REQUESTS_PER_PARTITION_MAX`): checkpoints taken much more
/// often than the window turns over write the same requests again and again.
pub const CHECKPOINT_INTERVAL_ENTRIES: u64 = 3000;
/// Log entries read per call when replaying a partition's tail.
pub const REPLAY_CHUNK_ENTRIES: usize = 4096;

/// How much earlier than its caller a parked request is withdrawn, at most (or a tenth of
/// its timeout, if less): the entity forgets the request while the caller still waits, so
/// nothing is granted to a caller that already gave up.
pub const PARK_DEADLINE_MARGIN_MS: u64 = 100;

/// The longest timeout, wait or lease a caller may ask for: 30 days. A longer one is
/// refused, not clamped: a deadline past what the clock can hold is no deadline at all.
pub const CALLER_DURATION_MAX_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Timeout of one client operation when the caller names none (as in the seed API).
pub const CLIENT_TIMEOUT_DEFAULT_MS: u64 = 5000;

/// How often a Raft leader sends heartbeats to its followers.
pub const RAFT_HEARTBEAT_MS: u64 = 150;
/// A follower that hears no leader for a random time in this range starts an election.
/// A replica also refuses to vote for another while it heard its leader within the lower
/// end (raft-rs's check-quorum lease), so a dead leader is replaced after one to two of
/// these: about 1 to 1.5 s.
pub const RAFT_ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub const RAFT_ELECTION_TIMEOUT_MAX_MS: u64 = 750;
/// Bytes of a Raft group's newest log entries each replica keeps in memory once they are
/// durable, so that replicating and applying them (Raft reads each entry back at least
/// twice) does not read the journal. Entries not yet durable are kept however many bytes
/// they take, as Raft must be able to read them.
pub const RAFT_LOG_TAIL_BYTES_MAX: usize = 256 * 1024;
/// Largest Raft entry (a batch's proposal, with its context): one must fit in a frame
/// of its own, and in one record of the Raft log.
pub const RAFT_ENTRY_BYTES_MAX: usize = FRAME_SIZE_MAX_BYTES - 64 * 1024;
/// Bytes of entries one Raft append message carries at most.
pub const RAFT_MESSAGE_ENTRIES_MAX_BYTES: u64 = 1024 * 1024;
/// Append messages a Raft leader has in flight to one follower before it waits for an
/// answer: enough to keep a pipelined partition's batches moving over one round trip.
pub const RAFT_APPENDS_IN_FLIGHT_MAX: usize = 256;
/// Inputs (proposals, peers' frames, reads) queued for a node's Raft loop. A full inbox
/// makes proposers and peer streams wait: backpressure, not loss.
pub const RAFT_INBOX_LEN_MAX: usize = 8192;
/// Inputs the Raft loop takes in one round before it writes and sends.
pub const RAFT_INPUTS_PER_ROUND_MAX: usize = 4096;
/// Encoded frames queued for one peer; when the link is slower, later frames are
/// dropped (Raft resends what is lost).
pub const RAFT_PEER_FRAMES_QUEUED_MAX: usize = 256;
/// Events queued for one group's owner. Past this, and past as many again held by the
/// loop, the group's incoming messages are dropped until its owner catches up.
pub const RAFT_GROUP_EVENTS_QUEUED_MAX: usize = 1024;
/// Committed entries the Raft loop holds for a group this node follows before it hands
/// them to the group's owner (it hands them over at its next tick at the latest; why is
/// said at `GroupOwner::deliver` in casty-raft).
pub const RAFT_FOLLOWER_ENTRIES_HELD_MAX: usize = 64;
/// Bytes of those entries' data held at most per group.
pub const RAFT_FOLLOWER_BYTES_HELD_MAX: usize = 256 * 1024;
/// Bytes of one segment file of the Raft log; the next round's records start a new one.
pub const RAFT_LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of zeros the Raft log's writer keeps written ahead of its records, so that a
/// round's fdatasync writes only data, not the file's new size as well.
pub const RAFT_LOG_ZEROED_AHEAD_BYTES: u64 = 1024 * 1024;
/// Bytes of consecutive rounds the Raft log's writer joins into one write; a round
/// larger than that is written on its own.
pub const RAFT_LOG_JOINED_WRITE_BYTES_MAX: u64 = 256 * 1024;
/// Largest Raft snapshot (a partition exported whole) a node sends or takes.
pub const RAFT_SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// A snapshot travels on a stream of its own, and is kept in the Raft log, in chunks of
/// this many bytes.
pub const RAFT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Memory the journal may use to cache pages of its file. redb's own default (1 GiB)
/// lets a node under steady writes grow past a gigabyte; the pages writes and reads
/// touch (each partition's newest log leaves, live snapshots) fit in far less.
pub const JOURNAL_CACHE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Voters of the metadata group; members beyond these follow it as learners.
pub const META_VOTERS_MAX: usize = 5;
/// How often a node checks that the partitions it leads are placed as they should be.
pub const PLACEMENT_INTERVAL_MS: u64 = 1000;
/// How long a node stopped with SIGTERM waits for its replicas and leaderships to move
/// elsewhere before it exits anyway.
pub const LEAVE_DEADLINE_MS: u64 = 60_000;
/// A member that answers nothing for this long is dead: it is removed from the cluster and
/// its replicas are re-created on the others (the default of `--dead-after`).
pub const DEAD_AFTER_DEFAULT_MS: u64 = 30_000;
/// How often a node asks other members whether it is still one of them (a node removed
/// while it was cut off cannot learn it otherwise), and how long it then tries to join.
pub const REJOIN_CHECK_INTERVAL_MS: u64 = 5000;
/// Members a node asks, each time, whether it is still a member.
pub const REJOIN_ASKED_MAX: usize = 3;
/// How long a node with seeds keeps trying to join before it gives up.
pub const JOIN_DEADLINE_MS: u64 = 60_000;
/// How long a leader waits for a majority to commit a batch (or confirm its leadership
/// for a read) before it tells the callers the partition is unavailable.
pub const COMMIT_WAIT_MAX_MS: u64 = 3000;
/// How long a command waits for its partition to elect a leader before it is refused.
pub const LEADER_WAIT_MAX_MS: u64 = 3000;
/// A peer that answered nothing for this long is suspect: commands are not forwarded to
/// it but refused at once, and status shows it as suspect.
pub const PEER_SILENCE_MAX_MS: u64 = 3000;

/// Largest component that may be deployed (components built from other languages than
/// Rust are 10-40 MiB).
pub const COMPONENT_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// A component travels to a node, and through the metadata group's log, in pieces of at
/// most this size: each fits a frame and a Raft entry.
pub const COMPONENT_CHUNK_BYTES: usize = 1024 * 1024;
/// Deploys one node takes in at once: each holds up to a whole component in memory
/// while its chunks arrive.
pub const COMPONENT_UPLOADS_MAX: usize = 4;
/// Entity types that may be deployed to one cluster (built-ins not counted).
pub const DEPLOYED_TYPES_MAX: usize = 256;
/// Versions of one entity type a cluster keeps; each stays loadable, since entities
/// snapshotted long ago are restored by the newest and the log may name older ones.
pub const TYPE_VERSIONS_MAX: u32 = 1000;
/// Entities of a type one partition restores into a new version when that version is
/// deployed, to refuse a version that cannot read the state it would take over.
pub const UPGRADE_CHECK_ENTITIES_MAX: usize = 10_000;
/// How long a replica waits for a type version it does not have yet (its deployment is
/// still on the way through the metadata group) before it gives up on the shard.
pub const TYPE_WAIT_MAX_MS: u64 = 10_000;
/// How long a deploy waits for every member to load the new version before it answers,
/// naming the members that had not.
pub const DEPLOY_SPREAD_WAIT_MS: u64 = 10_000;
/// Timeout of a deploy when the caller names none: compiling a component takes a while.
pub const DEPLOY_TIMEOUT_DEFAULT_MS: u64 = 60_000;
