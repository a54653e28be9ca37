//! Node metrics, served in the Prometheus text format on `--metrics ADDR`.
//!
//! A handful of atomics updated on the hot path, rendered on scrape. The HTTP side
//! answers `GET /metrics` and nothing else; requests are read up to a small bound.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most bytes of an HTTP request the metrics endpoint reads.
const METRICS_REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Counters and gauges of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) requests_ok: AtomicU64,
    pub(crate) requests_failed: AtomicU64,
    pub(crate) requests_overloaded: AtomicU64,
    pub(crate) entries_appended: AtomicU64,
    pub(crate) journal_writes: AtomicU64,
    pub(crate) journal_write_micros: AtomicU64,
    pub(crate) instances_passivated: AtomicU64,
    pub(crate) instances_failed: AtomicU64,
    pub(crate) live_instances: AtomicI64,
    /// The Raft loop's counts, once it has started.
    raft: OnceLock<Arc<casty_raft::LoopStats>>,
}

impl Metrics {
    /// Serves the counts of the node's Raft loop too.
    pub(crate) fn watch_raft(&self, stats: Arc<casty_raft::LoopStats>) {
        let _ = self.raft.set(stats);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let requests = [
            ("{outcome=\"ok\"}", load(&self.requests_ok)),
            ("{outcome=\"failed\"}", load(&self.requests_failed)),
            ("{outcome=\"overloaded\"}", load(&self.requests_overloaded)),
        ];
        family(&mut out, "casty_requests_total", "counter", "Commands answered, by outcome.", &requests);
        let mut counters = vec![
            ("casty_log_entries_appended_total", "Log entries committed.", load(&self.entries_appended)),
            ("casty_journal_writes_total", "Partition writes committed.", load(&self.journal_writes)),
            (
                "casty_journal_write_microseconds_total",
                "Time partitions waited for their journal writes.",
                load(&self.journal_write_micros),
            ),
            (
                "casty_instances_passivated_total",
                "Shard instances passivated to stay within the live bound.",
                load(&self.instances_passivated),
            ),
            (
                "casty_instances_failed_total",
                "Shard instances dropped after a trap or a limit hit.",
                load(&self.instances_failed),
            ),
        ];
        if let Some(raft) = self.raft.get() {
            counters.extend([
                ("casty_raft_rounds_total", "Rounds of the Raft loop that had work.", load(&raft.rounds)),
                (
                    "casty_raft_frames_sent_total",
                    "Frames of Raft messages sent to peers: one per peer and round, more when large.",
                    load(&raft.frames_sent),
                ),
                ("casty_raft_messages_sent_total", "Raft messages sent to peers.", load(&raft.messages_sent)),
                (
                    "casty_raft_log_writes_total",
                    "Write calls into the Raft log files: of records, and of the zeros ahead of them.",
                    load(&raft.log.writes),
                ),
                ("casty_raft_log_syncs_total", "fdatasyncs of the Raft log files.", load(&raft.log.syncs)),
                (
                    "casty_raft_log_sync_microseconds_total",
                    "Time the Raft log's writer spent in fdatasync.",
                    load(&raft.log.sync_micros),
                ),
                (
                    "casty_raft_log_bytes_total",
                    "Bytes of records written to the Raft log files.",
                    load(&raft.log.bytes),
                ),
            ]);
        }
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help, &[("", value)]);
        }
        let live = self.live_instances.load(Ordering::Relaxed).max(0) as u64;
        family(&mut out, "casty_live_instances", "gauge", "Shard instances live now.", &[("", live)]);
        out
    }
}

/// Appends one metric family: its help, its type and its samples (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub(crate) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n")
                    && request.len() < METRICS_REQUEST_MAX_BYTES
                {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if request.starts_with(b"GET /metrics ") {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(local)
}
