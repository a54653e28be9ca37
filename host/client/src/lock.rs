//! Locks and semaphores: handles with their own owner ids, holding permits under leases
//! that a background task renews while the handle holds any.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::facade::Target;
use crate::{ClientError, Zero, duration_ms};

/// How long a grant lasts without renewal, unless the handle names another TTL.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(30);
/// Renewals per lease period: a renewal may fail twice before the lease ends.
const RENEWALS_PER_LEASE: u32 = 3;

#[derive(Deserialize)]
struct Grant {
    token: u64,
}

/// What clones of one handle share: the permits it holds and the task renewing them.
#[derive(Debug, Default)]
struct Holding {
    permits: AtomicU32,
    renewal: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        // Without renewals the lease ends by itself and the permits go to the next waiter.
        if let Some(task) = self.renewal.get_mut().expect("renewal lock").take() {
            task.abort();
        }
    }
}

/// A distributed semaphore, as `d.semaphore("db-pool", 5)`. Each handle has its own owner
/// id (a UUID unless set with [`Semaphore::owner`]); one owner may hold several permits.
/// Grants are FIFO and carry strictly increasing fencing tokens.
#[derive(Debug, Clone)]
pub struct Semaphore {
    target: Target,
    permits: u32,
    owner: String,
    ttl: Duration,
    holding: Arc<Holding>,
}

impl Semaphore {
    pub(crate) fn new(target: Target, permits: u32) -> Self {
        Self {
            target,
            permits,
            owner: format!("owner-{}", uuid::Uuid::new_v4()),
            ttl: LEASE_TTL_DEFAULT,
            holding: Arc::default(),
        }
    }

    crate::facade::target_options!();

    /// Acts as owner `owner` instead of the handle's own UUID (to release from another
    /// process what this owner holds, for example).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// How long a grant lasts without renewal (default 30 s). The handle renews it in the
    /// background while it holds permits.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn owner_id(&self) -> &str {
        &self.owner
    }

    /// The lease in milliseconds: at least 1 ms and at most 30 days.
    fn ttl_ms(&self) -> Result<u64, ClientError> {
        duration_ms("the lease TTL", self.ttl, Zero::Refused)
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, command: Value) -> Result<T, ClientError> {
        self.target.call_as(&self.owner, &self.target.name, command, self.target.timeout).await
    }

    /// Waits (up to the handle's timeout) for a permit; returns its fencing token.
    pub async fn acquire(&self) -> Result<u64, ClientError> {
        let grant: Grant =
            self.send(json!({ "acquire": { "permits": self.permits, "ttl_ms": self.ttl_ms()? } })).await?;
        self.held();
        Ok(grant.token)
    }

    /// Takes a permit if one is free now; never waits in line. Returns its fencing token.
    pub async fn try_acquire(&self) -> Result<Option<u64>, ClientError> {
        let command = json!({ "try_acquire": { "permits": self.permits, "ttl_ms": self.ttl_ms()? } });
        let grant: Option<Grant> = self.send(command).await?;
        if grant.is_some() {
            self.held();
        }
        Ok(grant.map(|g| g.token))
    }

    /// Gives back one permit; false when this owner holds none.
    pub async fn release(&self) -> Result<bool, ClientError> {
        let released: bool = self.send(json!("release")).await?;
        if released && self.holding.permits.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.stop_renewing();
        }
        Ok(released)
    }

    /// Extends this owner's lease by the TTL; false when it holds nothing (the lease ended).
    pub async fn renew(&self) -> Result<bool, ClientError> {
        self.send(json!({ "renew": { "ttl_ms": self.ttl_ms()? } })).await
    }

    /// Permits free now.
    pub async fn available(&self) -> Result<u64, ClientError> {
        self.send(json!({ "available": { "permits": self.permits } })).await
    }

    /// Requests waiting in line.
    pub async fn waiting(&self) -> Result<u64, ClientError> {
        self.send(json!("waiting")).await
    }

    /// Counts a grant and makes sure a renewal task runs. Re-acquiring a lock this handle
    /// holds is not counted: one release frees it.
    fn held(&self) {
        let reentrant = self.permits == 1 && self.holding.permits.load(Ordering::Relaxed) > 0;
        if !reentrant {
            self.holding.permits.fetch_add(1, Ordering::Relaxed);
        }
        let mut renewal = self.holding.renewal.lock().expect("renewal lock");
        if renewal.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        // The task renews through a copy of the handle that does not share its holding:
        // holding it would keep the holding alive, and so the renewals going, after the
        // caller dropped every handle, and the lease would never end.
        let handle = Semaphore { holding: Arc::default(), ..self.clone() };
        let holding = Arc::downgrade(&self.holding);
        let period = self.ttl / RENEWALS_PER_LEASE;
        *renewal = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match handle.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(owner = %handle.owner, "the lease ended before it was renewed; the permits are lost");
                        if let Some(holding) = holding.upgrade() {
                            holding.permits.store(0, Ordering::Relaxed);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(owner = %handle.owner, "renewing the lease failed, retrying: {e}")
                    }
                }
            }
        }));
    }

    fn stop_renewing(&self) {
        if let Some(task) = self.holding.renewal.lock().expect("renewal lock").take() {
            task.abort();
        }
    }
}

