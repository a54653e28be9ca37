//! Every duration a caller hands the client (a timeout, a wait, a lease) is refused with
//! an error naming it when it is out of range, and never panics, however large: over a
//! backend that answers every request `Unavailable` and records the timeout it was given.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use casty_client::{
    Backend, BoxFuture, ClientError, DeployReport, Deployment, Distributed, ErrorKind, Invoke, StatusReport,
    TypeInfo, WireError,
};
use casty_core::limits::CALLER_DURATION_MAX_MS;
use proptest::prelude::*;

/// Answers every request with an error of one kind (`Unavailable` by default),
/// remembering the timeouts it saw.
#[derive(Default)]
struct Refusing {
    timeouts_ms: Mutex<Vec<u64>>,
    timed_out: bool,
}

impl Backend for Refusing {
    fn invoke(&self, request: Invoke) -> BoxFuture<'_, Result<Vec<u8>, ClientError>> {
        self.timeouts_ms.lock().unwrap().push(request.timeout_ms);
        let error = match self.timed_out {
            true => WireError::new(ErrorKind::Timeout, "the request's timeout passed while it was parked"),
            false => WireError::new(ErrorKind::Unavailable, "a test backend"),
        };
        Box::pin(async { Err(error.into()) })
    }
    fn status(&self) -> BoxFuture<'_, Result<StatusReport, ClientError>> {
        unreachable!("not asked")
    }
    fn member_status<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<StatusReport, ClientError>> {
        unreachable!("not asked")
    }
    fn deploy<'a>(&'a self, _: &'a Deployment) -> BoxFuture<'a, Result<DeployReport, ClientError>> {
        unreachable!("not asked")
    }
    fn types(&self) -> BoxFuture<'_, Result<Vec<TypeInfo>, ClientError>> {
        unreachable!("not asked")
    }
    fn client_id(&self) -> &str {
        "test-client"
    }
    fn next_request_id(&self) -> String {
        "test-client:1".into()
    }
}

/// Any duration: mostly near the bounds, sometimes anywhere up to `Duration::MAX`.
fn durations() -> impl Strategy<Value = Duration> {
    let max = CALLER_DURATION_MAX_MS;
    prop_oneof![
        (0u64..3_000_000).prop_map(Duration::from_nanos),
        (max - 2..max + 2).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
    ]
}

fn in_range(d: Duration, zero_allowed: bool) -> bool {
    d <= Duration::from_millis(CALLER_DURATION_MAX_MS) && (zero_allowed || d >= Duration::from_millis(1))
}

/// What an operation gave: refused up front (naming `what`), or sent and answered
/// `Unavailable` by the backend.
fn check(result: Result<impl std::fmt::Debug, ClientError>, expect_sent: bool, what: &str) {
    match result {
        Err(ClientError::InvalidArgument(message)) => {
            assert!(!expect_sent, "refused a duration in range: {message}");
            assert!(message.starts_with(what), "the error names {what}: {message}");
        }
        Err(e) => assert!(expect_sent && e.kind() == Some(&ErrorKind::Unavailable), "{e}"),
        Ok(value) => panic!("the backend answers nothing, yet got {value:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

proptest! {
    #[test]
    fn timeouts_are_refused_out_of_range_and_sent_as_given_in_range(timeout in durations()) {
        let backend = Arc::new(Refusing::default());
        let d = Distributed::new(backend.clone());
        let sent = in_range(timeout, false);
        runtime().block_on(async {
            check(d.counter("c").timeout(timeout).increment(1).await, sent, "the timeout");
            check(d.lock("l").timeout(timeout).acquire().await, sent, "the timeout");
            check(d.queue::<u64>("q").timeout(timeout).size().await, sent, "the timeout");
        });
        let seen = backend.timeouts_ms.lock().unwrap().clone();
        let expected = if sent { vec![timeout.as_millis() as u64; 3] } else { Vec::new() };
        prop_assert_eq!(seen, expected);
    }

    #[test]
    fn lease_ttls_are_refused_out_of_range(ttl in durations()) {
        let d = Distributed::new(Arc::new(Refusing::default()));
        let sent = in_range(ttl, false);
        runtime().block_on(async {
            check(d.lock("l").ttl(ttl).acquire().await, sent, "the lease TTL");
            check(d.semaphore("s", 3).ttl(ttl).try_acquire().await, sent, "the lease TTL");
            check(d.lock("l").ttl(ttl).renew().await, sent, "the lease TTL");
        });
    }

    #[test]
    fn waits_are_refused_only_past_the_bound(wait in durations()) {
        let d = Distributed::new(Arc::new(Refusing::default()));
        let sent = in_range(wait, true);
        runtime().block_on(async {
            check(d.queue::<u64>("q").dequeue_wait(wait).await, sent, "the wait");
        });
    }
}

#[tokio::test]
async fn a_call_the_node_withdrew_reads_as_one_the_client_gave_up_on() {
    let d = Distributed::new(Arc::new(Refusing { timed_out: true, ..Refusing::default() }));
    let err = d.lock("l").timeout(Duration::from_millis(1500)).acquire().await.unwrap_err();
    assert_eq!(err, ClientError::Timeout { timeout_ms: 1500 });
    assert_eq!(err.to_string(), "the operation timed out after 1500 ms");
}

#[tokio::test]
async fn a_connect_timeout_out_of_range_is_refused_before_connecting() {
    for timeout in [Duration::ZERO, Duration::from_millis(CALLER_DURATION_MAX_MS + 1), Duration::MAX] {
        let err =
            casty_client::Client::builder().timeout(timeout).connect(["127.0.0.1:9"]).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidArgument(m) if m.starts_with("the connect timeout")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_address_that_does_not_resolve_is_named_as_typed() {
    let err = casty_client::Client::connect(["nonsense"]).await.unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("cannot connect to nonsense: "), "{message}");
}
