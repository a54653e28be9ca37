use std::time::Duration;

use casty_core::limits::CALLER_DURATION_MAX_MS;
use casty_core::protocol::{ErrorKind, WireError};

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no node address to connect to; pass at least one (for example 127.0.0.1:25520)")]
    NoAddress,
    #[error("the connection to the node was lost: {0}")]
    ConnectionLost(String),
    #[error("the operation timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// The entity refused the command with a domain error; nothing was persisted.
    #[error("rejected ({code}): {message}")]
    Rejected { code: String, message: String },
    /// The node answered with an error.
    #[error("{0}")]
    Remote(WireError),
    #[error("{0}")]
    Decode(String),
    #[error("the value cannot be encoded as JSON: {0}")]
    Encode(String),
    /// The cluster did not become ready in time; `lacking` says what it still lacked.
    #[error("the cluster was not ready within {timeout_ms} ms: {lacking}")]
    NotReady { timeout_ms: u64, lacking: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The kind of a remote error, for matching.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            ClientError::Remote(e) => Some(&e.kind),
            _ => None,
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        match e.kind {
            ErrorKind::Rejected { code } => ClientError::Rejected { code, message: e.message },
            _ => ClientError::Remote(e),
        }
    }
}

/// Whether a duration a caller gives may be zero: a wait may (it does not wait), a
/// timeout or a lease may not (it would end before anything could happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    Allowed,
    Refused,
}

/// `duration` (a timeout, a wait, a lease) in whole milliseconds, or why it is refused:
/// it is longer than [`CALLER_DURATION_MAX_MS`], or shorter than 1 ms where zero is
/// refused. Every duration a caller gives passes here before it becomes a deadline, so
/// none can overflow the clock.
pub fn duration_ms(what: &str, duration: Duration, zero: Zero) -> Result<u64, ClientError> {
    let max = Duration::from_millis(CALLER_DURATION_MAX_MS);
    if duration > max {
        return Err(ClientError::InvalidArgument(format!(
            "{what} is {duration:?}; the longest allowed is {} days ({}s)",
            max.as_secs() / (24 * 60 * 60),
            max.as_secs()
        )));
    }
    let ms = duration.as_millis() as u64;
    if ms == 0 && zero == Zero::Refused {
        return Err(ClientError::InvalidArgument(format!("{what} is {duration:?}; it must be at least 1ms")));
    }
    Ok(ms)
}
