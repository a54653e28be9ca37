use super::*;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn append(partition: u32, from: u64, to: u64) -> PartitionWrite {
    PartitionWrite {
        appends: (from..=to).map(|i| (i, format!("entry {i}").into_bytes())).collect(),
        ..PartitionWrite::new(partition)
    }
}

#[test]
fn appends_survive_reopen_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    {
        let journal = Journal::open(&path).unwrap();
        block_on(async {
            journal.write(append(3, 1, 5)).await.unwrap();
            journal.write(append(4, 1, 2)).await.unwrap();
        });
        journal.put_meta("cluster", b"my-app").unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    let entries = journal.read_log(3, 2, 100).unwrap();
    assert_eq!(entries.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(entries[0].1, b"entry 3");
    assert_eq!(journal.last_index(3).unwrap(), 5);
    assert_eq!(journal.last_index(4).unwrap(), 2);
    assert_eq!(journal.last_index(9).unwrap(), 0);
    assert_eq!(journal.read_log(3, 0, 2).unwrap().len(), 2);
    assert_eq!(journal.meta("cluster").unwrap().as_deref(), Some(&b"my-app"[..]));
}

#[test]
fn checkpoints_store_snapshots_and_truncate_the_log() {
    let journal = Journal::in_memory().unwrap();
    let mut write = PartitionWrite::new(1);
    write.snapshots.push((b"entity-a".to_vec(), b"state".to_vec()));
    write.wakeups.push((b"entity-a".to_vec(), Some(77)));
    write.wakeups.push((b"entity-b".to_vec(), Some(78)));
    write.checkpoint = Some(Checkpoint { index: 8, state: b"partition state".to_vec() });
    block_on(async {
        journal.write(append(1, 1, 10)).await.unwrap();
        journal.write(write).await.unwrap();
    });
    assert_eq!(journal.checkpoint(1).unwrap(), Checkpoint { index: 8, state: b"partition state".to_vec() });
    assert_eq!(journal.checkpoint(2).unwrap(), Checkpoint::default());
    assert_eq!(journal.read_log(1, 0, 100).unwrap().iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![9, 10]);
    assert_eq!(journal.last_index(1).unwrap(), 10);
    assert_eq!(journal.snapshot(1, b"entity-a").unwrap().as_deref(), Some(&b"state"[..]));
    assert_eq!(journal.snapshot(2, b"entity-a").unwrap(), None);
    assert_eq!(journal.wakeups(1).unwrap(), vec![(b"entity-a".to_vec(), 77), (b"entity-b".to_vec(), 78)]);
    assert!(journal.wakeups(0).unwrap().is_empty() && journal.wakeups(2).unwrap().is_empty());
    let mut clear = PartitionWrite::new(1);
    clear.wakeups.push((b"entity-a".to_vec(), None));
    block_on(journal.write(clear)).unwrap();
    assert_eq!(journal.wakeups(1).unwrap(), vec![(b"entity-b".to_vec(), 78)]);
}

#[test]
fn concurrent_writers_share_commits() {
    let journal = Journal::in_memory().unwrap();
    block_on(async {
        let tasks: Vec<_> = (0..64u32)
            .map(|p| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    for i in 1..=20 {
                        journal.write(append(p, i, i)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    for p in 0..64 {
        assert_eq!(journal.last_index(p).unwrap(), 20);
    }
}

#[test]
fn damaged_records_are_reported() {
    assert_eq!(unseal(&seal(b"abc")), Some(&b"abc"[..]));
    let mut damaged = seal(b"abc");
    damaged[5] ^= 1;
    assert_eq!(unseal(&damaged), None);
    assert_eq!(unseal(&[1, 2]), None);
}
