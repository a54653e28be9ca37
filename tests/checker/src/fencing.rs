//! Locks and semaphores with fencing tokens: the grants a test's clients saw must have
//! unique tokens that grow in real-time order and must never exceed the permits, and a
//! resource that checks tokens must refuse every holder that has been superseded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::history::{Sweep, real_time_sweep};
use crate::report::{Report, Violation};

/// One acquisition that returned a token, and what became of its release. Acquisitions
/// that failed or whose outcome is unknown granted nothing anyone saw, so are not holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub client: u32,
    pub owner: String,
    /// The name of the lock or semaphore.
    pub key: String,
    pub acquire_invoke: u64,
    pub acquire_ret: u64,
    pub token: u64,
    pub release_invoke: Option<u64>,
    pub release_ret: Option<u64>,
    /// `Some(true)` when the release returned true, `Some(false)` when it returned false,
    /// `None` when its outcome is unknown or it was never attempted.
    pub released: Option<bool>,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} (client {}, token {}, acquired over [{}, {}])",
            self.owner, self.client, self.token, self.acquire_invoke, self.acquire_ret
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub keys: usize,
    pub holds: usize,
    /// Holds whose release succeeded, so that were certainly held until it was invoked.
    pub certain: usize,
    /// The most certain holds of one key seen at one instant.
    pub most_at_once: usize,
}

/// Checks the holds of every lock or semaphore in `holds`, each of which has `permits`.
pub fn check_holds(holds: &[Hold], permits: u32) -> Result<Summary, Vec<Violation>> {
    let mut report = Report::default();
    let mut by_key: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for hold in holds {
        match malformed(hold) {
            Some(problem) => report.push("well-formed", format!("{hold} {problem}")),
            None => by_key.entry(&hold.key).or_default().push(hold),
        }
    }
    let mut summary = Summary { keys: by_key.len(), holds: holds.len(), certain: 0, most_at_once: 0 };
    for (key, holds) in &by_key {
        unique_tokens(key, holds, &mut report);
        tokens_follow_real_time(key, holds, &mut report);
        let (certain, most_at_once) = within_permits(key, holds, permits, &mut report);
        summary.certain += certain;
        summary.most_at_once = summary.most_at_once.max(most_at_once);
    }
    report.finish(summary)
}

/// What makes `hold` impossible for a correct recorder, if anything; such holds are
/// reported and left out of the other checks, which assume time runs forwards.
fn malformed(hold: &Hold) -> Option<&'static str> {
    match (hold.released, hold.release_invoke, hold.release_ret) {
        _ if hold.acquire_ret < hold.acquire_invoke => Some("returned from acquire before invoking it"),
        (Some(true), None, _) => Some("was released without invoking a release"),
        (_, Some(invoke), _) if invoke < hold.acquire_ret => {
            Some("invoked its release before its acquire returned")
        }
        (_, Some(invoke), Some(ret)) if ret < invoke => Some("returned from release before invoking it"),
        _ => None,
    }
}

fn unique_tokens(key: &str, holds: &[&Hold], report: &mut Report) {
    let mut by_token = holds.to_vec();
    by_token.sort_by_key(|h| h.token);
    for pair in by_token.windows(2) {
        if pair[0].token == pair[1].token {
            report.push(
                "unique tokens",
                format!("key {key:?}: {} and {} got the same token", pair[0], pair[1]),
            );
        }
    }
}

/// Whenever A's acquire returned before B's was invoked, A's token must be lower, so B
/// need only be compared with the highest token among the holds that precede it.
fn tokens_follow_real_time(key: &str, holds: &[&Hold], report: &mut Report) {
    let mut highest: Option<&Hold> = None;
    real_time_sweep(
        holds,
        |h| h.acquire_ret,
        |h| h.acquire_invoke,
        |step| match step {
            Sweep::Precedes(a) => {
                if highest.is_none_or(|h| a.token > h.token) {
                    highest = Some(a);
                }
            }
            Sweep::Visit(b) => {
                if let Some(a) = highest
                    && a.token >= b.token
                {
                    let message =
                        format!("key {key:?}: {a} was granted before {b} asked, yet its token is not lower");
                    report.push("tokens increase", message);
                }
            }
        },
    );
}