/// A distributed lock, as `d.lock("deploy-lock")`: a semaphore with one permit. Acquiring
/// a lock this handle already holds returns the same token and renews the lease; one
/// release frees it.
#[derive(Debug, Clone)]
pub struct Lock {
    inner: Semaphore,
}

impl Lock {
    pub(crate) fn new(inner: Semaphore) -> Self {
        Self { inner }
    }

    /// How many shards the lock's structure is split into (default 100).
    pub fn shards(self, shards: u32) -> Self {
        Self { inner: self.inner.shards(shards) }
    }

    /// How long `acquire` and the other operations wait (default 5 s).
    pub fn timeout(self, timeout: Duration) -> Self {
        Self { inner: self.inner.timeout(timeout) }
    }

    /// Acts as owner `owner` instead of the handle's own UUID.
    pub fn owner(self, owner: impl Into<String>) -> Self {
        Self { inner: self.inner.owner(owner) }
    }

    /// How long a grant lasts without renewal (default 30 s).
    pub fn ttl(self, ttl: Duration) -> Self {
        Self { inner: self.inner.ttl(ttl) }
    }

    pub fn name(&self) -> &str {
        self.inner.name()
    }

    pub fn owner_id(&self) -> &str {
        self.inner.owner_id()
    }

    /// Waits (up to the timeout) until the lock is granted, FIFO among waiters; returns
    /// the fencing token.
    pub async fn acquire(&self) -> Result<u64, ClientError> {
        self.inner.acquire().await
    }

    /// Takes the lock if it is free now; never waits in line.
    pub async fn try_acquire(&self) -> Result<Option<u64>, ClientError> {
        self.inner.try_acquire().await
    }

    /// Acquires the lock and returns a guard that releases it when dropped.
    pub async fn lock(&self) -> Result<LockGuard, ClientError> {
        let token = self.acquire().await?;
        Ok(LockGuard { lock: Some(self.clone()), token })
    }

    /// Releases the lock; false when this handle's owner is not the holder.
    pub async fn release(&self) -> Result<bool, ClientError> {
        self.inner.release().await
    }

    /// Extends the lease; false when this owner no longer holds the lock.
    pub async fn renew(&self) -> Result<bool, ClientError> {
        self.inner.renew().await
    }

    /// Requests waiting in line for the lock.
    pub async fn waiting(&self) -> Result<u64, ClientError> {
        self.inner.waiting().await
    }
}

/// Holds a lock until dropped (or [`LockGuard::release`]d). Dropping it releases the lock
/// in the background on the current tokio runtime; `release` waits for the answer.
#[derive(Debug)]
pub struct LockGuard {
    lock: Option<Lock>,
    token: u64,
}

impl LockGuard {
    /// The fencing token of this grant: pass it to whatever the lock protects.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Releases the lock now and says whether this owner still held it.
    pub async fn release(mut self) -> Result<bool, ClientError> {
        let lock = self.lock.take().expect("a guard releases once");
        lock.release().await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = lock.release().await {
                        tracing::warn!(owner = %lock.owner_id(), "releasing a dropped lock guard failed: {e}");
                    }
                });
            }
            // Without a runtime the lease ends by itself; the handle stops renewing it.
            Err(_) => {
                tracing::warn!(owner = %lock.owner_id(), "a lock guard dropped outside a runtime; its lease will end")
            }
        }
    }
}
