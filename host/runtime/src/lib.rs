//! The WebAssembly runtime: compiles entity components once, caches the compiled
//! artifacts on disk, and runs shard instances under limits.
//!
//! This crate knows wasmtime and the `casty:entity` WIT world. It knows nothing about
//! networks, disks beyond its compile cache, partitions or what a counter is. One
//! [`Runtime`] (one `Engine`) serves the whole node; each shard is a [`ShardInstance`]
//! with its own `Store`, a memory cap and a per-call deadline. A call that traps or hits
//! a limit poisons only that instance; the caller drops it and builds a new one.
//!
//! Calls are async: a component runs on a fiber, and a long call yields to the executor
//! at every epoch tick until its deadline, so one slow entity never holds a runtime
//! thread, and WASI's host functions never block one.

mod budget;
mod clock;
mod instance;
mod limits;
mod loader;
mod wasi;

pub use instance::{CallContext, InvokeError, ShardInstance};
pub use loader::{EntityType, LoadError, TypeLimits, digest};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use casty_core::limits as casty_limits;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "entity",
        exports: { default: async },
    });
}

/// How the runtime is sized and bounded.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Shard instances that may be live at once; sizes the instance pool.
    pub live_instances_max: usize,
    /// Linear memory one instance may grow to.
    pub instance_memory_max_bytes: usize,
    /// Wall time one call may take.
    pub call_deadline: Duration,
    /// Where compiled components are cached; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            live_instances_max: casty_limits::LIVE_INSTANCES_DEFAULT,
            instance_memory_max_bytes: casty_limits::INSTANCE_MEMORY_MAX_BYTES,
            call_deadline: Duration::from_millis(casty_limits::INVOKE_DEADLINE_MAX_MS),
            cache_dir: None,
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("the WebAssembly engine could not be configured: {0}")]
pub struct RuntimeError(String);

/// One engine, one linker and the epoch ticker that enforces call deadlines.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<wasi::HostState>,
    config: RuntimeConfig,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let live =
            u32::try_from(config.live_instances_max.max(1)).map_err(|e| RuntimeError(e.to_string()))?;
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component is a few core instances (the module and its adapter shims),
        // one memory and a few tables; leave headroom so a pool slot is never the limit
        // before the live-instance bound is. Slack covers instances being torn down.
        let slots = live.saturating_add(64);
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .max_memory_size(config.instance_memory_max_bytes)
            .table_elements(casty_limits::INSTANCE_TABLE_ELEMENTS_MAX)
            .total_stacks(slots);

        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;

        let tick = Duration::from_millis(casty_limits::EPOCH_TICK_MS);
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("casty-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError(format!("cannot start the epoch thread: {e}")))?;

        Ok(Self { inner: Arc::new(Inner { engine, linker, config, stop_ticker }) })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }
}
