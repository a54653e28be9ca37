//! Recent completed requests of a partition: a bounded window in which a retried request
//! (same request id) is answered with its original reply instead of being applied again.

use std::collections::{HashMap, VecDeque};

use crate::limits::COMPLETED_REQUESTS_PER_PARTITION_MAX;
use crate::record::CompletedRequest;

/// The newest completed requests, up to a bound; the oldest are forgotten first.
#[derive(Debug, Default)]
pub struct RecentRequests {
    replies: HashMap<String, Vec<u8>>,
    order: VecDeque<String>,
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

    /// Remembers a completed request, forgetting the oldest past the bound.
    pub fn insert(&mut self, completed: CompletedRequest) {
        if self.replies.insert(completed.request_id.clone(), completed.reply).is_none() {
            self.order.push_back(completed.request_id);
        }
        while self.order.len() > COMPLETED_REQUESTS_PER_PARTITION_MAX {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.replies.remove(&oldest);
        }
    }

    /// The reply a request got, if it completed within the window.
    pub fn reply(&self, request_id: &str) -> Option<&[u8]> {
        self.replies.get(request_id).map(Vec::as_slice)
    }

    /// The window, oldest first, to store with a checkpoint.
    pub fn completed(&self) -> Vec<CompletedRequest> {
        self.order
            .iter()
            .map(|id| CompletedRequest { request_id: id.clone(), reply: self.replies[id].clone() })
            .collect()
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
        let state = PartitionState { completed: recent.completed(), ..PartitionState::default() };
        let restored =
            RecentRequests::from_completed(PartitionState::decode(&state.encode()).unwrap().completed);
        let last = COMPLETED_REQUESTS_PER_PARTITION_MAX + 9;
        assert_eq!(restored.reply(&format!("c:{last}")), Some(last.to_string().as_bytes()));
        assert_eq!(restored.completed(), recent.completed());
    }
}
