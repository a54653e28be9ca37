//! Reading and writing whole frames on QUIC streams.

use casty_core::protocol::{LENGTH_PREFIX_BYTES, body_len};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameReadError {
    /// The length prefix broke the protocol; the stream cannot be resynchronised.
    #[error(transparent)]
    Frame(#[from] casty_core::protocol::FrameError),
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    #[error("the stream failed: {0}")]
    Stream(String),
}

/// Reads one frame body (the bytes after the length prefix). `Ok(None)` is a clean end
/// of stream between frames.
pub async fn read_frame(stream: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameReadError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameReadError::Stream(e.to_string())),
    }
    let len = body_len(prefix)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameReadError::Truncated,
        quinn::ReadExactError::ReadError(e) => FrameReadError::Stream(e.to_string()),
    })?;
    Ok(Some(body))
}
