//! The entity types a node runs: the fixed ones (built-ins, and `--entity` types given to
//! this node alone), and every version of every deployed type, as the metadata group
//! holds them. New commands run a type's newest version; older versions stay loaded
//! because the log may name them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use casty_core::limits::{DEPLOYED_TYPES_MAX, TYPE_VERSIONS_MAX, TYPE_WAIT_MAX_MS};
use casty_core::protocol::TypeInfo;
use casty_core::record::TypeRecord;
use casty_journal::Journal;
use casty_runtime::{EntityType, LoadError, Runtime, TypeLimits};

/// Every type this node can run.
pub(crate) struct Registry {
    runtime: Runtime,
    fixed: HashMap<String, Arc<EntityType>>,
    /// Deployed types: name → version → loaded type.
    deployed: RwLock<HashMap<String, BTreeMap<u32, Arc<EntityType>>>>,
    /// Bumped whenever a version is installed, for replicas waiting on one.
    installed: watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("names", &self.names()).finish_non_exhaustive()
    }
}

/// A deployed type's limits as the runtime takes them.
pub(crate) fn limits_of(memory_max_bytes: Option<u64>, call_deadline_ms: Option<u64>) -> TypeLimits {
    TypeLimits {
        memory_max_bytes: memory_max_bytes.map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX)),
        call_deadline: call_deadline_ms.map(Duration::from_millis),
    }
}

impl Registry {
    pub(crate) fn new(runtime: Runtime, fixed: HashMap<String, Arc<EntityType>>) -> Self {
        Self { runtime, fixed, deployed: RwLock::default(), installed: watch::channel(0).0 }
    }

    fn deployed(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeMap<u32, Arc<EntityType>>>> {
        self.deployed.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads every version the journal holds (compiled artifacts come from the cache).
    pub(crate) fn load_stored(&self, journal: &Journal) -> Result<(), String> {
        for bytes in journal.types().map_err(|e| e.to_string())? {
            self.load(&TypeRecord::decode(&bytes).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// Compiles a committed version and adds it. The record is committed state: a node
    /// that cannot run it (its limits are below the type's) still keeps it, and says so.
    fn load(&self, record: &TypeRecord) -> bool {
        let d = &record.deployment;
        let limits = limits_of(d.memory_max_bytes, d.call_deadline_ms);
        match self.runtime.load_type(&d.entity_type, record.version, &d.wasm, limits) {
            Ok(ty) => {
                self.insert(ty);
                true
            }
            Err(e) => {
                tracing::error!("version {} cannot run on this node: {e}", record.version);
                false
            }
        }
    }

    fn insert(&self, ty: Arc<EntityType>) {
        let mut deployed = self.deployed.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        deployed.entry(ty.name().to_owned()).or_default().insert(ty.version(), ty);
        drop(deployed);
        self.installed.send_modify(|n| *n += 1);
    }

    /// Whether `name` is a built-in (or `--entity`) type, which cannot be deployed over.
    pub(crate) fn is_fixed(&self, name: &str) -> bool {
        self.fixed.contains_key(name)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.fixed.contains_key(name) || self.deployed().contains_key(name)
    }

    /// The version new commands of `name` run: its newest.
    pub(crate) fn current(&self, name: &str) -> Option<Arc<EntityType>> {
        if let Some(ty) = self.fixed.get(name) {
            return Some(ty.clone());
        }
        self.deployed().get(name).and_then(|versions| versions.values().next_back().cloned())
    }

    /// The newest version of `name`, once it is at least `version`: a replica applying
    /// entries of a version whose deployment has not reached it yet waits for it.
    pub(crate) async fn at_least(&self, name: &str, version: u32) -> Result<Arc<EntityType>, String> {
        let newest = |registry: &Self| registry.current(name).filter(|ty| ty.version() >= version);
        if let Some(ty) = newest(self) {
            return Ok(ty);
        }
        let mut installed = self.installed.subscribe();
        let wait = async {
            loop {
                if let Some(ty) = newest(self) {
                    return ty;
                }
                if installed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(TYPE_WAIT_MAX_MS), wait).await.map_err(|_| {
            format!(
                "version {version} of entity type {name:?} did not reach this node within {TYPE_WAIT_MAX_MS} ms"
            )
        })
    }

    /// Every type name, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fixed.keys().cloned().collect();
        names.extend(self.deployed().keys().cloned());
        names.sort_unstable();
        names
    }

    /// Every type version, as `casty types` lists them.
    pub(crate) fn list(&self) -> Vec<TypeInfo> {
        let info = |ty: &EntityType, current: bool, builtin: bool| TypeInfo {
            entity_type: ty.name().to_owned(),
            version: ty.version(),
            current,
            builtin,
            digest: ty.digest().to_owned(),
            size_bytes: ty.size_bytes() as u64,
            memory_max_bytes: ty.memory_max_bytes() as u64,
            call_deadline_ms: ty.call_deadline().as_millis() as u64,
        };
        let mut list: Vec<TypeInfo> = self.fixed.values().map(|ty| info(ty, true, true)).collect();
        for versions in self.deployed().values() {
            let newest = versions.keys().next_back().copied();
            list.extend(versions.values().map(|ty| info(ty, Some(ty.version()) == newest, false)));
        }
        list.sort_unstable_by(|a, b| (&a.entity_type, a.version).cmp(&(&b.entity_type, b.version)));
        list
    }

    /// The version number the next deployment of `name` takes, or why there is none.
    pub(crate) fn next_version(&self, name: &str) -> Result<u32, String> {
        let deployed = self.deployed();
        let next = match deployed.get(name) {
            Some(versions) => versions.keys().next_back().map_or(1, |v| v + 1),
            None if deployed.len() >= DEPLOYED_TYPES_MAX => {
                return Err(format!("the cluster already has {DEPLOYED_TYPES_MAX} deployed types"));
            }
            None => 1,
        };
        if next > TYPE_VERSIONS_MAX {
            return Err(format!("entity type {name:?} already has {TYPE_VERSIONS_MAX} versions"));
        }
        Ok(next)
    }

    /// Checks and compiles a component, off the executor's threads (Cranelift takes a
    /// while and blocks).
    pub(crate) async fn compile(
        &self,
        name: &str,
        version: u32,
        wasm: Arc<Vec<u8>>,
        limits: TypeLimits,
    ) -> Result<Arc<EntityType>, LoadError> {
        let runtime = self.runtime.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || runtime.load_type(&name, version, &wasm, limits))
            .await
            .expect("compiling a component does not panic")
    }

    /// Loads a committed deployment, unless this node has that version already. Compiling
    /// blocks, so it runs off the executor's threads.
    pub(crate) async fn install(self: &Arc<Self>, record: &TypeRecord) {
        let name = &record.deployment.entity_type;
        if self.deployed().get(name).is_some_and(|v| v.contains_key(&record.version)) {
            return;
        }
        let (registry, record) = (self.clone(), record.clone());
        let version = record.version;
        let loaded = tokio::task::spawn_blocking(move || registry.load(&record)).await;
        if loaded.expect("loading a type does not panic") {
            tracing::info!(entity_type = %name, version, "entity type deployed");
        }
    }
}
