use super::*;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Snapshots of entities `from..=to` of `partition`, keyed `entity {i}`.
pub(crate) fn snapshots(partition: u32, from: u64, to: u64) -> PartitionWrite {
    PartitionWrite {
        snapshots: (from..=to)
            .map(|i| (format!("entity {i}").into_bytes(), format!("state {i}").into_bytes()))
            .collect(),
        ..PartitionWrite::new(partition)
    }
}

#[test]
fn writes_survive_reopen_and_read_back_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    {
        let journal = Journal::open(&path).unwrap();
        block_on(async {
            journal.write(snapshots(3, 1, 5)).await.unwrap();
            journal.write(snapshots(4, 1, 2)).await.unwrap();
            let types = vec![("b".into(), 1, b"b1".to_vec()), ("a".into(), 2, b"a2".to_vec())];
            journal.write(PartitionWrite { types, ..PartitionWrite::new(64) }).await.unwrap();
        });
        journal.put_meta("cluster", b"my-app").unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    let stored = journal.snapshots(3).unwrap();
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[0], (b"entity 1".to_vec(), b"state 1".to_vec()));
    assert_eq!(journal.snapshot(4, b"entity 2").unwrap().as_deref(), Some(&b"state 2"[..]));
    assert_eq!(journal.snapshot(4, b"entity 3").unwrap(), None);
    assert_eq!(journal.meta("cluster").unwrap().as_deref(), Some(&b"my-app"[..]));
    assert_eq!(journal.types().unwrap(), vec![b"a2".to_vec(), b"b1".to_vec()]);
}

#[test]
fn checkpoints_store_snapshots_and_replacing_clears_the_partition() {
    let journal = Journal::in_memory().unwrap();
    let mut write = PartitionWrite::new(1);
    write.snapshots.push((b"entity-a".to_vec(), b"state".to_vec()));
    write.wakeups.push((b"entity-a".to_vec(), Some(77)));
    write.wakeups.push((b"entity-b".to_vec(), Some(78)));
    write.checkpoint = Some(Checkpoint { index: 8, state: b"partition state".to_vec() });
    let mut other = PartitionWrite::new(2);
    other.snapshots.push((b"entity-z".to_vec(), b"other".to_vec()));
    block_on(async {
        journal.write(write).await.unwrap();
        journal.write(other).await.unwrap();
    });
    assert_eq!(journal.checkpoint(1).unwrap(), Checkpoint { index: 8, state: b"partition state".to_vec() });
    assert_eq!(journal.checkpoint(3).unwrap(), Checkpoint::default());
    assert_eq!(journal.snapshot(1, b"entity-a").unwrap().as_deref(), Some(&b"state"[..]));
    assert_eq!(journal.snapshot(2, b"entity-a").unwrap(), None);
    assert_eq!(journal.snapshots(1).unwrap(), vec![(b"entity-a".to_vec(), b"state".to_vec())]);
    assert_eq!(journal.wakeups(1).unwrap(), vec![(b"entity-a".to_vec(), 77), (b"entity-b".to_vec(), 78)]);
    assert!(journal.wakeups(0).unwrap().is_empty() && journal.wakeups(2).unwrap().is_empty());
    let mut clear = PartitionWrite::new(1);
    clear.wakeups.push((b"entity-a".to_vec(), None));
    block_on(journal.write(clear)).unwrap();
    assert_eq!(journal.wakeups(1).unwrap(), vec![(b"entity-b".to_vec(), 78)]);
    let mut replace = PartitionWrite::new(1);
    replace.replace_entities = true;
    replace.snapshots.push((b"entity-c".to_vec(), b"new".to_vec()));
    block_on(journal.write(replace)).unwrap();
    assert_eq!(journal.snapshots(1).unwrap(), vec![(b"entity-c".to_vec(), b"new".to_vec())]);
    assert!(journal.wakeups(1).unwrap().is_empty());
    assert_eq!(journal.snapshots(2).unwrap().len(), 1, "other partitions are untouched");
}

