//! Linearizability checking: porcupine's algorithm, which is Wing & Gong's backtracking
//! search with P. Lowe's memoisation of (ops linearized so far, model state).
//!
//! A history is split by key and each key's ops are checked on their own, since
//! linearizability is local (Herlihy & Wing): the whole history is linearizable exactly
//! when every key's sub-history is.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::Op;

/// How many search steps pass between two looks at the clock.
const DEADLINE_CHECK_STEPS: u64 = 256;

/// A sequential specification of one object.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Serialize;
    type Output: Serialize;

    fn init() -> Self::State;

    /// The state after `input` was applied to `state` and answered `output`, or `None`
    /// when that cannot happen. `output` is `None` when the caller never learnt it, and
    /// then any output the object could have given is accepted.
    fn step(state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Linearizable {
        ops: usize,
        unknown: usize,
    },
    /// `history_json` is the failing key's ops alone, pretty-printed, to paste into a bug.
    NotLinearizable {
        key: String,
        history_json: String,
    },
    /// The time budget ran out, or the key's history was malformed; never a pass.
    Inconclusive {
        key: String,
        reason: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }

    /// For tests: panics, printing the verdict and any failing history, unless linearizable.
    #[track_caller]
    pub fn assert_linearizable(&self) {
        assert!(self.is_linearizable(), "{self}");
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable { ops, unknown } => {
                write!(f, "linearizable: {ops} ops, {unknown} of them with an unknown outcome")
            }
            Verdict::NotLinearizable { key, history_json } => {
                write!(f, "not linearizable: key {key:?}, whose history is\n{history_json}")
            }
            Verdict::Inconclusive { key, reason } => write!(f, "inconclusive at key {key:?}: {reason}"),
        }
    }
}

/// Checks `history` against model `M`, spending at most about `budget` on the whole of it.
pub fn check<M: Model>(history: &[Op<M::Input, M::Output>], budget: Duration) -> Verdict {
    // A budget too large to add to the clock is no limit at all.
    let deadline = Instant::now().checked_add(budget);
    let mut by_key: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let inconclusive = |reason| Verdict::Inconclusive { key: key.to_owned(), reason };
        if let Some(op) = ops.iter().find(|op| !op.outcome.is_unknown() && op.ret < op.invoke) {
            return inconclusive(format!(
                "malformed history: an op of client {} returned at {} before it was invoked at {}",
                op.client, op.ret, op.invoke
            ));
        }
        match search::<M>(&ops, deadline) {
            Search::Linearizable => {}
            Search::Impossible => {
                let history_json = serde_json::to_string_pretty(&ops)
                    .unwrap_or_else(|e| format!("(this history cannot be written as JSON: {e})"));
                return Verdict::NotLinearizable { key: key.to_owned(), history_json };
            }
            Search::OutOfTime { steps } => {
                return inconclusive(format!(
                    "the time budget of {budget:?} ran out after {steps} search steps on this key"
                ));
            }
        }
    }
    let unknown = history.iter().filter(|op| op.outcome.is_unknown()).count();
    Verdict::Linearizable { ops: history.len(), unknown }
}

enum Search {
    Linearizable,
    Impossible,
    OutOfTime { steps: u64 },
}

/// The search over one key's ops. It walks the pending events from the earliest: at a
/// call it tries to linearize that op next (lifting it out of the list and starting over);
/// at a return it has run out of candidates that may precede that op, so it undoes the
/// last choice. A (linearized set, state) pair is explored at most once.
///
/// An op with an unknown outcome returns at +infinity, so it is a candidate from its call
/// on and never forces a backtrack. The search succeeds once every op with a known
/// outcome is linearized: the unknown ones still pending are taken never to have happened.
fn search<M: Model>(ops: &[&Op<M::Input, M::Output>], deadline: Option<Instant>) -> Search {
    let mut events = Events::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut seen = HashSet::new();
    // The ops linearized so far, in order, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = M::init();
    let mut known_left = ops.iter().filter(|op| !op.outcome.is_unknown()).count();
    let mut node = events.first();
    let mut steps = 0;
    while known_left > 0 {
        if steps % DEADLINE_CHECK_STEPS == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Search::OutOfTime { steps };
        }
        steps += 1;
        let op = Events::op(node);
        if Events::is_call(node) {
            if let Some(after) = M::step(&state, &ops[op].input, ops[op].outcome.ok()) {
                linearized.set(op);
                if seen.insert((linearized.clone(), after.clone())) {
                    stack.push((op, std::mem::replace(&mut state, after)));
                    known_left -= usize::from(!ops[op].outcome.is_unknown());
                    events.lift(op);
                    node = events.first();
                    continue;
                }
                linearized.clear(op);
            }
            node = events.next(node);
        } else {
            let Some((undone, before)) = stack.pop() else { return Search::Impossible };
            state = before;
            linearized.clear(undone);
            known_left += usize::from(!ops[undone].outcome.is_unknown());
            events.unlift(undone);
            node = events.next(Events::call(undone));
        }
    }
    Search::Linearizable
}

