//! The QUIC server: accepts connections and streams, reads frames, and answers each
//! request on the stream it came on, in whatever order the answers are ready. A peer's
//! Raft traffic comes on one-way streams of the same connection, which go to the Raft
//! loop.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use casty_core::limits::{COMPONENT_SIZE_MAX_BYTES, COMPONENT_UPLOADS_MAX, STREAM_IN_FLIGHT_MAX};
use casty_core::protocol::{self, ErrorKind, Request, Response, WireError};
use casty_transport::FrameReadError;

use crate::dispatch::{Dispatcher, invalid};

pub(crate) async fn serve(endpoint: quinn::Endpoint, dispatcher: Arc<Dispatcher>) {
    let uploads = Arc::new(Semaphore::new(COMPONENT_UPLOADS_MAX));
    while let Some(incoming) = endpoint.accept().await {
        let dispatcher = dispatcher.clone();
        let uploads = uploads.clone();
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
                tokio::spawn(serve_stream(send, recv, dispatcher.clone(), uploads.clone()));
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
async fn serve_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    dispatcher: Arc<Dispatcher>,
    uploads: Arc<Semaphore>,
) {
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
    let mut upload = Upload::default();
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
                        // Taken in here, in the order the chunks came.
                        Ok((_, Request::ComponentChunk(chunk))) => upload.chunk(&chunk, &uploads),
                        Ok((id, request)) => {
                            let dispatcher = dispatcher.clone();
                            match upload.complete(request) {
                                Ok(request) => answers.push(async move { (id, dispatcher.handle(request).await) }),
                                Err(e) => protocol::encode_frame(&mut out, id, &Response::Error(e)),
                            }
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

/// The chunks of a component that arrive on one stream ahead of its deploy.
#[derive(Debug, Default)]
struct Upload {
    component: Vec<u8>,
    /// Held from the first chunk to the deploy, so only so many components are in memory.
    permit: Option<OwnedSemaphorePermit>,
    /// Why the chunks were not kept, for the deploy's answer.
    refused: Option<WireError>,
}

impl Upload {
    fn chunk(&mut self, chunk: &[u8], uploads: &Arc<Semaphore>) {
        if self.refused.is_some() {
            return;
        }
        if self.permit.is_none() {
            match uploads.clone().try_acquire_owned() {
                Ok(permit) => self.permit = Some(permit),
                Err(_) => {
                    let why =
                        format!("{COMPONENT_UPLOADS_MAX} deploys are arriving at this node already; retry");
                    self.refused = Some(WireError::new(ErrorKind::Overloaded, why));
                    return;
                }
            }
        }
        if self.component.len() + chunk.len() > COMPONENT_SIZE_MAX_BYTES {
            self.refused = Some(invalid(format!(
                "the component is over {COMPONENT_SIZE_MAX_BYTES} bytes; the limit is {COMPONENT_SIZE_MAX_BYTES} bytes"
            )));
            self.component = Vec::new();
            return;
        }
        self.component.extend_from_slice(chunk);
    }

    /// `request` with the chunks that came before it put back in front of its component
    /// (a request that is no deploy is left alone), or why the chunks were refused.
    fn complete(&mut self, request: Request) -> Result<Request, WireError> {
        if self.permit.is_none() && self.refused.is_none() {
            return Ok(request);
        }
        let Upload { mut component, refused, .. } = std::mem::take(self);
        let join = |mut deployment: protocol::Deployment| {
            component.extend_from_slice(&deployment.wasm);
            deployment.wasm = component;
            deployment
        };
        match (refused, request) {
            (Some(why), Request::Deploy(_) | Request::CommitDeploy(_)) => Err(why),
            (None, Request::Deploy(deployment)) => Ok(Request::Deploy(join(deployment))),
            (None, Request::CommitDeploy(deployment)) => Ok(Request::CommitDeploy(join(deployment))),
            (_, other) => Err(invalid(format!(
                "component chunks were followed by {other:?}, not by the deploy they belong to"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casty_core::limits::COMPONENT_CHUNK_BYTES;
    use casty_core::protocol::Deployment;

    fn deploy(wasm: &[u8]) -> Request {
        let wasm = wasm.to_vec();
        Request::Deploy(Deployment {
            entity_type: "t".into(),
            wasm,
            memory_max_bytes: None,
            call_deadline_ms: None,
        })
    }

    #[test]
    fn chunks_are_put_back_in_front_of_their_deploy() {
        let uploads = Arc::new(Semaphore::new(1));
        let mut upload = Upload::default();
        upload.chunk(b"ab", &uploads);
        upload.chunk(b"cd", &uploads);
        assert_eq!(uploads.available_permits(), 0, "an upload in progress holds a permit");
        assert_eq!(upload.complete(deploy(b"e")).unwrap(), deploy(b"abcde"));
        assert_eq!(uploads.available_permits(), 1, "the deploy gives it back");
        assert_eq!(upload.complete(Request::Ping).unwrap(), Request::Ping, "the next request is its own");
    }

    #[test]
    fn too_large_or_too_many_uploads_are_refused_at_their_deploy() {
        let uploads = Arc::new(Semaphore::new(1));
        let mut large = Upload::default();
        let chunk = vec![0; COMPONENT_CHUNK_BYTES];
        for _ in 0..=COMPONENT_SIZE_MAX_BYTES / COMPONENT_CHUNK_BYTES {
            large.chunk(&chunk, &uploads);
        }
        let mut second = Upload::default();
        second.chunk(b"x", &uploads);
        let refused = second.complete(deploy(b"y")).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Overloaded, "{refused:?}");
        let refused = large.complete(deploy(b"z")).unwrap_err();
        assert!(refused.message.contains("the limit is 67108864 bytes"), "{refused:?}");
        let mut stray = Upload::default();
        stray.chunk(b"x", &uploads);
        assert!(stray.complete(Request::Status).unwrap_err().message.contains("not by the deploy"));
    }
}
