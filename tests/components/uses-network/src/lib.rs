//! A test entity that opens a TCP connection, so its component imports `wasi:sockets`:
//! deploying it must be refused, since entities get no network.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Caller;

impl Entity for Caller {
    type Command = String;
    type Event = ();
    type Reply = bool;

    fn handle(&self, _ctx: &Context, address: String) -> Result<Decision<(), bool>, Rejection> {
        Ok(Decision::reply(std::net::TcpStream::connect(address).is_ok()))
    }

    fn apply(&mut self, _event: ()) {}
}

casty_guest_sdk::export_entity!(Caller);
