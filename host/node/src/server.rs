//! The QUIC server: accepts connections and streams, reads frames, and answers each
//! request on the stream it came on, in whatever order the answers are ready. A peer's
//! Raft traffic comes on one-way streams of the same connection, which go to the Raft
//! loop.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

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

/// Serves one stream until the client finishes it or breaks the framing. A frame whose
/// body does not decode is answered with an error and the stream goes on; a length that
/// breaks the limit cannot be skipped safely, so it is answered and the stream ends.
///
/// One task serves the whole stream: its requests are futures polled here, not tasks of
/// their own, and their answers are written from here, every answer that is ready in one
/// write. A request costs no spawn and no hop to a writer task.
async fn serve_stream(mut send: quinn::SendStream, recv: quinn::RecvStream, dispatcher: Arc<Dispatcher>) {
    // A stream of frames rather than a read per turn of the loop: a frame half read when
    // an answer comes first stays half read in the stream, not dropped with its future.
    let frames = futures_util::stream::unfold(recv, |mut recv| async move {
        let frame = casty_transport::read_frame(&mut recv).await;
        Some((frame, recv))
    });
    let mut frames = std::pin::pin!(frames);
    let mut answers = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut reading = true;
    while reading || !answers.is_empty() {
        tokio::select! {
            Some((id, response)) = answers.next(), if !answers.is_empty() => {
                protocol::encode_frame(&mut out, id, &response);
                while let Some(Some((id, response))) = answers.next().now_or_never() {
                    protocol::encode_frame(&mut out, id, &response);
                }
            }
            Some(frame) = frames.next(), if reading && answers.len() < STREAM_IN_FLIGHT_MAX => {
                match frame {
                    Ok(Some(body)) => match protocol::decode_body::<Request>(&body) {
                        Ok((id, request)) => {
                            let dispatcher = dispatcher.clone();
                            answers.push(async move { (id, dispatcher.handle(request).await) });
                        }
                        Err((id, e)) => {
                            tracing::debug!("answering an undecodable frame: {e}");
                            protocol::encode_frame(&mut out, id.unwrap_or(0), &Response::Error(e.to_wire()));
                        }
                    },
                    Ok(None) => reading = false,
                    Err(FrameReadError::Frame(e)) => {
                        tracing::debug!("closing a stream: {e}");
                        protocol::encode_frame(&mut out, 0, &Response::Error(e.to_wire()));
                        reading = false;
                    }
                    Err(e) => {
                        tracing::debug!("a stream ended: {e}");
                        reading = false;
                    }
                }
            }
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
    let _ = send.finish();
}
