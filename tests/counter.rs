//! The counter end to end: CLI and Rust client against a real `casty-host`.

mod support;

use support::{Host, stdout_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_rust_clients_see_the_same_counter() {
    let host = Host::start(&[]).await;
    assert_eq!(stdout_ok(&host.cli(&["counter", "page-views", "increment", "100"])), "100");
    assert_eq!(stdout_ok(&host.cli(&["counter", "page-views", "decrement", "10"])), "90");
    assert_eq!(stdout_ok(&host.cli(&["counter", "page-views", "get"])), "90");

    let (a, b) = (host.client().await, host.client().await);
    let views_a = a.distributed().counter("page-views");
    let views_b = b.distributed().counter("page-views");
    assert_eq!(views_a.get().await.unwrap(), 90);
    assert_eq!(views_b.get().await.unwrap(), 90);
    assert_eq!(views_a.increment(5).await.unwrap(), 95);
    assert_eq!(views_b.get().await.unwrap(), 95);
    assert_eq!(stdout_ok(&host.cli(&["counter", "page-views", "get"])), "95");

    // The shard count is part of the structure's identity, like its name.
    let d = a.distributed();
    let fifty = d.counter("hits").shards(50);
    fifty.increment(100).await.unwrap();
    fifty.decrement(10).await.unwrap();
    assert_eq!(stdout_ok(&host.cli(&["--shards", "50", "counter", "hits", "get"])), "90");

    assert_eq!(stdout_ok(&host.cli(&["counter", "page-views", "reset"])), "null");
    assert_eq!(views_b.get().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_node_and_its_types() {
    let host = Host::start(&["--partitions", "16"]).await;
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&host.cli(&["status", "--json"]))).unwrap();
    assert_eq!(json["partitions"], 16);
    assert_eq!(json["members"][0]["state"], "up");
    assert!(json["entity_types"].as_array().unwrap().iter().any(|t| t == "counter"), "{json}");
    let table = stdout_ok(&host.cli(&["status"]));
    assert!(table.contains(&host.addr.to_string()), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_go_to_stderr_with_a_failing_exit_code() {
    let host = Host::start(&[]).await;
    let out = host.cli(&["entity", "no-such-type", "x", "send", "\"get\""]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown entity type") && stderr.contains("no-such-type"), "{stderr}");

    let out = support::cli(&[
        "--connect",
        &support::free_addr().to_string(),
        "--timeout",
        "2s",
        "counter",
        "c",
        "get",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_format() {
    use std::io::{Read, Write};
    let metrics = support::free_tcp_addr();
    let host = Host::start(&["--metrics", &metrics.to_string()]).await;
    assert_eq!(stdout_ok(&host.cli(&["counter", "c", "increment"])), "1");
    let scrape = |path: &str| {
        let mut stream = std::net::TcpStream::connect(metrics).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let response = scrape("/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("# TYPE casty_requests_total counter"), "{response}");
    assert!(response.contains("casty_requests_total{outcome=\"ok\"} 1"), "{response}");
    assert!(response.contains("casty_log_entries_appended_total 1"), "{response}");
    // The write went through the Raft loop and was synced to its log before the reply.
    let count = |name: &str| -> u64 {
        let line = response.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {response}"))
    };
    for name in ["casty_raft_rounds_total", "casty_raft_log_writes_total", "casty_raft_log_syncs_total"] {
        assert!(count(name) >= 1, "{name} in {response}");
    }
    assert!(count("casty_raft_log_bytes_total") > 0, "{response}");
    assert_eq!(count("casty_raft_frames_sent_total"), 0, "one node has no peers: {response}");
    assert!(scrape("/other").starts_with("HTTP/1.1 404"));
}
