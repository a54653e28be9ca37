//! A test entity that misbehaves on request: it traps, loops forever or allocates without
//! bound, so tests can show that the host fails only that command and keeps the entity's
//! state. Otherwise it is a plain tally. Not shipped in `casty-host`.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Faulty {
    total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Add {
        n: u64,
    },
    Get,
    /// Panics, which traps the component.
    Trap,
    /// Never returns.
    Spin,
    /// Allocates until the memory limit stops it.
    Allocate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Added { n: u64 },
}

impl Entity for Faulty {
    type Command = Command;
    type Event = Event;
    type Reply = u64;

    fn handle(&self, _ctx: &Context, command: Command) -> Result<Decision<Event, u64>, Rejection> {
        match command {
            Command::Add { n } => Ok(Decision::reply(self.total + n).persist(Event::Added { n })),
            Command::Get => Ok(Decision::reply(self.total)),
            Command::Trap => panic!("the faulty entity was asked to trap"),
            Command::Spin => loop {
                std::hint::black_box(self.total);
            },
            Command::Allocate => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Added { n } => self.total += n,
        }
    }
}

casty_guest_sdk::export_entity!(Faulty);
