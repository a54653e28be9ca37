//! Custom entity types deployed to running nodes: the `bank-account` and `session`
//! examples, upgraded live, refused when they are not entity components, and sandboxed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bank_account::Command;
use casty_client::{Client, ClientError, ErrorKind};
use support::{FORM_DEADLINE, Host, leader_of, stdout_ok, test_component, three_nodes, wait_formed};

fn component(name: &str) -> Vec<u8> {
    std::fs::read(test_component(name)).expect("the test component was built")
}

fn accounts(client: &Client) -> casty_client::Entities<Command, u64> {
    client.entity::<Command, u64>("bank-account").timeout(Duration::from_secs(10))
}

fn rejection_code(result: Result<u64, ClientError>) -> String {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_account_survives_a_leader_kill_and_a_whole_cluster_restart() {
    let mut hosts = three_nodes().await;
    let client = hosts[0].client().await;
    let report = client.deploy(component("bank-account"), "bank-account").await.unwrap();
    assert_eq!((report.version, report.unchanged), (1, false), "{report:?}");
    assert!(report.pending.is_empty(), "every node loaded it before the deploy answered: {report:?}");

    // Called through each node: typed from Rust, and as JSON from the CLI.
    for (i, host) in hosts.iter().enumerate() {
        let id = format!("acct-{i}");
        let account = accounts(&host.client().await).get(&id);
        assert_eq!(account.send(Command::Open { owner: format!("owner-{i}") }).await.unwrap(), 0);
        assert_eq!(account.send(Command::Deposit { amount: 100 }).await.unwrap(), 100);
        let out = host.cli(&["entity", "bank-account", &id, "send", r#"{"Deposit":{"amount":20}}"#]);
        assert_eq!(stdout_ok(&out), "120");
        // Beyond the balance: refused with the entity's code, and nothing persisted.
        assert_eq!(
            rejection_code(account.send(Command::Withdraw { amount: 500 }).await),
            "insufficient-funds"
        );
        let out = host.cli(&["entity", "bank-account", &id, "send", r#"{"Withdraw":{"amount":121}}"#]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("rejected (insufficient-funds)"), "{out:?}");
        assert_eq!(account.send(Command::Balance).await.unwrap(), 120);
        let types = stdout_ok(&host.cli(&["types", "--json"]));
        assert!(types.contains(r#""entity_type":"bank-account","version":1"#), "{types}");
    }

    // kill -9 of the leader of acct-0's partition; a survivor serves the same balance.
    let victim = leader_of(&hosts, 0, "bank-account", "acct-0").await;
    hosts[victim].kill();
    let survivor = (victim + 1) % hosts.len();
    let account = accounts(&hosts[survivor].client().await).get("acct-0");
    assert_eq!(account.send(Command::Balance).await.unwrap(), 120);
    assert_eq!(account.send(Command::Withdraw { amount: 20 }).await.unwrap(), 100);

    // A type deployed while a member is down reaches it when it is back.
    let report = hosts[survivor].client().await.deploy(component("session"), "session").await.unwrap();
    assert_eq!(report.pending.len(), 1, "the dead member could not load it: {report:?}");
    hosts[victim].spawn().await;
    wait_formed(&hosts, 3).await;
    until_listed(&hosts[victim], "session").await;
    let out = hosts[victim].cli(&[
        "entity",
        "session",
        "s-1",
        "send",
        r#"{"Start":{"user":"ada","ttl_ms":60000}}"#,
    ]);
    stdout_ok(&out);

    for host in &mut hosts {
        host.kill();
    }
    for host in &mut hosts {
        host.spawn().await;
    }
    wait_formed(&hosts, 3).await;
    for (i, host) in hosts.iter().enumerate() {
        let expected = if i == 0 { 100 } else { 120 };
        let id = format!("acct-{i}");
        assert_eq!(accounts(&host.client().await).get(&id).send(Command::Balance).await.unwrap(), expected);
        until_listed(host, "session").await;
    }
}

/// Waits until `host` lists version 1 of `entity_type` (a node that was down hears of a
/// deployment from the metadata group's leader once it is back).
async fn until_listed(host: &Host, entity_type: &str) {
    let started = Instant::now();
    let listed = format!(r#""entity_type":"{entity_type}","version":1"#);
    while !stdout_ok(&host.cli(&["types", "--json"])).contains(&listed) {
        assert!(started.elapsed() < FORM_DEADLINE, "{entity_type} never reached the node:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_command_and_a_broken_version_is_refused() {
    let mut hosts = three_nodes().await;
    let client = Arc::new(hosts[0].client().await);
    // Deploys go through every node: those that do not lead the metadata group pass
    // them on to the one that does.
    hosts[2].client().await.deploy(component("bank-account"), "bank-account").await.unwrap();
    const ACCOUNTS: usize = 8;
    for i in 0..ACCOUNTS {
        accounts(&client)
            .get(&format!("acct-{i}"))
            .send(Command::Open { owner: "ada".into() })
            .await
            .unwrap();
    }

    // Every account takes deposits of 1, one after another, through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let deposited = Arc::new(AtomicU64::new(0));
    let depositors: Vec<_> = (0..ACCOUNTS)
        .map(|i| {
            let (client, stop, deposited) = (client.clone(), stop.clone(), deposited.clone());
            tokio::spawn(async move {
                let account = accounts(&client).get(&format!("acct-{i}"));
                let mut acknowledged = 0;
                while !stop.load(Ordering::SeqCst) {
                    let balance = account
                        .send(Command::Deposit { amount: 1 })
                        .await
                        .unwrap_or_else(|e| panic!("a deposit to acct-{i} failed during the upgrade: {e}"));
                    acknowledged += 1;
                    assert_eq!(balance, acknowledged, "acct-{i}: each deposit applied once, in order");
                    deposited.fetch_add(1, Ordering::SeqCst);
                }
                acknowledged
            })
        })
        .collect();
    let until = |n: u64| {
        let deposited = deposited.clone();
        async move {
            let started = Instant::now();
            while deposited.load(Ordering::SeqCst) < n {
                assert!(started.elapsed() < FORM_DEADLINE, "deposits stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    until(100).await;

    // A version 2 that cannot read version 1's state is refused, and version 1 serves on.
    let err =
        hosts[1].client().await.deploy(component("bank-account-broken"), "bank-account").await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("cannot take over its entities' state"), "{message}");
    assert!(message.contains("missing field `branch`"), "{message}");
    let types = client.types().await.unwrap();
    assert_eq!(types.iter().filter(|t| t.entity_type == "bank-account").count(), 1, "{types:?}");

    let before = deposited.load(Ordering::SeqCst);
    let report = hosts[1].client().await.deploy(component("bank-account-v2"), "bank-account").await.unwrap();
    assert_eq!(report.version, 2, "{report:?}");
    until(before + 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut balances = Vec::new();
    for depositor in depositors {
        balances.push(depositor.await.unwrap());
    }

    // The old state is visible in version 2, and its new command works: `Close` pays out
    // the balance, after which the account refuses everything.
    for (i, expected) in balances.iter().enumerate() {
        assert_eq!(
            accounts(&client).get(&format!("acct-{i}")).send(Command::Balance).await.unwrap(),
            *expected
        );
    }
    let closed = hosts[1].cli(&["entity", "bank-account", "acct-0", "send", r#""Close""#]);
    assert_eq!(stdout_ok(&closed), balances[0].to_string());
    let account = accounts(&client).get("acct-0");
    assert_eq!(rejection_code(account.send(Command::Balance).await), "closed");

    // The replicas applied version 2's events with version 2: the next leader agrees.
    let victim = leader_of(&hosts, 1, "bank-account", "acct-0").await;
    hosts[victim].kill();
    let survivor = (victim + 1) % hosts.len();
    let account = accounts(&hosts[survivor].client().await).get("acct-0");
    assert_eq!(rejection_code(account.send(Command::Balance).await), "closed");
    let other = accounts(&hosts[survivor].client().await).get("acct-1");
    assert_eq!(other.send(Command::Deposit { amount: 1 }).await.unwrap(), balances[1] + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_an_entity_component_is_refused_at_deploy() {
    let host = Host::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let empty_component = dir.path().join("empty.wasm");
    std::fs::write(&empty_component, b"\0asm\x0d\0\x01\0").unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a component").unwrap();
    let network = test_component("uses-network").display().to_string();
    let bank = test_component("bank-account").display().to_string();
    let cases = [
        (network.as_str(), "net", "imports wasi:sockets/"),
        (empty_component.to_str().unwrap(), "empty", "does not export casty:entity/entity-handler@0.1.0"),
        (text.to_str().unwrap(), "text", "is not WebAssembly"),
        (bank.as_str(), "counter", "\"counter\" is a built-in entity type"),
        (bank.as_str(), "Bad Name", "entity type"),
    ];
    for (path, name, expected) in cases {
        let out = host.cli(&["deploy", path, "--type", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was deployed");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; casty_core::limits::COMPONENT_SIZE_MAX_BYTES + 1]).unwrap();
    let out = host.cli(&["deploy", big.to_str().unwrap(), "--type", "big"]);
    let limit = format!("the limit is {} bytes", casty_core::limits::COMPONENT_SIZE_MAX_BYTES);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&limit), "{out:?}");
    let out = host.cli(&["deploy", &bank, "--type", "ok", "--memory-mib", "100000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside what this node allows"), "{out:?}");
    let types = stdout_ok(&host.cli(&["types"]));
    for refused in ["net", "empty", "text", "ok"] {
        assert!(!types.contains(refused), "{types}");
    }
    // The same component again changes nothing.
    let first = stdout_ok(&host.cli(&["deploy", &bank, "--type", "bank-account"]));
    let again = stdout_ok(&host.cli(&["deploy", &bank, "--type", "bank-account"]));
    assert!(first.contains(r#""version":1,"#) && first.contains(r#""unchanged":false"#), "{first}");
    assert!(again.contains(r#""version":1,"#) && again.contains(r#""unchanged":true"#), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_entities_fail_with_named_limits_while_others_serve() {
    let host = Host::start(&[]).await;
    let faulty = test_component("faulty").display().to_string();
    let bank = test_component("bank-account").display().to_string();
    stdout_ok(&host.cli(&[
        "deploy",
        &faulty,
        "--type",
        "faulty",
        "--memory-mib",
        "32",
        "--call-deadline",
        "200ms",
    ]));
    // The same component with the same memory cap, under a deadline allocating cannot
    // reach: only the cap stops it, however slow the machine.
    stdout_ok(&host.cli(&[
        "deploy",
        &faulty,
        "--type",
        "faulty-patient",
        "--memory-mib",
        "32",
        "--call-deadline",
        "60s",
    ]));
    stdout_ok(&host.cli(&["deploy", &bank, "--type", "bank-account"]));
    let types = stdout_ok(&host.cli(&["types", "--json"]));
    assert!(types.contains(r#""memory_max_bytes":33554432,"call_deadline_ms":200"#), "{types}");
    assert!(types.contains(r#""memory_max_bytes":33554432,"call_deadline_ms":60000"#), "{types}");

    let client = Arc::new(host.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let bystanders: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let account = accounts(&client).get(&format!("bystander-{i}"));
                account.send(Command::Open { owner: "ada".into() }).await.unwrap();
                let counter = client.distributed().counter(&format!("bystander-{i}"));
                let mut served = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    served += 1;
                    let balance = account.send(Command::Deposit { amount: 1 }).await;
                    assert_eq!(balance.unwrap_or_else(|e| panic!("a bystander saw {e}")), served);
                    counter.increment(1).await.unwrap_or_else(|e| panic!("a bystander saw {e}"));
                }
                served
            })
        })
        .collect();

    let runaways = client.entity::<serde_json::Value, u64>("faulty");
    let runaway = runaways.get("runaway");
    let hungry = client.entity::<serde_json::Value, u64>("faulty-patient").get("hungry");
    let cases = [
        (&runaway, "\"trap\"", ErrorKind::EntityTrapped, "trapped"),
        (&runaway, "\"spin\"", ErrorKind::DeadlineExceeded, "deadline of 200 ms"),
        (&hungry, "\"allocate\"", ErrorKind::MemoryLimitExceeded, "memory limit of 33554432 bytes"),
    ];
    assert_eq!(runaway.send(serde_json::json!({"add": {"n": 5}})).await.unwrap(), 5);
    for (entity, command, kind, named) in &cases {
        let err = entity.send(serde_json::from_str(command).unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), Some(kind), "{command}: {err}");
        assert!(err.to_string().contains(named), "{command}: {err}");
    }
    // Called again and again, the spinning type overspends its share of the node's time
    // and is refused at once for a while, naming what it kept hitting.
    let spinning = Instant::now();
    let refused = loop {
        let err = runaways.get("spinner").send(serde_json::json!("spin")).await.unwrap_err();
        match err.kind() {
            Some(ErrorKind::DeadlineExceeded) => {
                assert!(spinning.elapsed() < FORM_DEADLINE, "the spinning type was never refused: {err}");
            }
            _ => break err,
        }
    };
    assert_eq!(refused.kind(), Some(&ErrorKind::Overloaded), "{refused}");
    assert!(refused.to_string().contains("the last: the deadline of 200 ms"), "{refused}");
    stop.store(true, Ordering::SeqCst);
    for bystander in bystanders {
        assert!(bystander.await.unwrap() > 0);
    }
    // Once its budget is back, the failed entity serves again with its state intact: it
    // was rebuilt from its snapshot and the log.
    let started = Instant::now();
    let total = loop {
        match runaway.send(serde_json::json!("get")).await {
            Ok(total) => break total,
            Err(e) if e.kind() == Some(&ErrorKind::Overloaded) => {
                assert!(started.elapsed() < FORM_DEADLINE, "the type stayed refused: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(total, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_by_itself_after_its_time_to_live() {
    use session::{Command, Reply, Status};
    let host = Host::start(&[]).await;
    let client = host.client().await;
    client.deploy(component("session"), "session").await.unwrap();
    let session = client.entity::<Command, Reply>("session").get("s-1");
    session.send(Command::Start { user: "ada".into(), ttl_ms: 300 }).await.unwrap();
    let live = session.send(Command::Get).await.unwrap();
    assert!(matches!(live, Reply::Status(Status::Live(ref s)) if s.user == "ada"), "{live:?}");
    // Nobody touches it: the host wakes it at its expiry time, and it expires itself.
    let started = Instant::now();
    while session.send(Command::Get).await.unwrap() != Reply::Status(Status::Expired) {
        assert!(started.elapsed() < FORM_DEADLINE, "the session never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = session.send(Command::Touch).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { ref code, .. } if code == "no-session"), "{err}");
}

/// A script that starts a cluster and deploys at once: the deploy is retried while the
/// cluster elects its metadata leader, and `status --wait-ready` returns once the
/// cluster is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_right_after_the_nodes_start_waits_for_the_cluster() {
    let first = Host::start(&["--node-id", "node-1"]).await;
    let seed = first.addr.to_string();
    let second = Host::start(&["--node-id", "node-2", "--seed", &seed]).await;
    let third = Host::start(&["--node-id", "node-3", "--seed", &seed]).await;
    let path = test_component("bank-account").to_str().expect("a UTF-8 path").to_owned();

    let deployed = stdout_ok(&third.cli(&["deploy", &path, "--type", "bank-account"]));
    let report: serde_json::Value = serde_json::from_str(&deployed).unwrap();
    assert_eq!(report["version"], 1, "{deployed}");

    let ready = stdout_ok(&second.cli(&["status", "--wait-ready", "--members", "3", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert!(status["metadata_leader"].is_string(), "{ready}");
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.iter().filter(|m| m["state"] == "up").count(), 3, "{ready}");

    let again = stdout_ok(&first.cli(&["deploy", &path, "--type", "bank-account"]));
    assert!(again.contains(r#""unchanged":true"#), "{again}");
}

/// `wasm` with a custom section of `pad` bytes at its end: the same component, larger.
fn padded(mut wasm: Vec<u8>, pad: usize) -> Vec<u8> {
    let name = b"padding";
    let mut payload = leb128(name.len());
    payload.extend_from_slice(name);
    payload.resize(payload.len() + pad, 0);
    wasm.push(0); // a custom section
    wasm.extend(leb128(payload.len()));
    wasm.extend(payload);
    wasm
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A component larger than a frame travels to the node in chunks and through the
/// metadata group's log in pieces; every member joins it back and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_larger_than_a_frame_deploys_to_every_member() {
    let hosts = three_nodes().await;
    let wasm = padded(component("bank-account"), casty_core::limits::FRAME_SIZE_MAX_BYTES + (1 << 20));
    assert!(wasm.len() > 5 << 20, "{} bytes", wasm.len());
    let report = hosts[1].client().await.deploy(wasm.clone(), "big-account").await.unwrap();
    assert!(report.pending.is_empty(), "every member loaded it: {report:?}");
    for host in &hosts {
        let types = host.client().await.types().await.unwrap();
        let big = types.iter().find(|t| t.entity_type == "big-account").expect("every member lists the type");
        assert_eq!((big.size_bytes, &big.digest), (wasm.len() as u64, &report.digest), "{}", host.addr);
        let account =
            host.client().await.entity::<Command, u64>("big-account").timeout(Duration::from_secs(10));
        let id = format!("acct-{}", host.addr.port());
        assert_eq!(account.get(&id).send(Command::Open { owner: "ada".into() }).await.unwrap(), 0);
        assert_eq!(account.get(&id).send(Command::Deposit { amount: 5 }).await.unwrap(), 5);
    }
    let again = hosts[2].client().await.deploy(wasm, "big-account").await.unwrap();
    assert!(again.unchanged, "{again:?}");
}
