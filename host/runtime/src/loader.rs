//! Loading an entity type: validate and compile its component once, cache the compiled
//! artifact so the next start skips Cranelift, and pre-link it for fast instantiation.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use casty_core::limits::{
    CALL_DEADLINE_LIMIT_MS, EPOCH_TICK_MS, FAILING_CALLS_BURST_MS, INSTANCE_MEMORY_MIN_BYTES,
};

use crate::Runtime;
use crate::bindings::EntityPre;
use crate::budget::FailureBudget;
use crate::wasi::HostState;

/// Why a component could not be loaded as an entity type. Each names the type and says
/// what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(
        "entity type {name:?}: the file is not WebAssembly (it does not start with the \\0asm magic bytes)"
    )]
    NotWasm { name: String },
    #[error(
        "entity type {name:?}: the file is a core WebAssembly module, not a component; build the entity for \
         the wasm32-wasip2 target (cargo build --target wasm32-wasip2), which makes a component"
    )]
    CoreModule { name: String },
    #[error("entity type {name:?}: the file is not a valid WebAssembly component: {reason}")]
    Compile { name: String, reason: String },
    #[error(
        "entity type {name:?}: the component does not implement the casty:entity world: it does not export \
         {ENTITY_EXPORT} (it exports: {exports}); export the entity with casty_guest_sdk::export_entity!"
    )]
    World { name: String, exports: String },
    #[error(
        "entity type {name:?}: the component imports {imports}, which entities are not given; an entity \
         has no network, files, clock or randomness of its own, and may import only the entity world's \
         types and the WASI interfaces the Rust standard library needs ({allowed})"
    )]
    Imports { name: String, imports: String, allowed: String },
    #[error("entity type {name:?}: the component does not link: {reason}")]
    Link { name: String, reason: String },
    #[error("entity type {name:?}: {reason}")]
    Limits { name: String, reason: String },
    #[error("entity type {name:?}: cannot write the compile cache at {path}: {reason}")]
    Cache { name: String, path: PathBuf, reason: String },
}

/// The interface every entity component exports.
const ENTITY_EXPORT: &str = "casty:entity/entity-handler@0.1.0";

/// What an entity may import: the world's own types, and the WASI interfaces Rust's
/// standard library on `wasm32-wasip2` imports. The host gives those empty (no preopened
/// directories, no environment, clocks at zero, fixed "randomness"); anything else,
/// sockets above all, is refused when the type is loaded rather than failing later inside
/// a call.
const ALLOWED_IMPORTS: &[&str] = &[
    "casty:entity/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// The limits one entity type runs under; `None` takes the node's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeLimits {
    /// Linear memory one shard instance may grow to.
    pub memory_max_bytes: Option<usize>,
    /// Wall time one call may take.
    pub call_deadline: Option<Duration>,
}

/// A loaded entity type: compiled, linked, ready to instantiate shard instances.
pub struct EntityType {
    pub(crate) name: String,
    version: u32,
    pub(crate) pre: EntityPre<HostState>,
    digest: String,
    size_bytes: usize,
    pub(crate) memory_max_bytes: usize,
    pub(crate) call_deadline: Duration,
    pub(crate) failures: FailureBudget,
}

impl std::fmt::Debug for EntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityType")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl EntityType {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which deployment of the type this is: 1 for the first (and for built-ins).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The size of the component, in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn memory_max_bytes(&self) -> usize {
        self.memory_max_bytes
    }

    pub fn call_deadline(&self) -> Duration {
        self.call_deadline
    }
}

