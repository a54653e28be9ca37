//! The time an entity type's failing calls may take on a node. A call that traps or hits
//! a limit spends the time it ran from its type's budget, which refills at a fixed rate;
//! while the budget is overspent, the type's commands are refused at once. So an entity
//! that loops or allocates until stopped, called again and again, takes a bounded share
//! of the node's CPU, and everyone else keeps their latency. Calls that succeed cost
//! nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use casty_core::limits::FAILING_CALLS_MS_PER_S;

#[derive(Debug)]
pub(crate) struct FailureBudget {
    capacity_ms: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    balance_ms: f64,
    updated: Instant,
    /// What the last failing call hit, for the refusal's message.
    last_failure: String,
}

/// Why a call was refused: how long until the budget is back, and what overspent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overspent {
    pub(crate) retry_after_ms: u64,
    pub(crate) last_failure: String,
}

impl FailureBudget {
    /// A full budget of `capacity`: at least one call that runs to its deadline fits.
    pub(crate) fn new(capacity: Duration, now: Instant) -> Self {
        let capacity_ms = capacity.as_secs_f64() * 1000.0;
        Self {
            capacity_ms,
            state: Mutex::new(State { balance_ms: capacity_ms, updated: now, last_failure: String::new() }),
        }
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.balance_ms = (state.balance_ms + elapsed * FAILING_CALLS_MS_PER_S as f64).min(self.capacity_ms);
        state.updated = now;
        state
    }

    /// Whether a command may run now.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), Overspent> {
        let state = self.refilled(now);
        if state.balance_ms >= 0.0 {
            return Ok(());
        }
        let retry_after_ms = (-state.balance_ms * 1000.0 / FAILING_CALLS_MS_PER_S as f64).ceil() as u64;
        Err(Overspent { retry_after_ms, last_failure: state.last_failure.clone() })
    }

    /// Spends the time a failing call ran.
    pub(crate) fn charge(&self, ran: Duration, failure: String, now: Instant) {
        let mut state = self.refilled(now);
        state.balance_ms -= ran.as_secs_f64() * 1000.0;
        state.last_failure = failure;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overspending_refuses_until_the_budget_refills() {
        let start = Instant::now();
        let budget = FailureBudget::new(Duration::from_millis(1000), start);
        assert!(budget.admit(start).is_ok());
        budget.charge(Duration::from_millis(700), "deadline".into(), start);
        assert!(budget.admit(start).is_ok(), "still within the budget");
        budget.charge(Duration::from_millis(700), "deadline".into(), start);
        let refused = budget.admit(start).unwrap_err();
        assert_eq!(refused.last_failure, "deadline");
        let per_ms = FAILING_CALLS_MS_PER_S as f64 / 1000.0;
        assert_eq!(refused.retry_after_ms, (400.0 / per_ms).ceil() as u64);
        let later = start + Duration::from_millis(refused.retry_after_ms);
        assert!(budget.admit(later).is_ok(), "refilled");
        // It never refills beyond its capacity.
        let much_later = later + Duration::from_secs(3600);
        budget.charge(Duration::from_millis(1001), "trap".into(), much_later);
        assert!(budget.admit(much_later).is_err());
    }
}
