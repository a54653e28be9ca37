//! Version 2 of the `bank-account` example, for the upgrade tests: every command of
//! version 1, and `Close`, which pays out the balance and refuses any later command. It
//! reuses version 1's types, so it restores version 1's snapshots and applies its events.

use bank_account::Account;
use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccountV2 {
    #[serde(flatten)]
    account: Account,
    /// New in version 2; absent from version 1's snapshots.
    #[serde(default)]
    closed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    V1(bank_account::Command),
    New(NewCommand),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NewCommand {
    /// Pays out the balance (the reply) and closes the account.
    Close,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    V1(bank_account::Event),
    New(NewEvent),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NewEvent {
    Closed,
}

impl Entity for AccountV2 {
    type Command = Command;
    type Event = Event;
    type Reply = u64;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, u64>, Rejection> {
        if self.closed {
            return Err(Rejection::new("closed", format!("account {} is closed", ctx.entity_id)));
        }
        match command {
            Command::V1(command) => {
                let decided = self.account.handle(ctx, command)?;
                Ok(Decision {
                    events: decided.events.into_iter().map(Event::V1).collect(),
                    reply: decided.reply,
                    answers: decided.answers,
                    wake: decided.wake,
                })
            }
            Command::New(NewCommand::Close) => {
                Ok(Decision::reply(self.account.balance).persist(Event::New(NewEvent::Closed)))
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::V1(event) => self.account.apply(event),
            Event::New(NewEvent::Closed) => {
                self.account.balance = 0;
                self.closed = true;
            }
        }
    }
}

casty_guest_sdk::export_entity!(AccountV2);
