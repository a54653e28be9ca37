//! Maps and sets: one entity per shard, each holding the keys that hash to it.
//!
//! A key goes to shard `hash(canonical JSON of the key) % shards`; the shard's entity id
//! is its number. Single-key operations go to one shard; `size`, `clear` and scans visit
//! every shard, scans a page at a time so no reply holds the whole structure.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use casty_core::routing::shard_of;

use crate::ClientError;
use crate::facade::{Target, decode_optional, decode_value, encode_value, target_options};

/// Entries a scan asks each shard for at a time.
const SCAN_PAGE_LEN: u32 = 500;

/// A distributed map from `K` to `V`, as `d.map::<String, User>("users")`.
#[derive(Debug, Clone)]
pub struct Map<K, V> {
    target: Target,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Map<K, V> {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, _types: PhantomData }
    }

    target_options!();
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Map<K, V> {
    fn checked_shards(&self) -> Result<u32, ClientError> {
        match self.target.shards {
            0 => Err(ClientError::InvalidArgument("shards must be at least 1".into())),
            shards => Ok(shards),
        }
    }

    /// The shard entity of a key, and the key's canonical encoding.
    fn locate(&self, key: &K) -> Result<(String, Value), ClientError> {
        let key = encode_value(key)?;
        let shard = shard_of(key.to_string().as_bytes(), self.checked_shards()?);
        Ok((shard.to_string(), key))
    }

    /// Stores `value` under `key`; returns the previous value.
    pub async fn put(&self, key: &K, value: &V) -> Result<Option<V>, ClientError> {
        let (shard, key) = self.locate(key)?;
        let reply =
            self.target.call(&shard, json!({ "put": { "key": key, "value": encode_value(value)? } })).await?;
        decode_optional(reply)
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: &K) -> Result<Option<V>, ClientError> {
        let (shard, key) = self.locate(key)?;
        decode_optional(self.target.call(&shard, json!({ "get": { "key": key } })).await?)
    }

    pub async fn contains(&self, key: &K) -> Result<bool, ClientError> {
        let (shard, key) = self.locate(key)?;
        self.target.call(&shard, json!({ "contains": { "key": key } })).await
    }

    /// Removes `key`; returns whether it was there.
    pub async fn delete(&self, key: &K) -> Result<bool, ClientError> {
        let (shard, key) = self.locate(key)?;
        self.target.call(&shard, json!({ "delete": { "key": key } })).await
    }

    /// How many keys the map holds (the sum over its shards).
    pub async fn size(&self) -> Result<u64, ClientError> {
        self.sum_over_shards(json!("size")).await
    }

    /// Removes every key; returns how many there were.
    pub async fn clear(&self) -> Result<u64, ClientError> {
        self.sum_over_shards(json!("clear")).await
    }

    async fn sum_over_shards(&self, command: Value) -> Result<u64, ClientError> {
        let shards = self.checked_shards()?;
        self.target.sum_over((0..shards).map(|shard| shard.to_string()), command).await
    }

    /// Every entry, a page at a time: `while let Some(page) = scan.next_page().await? {..}`.
    pub fn scan(&self) -> Scan<(K, V)> {
        Scan::new(self.target.clone(), |key, value| Ok((decode_value(key)?, decode_value(value)?)))
    }

    /// Every key, a page at a time.
    pub fn keys(&self) -> Scan<K> {
        Scan::new(self.target.clone(), |key, _| decode_value(key))
    }
}

/// A scan over a map's or set's shards, one page per call. Entries come shard by shard,
/// in key order within a shard.
#[derive(Debug)]
pub struct Scan<T> {
    target: Target,
    decode: fn(Value, Value) -> Result<T, ClientError>,
    shard: u32,
    after: Option<Value>,
}

#[derive(serde::Deserialize)]
struct Page {
    entries: Vec<(Value, Value)>,
    next: Option<Value>,
}

impl<T> Scan<T> {
    fn new(target: Target, decode: fn(Value, Value) -> Result<T, ClientError>) -> Self {
        Self { target, decode, shard: 0, after: None }
    }

    /// The next non-empty page, or `None` when every shard has been read.
    pub async fn next_page(&mut self) -> Result<Option<Vec<T>>, ClientError> {
        while self.shard < self.target.shards {
            let command = json!({ "scan": { "after": self.after, "limit": SCAN_PAGE_LEN } });
            let page: Page = self.target.call(&self.shard.to_string(), command).await?;
            match page.next {
                Some(next) => self.after = Some(next),
                None => {
                    self.shard += 1;
                    self.after = None;
                }
            }
            if !page.entries.is_empty() {
                let items =
                    page.entries.into_iter().map(|(k, v)| (self.decode)(k, v)).collect::<Result<_, _>>()?;
                return Ok(Some(items));
            }
        }
        Ok(None)
    }

    /// Reads every remaining page into one vector; for small structures and tests.
    pub async fn collect(mut self) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        while let Some(page) = self.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }
}

/// A distributed set of `T`, as `d.set::<String>("active-tags")`: a map whose values are
/// all `null`.
#[derive(Debug, Clone)]
pub struct Set<T> {
    map: Map<T, Value>,
}

impl<T> Set<T> {
    pub(crate) fn new(target: Target) -> Self {
        Self { map: Map::new(target) }
    }

    /// How many shards the set is split into (default 100).
    pub fn shards(mut self, shards: u32) -> Self {
        self.map = self.map.shards(shards);
        self
    }

    /// How long each operation waits (default 5 s).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.map = self.map.timeout(timeout);
        self
    }

    pub fn name(&self) -> &str {
        self.map.name()
    }
}

impl<T: Serialize + DeserializeOwned> Set<T> {
    /// Adds `value`; returns whether it was newly added.
    pub async fn add(&self, value: &T) -> Result<bool, ClientError> {
        Ok(self.map.put(value, &Value::Null).await?.is_none())
    }

    /// Removes `value`; returns whether it was there.
    pub async fn remove(&self, value: &T) -> Result<bool, ClientError> {
        self.map.delete(value).await
    }

    pub async fn contains(&self, value: &T) -> Result<bool, ClientError> {
        self.map.contains(value).await
    }

    pub async fn size(&self) -> Result<u64, ClientError> {
        self.map.size().await
    }

    /// Removes every member; returns how many there were.
    pub async fn clear(&self) -> Result<u64, ClientError> {
        self.map.clear().await
    }

    /// Every member, a page at a time.
    pub fn scan(&self) -> Scan<T> {
        self.map.keys()
    }
}
