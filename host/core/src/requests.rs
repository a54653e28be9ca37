//! Recent completed requests of a partition: a bounded window in which a retried request
//! (same request id) is answered with its original reply instead of being applied again.
//!
//! Every replica inserts every completed request of every entry it applies, and each
//! checkpoint stores the whole window, so both are on the write path: a request id is
//! hashed once and stored once (the index holds hashes and sequence numbers, not copies
//! of the ids), and a checkpoint encodes the window without copying it.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use nohash_hasher::IntMap;
use serde::{Serialize, Serializer};

use crate::limits::COMPLETED_REQUESTS_PER_PARTITION_MAX;
use crate::record::{CompletedRequest, MemberRecord};

/// The newest completed requests, up to a bound; the oldest are forgotten first.
#[derive(Debug)]
pub struct RecentRequests {
    /// Oldest first; the first has sequence number `first`.
    window: VecDeque<Remembered>,
    first: u64,
    /// For each hash of a request id in the window, the newest request with it, by
    /// sequence number; each request names the one before it with the same hash, so
    /// that ids whose hashes collide are told apart by comparing them. The keys are
    /// `hasher`'s output, so they index the table as they are.
    newest: IntMap<u64, u64>,
    /// Seeded per process, so that no client can choose ids that collide.
    hasher: RandomState,
}

#[derive(Debug)]
struct Remembered {
    completed: CompletedRequest,
    hash: u64,
    /// The request before this one whose id has the same hash, if still in the window.
    same_hash: Option<u64>,
}

impl Default for RecentRequests {
    /// Sized for the whole window at once: growing it by doubling copied it, and touched
    /// new memory, again and again while a partition took its first requests.
    fn default() -> Self {
        // One more than the bound: a request is put in before the oldest is forgotten.
        let len = COMPLETED_REQUESTS_PER_PARTITION_MAX + 1;
        Self {
            window: VecDeque::with_capacity(len),
            first: 0,
            newest: IntMap::with_capacity_and_hasher(len, Default::default()),
            hasher: RandomState::new(),
        }
    }
}

impl RecentRequests {
    /// Rebuilds the window stored with a checkpoint.
    pub fn from_completed(completed: Vec<CompletedRequest>) -> Self {
        let mut recent = Self::default();
        for completed in completed {
            recent.insert(completed);
        }
        recent
    }

    /// Where in the window the request with sequence number `seq` (in the window) is.
    fn slot(&self, seq: u64) -> usize {
        (seq - self.first) as usize
    }

    /// The sequence number of `request_id` in the window, if it is there.
    fn find(&self, hash: u64, request_id: &str) -> Option<u64> {
        let mut seq = *self.newest.get(&hash)?;
        while seq >= self.first {
            let remembered = &self.window[self.slot(seq)];
            if remembered.completed.request_id == request_id {
                return Some(seq);
            }
            seq = remembered.same_hash?;
        }
        None
    }

    /// Remembers a completed request, forgetting the oldest past the bound. A request
    /// already in the window keeps its place and takes the new reply.
    pub fn insert(&mut self, completed: CompletedRequest) {
        self.insert_hashed(self.hasher.hash_one(completed.request_id.as_str()), completed);
    }

    fn insert_hashed(&mut self, hash: u64, completed: CompletedRequest) {
        if let Some(seq) = self.find(hash, &completed.request_id) {
            let slot = self.slot(seq);
            self.window[slot].completed.reply = completed.reply;
            return;
        }
        let seq = self.first + self.window.len() as u64;
        let same_hash = self.newest.insert(hash, seq);
        self.window.push_back(Remembered { completed, hash, same_hash });
        while self.window.len() > COMPLETED_REQUESTS_PER_PARTITION_MAX {
            let oldest = self.window.pop_front().expect("longer than the bound");
            if self.newest.get(&oldest.hash) == Some(&self.first) {
                self.newest.remove(&oldest.hash);
            }
            self.first += 1;
        }
    }

