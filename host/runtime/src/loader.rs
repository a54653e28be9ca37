//! Loading an entity type: validate and compile its component once, cache the compiled
//! artifact so the next start skips Cranelift, and pre-link it for fast instantiation.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::Runtime;
use crate::bindings::EntityPre;
use crate::wasi::HostState;

/// Why a component could not be loaded as an entity type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("entity type {name:?}: the file is not a valid WebAssembly component: {reason}")]
    Compile { name: String, reason: String },
    #[error("entity type {name:?}: the component does not fit the casty:entity world: {reason}")]
    World { name: String, reason: String },
    #[error("entity type {name:?}: cannot write the compile cache at {path}: {reason}")]
    Cache { name: String, path: PathBuf, reason: String },
}

/// A loaded entity type: compiled, linked, ready to instantiate shard instances.
#[derive(Clone)]
pub struct EntityType {
    pub(crate) name: String,
    pub(crate) pre: EntityPre<HostState>,
    digest: String,
}

impl std::fmt::Debug for EntityType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityType").field("name", &self.name).field("digest", &self.digest).finish()
    }
}

impl EntityType {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Runtime {
    /// Compiles (or loads from the cache) and links a component as entity type `name`.
    pub fn load_type(&self, name: &str, wasm: &[u8]) -> Result<Arc<EntityType>, LoadError> {
        let digest = hex(&Sha256::digest(wasm));
        let component = match self.cache_path(&digest) {
            Some(path) => self.load_cached(name, wasm, &path)?,
            None => self.compile(name, wasm)?,
        };
        let world = |reason: String| LoadError::World { name: name.to_owned(), reason };
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| world(format!("{e:#}")))?;
        let pre = EntityPre::new(pre).map_err(|e| world(format!("{e:#}")))?;
        Ok(Arc::new(EntityType { name: name.to_owned(), pre, digest }))
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