/// Memory whose fsync waits while the gate is shut, so writes can be made to queue up
/// behind a commit in progress.
#[derive(Debug, Clone)]
struct Gated {
    memory: Arc<redb::backends::InMemoryBackend>,
    shut: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Gated {
    fn set(&self, shut: bool) {
        *self.shut.0.lock().unwrap() = shut;
        self.shut.1.notify_all();
    }
}

impl redb::StorageBackend for Gated {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.memory.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.memory.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.memory.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let (shut, open) = &*self.shut;
        drop(open.wait_while(shut.lock().unwrap(), |shut| *shut).unwrap());
        self.memory.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.memory.write(offset, data)
    }
}

#[test]
fn concurrent_writers_share_commits() {
    const WRITERS: u32 = 64;
    let gated = Gated { memory: Arc::new(redb::backends::InMemoryBackend::new()), shut: Arc::default() };
    let journal = Journal::with_backend(gated.clone(), "(gated memory)").unwrap();
    let before = journal.commits();
    gated.set(true);
    block_on(async {
        // The first write's commit waits at its fsync; the others queue behind it.
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        for p in 0..WRITERS {
            let done = done.clone();
            journal.submit(snapshots(p, 1, 20), move |result| done.send(result).unwrap()).await.unwrap();
        }
        gated.set(false);
        for _ in 0..WRITERS {
            finished.recv().await.unwrap().unwrap();
        }
    });
    // The writer took the first write (or a few, if it woke late) into a commit, then
    // every write queued behind it into one more.
    let commits = journal.commits() - before;
    assert!((1..=2).contains(&commits), "{WRITERS} writes took {commits} commits");
    for p in 0..WRITERS {
        assert_eq!(journal.snapshots(p).unwrap().len(), 20);
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

proptest::proptest! {
    /// Arbitrary stored bytes unseal to a payload or to `None`, never a panic; a sealed
    /// value with one byte changed never unseals (CRC-32 catches every burst of up to 32
    /// bits).
    #[test]
    fn unsealing_never_panics_and_catches_one_damaged_byte(
        stored in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        at in proptest::num::usize::ANY,
        flip in 1u8..=255,
    ) {
        let _ = unseal(&stored);
        let mut sealed = seal(&stored);
        proptest::prop_assert_eq!(unseal(&sealed), Some(&stored[..]));
        let len = sealed.len();
        sealed[at % len] ^= flip;
        proptest::prop_assert_eq!(unseal(&sealed), None);
    }
}

#[test]
fn component_parts_are_stored_by_version_and_cleared_together() {
    let journal = Journal::in_memory().unwrap();
    let part = |name: &str, version, offset: u64| {
        (name.to_owned(), version, offset, format!("{name}{version}@{offset}").into_bytes())
    };
    let write = PartitionWrite {
        parts: vec![part("a", 1, 2048), part("a", 1, 0), part("a", 2, 0), part("b", 1, 0)],
        ..PartitionWrite::new(64)
    };
    block_on(journal.write(write)).unwrap();
    assert_eq!(
        journal.parts(Some(("a", 1))).unwrap(),
        [b"a1@0".to_vec(), b"a1@2048".to_vec()],
        "in offset order"
    );
    assert_eq!(journal.parts(None).unwrap().len(), 4);
    let clear = PartitionWrite {
        parts_cleared: vec![("a".into(), 1)],
        parts: vec![part("a", 1, 0)],
        ..PartitionWrite::new(64)
    };
    block_on(journal.write(clear)).unwrap();
    assert_eq!(journal.parts(Some(("a", 1))).unwrap(), [b"a1@0".to_vec()], "cleared, then stored afresh");
    assert_eq!(journal.parts(Some(("a", 2))).unwrap(), [b"a2@0".to_vec()], "other versions stay");
}
