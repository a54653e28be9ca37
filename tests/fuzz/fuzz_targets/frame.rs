//! The frame reader the node and the client run on every QUIC stream
//! (`casty_transport::read_frame`), fed any byte stream in chunks of any size, and every
//! body it reads decoded as a request (as the node does) and a response (as a client does).
//!
//! The first input byte picks the chunk size (1 to 16 bytes a read, as QUIC may deliver
//! them); the rest is the stream.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use casty_core::limits::FRAME_SIZE_MAX_BYTES;
use casty_core::protocol::{Request, Response, decode_body};
use casty_transport::{FrameReadError, read_frame};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A stream that hands out its bytes at most `chunk` at a time, then ends.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let (now, rest) = self.bytes.split_at(n);
        buf.put_slice(now);
        self.bytes = rest;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (its stream is in memory) to its end.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading an in-memory stream waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let mut stream = Chunked { bytes, chunk: usize::from(first % 16) + 1 };
    loop {
        match ready(read_frame(&mut stream)) {
            Ok(Some(body)) => {
                assert!(
                    body.len() <= FRAME_SIZE_MAX_BYTES,
                    "a frame of {} bytes passed the limit",
                    body.len()
                );
                if let Err((_, e)) = decode_body::<Request>(&body) {
                    let _ = e.to_wire();
                }
                let _ = decode_body::<Response>(&body);
            }
            Ok(None) => break,
            Err(FrameReadError::Frame(e)) => {
                // The node answers a broken length prefix, then ends the stream.
                let _ = e.to_wire();
                break;
            }
            Err(_) => break,
        }
    }
});
