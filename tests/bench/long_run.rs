//! `cargo bench --bench long_run`: a map, a set and a queue of 1,000,000 entries on one
//! durable `casty-host`: write them with 64 callers, count them, read them all back
//! (scans; the queue drained in order), clear them. Prints how long each step took;
//! checks every count and every entry.
//!
//! Options (environment): CASTY_LONG_RUN_ENTRIES (default 1000000).

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use support::Host;

const CALLERS: u64 = 64;

fn step(label: &str, started: Instant) {
    println!("{label:<40} {:>8.1} s", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let entries: u64 =
        std::env::var("CASTY_LONG_RUN_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let host = Host::start(&[]).await;
    let client = Arc::new(host.client().await);
    println!("{entries} entries, {CALLERS} callers, one durable node");

    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let map = client.distributed().map::<u64, u64>("long-map");
            let set = client.distributed().set::<u64>("long-set");
            tokio::spawn(async move {
                for key in (caller..entries).step_by(CALLERS as usize) {
                    map.put(&key, &(key ^ 0x5555)).await.expect("put");
                    set.add(&key).await.expect("add");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    step("map put + set add, every entry", started);

    let d = client.distributed();
    let (map, set) = (d.map::<u64, u64>("long-map"), d.set::<u64>("long-set"));
    let started = Instant::now();
    assert_eq!(map.size().await.expect("size"), entries);
    assert_eq!(set.size().await.expect("size"), entries);
    step("map size + set size", started);

    let started = Instant::now();
    let mut seen = vec![false; entries as usize];
    let mut scan = map.scan();
    while let Some(page) = scan.next_page().await.expect("scan") {
        for (key, value) in page {
            assert_eq!(value, key ^ 0x5555);
            assert!(!std::mem::replace(&mut seen[key as usize], true), "key {key} scanned twice");
        }
    }
    assert!(seen.iter().all(|s| *s), "every key scanned");
    step("map full scan", started);

    let started = Instant::now();
    assert_eq!(set.scan().collect().await.expect("scan").len() as u64, entries);
    step("set full scan", started);

    let started = Instant::now();
    assert_eq!(map.clear().await.expect("clear"), entries);
    assert_eq!(set.clear().await.expect("clear"), entries);
    assert_eq!(map.size().await.expect("size"), 0);
    step("map clear + set clear", started);

    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let queue = client.distributed().queue::<(u64, u64)>("long-queue");
            tokio::spawn(async move {
                for (seq, _) in (caller..entries).step_by(CALLERS as usize).enumerate() {
                    queue.enqueue(&(caller, seq as u64)).await.expect("enqueue");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    step("queue enqueue, every item", started);

    let queue = d.queue::<(u64, u64)>("long-queue");
    let started = Instant::now();
    assert_eq!(queue.size().await.expect("size"), entries);
    step("queue size", started);

    let started = Instant::now();
    let mut next = vec![0u64; CALLERS as usize];
    let mut drained = 0;
    loop {
        let batch = queue.drain(1000).await.expect("drain");
        if batch.is_empty() {
            break;
        }
        for (caller, seq) in batch {
            assert_eq!(seq, next[caller as usize], "caller {caller}'s items come out in order");
            next[caller as usize] += 1;
            drained += 1;
        }
    }
    assert_eq!(drained, entries);
    step("queue drained in order", started);
}