/// At no instant may more than `permits` holds certainly be held. A hold whose release
/// succeeded was certainly held over the open interval from its acquire's return to its
/// release's invoke. Open, so that two holds whose times only touch (a tie of the clock)
/// are not taken to overlap. Holds whose release failed or is unknown may have lost the
/// lock at any moment (a lease expiring), so nothing is certain about them.
/// Returns how many holds were certain and the most at one instant.
fn within_permits(key: &str, holds: &[&Hold], permits: u32, report: &mut Report) -> (usize, usize) {
    // (time, whether the hold starts, which hold): ends sort before starts at equal times.
    let mut events = Vec::new();
    for (i, hold) in holds.iter().enumerate() {
        if let (Some(true), Some(end)) = (hold.released, hold.release_invoke)
            && hold.acquire_ret < end
        {
            events.extend([(hold.acquire_ret, true, i), (end, false, i)]);
        }
    }
    events.sort_unstable();
    let mut held = BTreeSet::new();
    let mut most = 0;
    for (_, starts, i) in events.iter().copied() {
        if !starts {
            held.remove(&i);
            continue;
        }
        held.insert(i);
        most = most.max(held.len());
        if held.len() > permits as usize {
            let others: Vec<String> =
                held.iter().filter(|&&j| j != i).map(|&j| holds[j].to_string()).collect();
            report.push(
                "within permits",
                format!(
                    "key {key:?}: {} was held at once with {}, beyond {permits} permits",
                    holds[i],
                    others.join(", ")
                ),
            );
        }
    }
    (events.len() / 2, most)
}

/// A resource guarded by fencing tokens, inside the test: it refuses any access with a
/// token below the highest it has seen, which is what stops a superseded holder.
#[derive(Debug, Default)]
pub struct FencedResource {
    state: Mutex<Fenced>,
}

#[derive(Debug, Default)]
struct Fenced {
    value: u64,
    highest: u64,
    writes: u64,
}

/// An access with a token below the highest the resource has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub token: u64,
    pub highest: u64,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token {} refused: the resource has seen token {}, so this holder was superseded",
            self.token, self.highest
        )
    }
}

impl std::error::Error for Refused {}

impl FencedResource {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, Fenced> {
        // A holder thread that panicked cannot have left the state half-updated: no code
        // that can panic runs while the lock is held.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if `token` is not below the highest seen, which it then becomes.
    fn admit(&self, token: u64) -> Result<MutexGuard<'_, Fenced>, Refused> {
        let mut state = self.state();
        if token < state.highest {
            return Err(Refused { token, highest: state.highest });
        }
        state.highest = token;
        Ok(state)
    }

    pub fn read(&self, token: u64) -> Result<u64, Refused> {
        Ok(self.admit(token)?.value)
    }

    pub fn write(&self, token: u64, value: u64) -> Result<(), Refused> {
        let mut state = self.admit(token)?;
        state.value = value;
        state.writes += 1;
        Ok(())
    }

    pub fn value(&self) -> u64 {
        self.state().value
    }

    pub fn accepted_writes(&self) -> u64 {
        self.state().writes
    }