impl Runtime {
    /// Checks, compiles (or loads from the cache) and links a component as version
    /// `version` of entity type `name`. Compiling takes a while: call it off the async
    /// executor's threads.
    pub fn load_type(
        &self,
        name: &str,
        version: u32,
        wasm: &[u8],
        limits: TypeLimits,
    ) -> Result<Arc<EntityType>, LoadError> {
        let (memory_max_bytes, call_deadline) = self.resolve(name, limits)?;
        match wasm.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError::CoreModule { name: name.to_owned() });
            }
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm { name: name.to_owned() }),
        }
        let digest = digest(wasm);
        let component = match self.cache_path(&digest) {
            Some(path) => self.load_cached(name, wasm, &path)?,
            None => self.compile(name, wasm)?,
        };
        self.check_shape(name, &component)?;
        let link = |reason: String| LoadError::Link { name: name.to_owned(), reason };
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| link(format!("{e:#}")))?;
        let pre = EntityPre::new(pre).map_err(|e| link(format!("{e:#}")))?;
        Ok(Arc::new(EntityType {
            name: name.to_owned(),
            version,
            pre,
            digest,
            size_bytes: wasm.len(),
            memory_max_bytes,
            call_deadline,
            // One call that runs to its deadline always fits.
            failures: FailureBudget::new(
                call_deadline.max(Duration::from_millis(FAILING_CALLS_BURST_MS)),
                std::time::Instant::now(),
            ),
        }))
    }

    /// A type's limits, its own where it names them, checked against what this node
    /// allows.
    fn resolve(&self, name: &str, limits: TypeLimits) -> Result<(usize, Duration), LoadError> {
        let config = &self.inner.config;
        let refuse = |reason: String| LoadError::Limits { name: name.to_owned(), reason };
        let memory = limits.memory_max_bytes.unwrap_or(config.instance_memory_max_bytes);
        if memory > config.instance_memory_max_bytes || memory < INSTANCE_MEMORY_MIN_BYTES {
            return Err(refuse(format!(
                "a memory limit of {memory} bytes is outside what this node allows: {INSTANCE_MEMORY_MIN_BYTES} to {} bytes",
                config.instance_memory_max_bytes
            )));
        }
        let deadline = limits.call_deadline.unwrap_or(config.call_deadline);
        let longest = Duration::from_millis(CALL_DEADLINE_LIMIT_MS);
        let shortest = Duration::from_millis(EPOCH_TICK_MS);
        if deadline > longest || deadline < shortest {
            return Err(refuse(format!(
                "a call deadline of {} ms is outside what nodes allow: {EPOCH_TICK_MS} to {CALL_DEADLINE_LIMIT_MS} ms",
                deadline.as_millis()
            )));
        }
        Ok((memory, deadline))
    }

    /// Checks that the component exports the entity interface and imports only what
    /// entities are given, naming what is missing or extra.
    fn check_shape(&self, name: &str, component: &Component) -> Result<(), LoadError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(engine).map(|(export, _)| export).collect();
        if !exports.contains(&ENTITY_EXPORT) {
            let exports = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
            return Err(LoadError::World { name: name.to_owned(), exports });
        }
        let extra: Vec<&str> = ty
            .imports(engine)
            .map(|(import, _)| import)
            .filter(|import| {
                let interface = import.split('@').next().unwrap_or(import);
                !ALLOWED_IMPORTS.contains(&interface)
            })
            .collect();
        if !extra.is_empty() {
            return Err(LoadError::Imports {
                name: name.to_owned(),
                imports: extra.join(", "),
                allowed: ALLOWED_IMPORTS.join(", "),
            });
        }
        Ok(())
    }

    fn compile(&self, name: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.inner.engine, wasm)
            .map_err(|e| LoadError::Compile { name: name.to_owned(), reason: format!("{e:#}") })
    }

    /// The cache file for a component: its digest plus the engine's compatibility hash,
    /// so an upgraded wasmtime or another configuration never reads a stale artifact.
    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.inner.config.cache_dir.as_ref()?;
        let mut hasher = DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish())))
    }

    fn load_cached(&self, name: &str, wasm: &[u8], path: &Path) -> Result<Component, LoadError> {
        if path.exists() {
            // SAFETY: the file is one this runtime serialized into its own data
            // directory, named by the digest of its source and the engine's
            // compatibility hash; wasmtime still checks its header and version.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.inner.engine, path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling: the cached component did not load: {e:#}")
                }
            }
        }
        let component = self.compile(name, wasm)?;
        let cache =
            |reason: String| LoadError::Cache { name: name.to_owned(), path: path.to_owned(), reason };
        let bytes = component.serialize().map_err(|e| cache(format!("{e:#}")))?;
        let dir = path.parent().expect("cache paths have a directory");
        std::fs::create_dir_all(dir).map_err(|e| cache(e.to_string()))?;
        // Write then rename, so a crash never leaves a truncated artifact under the name.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| cache(e.to_string()))?;
        Ok(component)
    }
}

/// The SHA-256 of a component's bytes, hex: how a type version is told apart.
pub fn digest(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
