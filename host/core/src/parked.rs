//! The request table: requests an entity parked (to answer later) and the wake-up times
//! entities asked for. Generic over the waiter, so the node can keep its reply channels
//! here while this module stays free of I/O; time is passed in.

use std::collections::{BTreeSet, HashMap};

use crate::limits::{PARKED_PER_PARTITION_MAX, TIMERS_PER_PARTITION_MAX};
use crate::routing::EntityKey;

/// The table is at its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is full ({max} entries); retry later")]
pub struct TableFull {
    pub what: &'static str,
    pub max: usize,
}

#[derive(Debug)]
struct ParkedRequest<W> {
    entity: EntityKey,
    deadline_ms: u64,
    waiter: W,
}

/// Requests waiting for a later decision, by request id, with the time their callers
/// stop waiting.
#[derive(Debug)]
pub struct ParkedTable<W> {
    by_request: HashMap<String, ParkedRequest<W>>,
    deadlines: BTreeSet<(u64, String)>,
}

impl<W> Default for ParkedTable<W> {
    fn default() -> Self {
        Self { by_request: HashMap::new(), deadlines: BTreeSet::new() }
    }
}

impl<W> ParkedTable<W> {
    /// Parks a request. A request id parked again (a retry) replaces the earlier waiter,
    /// which is returned so its caller can be told. A full table gives the waiter back.
    pub fn park(
        &mut self,
        entity: EntityKey,
        request_id: String,
        waiter: W,
        deadline_ms: u64,
    ) -> Result<Option<W>, (TableFull, W)> {
        let previous = self.take(&request_id).map(|(_, w)| w);
        if self.by_request.len() >= PARKED_PER_PARTITION_MAX {
            return Err((
                TableFull { what: "the parked-request table", max: PARKED_PER_PARTITION_MAX },
                waiter,
            ));
        }
        self.deadlines.insert((deadline_ms, request_id.clone()));
        self.by_request.insert(request_id, ParkedRequest { entity, deadline_ms, waiter });
        Ok(previous)
    }

    /// For a retry of a request that is still parked: the new waiter takes the old one's
    /// place in line (returned, so its caller can be told) and the new deadline applies.
    /// Gives the waiter back when the request is not parked.
    pub fn rewait(&mut self, request_id: &str, waiter: W, deadline_ms: u64) -> Result<W, W> {
        let Some(parked) = self.by_request.get_mut(request_id) else { return Err(waiter) };
        self.deadlines.remove(&(parked.deadline_ms, request_id.to_owned()));
        self.deadlines.insert((deadline_ms, request_id.to_owned()));
        parked.deadline_ms = deadline_ms;
        Ok(std::mem::replace(&mut parked.waiter, waiter))
    }

    /// Removes a parked request, for a decision that answers it.
    pub fn take(&mut self, request_id: &str) -> Option<(EntityKey, W)> {
        let parked = self.by_request.remove(request_id)?;
        self.deadlines.remove(&(parked.deadline_ms, request_id.to_owned()));
        Some((parked.entity, parked.waiter))
    }

    /// Removes every request whose caller stopped waiting at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(EntityKey, String, W)> {
        let mut expired = Vec::new();
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now_ms {
                break;
            }
            let (_, request_id) = self.deadlines.pop_first().expect("checked non-empty");
            let parked = self.by_request.remove(&request_id).expect("deadline has a request");
            expired.push((parked.entity, request_id, parked.waiter));
        }
        expired
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    pub fn len(&self) -> usize {
        self.by_request.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_request.is_empty()
    }

    /// Removes every parked request, for a partition that stops serving.
    pub fn drain(&mut self) -> impl Iterator<Item = W> + '_ {
        self.deadlines.clear();
        self.by_request.drain().map(|(_, p)| p.waiter)
    }
}

/// Wake-up times, at most one per entity: a later request replaces an earlier one.
#[derive(Debug, Default)]
pub struct Timers {
    by_time: BTreeSet<(u64, EntityKey)>,
    by_entity: HashMap<EntityKey, u64>,
}

