//! Addresses and placement: which shard hosts an entity, which partition holds a shard.
//!
//! Hashes are xxh3 with a fixed seed, so every node and every client computes the same
//! placement forever; changing this function would move every entity.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::limits;

/// Names one entity: its type, the structure (region) it belongs to, the shard count the
/// caller uses for that structure, and its id within the structure.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    pub entity_type: String,
    pub region: String,
    pub shards: u32,
    pub id: String,
}

/// What is wrong with an address a client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("{what} is empty; name one")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max} bytes")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("shards must be between 1 and {max}, got {got}")]
    Shards { got: u32, max: u32 },
    #[error("entity type {0:?} may contain only lowercase letters, digits and '-'")]
    TypeName(String),
}

/// The unit one component instance hosts: all entities of one structure whose ids hash
/// to the same shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardKey {
    pub entity_type: String,
    pub region: String,
    pub shards: u32,
    pub shard: u32,
}

/// One entity, as the journal and the request table know it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityKey {
    pub shard: ShardKey,
    pub id: String,
}

/// Which of `shards` shards the bytes hash to. Used for entity ids, and by clients for
/// the keys of structures that keep one entity per shard (maps, sets).
pub fn shard_of(bytes: &[u8], shards: u32) -> u32 {
    assert!(shards > 0, "a structure has at least one shard");
    (xxh3_64(bytes) % u64::from(shards)) as u32
}

fn check_len(what: &'static str, value: &str, max: usize) -> Result<(), AddressError> {
    if value.is_empty() {
        return Err(AddressError::Empty { what });
    }
    if value.len() > max {
        return Err(AddressError::TooLong { what, len: value.len(), max });
    }
    Ok(())
}

/// Checks an entity type name: short, lowercase, digits and dashes, as WIT names are.
pub fn validate_type_name(name: &str) -> Result<(), AddressError> {
    check_len("entity type", name, limits::ENTITY_TYPE_LEN_MAX_BYTES)?;
    let ok = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(AddressError::TypeName(name.to_owned())) }
}

impl Address {
    /// Checks every field against its limit; bytes from the network pass here first.
    pub fn validate(&self) -> Result<(), AddressError> {
        validate_type_name(&self.entity_type)?;
        check_len("structure name", &self.region, limits::REGION_LEN_MAX_BYTES)?;
        check_len("entity id", &self.id, limits::ENTITY_ID_LEN_MAX_BYTES)?;
        if self.shards == 0 || self.shards > limits::SHARDS_MAX {
            return Err(AddressError::Shards { got: self.shards, max: limits::SHARDS_MAX });
        }
        Ok(())
    }

    /// The shard that hosts this entity. Assumes a validated address (shards > 0).
    pub fn shard(&self) -> u32 {
        shard_of(self.id.as_bytes(), self.shards)
    }

    pub fn shard_key(&self) -> ShardKey {
        ShardKey {
            entity_type: self.entity_type.clone(),
            region: self.region.clone(),
            shards: self.shards,
            shard: self.shard(),
        }
    }

    pub fn entity_key(&self) -> EntityKey {
        EntityKey { shard: self.shard_key(), id: self.id.clone() }
    }
}

impl ShardKey {
    /// The partition that holds this shard among `partitions`.
    pub fn partition(&self, partitions: u32) -> u32 {
        assert!(partitions > 0, "a cluster has at least one partition");
        let mut bytes = Vec::with_capacity(self.entity_type.len() + self.region.len() + 10);
        bytes.extend_from_slice(self.entity_type.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(self.region.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&self.shards.to_le_bytes());
        bytes.extend_from_slice(&self.shard.to_le_bytes());
        (xxh3_64(&bytes) % u64::from(partitions)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(id: &str, shards: u32) -> Address {
        Address { entity_type: "counter".into(), region: "r".into(), shards, id: id.into() }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let a = address("page-views", 50);
        assert_eq!(a.shard(), a.clone().shard());
        for i in 0..1000 {
            assert!(address(&format!("k{i}"), 7).shard() < 7);
        }
    }

    /// Shards and partitions are stored (a partition's entities, the placement of every
    /// structure), so the hash must give the same answers in every version: these were
    /// computed once and must never change.
    #[test]
    fn shards_and_partitions_are_pinned_across_versions() {
        let shards: Vec<u32> =
            ["page-views", "", "k1", "acct-1"].iter().map(|id| address(id, 100).shard()).collect();
        assert_eq!(shards, [49, 38, 85, 29]);
        assert_eq!(shard_of(b"\"alice\"", 16), 3);
        let partitions: Vec<u32> =
            ["page-views", "acct-1"].iter().map(|id| address(id, 100).shard_key().partition(64)).collect();
        assert_eq!(partitions, [11, 2]);
    }

    #[test]
    fn every_shard_is_reachable() {
        let mut seen = [false; 100];
        for i in 0..10_000 {
            seen[address(&format!("k{i}"), 100).shard() as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn partitions_spread_shards() {
        let mut counts = [0u32; 8];
        for shard in 0..800 {
            let key = ShardKey { entity_type: "map".into(), region: "m".into(), shards: 800, shard };
            counts[key.partition(8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 50), "{counts:?}");
    }

    #[test]
    fn bad_addresses_are_named() {
        assert_eq!(address("", 1).validate(), Err(AddressError::Empty { what: "entity id" }));
        assert!(matches!(address("x", 0).validate(), Err(AddressError::Shards { got: 0, .. })));
        let mut a = address("x", 1);
        a.entity_type = "Counter!".into();
        assert!(matches!(a.validate(), Err(AddressError::TypeName(_))));
        let long = "x".repeat(limits::ENTITY_ID_LEN_MAX_BYTES + 1);
        assert!(matches!(address(&long, 1).validate(), Err(AddressError::TooLong { .. })));
    }
}
