//! Sequential specifications of the structures whose histories are checked for
//! linearizability: a register and a counter.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::linearizable::Model;

/// A register of `V` values that starts empty.
#[derive(Debug)]
pub struct Register<V>(PhantomData<fn() -> V>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterInput<V> {
    Get,
    Set(V),
    /// Sets `new` only if the register holds `expected`.
    CompareAndSet {
        expected: Option<V>,
        new: V,
    },
    GetAndSet(V),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutput<V> {
    /// What `Get` read, or what `GetAndSet` replaced.
    Value(Option<V>),
    /// `Set` returned.
    Done,
    /// Whether `CompareAndSet` set its value.
    Swapped(bool),
}

impl<V: Clone + Eq + Hash + Debug + Serialize> Model for Register<V> {
    type State = Option<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init() -> Option<V> {
        None
    }

    fn step(
        state: &Option<V>,
        input: &RegisterInput<V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<Option<V>> {
        // What the register would answer from `state`, and the state it would leave.
        let (answer, after) = match input {
            RegisterInput::Get => (RegisterOutput::Value(state.clone()), state.clone()),
            RegisterInput::Set(v) => (RegisterOutput::Done, Some(v.clone())),
            RegisterInput::CompareAndSet { expected, new } if state == expected => {
                (RegisterOutput::Swapped(true), Some(new.clone()))
            }
            RegisterInput::CompareAndSet { .. } => (RegisterOutput::Swapped(false), state.clone()),
            RegisterInput::GetAndSet(v) => (RegisterOutput::Value(state.clone()), Some(v.clone())),
        };
        output.is_none_or(|seen| *seen == answer).then_some(after)
    }
}

/// A counter of `i64` that starts at 0.
#[derive(Debug)]
pub enum Counter {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterInput {
    /// Adds this (negative to decrement) and returns the new value.
    Increment(i64),
    /// Returns the value.
    Get,
}

impl Model for Counter {
    type State = i64;
    type Input = CounterInput;
    type Output = i64;

    fn init() -> i64 {
        0
    }

    fn step(state: &i64, input: &CounterInput, output: Option<&i64>) -> Option<i64> {
        // An increment that would overflow is one the counter rejects, and rejected
        // calls are not in histories, so it cannot have happened.
        let after = match input {
            CounterInput::Increment(by) => state.checked_add(*by)?,
            CounterInput::Get => *state,
        };
        output.is_none_or(|seen| *seen == after).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::history::tests::{ok, unknown};
    use crate::history::{Op, Outcome};
    use crate::linearizable::{Verdict, check};

    use CounterInput::Increment;
    use RegisterInput::{CompareAndSet, Get, GetAndSet, Set};
    use RegisterOutput::{Done, Swapped, Value};

    const BUDGET: Duration = Duration::from_secs(5);

    fn register(history: &[Op<RegisterInput<i64>, RegisterOutput<i64>>]) -> Verdict {
        check::<Register<i64>>(history, BUDGET)
    }

    fn counter(history: &[Op<CounterInput, i64>]) -> Verdict {
        check::<Counter>(history, BUDGET)
    }

    #[test]
    fn register_rejects_a_stale_read() {
        let h = [ok("r", 0, 10, Set(1), Done), ok("r", 20, 30, Get, Value(None))];
        assert!(matches!(register(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn register_rejects_a_lost_write() {
        let h = [
            ok("r", 0, 10, Set(1), Done),
            ok("r", 20, 30, Set(2), Done),
            ok("r", 40, 50, Get, Value(Some(1))),
        ];
        assert!(matches!(register(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn register_rejects_a_compare_and_set_that_succeeds_twice() {
        let cas = |new| CompareAndSet { expected: None, new };
        let h = [ok("r", 0, 10, cas(1), Swapped(true)), ok("r", 20, 30, cas(2), Swapped(true))];
        assert!(matches!(register(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn register_rejects_a_read_of_a_value_never_written() {
        let h = [ok("r", 0, 10, Set(1), Done), ok("r", 20, 30, Get, Value(Some(7)))];
        assert!(matches!(register(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn register_accepts_concurrent_overlapping_ops() {
        // Reads during a slow write may see either value, but not the old one after the
        // new one; the swap and the compare-and-set order themselves around the write.
        let h = [
            ok("r", 0, 100, Set(1), Done),
            ok("r", 10, 20, Get, Value(None)),
            ok("r", 30, 40, Get, Value(Some(1))),
            ok("r", 50, 120, GetAndSet(2), Value(Some(1))),
            ok("r", 60, 130, CompareAndSet { expected: Some(2), new: 3 }, Swapped(true)),
            ok("r", 140, 150, Get, Value(Some(3))),
        ];
        register(&h).assert_linearizable();
    }

    #[test]
    fn register_accepts_an_unknown_write_whether_or_not_it_is_read() {
        let read_later = [unknown("r", 0, Set(1)), ok("r", 50, 60, Get, Value(Some(1)))];
        assert_eq!(register(&read_later), Verdict::Linearizable { ops: 2, unknown: 1 });
        let never_seen = [unknown("r", 0, Set(1)), ok("r", 50, 60, Get, Value(None))];
        register(&never_seen).assert_linearizable();
    }

    #[test]
    fn counter_rejects_two_increments_returning_the_same_value() {
        let h = [ok("c", 0, 10, Increment(1), 1), ok("c", 5, 15, Increment(1), 1)];
        assert!(matches!(counter(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn counter_accepts_overlapping_increments_returning_out_of_order() {
        let h = [ok("c", 0, 20, Increment(1), 2), ok("c", 5, 15, Increment(1), 1)];
        counter(&h).assert_linearizable();
    }

    #[test]
    fn counter_rejects_a_read_below_an_acknowledged_increment() {
        let h = [ok("c", 0, 10, Increment(5), 5), ok("c", 20, 30, CounterInput::Get, 0)];
        assert!(matches!(counter(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn counter_accepts_an_unknown_increment_that_a_later_read_sees() {
        let h = [unknown("c", 0, Increment(3)), ok("c", 50, 60, CounterInput::Get, 3)];
        counter(&h).assert_linearizable();
    }

    /// One op of a random execution: its input, its key, how long before and after its
    /// effect it was invoked and returned, and whether its caller gave up on it and, if
    /// so, whether it took effect anyway.
    #[derive(Debug, Clone)]
    struct Planned<I> {
        input: I,
        key: &'static str,
        before: u64,
        after: u64,
        gave_up: bool,
        took_effect: bool,
    }

    fn planned<I: Debug + Clone>(input: impl Strategy<Value = I>) -> impl Strategy<Value = Vec<Planned<I>>> {
        let op = (
            input,
            prop::sample::select(vec!["a", "b"]),
            0..40u64,
            0..40u64,
            prop::bool::weighted(0.1),
            any::<bool>(),
        );
        let op = op.prop_map(|(input, key, before, after, gave_up, took_effect)| Planned {
            input,
            key,
            before,
            after,
            gave_up,
            took_effect,
        });
        prop::collection::vec(op, 1..40)
    }

    /// Runs `ops` on `apply` one by one, each taking effect at its own instant between its
    /// invoke and its return, so that calls overlap as in a real concurrent execution.
    fn execute<I: Clone, O, S: Default>(
        ops: &[Planned<I>],
        mut apply: impl FnMut(&mut S, &I) -> O,
    ) -> Vec<Op<I, O>> {
        let mut states: [S; 2] = Default::default();
        let mut history = Vec::new();
        for (i, planned) in ops.iter().enumerate() {
            let effect = 100 + 10 * i as u64;
            let state = &mut states[usize::from(planned.key == "b")];
            let outcome = match (planned.gave_up, planned.took_effect) {
                (false, _) => Outcome::Ok(apply(state, &planned.input)),
                (true, true) => {
                    apply(state, &planned.input);
                    Outcome::Unknown
                }
                (true, false) => Outcome::Unknown,
            };
            history.push(Op {
                client: i as u32 % 4,
                key: planned.key.to_owned(),
                invoke: effect - planned.before,
                ret: effect + planned.after,
                input: planned.input.clone(),
                outcome,
            });
        }
        history
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn real_register_executions_are_linearizable_until_a_read_is_forged(
            ops in planned(prop_oneof![
                Just(Get),
                (0..5i64).prop_map(Set),
                (0..5i64).prop_map(GetAndSet),
                (proptest::option::of(0..5i64), 0..5i64).prop_map(|(expected, new)| CompareAndSet { expected, new }),
            ]),
        ) {
            let mut history = execute(&ops, |state: &mut Option<i64>, input: &RegisterInput<i64>| {
                let (answer, after) = match input {
                    Get => (Value(*state), *state),
                    Set(v) => (Done, Some(*v)),
                    GetAndSet(v) => (Value(*state), Some(*v)),
                    CompareAndSet { expected, new } if state == expected => (Swapped(true), Some(*new)),
                    CompareAndSet { .. } => (Swapped(false), *state),
                };
                *state = after;
                answer
            });
            register(&history).assert_linearizable();
            if let Some(read) = history.iter_mut().find(|op| op.input == Get && !op.outcome.is_unknown()) {
                read.outcome = Outcome::Ok(Value(Some(-1)));
                let verdict = register(&history);
                prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{}", verdict);
            }
        }

        #[test]
        fn real_counter_executions_are_linearizable_until_a_read_is_forged(
            ops in planned(prop_oneof![Just(CounterInput::Get), (-3..=3i64).prop_map(Increment)]),
        ) {
            let mut history = execute(&ops, |state: &mut i64, input: &CounterInput| {
                if let Increment(by) = input {
                    *state += by;
                }
                *state
            });
            counter(&history).assert_linearizable();
            // No execution of fewer than 40 ops of at most 3 reaches 1000.
            if let Some(read) = history.iter_mut().find(|op| op.input == CounterInput::Get && !op.outcome.is_unknown()) {
                read.outcome = Outcome::Ok(1000);
                let verdict = counter(&history);
                prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{}", verdict);
            }
        }
    }
}