/// One key's call and return events in time order, as a doubly linked list from which
/// ops are lifted and put back in last-in-first-out order (Knuth's dancing links).
/// Node `2 * op` is an op's call and `2 * op + 1` its return; the last node is the head.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
}

/// The `next` of the last node in the list.
const END: usize = usize::MAX;

impl Events {
    fn new<I, O>(ops: &[&Op<I, O>]) -> Self {
        let mut order: Vec<usize> = (0..2 * ops.len()).collect();
        // Calls sort before returns at equal times, so ops whose times touch count as
        // concurrent: the rule that never rejects a history on a tie of the clock.
        order.sort_by_key(|&node| {
            let op = ops[Self::op(node)];
            match (Self::is_call(node), op.outcome.is_unknown()) {
                (true, _) => (false, op.invoke, 0),
                (false, false) => (false, op.ret, 1),
                (false, true) => (true, 0, 1),
            }
        });
        let head = order.len();
        let mut events = Events { next: vec![END; head + 1], prev: vec![END; head + 1] };
        let mut last = head;
        for node in order {
            events.next[last] = node;
            events.prev[node] = last;
            last = node;
        }
        events
    }

    fn op(node: usize) -> usize {
        node / 2
    }

    fn call(op: usize) -> usize {
        2 * op
    }

    fn is_call(node: usize) -> bool {
        node.is_multiple_of(2)
    }

    fn first(&self) -> usize {
        self.next[self.next.len() - 1]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    fn lift(&mut self, op: usize) {
        for node in [Self::call(op), Self::call(op) + 1] {
            let (prev, next) = (self.prev[node], self.next[node]);
            self.next[prev] = next;
            if next != END {
                self.prev[next] = prev;
            }
        }
    }

    /// Undoes the last [`Events::lift`] not yet undone, which must be of `op`.
    fn unlift(&mut self, op: usize) {
        for node in [Self::call(op) + 1, Self::call(op)] {
            let (prev, next) = (self.prev[node], self.next[node]);
            self.next[prev] = node;
            if next != END {
                self.prev[next] = node;
            }
        }
    }
}

/// Which of a key's ops are linearized, one bit per op.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{ok, unknown};
    use crate::models::{Counter, CounterInput, Register, RegisterInput, RegisterOutput};

    const BUDGET: Duration = Duration::from_secs(5);

    #[test]
    fn reports_only_the_failing_key_as_json() {
        let history = [
            ok("good", 0, 10, RegisterInput::Set(1), RegisterOutput::Done),
            ok("bad", 0, 10, RegisterInput::Set(2), RegisterOutput::Done),
            ok("bad", 20, 30, RegisterInput::Get, RegisterOutput::Value(None)),
        ];
        let Verdict::NotLinearizable { key, history_json } = check::<Register<i64>>(&history, BUDGET) else {
            panic!("a stale read passed");
        };
        assert_eq!(key, "bad");
        let ops: Vec<Op<RegisterInput<i64>, RegisterOutput<i64>>> =
            serde_json::from_str(&history_json).unwrap();
        assert_eq!(ops, history[1..]);
    }

    #[test]
    fn an_unknown_op_still_takes_effect_only_after_its_invoke() {
        let history = [
            ok("r", 0, 10, RegisterInput::Get, RegisterOutput::Value(Some(1))),
            unknown("r", 100, RegisterInput::Set(1)),
        ];
        assert!(matches!(check::<Register<i64>>(&history, BUDGET), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_history_of_only_unknown_ops_is_linearizable() {
        let history = [unknown("c", 0, CounterInput::Increment(1)), unknown("c", 5, CounterInput::Get)];
        assert_eq!(check::<Counter>(&history, BUDGET), Verdict::Linearizable { ops: 2, unknown: 2 });
    }

    #[test]
    fn a_return_before_its_invoke_is_inconclusive_not_a_panic() {
        let history = [ok("c", 50, 10, CounterInput::Increment(1), 1)];
        assert!(matches!(check::<Counter>(&history, BUDGET), Verdict::Inconclusive { .. }));
    }

    #[test]
    fn thousands_of_sequential_ops_on_one_key_check_quickly() {
        let history: Vec<_> = (0..5_000)
            .map(|i| ok("c", 10 * i, 10 * i + 5, CounterInput::Increment(1), i as i64 + 1))
            .collect();
        check::<Counter>(&history, BUDGET).assert_linearizable();
    }

    /// Forty concurrent unknown increments of distinct powers of two reach 2^40 distinct
    /// states, and a read nothing can explain makes the search visit all of them.
    #[test]
    fn a_budget_that_runs_out_is_inconclusive_never_a_pass() {
        let mut history: Vec<_> = (0..40).map(|i| unknown("c", 0, CounterInput::Increment(1 << i))).collect();
        history.push(ok("c", 1, 2, CounterInput::Get, -1));
        for budget in [Duration::ZERO, Duration::from_micros(1), Duration::from_millis(20)] {
            let verdict = check::<Counter>(&history, budget);
            assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{verdict}");
        }
    }
}
