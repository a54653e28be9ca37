//! The runtime against the real built-in and test components.

use std::time::Duration;

use casty_core::Reply;
use casty_runtime::{CallContext, EntityType, InvokeError, LoadError, Runtime, RuntimeConfig, TypeLimits};

fn ctx() -> CallContext {
    CallContext { caller: "test".into(), request_id: "r1".into(), now_ms: 1 }
}

fn counter_wasm() -> &'static [u8] {
    casty_builtins::BUILTINS.iter().find(|(n, _)| *n == "counter").unwrap().1
}

fn faulty_wasm() -> Vec<u8> {
    std::fs::read(casty_builtins::test_component_path("faulty").unwrap()).unwrap()
}

fn reply_json(reply: &Reply) -> serde_json::Value {
    match reply {
        Reply::Ok(bytes) => serde_json::from_slice(bytes).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn counter_decides_applies_snapshots_and_restores() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let ty = runtime.load_type("counter", 1, counter_wasm(), TypeLimits::default()).unwrap();
    let mut shard = runtime.instantiate(&ty).await.unwrap();
    shard.create("page-views").await.unwrap();
    let decision = shard.handle("page-views", &ctx(), br#"{"increment":{"by":100}}"#).await.unwrap();
    assert_eq!(reply_json(&decision.reply), 100);
    assert_eq!(decision.events.len(), 1);
    shard.apply("page-views", &decision.events[0]).await.unwrap();
    let snapshot = shard.snapshot("page-views").await.unwrap();

    let mut other = runtime.instantiate(&ty).await.unwrap();
    other.restore("page-views", &snapshot).await.unwrap();
    let decision = other.handle("page-views", &ctx(), br#""get""#).await.unwrap();
    assert_eq!(reply_json(&decision.reply), 100);
    assert!(decision.events.is_empty());

    let err = other.handle("page-views", &ctx(), b"{not json").await.unwrap_err();
    assert!(matches!(err, InvokeError::Malformed { .. }), "{err}");
    assert!(!other.is_poisoned());
    let err = other.restore("x", b"garbage").await.unwrap_err();
    assert!(matches!(err, InvokeError::Restore { .. }), "{err}");
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(dir.path().to_owned()), ..RuntimeConfig::default() };
    let runtime = Runtime::new(config.clone()).unwrap();
    runtime.load_type("counter", 1, counter_wasm(), TypeLimits::default()).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1);
    let artifact = &cached[0];
    // A compile writes a new file and renames it over the old: a new inode. So an
    // unchanged inode shows a load read the artifact back instead of compiling.
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(artifact).unwrap());
    let written = inode();

    // A second load, by a fresh runtime as after a restart, reads the artifact back.
    {
        let runtime = Runtime::new(config.clone()).unwrap();
        let ty = runtime.load_type("counter", 1, counter_wasm(), TypeLimits::default()).unwrap();
        assert_eq!(inode(), written, "the second load compiled the component again");
        let mut shard = runtime.instantiate(&ty).await.unwrap();
        shard.create("c").await.unwrap();
        assert!(shard.handle("c", &ctx(), br#""get""#).await.is_ok());
    }

    // A damaged artifact is not used: the component is compiled and cached again. (It is
    // damaged in place only once nothing maps it any more: the loaded one was mapped.)
    std::fs::write(artifact, b"not a compiled component").unwrap();
    let runtime = Runtime::new(config).unwrap();
    let ty = runtime.load_type("counter", 1, counter_wasm(), TypeLimits::default()).unwrap();
    assert_ne!(inode(), written, "the damaged artifact was replaced");
    let mut shard = runtime.instantiate(&ty).await.unwrap();
    shard.create("c").await.unwrap();
    assert!(shard.handle("c", &ctx(), br#""get""#).await.is_ok());
}

#[tokio::test]
async fn traps_and_limits_are_named_and_poison_only_their_instance() {
    let config = RuntimeConfig {
        call_deadline: Duration::from_millis(100),
        instance_memory_max_bytes: 32 << 20,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).unwrap();
    let ty = runtime.load_type("faulty", 1, &faulty_wasm(), TypeLimits::default()).unwrap();
    // Allocating runs under a deadline it cannot reach, so only the memory limit stops
    // it, however slow the machine.
    let patient = TypeLimits { memory_max_bytes: None, call_deadline: Some(Duration::from_secs(60)) };
    let patient = runtime.load_type("faulty", 2, &faulty_wasm(), patient).unwrap();
    let mut bystander = runtime.instantiate(&ty).await.unwrap();
    bystander.create("b").await.unwrap();

    type Expect = fn(&InvokeError) -> bool;
    let cases: [(&[u8], &std::sync::Arc<EntityType>, Expect); 3] = [
        (br#""trap""#, &ty, |e| matches!(e, InvokeError::Trapped { .. })),
        (br#""spin""#, &ty, |e| matches!(e, InvokeError::DeadlineExceeded { deadline_ms: 100, .. })),
        (br#""allocate""#, &patient, |e| matches!(e, InvokeError::MemoryLimit { .. })),
    ];
    for (command, ty, expected) in cases {
        let mut shard = runtime.instantiate(ty).await.unwrap();
        shard.create("f").await.unwrap();
        let err = shard.handle("f", &ctx(), command).await.unwrap_err();
        assert!(expected(&err), "{}: {err}", String::from_utf8_lossy(command));
        assert!(err.poisons());
        assert!(shard.is_poisoned());
    }
    let decision = bystander.handle("b", &ctx(), br#"{"add":{"n":2}}"#).await.unwrap();
    assert_eq!(reply_json(&decision.reply), 2);
}

#[tokio::test]
async fn a_type_runs_under_its_own_limits() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let limits =
        TypeLimits { memory_max_bytes: Some(16 << 20), call_deadline: Some(Duration::from_millis(50)) };
    let ty = runtime.load_type("faulty", 2, &faulty_wasm(), limits).unwrap();
    assert_eq!((ty.version(), ty.memory_max_bytes()), (2, 16 << 20));
    let mut shard = runtime.instantiate(&ty).await.unwrap();
    shard.create("f").await.unwrap();
    let err = shard.handle("f", &ctx(), br#""spin""#).await.unwrap_err();
    assert!(matches!(err, InvokeError::DeadlineExceeded { deadline_ms: 50, .. }), "{err}");
    // The same memory cap under a deadline allocating cannot reach, so only the cap
    // stops it, however slow the machine.
    let limits =
        TypeLimits { memory_max_bytes: Some(16 << 20), call_deadline: Some(Duration::from_secs(60)) };
    let ty = runtime.load_type("faulty", 3, &faulty_wasm(), limits).unwrap();
    let mut shard = runtime.instantiate(&ty).await.unwrap();
    shard.create("f").await.unwrap();
    let err = shard.handle("f", &ctx(), br#""allocate""#).await.unwrap_err();
    assert!(err.to_string().contains("memory limit of 16777216 bytes"), "{err}");

    // A node never lets a type ask for more than it allows.
    let greedy = TypeLimits { memory_max_bytes: Some(1 << 40), call_deadline: None };
    let err = runtime.load_type("faulty", 4, &faulty_wasm(), greedy).unwrap_err();
    assert!(matches!(err, LoadError::Limits { .. }), "{err}");
    assert!(err.to_string().contains("memory limit of 1099511627776 bytes"), "{err}");
}

#[test]
fn what_is_not_an_entity_component_is_refused_by_name() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let load = |bytes: &[u8]| runtime.load_type("x", 1, bytes, TypeLimits::default()).unwrap_err();

    let err = load(b"#!/bin/sh\necho hello\n");
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    // An empty core module, as `wat` would write `(module)`.
    let err = load(b"\0asm\x01\0\0\0");
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
    // An empty component, `(component)`: valid, but it implements nothing.
    let err = load(b"\0asm\x0d\0\x01\0");
    assert!(matches!(err, LoadError::World { .. }), "{err}");
    assert!(err.to_string().contains("does not export casty:entity/entity-handler@0.1.0"), "{err}");
    let err = load(b"\0asm\x0d\0\x01\0garbage");
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");

    let network = std::fs::read(casty_builtins::test_component_path("uses-network").unwrap()).unwrap();
    let err = load(&network);
    assert!(matches!(err, LoadError::Imports { .. }), "{err}");
    assert!(err.to_string().contains("imports wasi:sockets/"), "{err}");
}

#[tokio::test]
async fn a_type_whose_calls_keep_failing_is_refused_for_a_while() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let limits = TypeLimits { memory_max_bytes: None, call_deadline: Some(Duration::from_millis(50)) };
    let ty = runtime.load_type("faulty", 1, &faulty_wasm(), limits).unwrap();
    let mut spins = 0;
    let refusal = loop {
        let mut shard = runtime.instantiate(&ty).await.unwrap();
        shard.create("f").await.unwrap();
        match shard.handle("f", &ctx(), br#""spin""#).await.unwrap_err() {
            InvokeError::DeadlineExceeded { .. } => spins += 1,
            refusal => break refusal,
        }
        assert!(spins < 100, "the spinning type was never refused");
    };
    assert!(matches!(refusal, InvokeError::Throttled { .. }), "{refusal}");
    assert!(!refusal.poisons());
    assert!(refusal.to_string().contains("(the last: the deadline of 50 ms)"), "{refusal}");
    // The whole type waits, not just the instance that spun; replay still works.
    let mut shard = runtime.instantiate(&ty).await.unwrap();
    shard.create("g").await.unwrap();
    let err = shard.handle("g", &ctx(), br#"{"add":{"n":1}}"#).await.unwrap_err();
    assert!(matches!(err, InvokeError::Throttled { .. }), "{err}");
    shard.apply("g", br#"{"added":{"n":1}}"#).await.unwrap();
}

#[tokio::test]
async fn shards_share_nothing() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let ty = runtime.load_type("faulty", 1, &faulty_wasm(), TypeLimits::default()).unwrap();
    let mut one = runtime.instantiate(&ty).await.unwrap();
    let mut other = runtime.instantiate(&ty).await.unwrap();
    for shard in [&mut one, &mut other] {
        shard.create("same-id").await.unwrap();
    }
    let decision = one.handle("same-id", &ctx(), br#"{"add":{"n":7}}"#).await.unwrap();
    one.apply("same-id", &decision.events[0]).await.unwrap();
    // Each shard is its own instance with its own memory: the other never sees it.
    let decision = other.handle("same-id", &ctx(), br#""get""#).await.unwrap();
    assert_eq!(reply_json(&decision.reply), 0);
    let decision = one.handle("same-id", &ctx(), br#""get""#).await.unwrap();
    assert_eq!(reply_json(&decision.reply), 7);
}
