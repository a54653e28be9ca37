//! The guest SDK: write a Casty entity as plain Rust and export it as a WebAssembly
//! component with one macro.
//!
//! An entity is a state type that implements [`Entity`]: it names its command, event and
//! reply types (all serde), decides in [`Entity::handle`] and evolves in
//! [`Entity::apply`]. [`export_entity!`] turns it into a component implementing the
//! `casty:entity` world; [`testing::Harness`] runs the same logic natively in unit tests.
//!
//! Commands, events, replies and snapshots are encoded as JSON, so the `casty` CLI can
//! send commands and print replies without knowing the type.
//!
//! ```
//! use casty_guest_sdk::{Context, Decision, Entity, Rejection};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Tally { total: u64 }
//!
//! #[derive(Deserialize)]
//! enum Command { Add(u64), Total }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Event { Added(u64) }
//!
//! impl Entity for Tally {
//!     type Command = Command;
//!     type Event = Event;
//!     type Reply = u64;
//!
//!     fn handle(&self, _ctx: &Context, command: Command) -> Result<Decision<Event, u64>, Rejection> {
//!         Ok(match command {
//!             Command::Add(n) => {
//!                 let total = self.total.checked_add(n)
//!                     .ok_or_else(|| Rejection::new("overflow", "the total would overflow"))?;
//!                 Decision::reply(total).persist(Event::Added(n))
//!             }
//!             Command::Total => Decision::reply(self.total),
//!         })
//!     }
//!
//!     fn apply(&mut self, event: Event) {
//!         match event { Event::Added(n) => self.total += n }
//!     }
//! }
//!
//! // In the entity's crate: casty_guest_sdk::export_entity!(Tally);
//! let mut tally = casty_guest_sdk::testing::Harness::<Tally>::new("t");
//! assert_eq!(tally.send(Command::Add(2)).unwrap(), 2);
//! assert_eq!(tally.send(Command::Total).unwrap(), 2);
//! ```

extern crate self as casty_guest_sdk;

mod adapter;
mod decision;
pub mod testing;

pub use adapter::Adapter;
pub use decision::{Context, Decision, Rejection, Reply, Wake};

use serde::{Serialize, de::DeserializeOwned};

/// An entity: its state, and the logic that decides commands and applies events.
///
/// The state is serialized (JSON) as the entity's snapshot, so it must round-trip
/// through serde. `handle` may not change state; only `apply` does, and `apply` must be
/// deterministic: the host replays events through it after a restart.
pub trait Entity: Default + Serialize + DeserializeOwned + 'static {
    type Command: DeserializeOwned;
    type Event: Serialize + DeserializeOwned;
    type Reply: Serialize;

    /// Decides a command: the events to persist and the reply, or a domain error
    /// ([`Rejection`]) that persists nothing.
    fn handle(
        &self,
        ctx: &Context,
        command: Self::Command,
    ) -> Result<Decision<Self::Event, Self::Reply>, Rejection>;

    /// Evolves the state by one event that `handle` produced earlier.
    fn apply(&mut self, event: Self::Event);

    /// Called when a wake-up time asked for with [`Decision::wake_at`] has come. No caller
    /// waits on it, so its reply is ignored. The default does nothing.
    fn wake(&self, ctx: &Context) -> Decision<Self::Event, Self::Reply> {
        let _ = ctx;
        Decision::none()
    }

    /// Called when the caller of a request this entity parked stopped waiting: forget the
    /// request (persist whatever removes it), so it is never answered later. The default
    /// does nothing, which suits entities that never park.
    fn withdraw(&self, ctx: &Context, request_id: &str) -> Decision<Self::Event, Self::Reply> {
        let _ = (ctx, request_id);
        Decision::none()
    }
}

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "entity",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_entity_world",
        default_bindings_module: "::casty_guest_sdk::bindings",
        runtime_path: "::casty_guest_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// Exports an [`Entity`] type as the component's `casty:entity` implementation. Use it
/// once, in the crate that is built to `wasm32-wasip2`.
#[macro_export]
macro_rules! export_entity {
    ($entity:ty) => {
        #[doc(hidden)]
        struct __CastyEntityExport;

        impl $crate::bindings::exports::casty::entity::entity_handler::Guest for __CastyEntityExport {
            type Entity = $crate::Adapter<$entity>;
        }

        // Only a WebAssembly build exports the world; a native build (unit tests) type-checks
        // the same code but exports nothing, since native linkers reject WIT export names.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_entity_world!(__CastyEntityExport);
    };
}