    /// For holders that each do `v = read(t)?; write(t, v + 1)?`: no accepted write may
    /// have been lost, which holds exactly when the value equals the accepted writes.
    ///
    /// Why exactly: the value starts at 0 and only writes change it. A write stores a value
    /// read earlier plus one, and no value read is above the writes accepted before it, so
    /// the value never exceeds the accepted writes. If every write stored the value just
    /// before it plus one, they are equal. If one stored a stale read plus one, the value
    /// fell at least one behind the writes then, and each later write adds at most one,
    /// so it stays behind. A holder whose read was accepted but whose write was refused
    /// changed nothing and counts nowhere, so it is neither a loss nor an excuse for one.
    ///
    /// And fencing leaves one way to lose: a write after a stale read is accepted only if no
    /// higher token came between, and the writer that came between raised the highest seen
    /// to its token, so the two holders shared a token.
    pub fn check_no_lost_update(&self) -> Result<(), String> {
        let state = self.state();
        if state.value == state.writes {
            Ok(())
        } else {
            Err(format!(
                "lost update: {} writes were accepted but the value is {}, so {} increments were lost \
                 (fencing refuses every other interleaving, so two holders shared a token)",
                state.writes,
                state.value,
                state.writes.saturating_sub(state.value)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hold of lock "l" acquired over `acquired` whose release over `released` succeeded.
    fn hold(owner: &str, token: u64, acquired: (u64, u64), released: (u64, u64)) -> Hold {
        Hold {
            client: 0,
            owner: owner.to_owned(),
            key: "l".to_owned(),
            acquire_invoke: acquired.0,
            acquire_ret: acquired.1,
            token,
            release_invoke: Some(released.0),
            release_ret: Some(released.1),
            released: Some(true),
        }
    }

    fn checks_failed(holds: &[Hold], permits: u32) -> Vec<String> {
        let violations = check_holds(holds, permits).expect_err("a bad history passed");
        violations.into_iter().map(|v| v.check).collect()
    }

    #[test]
    fn sequential_holds_pass() {
        let holds = [
            hold("a", 1, (0, 10), (20, 30)),
            hold("b", 2, (5, 30), (40, 50)),
            hold("c", 3, (45, 60), (70, 80)),
        ];
        let summary = check_holds(&holds, 1).unwrap();
        assert_eq!(summary, Summary { keys: 1, holds: 3, certain: 3, most_at_once: 1 });
    }

    #[test]
    fn a_double_grant_is_rejected() {
        let holds = [hold("a", 1, (0, 10), (50, 60)), hold("b", 2, (20, 30), (70, 80))];
        assert_eq!(checks_failed(&holds, 1), ["within permits"]);
    }

    #[test]
    fn a_hold_whose_release_is_unknown_is_not_certain() {
        let mut holds = [hold("a", 1, (0, 10), (50, 60)), hold("b", 2, (20, 30), (70, 80))];
        holds[0].released = None;
        assert_eq!(check_holds(&holds, 1).unwrap().certain, 1);
    }

    #[test]
    fn tokens_out_of_real_time_order_are_rejected() {
        let holds = [hold("a", 5, (0, 10), (12, 15)), hold("b", 3, (20, 30), (40, 50))];
        assert_eq!(checks_failed(&holds, 1), ["tokens increase"]);
    }

    #[test]
    fn duplicate_tokens_are_rejected() {
        // Concurrent acquires, so real-time order says nothing; only uniqueness is broken.
        let holds = [hold("a", 4, (0, 10), (12, 15)), hold("b", 4, (5, 20), (40, 50))];
        assert_eq!(checks_failed(&holds, 1), ["unique tokens"]);
    }

    #[test]
    fn a_semaphore_of_two_permits_allows_two_holders_but_not_three() {
        let two = [hold("a", 1, (0, 10), (100, 110)), hold("b", 2, (0, 20), (100, 110))];
        assert_eq!(check_holds(&two, 2).unwrap().most_at_once, 2);
        let three = [two[0].clone(), two[1].clone(), hold("c", 3, (0, 30), (100, 110))];
        assert_eq!(checks_failed(&three, 2), ["within permits"]);
    }

    #[test]
    fn malformed_holds_are_reported_not_panicked_on() {
        let holds = [hold("a", 1, (10, 0), (20, 30)), hold("b", 2, (0, 10), (5, 30))];
        assert_eq!(checks_failed(&holds, 0), ["well-formed", "well-formed"]);
    }

    #[test]
    fn holders_sharing_a_token_lose_an_update() {
        let resource = FencedResource::new();
        let a = resource.read(7).unwrap();
        let b = resource.read(7).unwrap();
        resource.write(7, a + 1).unwrap();
        resource.write(7, b + 1).unwrap();
        assert_eq!(resource.accepted_writes(), 2);
        assert!(resource.check_no_lost_update().unwrap_err().contains("lost update"));
    }

    #[test]
    fn a_stale_token_is_refused_and_nothing_is_lost() {
        let resource = FencedResource::new();
        let old = resource.read(1).unwrap();
        let new = resource.read(2).unwrap();
        resource.write(2, new + 1).unwrap();
        assert_eq!(resource.write(1, old + 1), Err(Refused { token: 1, highest: 2 }));
        assert_eq!(resource.read(1), Err(Refused { token: 1, highest: 2 }));
        assert_eq!(resource.value(), 1);
        resource.check_no_lost_update().unwrap();
    }
}
