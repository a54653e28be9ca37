use super::*;
use casty_guest_sdk::testing::{Harness, Outcome, serde_json::json};

const TTL: u64 = 30_000;

fn acquire(permits: u32) -> Command {
    Command::Acquire { permits, ttl_ms: TTL }
}

fn try_acquire(permits: u32) -> Command {
    Command::TryAcquire { permits, ttl_ms: TTL }
}

fn token(reply: &Value) -> u64 {
    reply["token"].as_u64().expect("a token")
}

#[test]
fn a_lock_grants_one_owner_and_only_the_holder_releases() {
    let mut lock = Harness::<Semaphore>::new("deploy-lock");
    let first = lock.send_as("a", try_acquire(1)).unwrap();
    assert_eq!(token(&first), 1);
    assert_eq!(lock.send_as("b", try_acquire(1)).unwrap(), Value::Null);
    assert_eq!(lock.send_as("b", Command::Release).unwrap(), json!(false));
    assert_eq!(lock.send_as("a", Command::Release).unwrap(), json!(true));
    assert_eq!(token(&lock.send_as("b", try_acquire(1)).unwrap()), 2, "tokens strictly increase");
    lock.assert_replay_matches();
}

#[test]
fn re_acquiring_a_held_lock_is_reentrant_without_counting() {
    let mut lock = Harness::<Semaphore>::new("l");
    let first = token(&lock.send_as("a", acquire(1)).unwrap());
    lock.set_now_ms(10);
    assert_eq!(token(&lock.send_as("a", acquire(1)).unwrap()), first, "same token");
    assert_eq!(lock.wake_at_ms, Some(10 + TTL), "the lease was renewed");
    assert_eq!(lock.send_as("a", Command::Release).unwrap(), json!(true));
    assert_eq!(lock.send_as("a", Command::Release).unwrap(), json!(false), "one release frees it");
}

#[test]
fn waiters_are_granted_in_fifo_order_with_increasing_tokens() {
    let mut lock = Harness::<Semaphore>::new("l");
    lock.send_as("a", acquire(1)).unwrap();
    let mut waiting = Vec::new();
    for owner in ["b", "c", "d"] {
        assert_eq!(lock.send_as(owner, acquire(1)), Err(Outcome::Parked));
        waiting.push(lock.last_request_id());
    }
    assert_eq!(lock.send_as("x", Command::Waiting).unwrap(), json!(3));
    // A retry of a queued request (as after a restart) keeps its one place in line.
    let retry = lock.state().handle(
        &casty_guest_sdk::Context {
            entity_id: "l".into(),
            caller: "b".into(),
            request_id: waiting[0].clone(),
            now_ms: 0,
        },
        acquire(1),
    );
    assert!(retry.unwrap().events.is_empty());
    let mut granted = Vec::new();
    for holder in ["a", "b", "c"] {
        assert_eq!(lock.send_as(holder, Command::Release).unwrap(), json!(true));
        let (request_id, answer) = lock.answers.last().cloned().unwrap();
        granted.push((request_id, token(&answer.unwrap())));
    }
    assert_eq!(granted.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), waiting);
    assert!(granted.windows(2).all(|w| w[0].1 < w[1].1));
    lock.assert_replay_matches();
}

#[test]
fn an_expired_lease_passes_the_lock_and_a_withdrawn_waiter_is_never_granted() {
    let mut lock = Harness::<Semaphore>::new("l");
    let first = token(&lock.send_as("a", acquire(1)).unwrap());
    assert_eq!(lock.send_as("gone", acquire(1)), Err(Outcome::Parked));
    let gone = lock.last_request_id();
    assert_eq!(lock.send_as("b", acquire(1)), Err(Outcome::Parked));
    let b = lock.last_request_id();
    lock.withdraw(&gone);
    assert_eq!(lock.wake_at_ms, Some(TTL));
    lock.set_now_ms(TTL);
    lock.wake();
    assert_eq!(lock.answers.len(), 1, "only b is granted: {:?}", lock.answers);
    let (request_id, answer) = lock.answers[0].clone();
    assert_eq!(request_id, b);
    assert!(token(&answer.unwrap()) > first);
    assert_eq!(lock.send_as("a", Command::Release).unwrap(), json!(false), "a lost the lock with its lease");
    lock.assert_replay_matches();
}

