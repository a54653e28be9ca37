//! Reading and writing whole frames on QUIC streams.

use casty_core::protocol::{LENGTH_PREFIX_BYTES, body_len};
use tokio::io::{AsyncRead, AsyncReadExt};

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
///
/// Generic over the reader so that the fuzz targets (`tests/fuzz`) feed this very
/// function from a byte slice; the node and the client pass a `quinn::RecvStream`.
pub async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    // Read by hand rather than with `read_exact`, which cannot tell an end of stream
    // between frames (clean) from one inside the prefix (truncated).
    while filled < prefix.len() {
        match stream.read(&mut prefix[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameReadError::Truncated),
            Ok(n) => filled += n,
            Err(e) => return Err(FrameReadError::Stream(e.to_string())),
        }
    }
    let len = body_len(prefix)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameReadError::Truncated,
        _ => FrameReadError::Stream(e.to_string()),
    })?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use casty_core::protocol::{PROTOCOL_VERSION, Request, decode_body, encode_frame};

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn frames_are_read_one_after_another_until_a_clean_end() {
        let mut stream = Vec::new();
        encode_frame(&mut stream, 1, &Request::Status);
        encode_frame(&mut stream, 2, &Request::Ping);
        let mut reader = &stream[..];
        let first = block_on(read_frame(&mut reader)).unwrap().unwrap();
        assert_eq!(decode_body::<Request>(&first).unwrap(), (1, Request::Status));
        let second = block_on(read_frame(&mut reader)).unwrap().unwrap();
        assert_eq!(decode_body::<Request>(&second).unwrap(), (2, Request::Ping));
        assert!(block_on(read_frame(&mut reader)).unwrap().is_none());
    }

    #[test]
    fn ends_inside_a_frame_are_truncations() {
        let mut stream = Vec::new();
        encode_frame(&mut stream, 1, &Request::Status);
        for cut in [1, 3, 5, stream.len() - 1] {
            let err = block_on(read_frame(&mut &stream[..cut])).unwrap_err();
            assert!(matches!(err, FrameReadError::Truncated), "cut at {cut}: {err}");
        }
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        assert!(matches!(block_on(read_frame(&mut &huge[..])), Err(FrameReadError::Frame(_))));
    }

    proptest::proptest! {
        /// Any byte stream reads as frames, then a clean end or an error, never a panic;
        /// each frame read is at most the limit.
        #[test]
        fn arbitrary_streams_never_panic(stream in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut reader = &stream[..];
            block_on(async {
                while let Ok(Some(body)) = read_frame(&mut reader).await {
                    let _ = decode_body::<Request>(&body);
                }
            });
        }
    }
}
