use super::*;
use casty_guest_sdk::testing::{Harness, Outcome};
use proptest::prelude::*;

fn push(value: &str, capacity: u64) -> Command {
    Command::Push { value: json!(value), capacity }
}

#[test]
fn a_segment_is_fifo_and_seals_at_capacity() {
    let mut s = Harness::<Queue>::new("q#0");
    assert_eq!(s.send(Command::Pop).unwrap(), json!("empty"));
    for v in ["a", "b", "c"] {
        assert_eq!(s.send(push(v, 3)).unwrap(), json!("pushed"));
    }
    assert_eq!(s.send(push("d", 3)).unwrap(), json!("full"));
    assert_eq!(s.send(Command::Peek).unwrap(), json!({"item": "a"}));
    assert_eq!(s.send(Command::Count).unwrap(), json!(3), "peek does not remove");
    for v in ["a", "b", "c"] {
        assert_eq!(s.send(Command::Pop).unwrap(), json!({"item": v}));
    }
    assert_eq!(s.send(Command::Pop).unwrap(), json!("sealed"), "drained for good");
    s.assert_replay_answers(|| Command::Cursor);
}

#[test]
fn the_cursor_moves_only_from_where_it_is() {
    let mut c = Harness::<Queue>::new("q");
    assert_eq!(c.send(Command::Cursor).unwrap(), json!({"head": 0, "tail": 0}));
    assert_eq!(
        c.send(Command::AdvanceHead { from: 0 }).unwrap(),
        json!({"head": 0, "tail": 0}),
        "head stays behind tail"
    );
    assert_eq!(c.send(Command::AdvanceTail { from: 0 }).unwrap(), json!({"head": 0, "tail": 1}));
    assert_eq!(
        c.send(Command::AdvanceTail { from: 0 }).unwrap(),
        json!({"head": 0, "tail": 1}),
        "a racing advance is a no-op"
    );
    assert_eq!(c.send(Command::AdvanceHead { from: 0 }).unwrap(), json!({"head": 1, "tail": 1}));
    c.assert_replay_matches();
}

#[test]
fn waiting_pops_get_pushes_in_order_and_move_on_when_the_segment_seals() {
    let mut s = Harness::<Queue>::new("q#0");
    assert_eq!(s.send(Command::PopWait), Err(Outcome::Parked));
    let gone = s.last_request_id();
    assert_eq!(s.send(Command::PopWait), Err(Outcome::Parked));
    let first = s.last_request_id();
    assert_eq!(s.send(Command::PopWait), Err(Outcome::Parked));
    let second = s.last_request_id();
    s.withdraw(&gone);
    s.send(push("x", 2)).unwrap();
    assert_eq!(s.answers, vec![(first, Ok(json!({"item": "x"})))]);
    s.send(push("y", 2)).unwrap();
    assert_eq!(s.answers[1], (second, Ok(json!({"item": "y"}))));
    assert_eq!(s.send(Command::PopWait).unwrap(), json!("sealed"));

    let mut s = Harness::<Queue>::new("q#1");
    assert_eq!(s.send(Command::PopWait), Err(Outcome::Parked));
    let a = s.last_request_id();
    assert_eq!(s.send(Command::PopWait), Err(Outcome::Parked));
    let b = s.last_request_id();
    s.send(push("only", 1)).unwrap();
    assert_eq!(s.answers, vec![(a, Ok(json!({"item": "only"}))), (b, Ok(json!("sealed")))]);
    s.assert_replay_matches();
}

#[test]
fn drain_takes_the_oldest_and_says_when_the_segment_is_done() {
    let mut s = Harness::<Queue>::new("q#0");
    for v in ["a", "b", "c"] {
        s.send(push(v, 3)).unwrap();
    }
    assert_eq!(s.send(Command::Drain { max: 2 }).unwrap(), json!({"items": ["a", "b"], "sealed": false}));
    assert_eq!(s.send(Command::Drain { max: 5 }).unwrap(), json!({"items": ["c"], "sealed": true}));
    s.assert_replay_matches();
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u8>().prop_map(|v| Command::Push { value: json!(v), capacity: 1000 }),
        Just(Command::Peek),
        Just(Command::Pop),
        Just(Command::Count),
        (0u32..4).prop_map(|max| Command::Drain { max }),
    ]
}

proptest! {
    #[test]
    fn a_segment_behaves_like_a_vecdeque(commands in proptest::collection::vec(command(), 0..64)) {
        let mut s = Harness::<Queue>::new("q#0");
        let mut model: VecDeque<Value> = VecDeque::new();
        for command in commands {
            let expected = match &command {
                Command::Push { value, .. } => { model.push_back(value.clone()); json!("pushed") }
                Command::Peek => model.front().map_or(json!("empty"), |v| json!({"item": v})),
                Command::Pop => model.pop_front().map_or(json!("empty"), |v| json!({"item": v})),
                Command::Count => json!(model.len()),
                Command::Drain { max } => {
                    let n = (*max as usize).min(model.len());
                    json!({"items": model.drain(..n).collect::<Vec<_>>(), "sealed": false})
                }
                _ => unreachable!("not generated"),
            };
            prop_assert_eq!(s.send(command).unwrap(), expected);
        }
        s.assert_replay_matches();
    }
}
