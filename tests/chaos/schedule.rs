//! Seeded fault schedules: which fault, on which node, when and for how long. A run
//! prints its seed; `CASTY_CHAOS_SEED` replays that schedule and `CASTY_CHAOS_SECONDS`
//! lengthens it.

use std::time::Duration;

/// How long a scenario injects faults unless `CASTY_CHAOS_SECONDS` says otherwise.
const SECONDS_DEFAULT: u64 = 30;

/// A small, seeded generator (SplitMix64): the same seed gives the same schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }

    /// A generator of its own for one client, so clients do not share a sequence.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// What a scenario runs with: its seed, its length and how many nodes it starts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub seed: u64,
    pub seconds: u64,
    pub nodes: usize,
}

impl Plan {
    /// The plan of scenario `name`: a fixed seed of its own (so CI runs the same schedule
    /// every time) unless `CASTY_CHAOS_SEED` names one, `nodes` nodes unless
    /// `CASTY_CHAOS_NODES` says more. Prints how to replay it.
    pub fn of(name: &str, nodes: usize) -> Plan {
        let seed = env_number("CASTY_CHAOS_SEED").unwrap_or_else(|| {
            name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        });
        let seconds = env_number("CASTY_CHAOS_SECONDS").unwrap_or(SECONDS_DEFAULT);
        let nodes = env_number("CASTY_CHAOS_NODES").map_or(nodes, |n| (n as usize).max(3));
        eprintln!(
            "scenario {name}: seed {seed}, {seconds} s of faults, {nodes} nodes \
             (replay with CASTY_CHAOS_SEED={seed} CASTY_CHAOS_SECONDS={seconds} CASTY_CHAOS_NODES={nodes})"
        );
        Plan { seed, seconds, nodes }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|e| panic!("{name}={value:?} is not a whole number: {e}")))
}
