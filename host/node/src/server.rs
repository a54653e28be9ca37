//! The QUIC server: accepts connections and streams, reads frames, and answers each
//! request on the stream it came on, in whatever order the answers are ready. A peer's
//! Raft traffic comes on one-way streams of the same connection, which go to the Raft
//! loop.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use casty_core::limits::STREAM_IN_FLIGHT_MAX;
use casty_core::protocol::{self, Request, Response};
use casty_transport::FrameReadError;

use crate::dispatch::Dispatcher;

pub(crate) async fn serve(endpoint: quinn::Endpoint, dispatcher: Arc<Dispatcher>) {
    while let Some(incoming) = endpoint.accept().await {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!("a connection failed its handshake: {e}");
                    return;
                }
            };
            let raft = dispatcher.raft.clone();
            let peer = connection.clone();
            tokio::spawn(async move { raft.serve_connection(peer).await });
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(serve_stream(send, recv, dispatcher.clone()));
            }
        });
    }
}

fn frame(request_id: u64, response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_frame(&mut out, request_id, response);
    out
}

/// Serves one stream until the client finishes it or breaks the framing. A frame whose
/// body does not decode is answered with an error and the stream goes on; a length that
/// breaks the limit cannot be skipped safely, so it is answered and the stream ends.
async fn serve_stream(send: quinn::SendStream, mut recv: quinn::RecvStream, dispatcher: Arc<Dispatcher>) {
    let (out, frames) = mpsc::channel::<Vec<u8>>(STREAM_IN_FLIGHT_MAX);
    let writer = tokio::spawn(write_frames(send, frames));
    let in_flight = Arc::new(Semaphore::new(STREAM_IN_FLIGHT_MAX));
    loop {
        let body = match casty_transport::read_frame(&mut recv).await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(FrameReadError::Frame(e)) => {
                tracing::debug!("closing a stream: {e}");
                let _ = out.send(frame(0, &Response::Error(e.to_wire()))).await;
                break;
            }
            Err(e) => {
                tracing::debug!("a stream ended: {e}");
                break;
            }
        };
        match protocol::decode_body::<Request>(&body) {
            Ok((id, request)) => {
                let permit = in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
                let (dispatcher, out) = (dispatcher.clone(), out.clone());
                tokio::spawn(async move {
                    let response = dispatcher.handle(request).await;
                    let _ = out.send(frame(id, &response)).await;
                    drop(permit);
                });
            }
            Err((id, e)) => {
                tracing::debug!("answering an undecodable frame: {e}");
                let _ = out.send(frame(id.unwrap_or(0), &Response::Error(e.to_wire()))).await;
            }
        }
    }
    drop(out);
    let _ = writer.await;
}

/// Writes answers as they come, coalescing those that are ready into one write.
async fn write_frames(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut buf) = frames.recv().await {
        while let Ok(more) = frames.try_recv() {
            buf.extend_from_slice(&more);
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}
