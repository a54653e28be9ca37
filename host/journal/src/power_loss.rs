//! Power loss, in process. `Disk` is a storage twin of a file that keeps what was synced
//! apart from what was only written: a simulated power cut keeps the synced image and
//! none, or a seeded random part, of the writes since the last sync (a disk's write
//! cache may persist any of them, in any order). Every write the journal acknowledged
//! must survive every such cut; a commit that skipped its fsync would lose them.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::*;
use crate::tests::snapshots;

/// One change to the file since its last sync.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl Change {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => {
                if image.len() < offset + data.len() {
                    image.resize(offset + data.len(), 0);
                }
                image[*offset..offset + data.len()].copy_from_slice(data);
            }
            Change::SetLen(len) => image.resize(*len, 0),
        }
    }
}

#[derive(Debug, Default)]
struct Platter {
    /// What reads see: every write, synced or not.
    current: Vec<u8>,
    /// The file as of its last sync: what survives a power cut for certain.
    synced: Vec<u8>,
    /// Changes since the last sync, in order.
    unsynced: Vec<Change>,
    /// After the cut nothing the old process does reaches the disk.
    cut: bool,
}

#[derive(Debug, Clone, Default)]
struct Disk(Arc<Mutex<Platter>>);

impl Disk {
    fn from_image(image: Vec<u8>) -> Disk {
        let platter = Platter { current: image.clone(), synced: image, ..Platter::default() };
        Disk(Arc::new(Mutex::new(platter)))
    }

    fn platter(&self) -> MutexGuard<'_, Platter> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power: returns what is on the disk afterwards. With a seed, each write
    /// since the last sync independently made it to the disk or did not.
    fn cut_power(&self, seed: Option<u64>) -> Vec<u8> {
        let mut platter = self.platter();
        platter.cut = true;
        let mut image = platter.synced.clone();
        let mut state = seed.unwrap_or(0);
        for change in &platter.unsynced {
            // SplitMix64: the seed decides which changes made it.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            if seed.is_some() && (z ^ (z >> 27)).is_multiple_of(2) {
                change.apply(&mut image);
            }
        }
        image
    }

    fn record(&self, change: Change) {
        let mut platter = self.platter();
        change.apply(&mut platter.current);
        if !platter.cut {
            platter.unsynced.push(change);
        }
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "read past the end of the twin disk")
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.platter().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let platter = self.platter();
        let offset = usize::try_from(offset).map_err(|_| out_of_range())?;
        let source = platter.current.get(offset..offset + out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.record(Change::SetLen(usize::try_from(len).map_err(|_| out_of_range())?));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut platter = self.platter();
        if !platter.cut {
            platter.synced = platter.current.clone();
            platter.unsynced.clear();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let offset = usize::try_from(offset).map_err(|_| out_of_range())?;
        self.record(Change::Write { offset, data: data.to_vec() });
        Ok(())
    }
}

/// Snapshots of entities `1..=acknowledged` in four partitions, each awaited (so
/// acknowledged), and then more that are still queued when the power is cut.
#[test]
fn acknowledged_writes_survive_a_power_cut() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let acknowledged = 40;
    for seed in [None, Some(1), Some(2), Some(3), Some(4), Some(5)] {
        let disk = Disk::default();
        let journal = Journal::with_backend(disk.clone(), "(twin)").unwrap();
        runtime.block_on(async {
            for index in 1..=acknowledged {
                journal.write(snapshots((index % 4) as u32, index, index)).await.unwrap();
            }
            for index in acknowledged + 1..=acknowledged + 20 {
                journal.submit(snapshots((index % 4) as u32, index, index), |_| {}).await.unwrap();
            }
        });
        let image = disk.cut_power(seed);
        drop(journal);

        let journal = Journal::with_backend(Disk::from_image(image), "(twin)")
            .unwrap_or_else(|e| panic!("the journal does not open after a power cut (seed {seed:?}): {e}"));
        for index in 1..=acknowledged {
            let partition = (index % 4) as u32;
            let found = journal.snapshot(partition, format!("entity {index}").as_bytes()).unwrap();
            assert_eq!(
                found,
                Some(format!("state {index}").into_bytes()),
                "acknowledged snapshot {index} of partition {partition} was lost in a power cut (seed {seed:?})"
            );
        }
    }
}
