//! A user session as a Casty entity: it ends by itself once nobody touched it for its
//! time to live, by asking the host for a wake-up at its expiry time.
//!
//! Commands are JSON: `{"Start":{"user":"ada","ttl_ms":60000}}`, `"Touch"`, `"Get"`,
//! `"End"`. `Start` and `Touch` reply with the new expiry time; `Get` and `End` with the
//! session's status: `{"Live":{...}}`, `"Expired"`, `"Ended"` or `"NeverStarted"`.

use casty_guest_sdk::{Context, Decision, Entity, Rejection};
use serde::{Deserialize, Serialize};

/// The session's state, which is also its snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    NeverStarted,
    Live(Live),
    /// Nobody touched it for its time to live.
    Expired,
    /// Its user ended it.
    Ended,
}

/// A session that has not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub user: String,
    pub ttl_ms: u64,
    /// Milliseconds since the Unix epoch, by the host's clock.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Start { user: String, ttl_ms: u64 },
    Touch,
    Get,
    End,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Started { user: String, ttl_ms: u64, expires_at_ms: u64 },
    Touched { expires_at_ms: u64 },
    Expired,
    Ended,
}

/// `Start` and `Touch`: the new expiry time. `Get` and `End`: the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    ExpiresAt(u64),
    Status(Status),
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub status: Status,
}

impl Session {
    /// The live session, unless its expiry time has passed (the wake-up that ends it may
    /// not have run yet).
    fn live(&self, now_ms: u64) -> Option<&Live> {
        match &self.status {
            Status::Live(live) if now_ms < live.expires_at_ms => Some(live),
            _ => None,
        }
    }
}

impl Entity for Session {
    type Command = Command;
    type Event = Event;
    type Reply = Reply;

    fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, Reply>, Rejection> {
        match command {
            Command::Start { user, ttl_ms } => {
                if ttl_ms == 0 {
                    return Err(Rejection::new("invalid-ttl", "the time to live must be greater than zero"));
                }
                let expires_at_ms = ctx.now_ms.saturating_add(ttl_ms);
                Ok(Decision::reply(Reply::ExpiresAt(expires_at_ms))
                    .persist(Event::Started { user, ttl_ms, expires_at_ms })
                    .wake_at(expires_at_ms))
            }
            Command::Touch => {
                let live = self.live(ctx.now_ms).ok_or_else(|| {
                    Rejection::new("no-session", format!("session {} is not live", ctx.entity_id))
                })?;
                let expires_at_ms = ctx.now_ms.saturating_add(live.ttl_ms);
                Ok(Decision::reply(Reply::ExpiresAt(expires_at_ms))
                    .persist(Event::Touched { expires_at_ms })
                    .wake_at(expires_at_ms))
            }
            Command::Get => Ok(Decision::reply(Reply::Status(self.status.clone()))),
            Command::End => Ok(Decision::reply(Reply::Status(Status::Ended)).persist(Event::Ended)),
        }
    }

    fn apply(&mut self, event: Event) {
        self.status = match (event, std::mem::take(&mut self.status)) {
            (Event::Started { user, ttl_ms, expires_at_ms }, _) => {
                Status::Live(Live { user, ttl_ms, expires_at_ms })
            }
            (Event::Touched { expires_at_ms }, Status::Live(live)) => {
                Status::Live(Live { expires_at_ms, ..live })
            }
            (Event::Touched { .. }, status) => status,
            (Event::Expired, _) => Status::Expired,
            (Event::Ended, _) => Status::Ended,
        };
    }

    /// The host calls this at the time asked for; a session touched since then asks
    /// again for its new expiry time.
    fn wake(&self, ctx: &Context) -> Decision<Event, Reply> {
        match &self.status {
            Status::Live(live) if ctx.now_ms >= live.expires_at_ms => {
                Decision::none().persist(Event::Expired)
            }
            Status::Live(live) => Decision::none().wake_at(live.expires_at_ms),
            _ => Decision::none(),
        }
    }
}

casty_guest_sdk::export_entity!(Session);

#[cfg(test)]
mod tests {
    use super::*;
    use casty_guest_sdk::testing::{Harness, serde_json};

    #[test]
    fn a_session_expires_after_its_time_to_live_unless_touched() {
        let mut session = Harness::<Session>::new("s-1");
        session.set_now_ms(1_000);
        session.send(Command::Start { user: "ada".into(), ttl_ms: 500 }).unwrap();
        assert_eq!(session.wake_at_ms, Some(1_500));

        session.set_now_ms(1_400);
        session.send(Command::Touch).unwrap();
        assert_eq!(session.wake_at_ms, Some(1_900));
        // The wake-up asked for first finds the session touched, and waits again.
        session.set_now_ms(1_500);
        session.wake();
        assert_eq!(session.wake_at_ms, Some(1_900));
        assert!(matches!(session.state().status, Status::Live(_)));

        session.set_now_ms(1_900);
        assert!(session.send(Command::Touch).is_err(), "too late to touch it");
        session.wake();
        assert_eq!(session.send(Command::Get).unwrap(), serde_json::json!("Expired"));
        session.assert_replay_matches();
    }
}
