//! Retrying a request that failed in a way a retry can mend (a lost connection, a cluster
//! that is electing a leader), within the caller's timeout.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use casty_core::limits::CALLER_DURATION_MAX_MS;

use crate::{ClientError, ErrorKind};

/// The first pause before a retry; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether a failed request may be sent again as it is. Commands carry their request id,
/// so the node applies a retried command once; admin calls are idempotent (a deploy of the
/// same component answers `unchanged`); the caller's timeout bounds the retries.
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::ConnectionLost(_) | ClientError::Connect { .. } => true,
        ClientError::Remote(e) => e.kind == ErrorKind::Unavailable,
        _ => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good (an error other than a lost or
/// refused connection or `Unavailable`), or `timeout` has nearly passed.
/// Retries stop a little short of the deadline with the last error, so the caller learns
/// why the cluster could not serve (say, no majority) rather than only that time ran out.
pub async fn retrying<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let timeout = timeout.min(Duration::from_millis(CALLER_DURATION_MAX_MS));
    let timeout_ms = timeout.as_millis() as u64;
    let deadline = Instant::now() + timeout - (timeout / 20).min(RETRY_PAUSE_MAX);
    let mut pause = RETRY_PAUSE_MIN;
    let mut last_error = None;
    loop {
        let Ok(result) = tokio::time::timeout_at(deadline, attempt()).await else {
            return Err(last_error.unwrap_or(ClientError::Timeout { timeout_ms }));
        };
        match result {
            Err(e) if retryable(&e) && Instant::now() + pause < deadline => {
                tracing::debug!("retrying after: {e}");
                last_error = Some(e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WireError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> ClientError {
        WireError::new(ErrorKind::Unavailable, "the cluster is electing its metadata leader").into()
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_cluster_is_asked_again_until_it_answers() {
        let attempts = AtomicU32::new(0);
        let answer = retrying(Duration::from_secs(5), || async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0..3 => Err(unavailable()),
                _ => Ok("deployed"),
            }
        })
        .await;
        assert_eq!(answer.unwrap(), "deployed");
        assert_eq!(attempts.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_error_is_given_when_time_runs_out() {
        let answer: Result<(), _> = retrying(Duration::from_secs(2), || async { Err(unavailable()) }).await;
        let error = answer.unwrap_err().to_string();
        assert!(error.contains("electing its metadata leader"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_a_retry_cannot_mend_is_given_at_once() {
        let attempts = AtomicU32::new(0);
        let answer: Result<(), _> = retrying(Duration::from_secs(5), || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(ClientError::InvalidArgument("no such type".into()))
        })
        .await;
        assert!(matches!(answer, Err(ClientError::InvalidArgument(_))));
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_never_answers_times_out() {
        let answer: Result<(), _> = retrying(Duration::from_millis(300), std::future::pending).await;
        assert!(matches!(answer, Err(ClientError::Timeout { timeout_ms: 300 })), "{answer:?}");
    }
}