    /// The reply a request got, if it completed within the window.
    pub fn reply(&self, request_id: &str) -> Option<&[u8]> {
        let seq = self.find(self.hasher.hash_one(request_id), request_id)?;
        Some(&self.window[self.slot(seq)].completed.reply)
    }

    /// The window, oldest first (checkpoints encode it in place: `encode_state`).
    #[cfg(test)]
    fn completed(&self) -> Vec<CompletedRequest> {
        self.window.iter().map(|r| r.completed.clone()).collect()
    }

    /// The [`crate::record::PartitionState`] holding this window and the rest, encoded as
    /// its `encode` encodes it, without copying the window first.
    pub fn encode_state(&self, applied_index: u64, applied_term: u64, members: &[MemberRecord]) -> Vec<u8> {
        /// Serializes as `Vec<CompletedRequest>` does.
        struct Window<'a>(&'a VecDeque<Remembered>);
        impl Serialize for Window<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|r| &r.completed))
            }
        }
        /// The fields of [`PartitionState`], in its order.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            completed: Window<'a>,
            applied_index: u64,
            applied_term: u64,
            members: &'a [MemberRecord],
        }
        let state = Borrowed { completed: Window(&self.window), applied_index, applied_term, members };
        postcard::to_allocvec(&state).expect("records serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PartitionState;

    fn completed(i: usize) -> CompletedRequest {
        CompletedRequest { request_id: format!("c:{i}"), reply: i.to_string().into_bytes() }
    }

    #[test]
    fn remembers_the_newest_and_survives_a_round_trip() {
        let mut recent = RecentRequests::default();
        for i in 0..COMPLETED_REQUESTS_PER_PARTITION_MAX + 10 {
            recent.insert(completed(i));
        }
        assert_eq!(recent.reply("c:0"), None);
        assert_eq!(recent.reply("c:9"), None);
        assert_eq!(recent.reply("c:10"), Some(&b"10"[..]));
        let members = [MemberRecord { id: 7, name: "n".into(), addr: "a".into() }];
        let encoded = recent.encode_state(5, 2, &members);
        let owned = PartitionState {
            completed: recent.completed(),
            applied_index: 5,
            applied_term: 2,
            members: members.to_vec(),
        };
        assert_eq!(encoded, owned.encode(), "the window is encoded as the owned state would be");
        let restored = RecentRequests::from_completed(PartitionState::decode(&encoded).unwrap().completed);
        let last = COMPLETED_REQUESTS_PER_PARTITION_MAX + 9;
        assert_eq!(restored.reply(&format!("c:{last}")), Some(last.to_string().as_bytes()));
        assert_eq!(restored.completed(), recent.completed());
    }

    #[test]
    fn a_request_completed_again_keeps_its_place_with_the_new_reply() {
        let mut recent = RecentRequests::default();
        recent.insert(completed(1));
        recent.insert(completed(2));
        recent.insert(CompletedRequest { request_id: "c:1".into(), reply: b"again".to_vec() });
        assert_eq!(recent.reply("c:1"), Some(&b"again"[..]));
        let ids: Vec<_> = recent.completed().into_iter().map(|c| c.request_id).collect();
        assert_eq!(ids, ["c:1", "c:2"]);
    }

    /// Ids whose hashes collide are told apart, also once the older one is forgotten.
    #[test]
    fn ids_with_the_same_hash_are_told_apart() {
        let mut recent = RecentRequests::default();
        // Every id of this window hashes to the same value.
        let hash = 42;
        for i in 0..COMPLETED_REQUESTS_PER_PARTITION_MAX + 3 {
            recent.insert_hashed(hash, completed(i));
        }
        recent.insert_hashed(hash, CompletedRequest { request_id: "c:5".into(), reply: b"again".to_vec() });
        assert_eq!(recent.find(hash, "c:2"), None, "forgotten");
        assert_eq!(recent.find(hash, "c:3"), Some(3));
        assert_eq!(recent.find(hash, "c:4000"), Some(4000));
        assert_eq!(recent.find(hash, "c:99999"), None);
        assert_eq!(recent.window[2].completed.reply, b"again", "c:5 took the new reply in its place");
    }
}
