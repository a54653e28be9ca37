//! A bank account as a Casty entity: open it, deposit, withdraw, read the balance.
//!
//! A withdrawal beyond the balance is refused with the code `insufficient-funds`, and a
//! refusal persists nothing. Build it with
//! `cargo build -p bank-account --target wasm32-wasip2 --release` and deploy
//! `target/wasm32-wasip2/release/bank_account.wasm` with
//! `casty deploy ... --type bank-account`. Commands are JSON:
//! `{"Open":{"owner":"ada"}}`, `{"Deposit":{"amount":100}}`, `{"Withdraw":{"amount":30}}`,
//! `"Balance"`; every reply is the balance after the command.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

/// The account's state, which is also its snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Who opened it; `None` until it is opened.
    pub owner: Option<String>,
    pub balance: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
    Balance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrew { amount: u64 },
}

/// The balance after the command.
pub type Reply = u64;

impl Account {
    fn require_open(&self, ctx: &Context) -> Result<(), Rejection> {
        match self.owner {
            Some(_) => Ok(()),
            None => Err(Rejection::new("not-open", format!("account {} has not been opened", ctx.entity_id))),
        }
    }
}

fn positive(amount: u64) -> Result<u64, Rejection> {
    match amount {
        0 => Err(Rejection::new("invalid-amount", "the amount must be greater than zero")),
        amount => Ok(amount),
    }
}

impl Entity for Account {
    type Command = Command;
    type Event = Event;
    type Reply = Reply;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, Reply>, Rejection> {
        match command {
            Command::Open { owner } => match &self.owner {
                Some(current) => Err(Rejection::new(
                    "already-open",
                    format!("account {} is already open, owned by {current}", ctx.entity_id),
                )),
                None => Ok(Decision::reply(self.balance).persist(Event::Opened { owner })),
            },
            Command::Deposit { amount } => {
                self.require_open(ctx)?;
                let balance = self
                    .balance
                    .checked_add(positive(amount)?)
                    .ok_or_else(|| Rejection::new("overflow", "the balance would overflow"))?;
                Ok(Decision::reply(balance).persist(Event::Deposited { amount }))
            }
            Command::Withdraw { amount } => {
                self.require_open(ctx)?;
                let balance = self.balance.checked_sub(positive(amount)?).ok_or_else(|| {
                    Rejection::new(
                        "insufficient-funds",
                        format!("cannot withdraw {amount}: the balance is {}", self.balance),
                    )
                })?;
                Ok(Decision::reply(balance).persist(Event::Withdrew { amount }))
            }
            Command::Balance => {
                self.require_open(ctx)?;
                Ok(Decision::reply(self.balance))
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Opened { owner } => self.owner = Some(owner),
            Event::Deposited { amount } => self.balance += amount,
            Event::Withdrew { amount } => self.balance -= amount,
        }
    }
}

#[cfg(feature = "export")]
casty_guest_sdk::export_entity!(Account);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, Outcome};

    #[test]
    fn deposits_and_withdrawals_move_the_balance() {
        let mut account = Harness::<Account>::new("acct-1");
        assert_eq!(account.send(Command::Open { owner: "ada".into() }).unwrap(), 0);
        assert_eq!(account.send(Command::Deposit { amount: 100 }).unwrap(), 100);
        assert_eq!(account.send(Command::Withdraw { amount: 30 }).unwrap(), 70);
        assert_eq!(account.send(Command::Balance).unwrap(), 70);
        account.assert_replay_answers(|| Command::Withdraw { amount: 50 });
    }

    #[test]
    fn refusals_name_their_reason_and_persist_nothing() {
        let mut account = Harness::<Account>::new("acct-1");
        let code = |outcome: Outcome| match outcome {
            Outcome::Rejected(r) => r.code,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert_eq!(code(account.send(Command::Deposit { amount: 5 }).unwrap_err()), "not-open");
        account.send(Command::Open { owner: "ada".into() }).unwrap();
        account.send(Command::Deposit { amount: 50 }).unwrap();
        let persisted = account.journal.len();
        assert_eq!(code(account.send(Command::Withdraw { amount: 51 }).unwrap_err()), "insufficient-funds");
        assert_eq!(code(account.send(Command::Deposit { amount: 0 }).unwrap_err()), "invalid-amount");
        assert_eq!(code(account.send(Command::Open { owner: "bob".into() }).unwrap_err()), "already-open");
        assert_eq!(account.journal.len(), persisted);
        assert_eq!(account.send(Command::Balance).unwrap(), 50);
    }
}
