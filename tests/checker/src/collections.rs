//! Sets and queues: what was acknowledged must not be lost, nothing may appear that no
//! one added, and a queue keeps each producer's order and hands each item out once.
//!
//! Both checkers take ordinary [`Op`] histories, so tests record them with a
//! [`crate::Recorder`]: a set add is an `Op<V, _>` whose input is the element; an enqueue
//! is an `Op<V, ()>` whose client is the producer and whose input is the item; a dequeue
//! is an `Op<(), Option<V>>`, `Ok(None)` meaning the queue answered empty. Each enqueue
//! must have its own item (say "p3-17": producer 3's 17th); a set element may be added
//! more than once.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::history::{Op, Sweep, real_time_sweep};
use crate::report::{Report, Violation};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    /// Elements with an acknowledged add, all present at the end.
    pub acknowledged: usize,
    /// Elements whose adds all had unknown outcomes, by whether they ended up present.
    pub unknown_present: usize,
    pub unknown_absent: usize,
}

/// Checks one set's adds against its contents at the end. The adds' outputs are not
/// looked at: whether an element was new says nothing once concurrent adds race.
pub fn check_set<V: Eq + Hash + Debug, O>(
    adds: &[Op<V, O>],
    final_contents: &[V],
) -> Result<SetSummary, Vec<Violation>> {
    let mut report = Report::default();
    // Every element any add attempted, with its first acknowledged add if there is one.
    let mut attempted: HashMap<&V, Option<&Op<V, O>>> = HashMap::new();
    for add in adds {
        let acknowledged = attempted.entry(&add.input).or_default();
        if acknowledged.is_none() && !add.outcome.is_unknown() {
            *acknowledged = Some(add);
        }
    }
    let mut present = HashSet::new();
    for element in final_contents {
        if !present.insert(element) {
            report.push("elements once", format!("{element:?} is in the final contents more than once"));
        }
        if !attempted.contains_key(element) {
            report.push("no phantoms", format!("{element:?} is in the final contents but was never added"));
        }
    }
    let mut summary = SetSummary::default();
    // In the order of the adds, so that reports do not depend on hashing.
    let mut counted = HashSet::new();
    for element in adds.iter().map(|add| &add.input).filter(|e| counted.insert(*e)) {
        match (attempted[element], present.contains(element)) {
            (Some(_), true) => summary.acknowledged += 1,
            (Some(add), false) => report.push(
                "acknowledged adds kept",
                format!(
                    "{element:?}, added by client {} over [{}, {}], is missing at the end",
                    add.client, add.invoke, add.ret
                ),
            ),
            (None, true) => summary.unknown_present += 1,
            (None, false) => summary.unknown_absent += 1,
        }
    }
    report.finish(summary)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary<V> {
    pub acknowledged_enqueues: usize,
    /// Items returned by dequeues with known outcomes.
    pub dequeued: usize,
    /// Items left in the queue at the end.
    pub drained: usize,
    pub unknown_dequeues: usize,
    /// Acknowledged items seen nowhere, which the unknown dequeues may have taken.
    pub possibly_taken: Vec<V>,
}

/// Where an item was seen leaving the queue.
enum Seen<'h, V> {
    Dequeued(&'h Op<(), Option<V>>),
    /// At this position of the final contents.
    Left(usize),
}

// By hand, because deriving would demand that `V` be `Copy` too.
impl<V> Clone for Seen<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for Seen<'_, V> {}

/// An acknowledged enqueue and where its item was seen.
type Sighted<'h, V> = (&'h Op<V, ()>, Seen<'h, V>);

/// Checks a queue's enqueues and dequeues against the items left in it at the end, in order.
pub fn check_queue<V: Eq + Hash + Clone + Debug>(
    enqueues: &[Op<V, ()>],
    dequeues: &[Op<(), Option<V>>],
    final_contents: &[V],
) -> Result<QueueSummary<V>, Vec<Violation>> {
    let mut report = Report::default();
    let enqueued: HashMap<&V, &Op<V, ()>> = enqueues.iter().map(|e| (&e.input, e)).collect();
    let mut seen: HashMap<&V, Seen<'_, V>> = HashMap::new();
    let taken = dequeues.iter().filter_map(|d| Some((d.outcome.ok()?.as_ref()?, Seen::Dequeued(d))));
    let left = final_contents.iter().enumerate().map(|(i, item)| (item, Seen::Left(i)));
    for (item, sighting) in taken.chain(left) {
        let what = describe(&sighting);
        match enqueued.get(item) {
            None => report.push("enqueued first", format!("{item:?} {what} but was never enqueued")),
            Some(e) if matches!(sighting, Seen::Dequeued(d) if d.ret < e.invoke) => report.push(
                "enqueued first",
                format!("{item:?} {what} before its enqueue was invoked at {}", e.invoke),
            ),
            Some(_) => {}
        }
        match seen.entry(item) {
            Entry::Occupied(earlier) => {
                report.push("taken once", format!("{item:?} {} and also {what}", describe(earlier.get())))
            }
            Entry::Vacant(first) => {
                first.insert(sighting);
            }
        }
    }

    let unknown_dequeues = dequeues.iter().filter(|d| d.outcome.is_unknown()).count();
    let acknowledged: Vec<&Op<V, ()>> = enqueues.iter().filter(|e| !e.outcome.is_unknown()).collect();
    let missing: Vec<&Op<V, ()>> =
        acknowledged.iter().copied().filter(|e| !seen.contains_key(&e.input)).collect();
    // Each dequeue whose caller gave up may have taken one item that no one then saw.
    if missing.len() > unknown_dequeues {
        for e in &missing {
            report.push(
                "acknowledged enqueues kept",
                format!(
                    "{:?}, enqueued by producer {} over [{}, {}], was never dequeued nor left in the queue, \
                     and {} items are missing but only {unknown_dequeues} dequeues had unknown outcomes",
                    e.input,
                    e.client,
                    e.invoke,
                    e.ret,
                    missing.len()
                ),
            );
        }
    }

    let mut by_producer: BTreeMap<u32, Vec<Sighted<'_, V>>> = BTreeMap::new();
    for e in &acknowledged {
        if let Some(&sighting) = seen.get(&e.input) {
            by_producer.entry(e.client).or_default().push((e, sighting));
        }
    }
    for (producer, sighted) in by_producer {
        producer_order(producer, &sighted, &mut report);
    }

    let summary = QueueSummary {
        acknowledged_enqueues: acknowledged.len(),
        dequeued: dequeues.iter().filter(|d| matches!(d.outcome.ok(), Some(Some(_)))).count(),
        drained: final_contents.len(),
        unknown_dequeues,
        possibly_taken: missing.iter().map(|e| e.input.clone()).collect(),
    };
    report.finish(summary)
}

/// Two acknowledged enqueues of one producer, the first returning before the second was
/// invoked, must leave the queue in that order: the second may not be dequeued before the
/// first's dequeue was invoked, nor while the first is still left, nor be left ahead of it.
/// So each item need only be compared with two of those enqueued before it: the one whose
/// dequeue was invoked last and the one left furthest back.
fn producer_order<V: Debug>(producer: u32, sighted: &[Sighted<'_, V>], report: &mut Report) {
    let mut last_dequeued: Option<(&V, u64)> = None;
    let mut furthest_left: Option<(&V, usize)> = None;
    real_time_sweep(
        sighted,
        |(e, _)| e.ret,
        |(e, _)| e.invoke,
        |step| match step {
            Sweep::Precedes((a, Seen::Dequeued(d))) => {
                if last_dequeued.is_none_or(|(_, invoke)| d.invoke > invoke) {
                    last_dequeued = Some((&a.input, d.invoke));
                }
            }
            Sweep::Precedes((a, Seen::Left(at))) => {
                if furthest_left.is_none_or(|(_, furthest)| at > furthest) {
                    furthest_left = Some((&a.input, at));
                }
            }
            Sweep::Visit((b, seen_b)) => {
                let overtaken = match seen_b {
                    Seen::Dequeued(d) => match (last_dequeued, furthest_left) {
                        (Some((a, invoke)), _) if d.ret < invoke => Some(a),
                        (_, Some((a, _))) => Some(a),
                        _ => None,
                    },
                    Seen::Left(at) => furthest_left.filter(|&(_, furthest)| at < furthest).map(|(a, _)| a),
                };
                if let Some(a) = overtaken {
                    let message = format!(
                        "producer {producer}: {:?} was enqueued after {a:?} returned but {} first",
                        b.input,
                        describe(&seen_b)
                    );
                    report.push("producer order", message);
                }
            }
        },
    );
}

fn describe<V>(seen: &Seen<'_, V>) -> String {
    match seen {
        Seen::Dequeued(d) => format!("was dequeued by client {} over [{}, {}]", d.client, d.invoke, d.ret),
        Seen::Left(i) => format!("was left in the queue at position {i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{ok, unknown};

    fn enqueue(producer: u32, item: &str, invoke: u64, ret: u64) -> Op<String, ()> {
        Op { client: producer, ..ok("q", invoke, ret, item.to_owned(), ()) }
    }

    fn dequeue(invoke: u64, ret: u64, item: &str) -> Op<(), Option<String>> {
        ok("q", invoke, ret, (), Some(item.to_owned()))
    }

    fn items(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn checks_failed<S: Debug>(result: Result<S, Vec<Violation>>) -> Vec<String> {
        result.expect_err("a bad history passed").into_iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_set_keeps_acknowledged_adds_and_counts_unknown_ones() {
        let adds = [ok("s", 0, 10, 1, true), unknown("s", 5, 2), unknown("s", 5, 3), unknown("s", 6, 1)];
        let summary = check_set(&adds, &[1, 2]).unwrap();
        assert_eq!(summary, SetSummary { acknowledged: 1, unknown_present: 1, unknown_absent: 1 });
    }

    #[test]
    fn a_set_that_loses_an_acknowledged_add_or_invents_an_element_is_rejected() {
        let adds = [ok("s", 0, 10, 1, true), ok("s", 0, 10, 2, true)];
        assert_eq!(checks_failed(check_set(&adds, &[2, 9])), ["no phantoms", "acknowledged adds kept"]);
    }

    #[test]
    fn a_queue_that_keeps_order_passes() {
        let enqueues = [enqueue(1, "p1-0", 0, 10), enqueue(1, "p1-1", 20, 30), enqueue(2, "p2-0", 0, 40)];
        let dequeues = [dequeue(35, 50, "p1-0"), ok("q", 0, 5, (), None)];
        let summary = check_queue(&enqueues, &dequeues, &items(&["p2-0", "p1-1"])).unwrap();
        assert_eq!((summary.dequeued, summary.drained, summary.possibly_taken.len()), (1, 2, 0));
    }

    #[test]
    fn an_item_taken_twice_is_rejected() {
        let enqueues = [enqueue(1, "p1-0", 0, 10)];
        let twice = [dequeue(20, 30, "p1-0"), dequeue(25, 35, "p1-0")];
        assert_eq!(checks_failed(check_queue(&enqueues, &twice, &[])), ["taken once"]);
        let and_left = [dequeue(20, 30, "p1-0")];
        assert_eq!(checks_failed(check_queue(&enqueues, &and_left, &items(&["p1-0"]))), ["taken once"]);
    }

    #[test]
    fn an_item_never_enqueued_is_rejected() {
        let dequeues = [dequeue(20, 30, "p1-0")];
        assert_eq!(checks_failed(check_queue(&[], &dequeues, &[])), ["enqueued first"]);
    }

    #[test]
    fn a_producer_order_inversion_is_rejected() {
        let enqueues = [enqueue(1, "p1-0", 0, 10), enqueue(1, "p1-1", 20, 30)];
        let by_dequeues = [dequeue(40, 50, "p1-1"), dequeue(60, 70, "p1-0")];
        assert_eq!(checks_failed(check_queue(&enqueues, &by_dequeues, &[])), ["producer order"]);
        let while_left = [dequeue(40, 50, "p1-1")];
        assert_eq!(checks_failed(check_queue(&enqueues, &while_left, &items(&["p1-0"]))), ["producer order"]);
        assert_eq!(checks_failed(check_queue(&enqueues, &[], &items(&["p1-1", "p1-0"]))), ["producer order"]);
    }

    #[test]
    fn an_unknown_dequeue_may_have_taken_one_missing_item_but_not_two() {
        let enqueues = [enqueue(1, "p1-0", 0, 10), enqueue(1, "p1-1", 20, 30)];
        let one_unknown = [unknown("q", 40, ())];
        let summary = check_queue(&enqueues, &one_unknown, &items(&["p1-1"])).unwrap();
        assert_eq!(summary.possibly_taken, items(&["p1-0"]));
        let failed = checks_failed(check_queue(&enqueues, &one_unknown, &[]));
        assert_eq!(failed, ["acknowledged enqueues kept", "acknowledged enqueues kept"]);
    }
}
