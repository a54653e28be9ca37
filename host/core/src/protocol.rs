//! The wire protocol between clients and nodes: one framed, versioned format.
//!
//! A frame is a little-endian `u32` body length followed by the body. A body is a `u16`
//! protocol version, a `u64` request id (chosen by the client, echoed in the response, so
//! many requests share one stream), and a postcard-encoded message. The length is checked
//! against [`FRAME_SIZE_MAX_BYTES`] before a byte of the body is read.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::limits::FRAME_SIZE_MAX_BYTES;
use crate::routing::Address;

/// The protocol version this build speaks. A peer that sends another gets
/// [`ErrorKind::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of the body header: version and request id.
pub const BODY_HEADER_BYTES: usize = 2 + 8;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Send a command to one entity and wait for its reply.
    Invoke(Invoke),
    /// Describe the node and the cluster.
    Status,
    /// A command another node forwards to this one, as the partition's leader; it is
    /// served here, never passed on again.
    Forwarded(Invoke),
    /// A node asks to join the cluster.
    Join(JoinRequest),
    /// Is this node alive? (Members ask each other, to tell who is up.)
    Ping,
    /// Removes a node from the cluster (it is leaving, or it is dead).
    Leave { node_id: String },
    /// Deploys a version of an entity type to the whole cluster.
    Deploy(Deployment),
    /// A leading piece of the component of the `Deploy` or `CommitDeploy` that follows on
    /// the same stream: a component larger than [`crate::limits::COMPONENT_CHUNK_BYTES`]
    /// travels as chunks on a stream of its own, then the request carries the last piece
    /// as its `wasm`. Chunks get no answer of their own.
    ComponentChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Lists the entity types this node can run, with their versions.
    Types,
    /// A deployment the node it reached has checked, for the metadata leader to number
    /// and commit.
    CommitDeploy(Deployment),
    /// A command from a node that does not replicate its partition to one that does (by
    /// the placement), which forwards it to the leader it knows or serves it. A node the
    /// placement moved out of a group never learns who leads it after that.
    Relayed(Invoke),
}

/// A component to deploy as the next version of an entity type.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub entity_type: String,
    /// The component's bytes.
    #[serde(with = "serde_bytes")]
    pub wasm: Vec<u8>,
    /// Linear memory one shard instance of the type may grow to; the node's default if
    /// `None`.
    pub memory_max_bytes: Option<u64>,
    /// Wall time one call into the type may take; the node's default if `None`.
    pub call_deadline_ms: Option<u64>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("entity_type", &self.entity_type)
            .field("wasm_bytes", &self.wasm.len())
            .field("memory_max_bytes", &self.memory_max_bytes)
            .field("call_deadline_ms", &self.call_deadline_ms)
            .finish()
    }
}

/// What a deploy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    pub entity_type: String,
    /// The version the component now runs as.
    pub version: u32,
    /// The SHA-256 of the component, hex.
    pub digest: String,
    /// The component was already the type's newest version, so nothing changed.
    pub unchanged: bool,
    /// Members that had not loaded the version when the deploy answered (they still
    /// will; a command that reaches one waits for it).
    pub pending: Vec<String>,
}

/// One version of an entity type, as `casty types` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    pub entity_type: String,
    pub version: u32,
    /// Whether new commands run this version (the type's newest).
    pub current: bool,
    /// Shipped inside `casty-host` (or given to this node with `--entity`), not deployed.
    pub builtin: bool,
    pub digest: String,
    pub size_bytes: u64,
    pub memory_max_bytes: u64,
    pub call_deadline_ms: u64,
}

/// What a joining node says of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub cluster: String,
    pub node_id: String,
    pub address: String,
}

/// A command for one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    pub address: Address,
    /// The entity's encoded command (JSON, as the guest SDK reads it).
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
    /// Who is calling: a client id or a lock owner id. Given to the entity.
    pub caller: String,
    /// Unique per logical request; retries reuse it. Given to the entity.
    pub request_id: String,
    /// How long the caller waits, so a parked request can be withdrawn when it passes.
    pub timeout_ms: u64,
}

/// A response to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The entity's encoded reply.
    Reply(#[serde(with = "serde_bytes")] Vec<u8>),
    Status(StatusReport),
    Error(WireError),
    Deployed(DeployReport),
    Types(Vec<TypeInfo>),
}

/// What `casty status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub node_id: String,
    /// The metadata group's leader, if one is known: while there is none, the cluster
    /// can neither deploy nor admit members.
    pub metadata_leader: Option<String>,
    pub members: Vec<Member>,
    pub partitions: u32,
    pub entity_types: Vec<String>,
    pub live_instances: u64,
    /// The partitions this node replicates, as it sees them.
    pub groups: Vec<GroupReport>,
}

