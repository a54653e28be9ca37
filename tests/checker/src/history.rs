//! What a test's clients saw: one [`Op`] per call, with when it was invoked, when it
//! returned and what it returned.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How a call ended, as far as its caller knows.
///
/// A definite failure (a rejection: the call certainly had no effect) is not an outcome
/// at all: callers simply do not record such calls, because an operation that did not
/// happen constrains nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// The call returned this.
    Ok(O),
    /// The call timed out, was answered Unavailable or lost its connection: it may or
    /// may not have taken effect. For linearizability its return is at +infinity, as in
    /// Knossos and porcupine, and it matches any output.
    Unknown,
}

impl<O> Outcome<O> {
    /// The output, if the call returned one.
    pub fn ok(&self) -> Option<&O> {
        match self {
            Outcome::Ok(output) => Some(output),
            Outcome::Unknown => None,
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown)
    }
}

/// One call by one client on one key. Times are nanoseconds since the recording began.
/// For an `Unknown` outcome `ret` is when the caller gave up; checkers ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op<I, O> {
    pub client: u32,
    pub key: String,
    pub invoke: u64,
    pub ret: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

/// Collects the ops of many concurrent clients against one monotonic clock.
#[derive(Debug)]
pub struct Recorder<I, O> {
    start: Instant,
    ops: Mutex<Vec<Op<I, O>>>,
}

impl<I, O> Default for Recorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> Recorder<I, O> {
    /// A recorder whose time zero is now.
    pub fn new() -> Self {
        Recorder { start: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since the recorder was made (saturating after 584 years).
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, op: Op<I, O>) {
        // A client that panicked while holding the lock leaves a valid vector behind,
        // and the ops recorded before it are exactly what the test needs to see.
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }

    /// The invoke time for an op about to be called; pass it to [`Recorder::end`].
    pub fn begin(&self) -> u64 {
        self.now()
    }

    /// Records an op that was invoked at `invoke` and has ended now.
    pub fn end(&self, client: u32, key: impl Into<String>, invoke: u64, input: I, outcome: Outcome<O>) {
        let ret = self.now();
        self.record(Op { client, key: key.into(), invoke, ret, input, outcome });
    }

    /// Every op recorded, in the order they were recorded (checkers do not rely on it).
    pub fn into_history(self) -> Vec<Op<I, O>> {
        self.ops.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One step of [`real_time_sweep`].
pub(crate) enum Sweep<T> {
    /// This record returned before every record visited from now on was invoked.
    Precedes(T),
    /// A record, visited after every record that returned before it was invoked.
    Visit(T),
}

/// Walks `records` so that a checker can keep, for each record B, a running summary of
/// the records that precede B in real time (returned before B was invoked) and compare B
/// with it. Those records are a prefix of the records in order of return, so two sorts
/// replace a comparison of every pair.
pub(crate) fn real_time_sweep<T: Copy>(
    records: &[T],
    ret: impl Fn(T) -> u64,
    invoke: impl Fn(T) -> u64,
    mut step: impl FnMut(Sweep<T>),
) {
    let mut by_ret = records.to_vec();
    by_ret.sort_by_key(|&r| ret(r));
    let mut by_invoke = records.to_vec();
    by_invoke.sort_by_key(|&r| invoke(r));
    let mut preceding = by_ret.into_iter().peekable();
    for b in by_invoke {
        while let Some(a) = preceding.next_if(|&a| ret(a) < invoke(b)) {
            step(Sweep::Precedes(a));
        }
        step(Sweep::Visit(b));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An op that returned `output`, for the checkers' own tests.
    pub(crate) fn ok<I, O>(key: &str, invoke: u64, ret: u64, input: I, output: O) -> Op<I, O> {
        Op { client: 0, key: key.to_owned(), invoke, ret, input, outcome: Outcome::Ok(output) }
    }

    /// An op whose caller gave up, for the checkers' own tests.
    pub(crate) fn unknown<I, O>(key: &str, invoke: u64, input: I) -> Op<I, O> {
        Op { client: 0, key: key.to_owned(), invoke, ret: invoke + 1, input, outcome: Outcome::Unknown }
    }

    #[test]
    fn records_from_many_threads_in_time_order_per_op() {
        let recorder = Recorder::<u32, ()>::new();
        std::thread::scope(|s| {
            for client in 0..4 {
                let recorder = &recorder;
                s.spawn(move || {
                    let invoke = recorder.begin();
                    recorder.end(client, "k", invoke, client, Outcome::Ok(()));
                });
            }
        });
        let history = recorder.into_history();
        assert_eq!(history.len(), 4);
        assert!(history.iter().all(|op| op.invoke <= op.ret));
    }
}