#[test]
fn a_semaphore_counts_permits_per_owner_and_refuses_another_size() {
    let mut sem = Harness::<Semaphore>::new("db-pool");
    assert!(sem.send_as("w1", try_acquire(2)).unwrap().is_object());
    assert!(sem.send_as("w2", try_acquire(2)).unwrap().is_object());
    assert_eq!(sem.send_as("w3", try_acquire(2)).unwrap(), Value::Null);
    assert_eq!(sem.send_as("w3", Command::Available { permits: 2 }).unwrap(), json!(0));
    assert_eq!(sem.send_as("w3", Command::Release).unwrap(), json!(false));
    assert_eq!(sem.send_as("w1", Command::Release).unwrap(), json!(true));
    assert!(sem.send_as("w3", try_acquire(2)).unwrap().is_object());
    let err = sem.send_as("w4", try_acquire(3)).unwrap_err();
    assert!(matches!(err, Outcome::Rejected(r) if r.code == "permits-mismatch"));

    let mut sem = Harness::<Semaphore>::new("s");
    sem.send_as("one", try_acquire(3)).unwrap();
    sem.send_as("one", try_acquire(3)).unwrap();
    assert_eq!(sem.send_as("one", Command::Available { permits: 3 }).unwrap(), json!(1));
    sem.send_as("one", Command::Release).unwrap();
    assert_eq!(sem.send_as("one", Command::Available { permits: 3 }).unwrap(), json!(2));
    sem.assert_replay_matches();
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(u8),
        TryAcquire(u8),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Acquire),
            (0u8..4).prop_map(Op::TryAcquire),
            (0u8..4).prop_map(Op::Release)
        ]
    }

    proptest! {
        /// A lock against a model: one holder, a FIFO line, tokens that only grow.
        #[test]
        fn a_lock_behaves_like_its_model(ops in proptest::collection::vec(op(), 0..64)) {
            let mut lock = Harness::<Semaphore>::new("l");
            let mut holder: Option<String> = None;
            let mut line: VecDeque<(String, String)> = VecDeque::new();
            let mut last_token = 0;
            let mut check_token = |t: u64, reentrant: bool| {
                if reentrant { assert_eq!(t, last_token) } else { assert!(t > last_token) }
                last_token = t;
            };
            for op in ops {
                match op {
                    Op::Acquire(o) | Op::TryAcquire(o) => {
                        let owner = format!("o{o}");
                        if line.iter().any(|(w, _)| *w == owner) { continue }
                        let queue = matches!(op, Op::Acquire(_));
                        let reply = lock.send_as(&owner, if queue { acquire(1) } else { try_acquire(1) });
                        let reentrant = holder.as_deref() == Some(owner.as_str());
                        if reentrant || (holder.is_none() && line.is_empty()) {
                            check_token(token(&reply.unwrap()), reentrant);
                            holder = Some(owner);
                        } else if queue {
                            prop_assert_eq!(reply, Err(Outcome::Parked));
                            line.push_back((owner, lock.last_request_id()));
                        } else {
                            prop_assert_eq!(reply.unwrap(), Value::Null);
                        }
                    }
                    Op::Release(o) => {
                        let owner = format!("o{o}");
                        let released = holder.as_deref() == Some(owner.as_str());
                        prop_assert_eq!(lock.send_as(&owner, Command::Release).unwrap(), json!(released));
                        if released {
                            holder = None;
                            if let Some((next, request_id)) = line.pop_front() {
                                let (answered, answer) = lock.answers.last().cloned().unwrap();
                                prop_assert_eq!(answered, request_id);
                                check_token(token(&answer.unwrap()), false);
                                holder = Some(next);
                            }
                        }
                    }
                }
            }
            lock.assert_replay_matches();
        }
    }
}