/// One partition's Raft group, as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub partition: u32,
    /// The leader's node id, if one is known.
    pub leader: Option<String>,
    /// The voters' node ids.
    pub replicas: Vec<String>,
    /// Log entries each replica is behind the leader (known only on the leader).
    pub lag: Vec<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub address: String,
    pub state: MemberState,
    /// Partitions this member leads.
    pub leads: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Up,
    Suspect,
    Down,
}

/// An error as it crosses the wire: a kind to match on and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Every kind of error a node can answer with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The frame could not be decoded.
    BadFrame,
    /// The frame was longer than the limit.
    FrameTooLarge,
    UnsupportedVersion,
    /// The request decoded but a field is out of bounds.
    InvalidRequest,
    UnknownEntityType,
    /// The entity could not decode the command.
    MalformedCommand,
    /// The entity refused the command with a domain error; nothing was persisted.
    Rejected {
        code: String,
    },
    /// The entity's code trapped.
    EntityTrapped,
    /// The entity's code ran past its time limit.
    DeadlineExceeded,
    /// The entity's code asked for more memory than its limit.
    MemoryLimitExceeded,
    /// The node is at a queue limit; retry later.
    Overloaded,
    /// The node cannot serve this now (shutting down, journal failed).
    Unavailable,
    /// The operation's timeout passed before it was answered.
    Timeout,
    Internal,
    /// A retry of the same request (same request id) took this call's place, and gets
    /// its answer instead.
    Superseded,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorKind::BadFrame => "bad frame",
            ErrorKind::FrameTooLarge => "frame too large",
            ErrorKind::UnsupportedVersion => "unsupported protocol version",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::UnknownEntityType => "unknown entity type",
            ErrorKind::MalformedCommand => "malformed command",
            ErrorKind::Rejected { code } => return write!(f, "rejected ({code})"),
            ErrorKind::EntityTrapped => "entity trapped",
            ErrorKind::DeadlineExceeded => "entity deadline exceeded",
            ErrorKind::MemoryLimitExceeded => "entity memory limit exceeded",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Internal => "internal error",
            ErrorKind::Superseded => "superseded",
        };
        f.write_str(name)
    }
}

/// Why a frame could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than its {min}-byte header")]
    TooShort { len: usize, min: usize },
    #[error("protocol version {got} is not supported; this node speaks version {PROTOCOL_VERSION}")]
    Version { got: u16 },
    #[error("frame body does not decode: {0}")]
    Body(String),
}

impl FrameError {
    /// The wire error a peer gets for this frame.
    pub fn to_wire(&self) -> WireError {
        let kind = match self {
            FrameError::TooLarge { .. } => ErrorKind::FrameTooLarge,
            FrameError::Version { .. } => ErrorKind::UnsupportedVersion,
            FrameError::TooShort { .. } | FrameError::Body(_) => ErrorKind::BadFrame,
        };
        WireError::new(kind, self.to_string())
    }
}

/// Reads the length prefix and checks it against the limit, before the body is read.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_SIZE_MAX_BYTES {
        return Err(FrameError::TooLarge { len, max: FRAME_SIZE_MAX_BYTES });
    }
    if len < BODY_HEADER_BYTES {
        return Err(FrameError::TooShort { len, min: BODY_HEADER_BYTES });
    }
    Ok(len)
}

/// Appends one whole frame (prefix and body) to `out`.
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, request_id: u64, message: &T) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    // Our own message types always serialize; a failure here is a bug in this crate.
    let encoded = postcard::to_extend(message, std::mem::take(out)).expect("messages serialize");
    *out = encoded;
    let body = (out.len() - start - LENGTH_PREFIX_BYTES) as u32;
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&body.to_le_bytes());
}

