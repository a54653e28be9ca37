//! Bad input gets a clear error and the node keeps serving everyone else.

mod support;

use casty_core::protocol::{self, ErrorKind, PROTOCOL_VERSION, Request, Response};
use support::{Host, stdout_ok};

/// A raw protocol stream to the node, for sending what no client library would.
struct RawStream {
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RawStream {
    async fn open(host: &Host) -> RawStream {
        let endpoint =
            casty_transport::client_endpoint("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let connection = endpoint.connect(host.addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = connection.open_bi().await.unwrap();
        RawStream { _endpoint: endpoint, send, recv }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    async fn response(&mut self) -> (u64, Response) {
        let body = casty_transport::read_frame(&mut self.recv).await.unwrap().expect("a response frame");
        protocol::decode_body(&body).unwrap()
    }

    async fn error(&mut self) -> (u64, protocol::WireError) {
        match self.response().await {
            (id, Response::Error(e)) => (id, e),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn frame_with_body(version: u16, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = version.to_le_bytes().to_vec();
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(payload);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_named_errors_and_the_node_keeps_serving() {
    let host = Host::start(&[]).await;
    let bystander = host.client().await.distributed().counter("bystander");
    bystander.increment(1).await.unwrap();

    // A garbage body behind a valid header: answered, and the stream goes on.
    let mut raw = RawStream::open(&host).await;
    raw.send(&frame_with_body(PROTOCOL_VERSION, 7, &[0xff; 32])).await;
    let (id, error) = raw.error().await;
    assert_eq!((id, &error.kind), (7, &ErrorKind::BadFrame), "{error}");
    assert!(error.message.contains("does not decode"), "{error}");
    let mut ok = Vec::new();
    protocol::encode_frame(&mut ok, 8, &Request::Status);
    raw.send(&ok).await;
    assert!(matches!(raw.response().await, (8, Response::Status(_))));

    // Another protocol version: named.
    raw.send(&frame_with_body(PROTOCOL_VERSION + 1, 9, &[])).await;
    let (id, error) = raw.error().await;
    assert_eq!((id, &error.kind), (9, &ErrorKind::UnsupportedVersion), "{error}");

    // A length over the limit: answered before any body is read, then the stream ends.
    let mut raw = RawStream::open(&host).await;
    raw.send(&u32::MAX.to_le_bytes()).await;
    let (_, error) = raw.error().await;
    assert_eq!(error.kind, ErrorKind::FrameTooLarge, "{error}");
    assert!(error.message.contains("over the limit"), "{error}");
    assert!(casty_transport::read_frame(&mut raw.recv).await.unwrap().is_none(), "the stream is finished");

    assert_eq!(bystander.increment(1).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_undecodable_commands_are_named() {
    let host = Host::start(&[]).await;
    let out = host.cli(&["entity", "bank-account", "acct-42", "send", "{\"deposit\":{\"amount\":1}}"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown entity type") && stderr.contains("bank-account"), "{stderr}");

    let out = host.cli(&["entity", "counter", "c", "send", "{\"explode\":true}"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed command") && stderr.contains("explode"), "{stderr}");

    let out = host.cli(&["entity", "counter", "c", "send", "{not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = host.cli(&["--shards", "0", "counter", "c", "get"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards must be between"));

    assert_eq!(stdout_ok(&host.cli(&["counter", "c", "increment", "3"])), "3");
}
