//! A broken version 2 of the `bank-account` example, for the upgrade tests: its state
//! has a new field without a default, so it cannot restore version 1's snapshots, and
//! deploying it over version 1 must be refused.

use bank_account::{Account, Command, Event};
use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BrokenAccount {
    #[serde(flatten)]
    account: Account,
    /// Required, so a version 1 snapshot (which lacks it) does not decode.
    branch: String,
}

impl Entity for BrokenAccount {
    type Command = Command;
    type Event = Event;
    type Reply = u64;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, u64>, Rejection> {
        self.account.handle(ctx, command)
    }

    fn apply(&mut self, event: Event) {
        self.account.apply(event);
    }
}

casty_guest_sdk::export_entity!(BrokenAccount);