/// Decodes a body (the bytes after the length prefix). On failure the request id is
/// returned when the header was readable, so the error can answer that request.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, T), (Option<u64>, FrameError)> {
    if body.len() < BODY_HEADER_BYTES {
        return Err((None, FrameError::TooShort { len: body.len(), min: BODY_HEADER_BYTES }));
    }
    let version = u16::from_le_bytes([body[0], body[1]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[2..10]);
    let request_id = u64::from_le_bytes(id);
    if version != PROTOCOL_VERSION {
        return Err((Some(request_id), FrameError::Version { got: version }));
    }
    match postcard::from_bytes(&body[BODY_HEADER_BYTES..]) {
        Ok(message) => Ok((request_id, message)),
        Err(e) => Err((Some(request_id), FrameError::Body(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke() -> Request {
        Request::Invoke(Invoke {
            address: Address {
                entity_type: "counter".into(),
                region: "page-views".into(),
                shards: 50,
                id: "page-views".into(),
            },
            command: br#"{"Increment":{"by":100}}"#.to_vec(),
            caller: "client-1".into(),
            request_id: "client-1:7".into(),
            timeout_ms: 5000,
        })
    }

    fn split(frame: &[u8]) -> (usize, &[u8]) {
        let prefix = frame[..4].try_into().unwrap();
        (body_len(prefix).unwrap(), &frame[4..])
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 42, &invoke());
        let (len, body) = split(&buf);
        assert_eq!(len, body.len());
        let (id, decoded): (u64, Request) = decode_body(body).unwrap();
        assert_eq!((id, decoded), (42, invoke()));
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let prefix = ((FRAME_SIZE_MAX_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(body_len(prefix), Err(FrameError::TooLarge { .. })));
        assert!(matches!(body_len([1, 0, 0, 0]), Err(FrameError::TooShort { .. })));
    }

    #[test]
    fn garbage_bodies_keep_their_request_id() {
        let mut body = PROTOCOL_VERSION.to_le_bytes().to_vec();
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&[0xff; 16]);
        let err = decode_body::<Request>(&body).unwrap_err();
        assert_eq!(err.0, Some(9));
        assert_eq!(err.1.to_wire().kind, ErrorKind::BadFrame);
    }

    #[test]
    fn other_versions_are_named() {
        let mut body = 7u16.to_le_bytes().to_vec();
        body.extend_from_slice(&1u64.to_le_bytes());
        let (_, err) = decode_body::<Request>(&body).unwrap_err();
        assert_eq!(err, FrameError::Version { got: 7 });
        assert_eq!(err.to_wire().kind, ErrorKind::UnsupportedVersion);
    }

    /// Bodies of valid frames, one per shape the decoder reads (strings, byte vectors,
    /// nested structs, options and enums).
    fn valid_bodies() -> Vec<Vec<u8>> {
        let error = Response::Error(WireError::new(ErrorKind::Unavailable, "no majority"));
        let leave = Request::Leave { node_id: "n3".into() };
        let deploy = Request::Deploy(Deployment {
            entity_type: "bank-account".into(),
            wasm: b"\0asm".to_vec(),
            memory_max_bytes: Some(1 << 20),
            call_deadline_ms: None,
        });
        let status = Response::Status(StatusReport {
            cluster: "app".into(),
            node_id: "n1".into(),
            metadata_leader: Some("n1".into()),
            members: vec![Member {
                node_id: "n1".into(),
                address: "127.0.0.1:1".into(),
                state: MemberState::Up,
                leads: 2,
            }],
            partitions: 4,
            entity_types: vec!["counter".into()],
            live_instances: 7,
            groups: vec![GroupReport {
                partition: 0,
                leader: Some("n1".into()),
                replicas: vec!["n1".into()],
                lag: vec![("n2".into(), 3)],
            }],
        });
        let mut bodies = Vec::new();
        for (id, message) in [(1, &invoke()), (2, &leave), (3, &Request::Status), (6, &deploy)] {
            let mut frame = Vec::new();
            encode_frame(&mut frame, id, message);
            bodies.push(frame[LENGTH_PREFIX_BYTES..].to_vec());
        }
        for (id, message) in [(4, &Response::Reply(b"42".to_vec())), (5, &error), (7, &status)] {
            let mut frame = Vec::new();
            encode_frame(&mut frame, id, message);
            bodies.push(frame[LENGTH_PREFIX_BYTES..].to_vec());
        }
        bodies
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_body::<Request>(&body);
            let _ = decode_body::<Response>(&body);
        }

        /// Past a valid header, so the bytes reach the message decoder itself.
        #[test]
        fn arbitrary_messages_never_panic(
            id in proptest::num::u64::ANY,
            message in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut body = PROTOCOL_VERSION.to_le_bytes().to_vec();
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&message);
            for result in [decode_body::<Request>(&body).map(|_| ()), decode_body::<Response>(&body).map(|_| ())] {
                if let Err((got, _)) = result {
                    proptest::prop_assert_eq!(got, Some(id));
                }
            }
        }

        /// Valid frames with bytes overwritten and the end cut off: each decodes to a
        /// message or an error, never a panic.
        #[test]
        fn damaged_frames_never_panic(
            which in 0..valid_bodies().len(),
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8),
            keep in proptest::num::usize::ANY,
        ) {
            let mut body = valid_bodies().swap_remove(which);
            for (at, byte) in damage {
                let len = body.len();
                body[at % len] = byte;
            }
            body.truncate(keep % (body.len() + 1));
            let _ = decode_body::<Request>(&body);
            let _ = decode_body::<Response>(&body);
        }
    }
}