impl Timers {
    /// Sets (or with `None`, clears) the wake-up time of an entity.
    pub fn set(&mut self, entity: &EntityKey, at_ms: Option<u64>) -> Result<(), TableFull> {
        if let Some(old) = self.by_entity.remove(entity) {
            self.by_time.remove(&(old, entity.clone()));
        }
        let Some(at_ms) = at_ms else { return Ok(()) };
        if self.by_entity.len() >= TIMERS_PER_PARTITION_MAX {
            return Err(TableFull { what: "the timer table", max: TIMERS_PER_PARTITION_MAX });
        }
        self.by_time.insert((at_ms, entity.clone()));
        self.by_entity.insert(entity.clone(), at_ms);
        Ok(())
    }

    /// Removes and returns every entity whose wake-up time is at or before `now_ms`.
    pub fn due(&mut self, now_ms: u64) -> Vec<EntityKey> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now_ms {
                break;
            }
            let (_, entity) = self.by_time.pop_first().expect("checked non-empty");
            self.by_entity.remove(&entity);
            due.push(entity);
        }
        due
    }

    /// The wake-up time of an entity, if it asked for one.
    pub fn get(&self, entity: &EntityKey) -> Option<u64> {
        self.by_entity.get(entity).copied()
    }

    pub fn next_ms(&self) -> Option<u64> {
        self.by_time.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ShardKey;

    fn key(id: &str) -> EntityKey {
        EntityKey {
            shard: ShardKey { entity_type: "lock".into(), region: "l".into(), shards: 1, shard: 0 },
            id: id.into(),
        }
    }

    #[test]
    fn parked_requests_are_taken_or_expire_in_deadline_order() {
        let mut table = ParkedTable::default();
        table.park(key("a"), "r1".into(), 1, 100).unwrap();
        table.park(key("a"), "r2".into(), 2, 50).unwrap();
        table.park(key("a"), "r3".into(), 3, 200).unwrap();
        assert_eq!(table.next_deadline_ms(), Some(50));
        assert_eq!(table.take("r3").map(|(_, w)| w), Some(3));
        let expired: Vec<_> = table.expire(100).into_iter().map(|(_, r, w)| (r, w)).collect();
        assert_eq!(expired, vec![("r2".to_owned(), 2), ("r1".to_owned(), 1)]);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline_ms(), None);
    }

    #[test]
    fn a_retried_request_replaces_its_waiter() {
        let mut table = ParkedTable::default();
        assert_eq!(table.park(key("a"), "r".into(), 1, 100).unwrap(), None);
        assert_eq!(table.park(key("a"), "r".into(), 2, 300).unwrap(), Some(1));
        assert_eq!(table.len(), 1);
        assert!(table.expire(200).is_empty());
        assert_eq!(table.expire(300).len(), 1);
    }

    #[test]
    fn a_retry_keeps_the_place_in_line() {
        let mut table = ParkedTable::default();
        table.park(key("a"), "first".into(), 1, 100).unwrap();
        table.park(key("a"), "second".into(), 2, 100).unwrap();
        assert_eq!(table.rewait("first", 3, 500), Ok(1));
        assert_eq!(table.rewait("absent", 4, 500), Err(4));
        let expired: Vec<_> = table.expire(100).into_iter().map(|(_, r, w)| (r, w)).collect();
        assert_eq!(expired, vec![("second".to_owned(), 2)]);
        assert_eq!(table.take("first").map(|(_, w)| w), Some(3));
    }

    #[test]
    fn timers_keep_one_time_per_entity() {
        let mut timers = Timers::default();
        timers.set(&key("a"), Some(10)).unwrap();
        timers.set(&key("a"), Some(30)).unwrap();
        timers.set(&key("b"), Some(20)).unwrap();
        assert_eq!(timers.next_ms(), Some(20));
        assert_eq!(timers.due(25), vec![key("b")]);
        timers.set(&key("a"), None).unwrap();
        assert!(timers.due(100).is_empty());
    }
}
