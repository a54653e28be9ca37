//! How long the current call into an entity has run, for its deadline and for the
//! failure budget. Time is counted at the epoch ticks the guest sees, at most one tick's
//! worth per tick: a call that waited for the executor after yielding, or ran in a process
//! that was paused (SIGSTOP, a stalled virtual machine), is charged for running, not for
//! waiting. Counting wall time instead made a well-behaved entity "miss" its deadline on a
//! busy or paused node, and the failure budget then refused its whole type for minutes.

use std::time::{Duration, Instant};

use casty_core::limits::EPOCH_TICK_MS;

const TICK: Duration = Duration::from_millis(EPOCH_TICK_MS);

#[derive(Debug)]
pub(crate) struct CallClock {
    pub(crate) deadline: Duration,
    /// Running time counted up to `last`.
    ran: Duration,
    /// When the call started or last saw a tick.
    last: Instant,
    pub(crate) deadline_hit: bool,
}

impl CallClock {
    pub(crate) fn new(deadline: Duration, now: Instant) -> Self {
        Self { deadline, ran: Duration::ZERO, last: now, deadline_hit: false }
    }

    /// A call begins.
    pub(crate) fn start(&mut self, now: Instant) {
        *self = Self::new(self.deadline, now);
    }

    /// The guest saw an epoch tick; whether its deadline has passed (it is then stopped).
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        self.ran = self.ran_at(now);
        self.last = now;
        self.deadline_hit = self.ran >= self.deadline;
        self.deadline_hit
    }

    /// The running time of the call so far.
    pub(crate) fn ran_at(&self, now: Instant) -> Duration {
        self.ran + now.saturating_duration_since(self.last).min(TICK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_running_without_pause_is_stopped_at_its_deadline() {
        let start = Instant::now();
        let mut clock = CallClock::new(Duration::from_millis(50), start);
        for tick in 1..5 {
            assert!(!clock.tick(start + TICK * tick), "tick {tick} is before the deadline");
        }
        assert!(clock.tick(start + TICK * 5));
        assert!(clock.deadline_hit);
        assert_eq!(clock.ran_at(start + TICK * 5), Duration::from_millis(50));
    }

    #[test]
    fn waiting_or_a_paused_process_costs_at_most_one_tick() {
        let start = Instant::now();
        let mut clock = CallClock::new(Duration::from_millis(50), start);
        // Half a tick of work, then a ten-second pause before the next tick is seen.
        assert!(!clock.tick(start + TICK / 2));
        let resumed = start + TICK / 2 + Duration::from_secs(10);
        assert!(!clock.tick(resumed));
        assert_eq!(clock.ran_at(resumed), TICK / 2 + TICK);
        // The final stretch, however long it waited, also counts at most one tick.
        assert_eq!(clock.ran_at(resumed + Duration::from_secs(3)), TICK / 2 + TICK * 2);
    }

    #[test]
    fn starting_again_forgets_the_previous_call() {
        let start = Instant::now();
        let mut clock = CallClock::new(Duration::from_millis(20), start);
        clock.tick(start + TICK);
        assert!(clock.tick(start + TICK * 2));
        let next = start + TICK * 3;
        clock.start(next);
        assert!(!clock.deadline_hit);
        assert_eq!(clock.ran_at(next), Duration::ZERO);
        assert_eq!(clock.deadline, Duration::from_millis(20));
    }
}
