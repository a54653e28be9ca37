//! The values an entity's logic works with: what it is told, what it decides.

use serde::Serialize;

/// What the host tells the entity about the command it is deciding: which entity it is,
/// who is calling, the request's id and the time. An entity has no clock, randomness or
/// I/O of its own, so the same commands always rebuild the same state.
///
/// ```
/// use casty_guest_sdk::{Context, Decision, Entity, Rejection};
/// use casty_guest_sdk::testing::{Harness, serde_json::json};
/// use serde::{Deserialize, Serialize};
///
/// /// Remembers who last signed a guest book, and when.
/// #[derive(Default, Serialize, Deserialize)]
/// struct GuestBook { last: Option<(String, u64)> }
///
/// #[derive(Deserialize)]
/// enum Command { Sign }
///
/// #[derive(Serialize, Deserialize)]
/// enum Event { Signed { by: String, at_ms: u64 } }
///
/// impl Entity for GuestBook {
///     type Command = Command;
///     type Event = Event;
///     type Reply = String;
///
///     fn handle(&self, ctx: &Context, Command::Sign: Command) -> Result<Decision<Event, String>, Rejection> {
///         let receipt = format!("{} signed {} (request {})", ctx.caller, ctx.entity_id, ctx.request_id);
///         Ok(Decision::reply(receipt).persist(Event::Signed { by: ctx.caller.clone(), at_ms: ctx.now_ms }))
///     }
///
///     fn apply(&mut self, Event::Signed { by, at_ms }: Event) {
///         self.last = Some((by, at_ms));
///     }
/// }
///
/// let mut book = Harness::<GuestBook>::new("lobby");
/// book.set_now_ms(42);
/// assert_eq!(book.send_as("ada", Command::Sign).unwrap(), json!("ada signed lobby (request test-1)"));
/// assert_eq!(book.state().last, Some(("ada".to_owned(), 42)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The entity's id within its structure.
    pub entity_id: String,
    /// Who sent the command (a client id, or an owner id such as a lock handle's).
    pub caller: String,
    /// Unique per logical request; retries carry the same id. Parked requests are
    /// answered by it.
    pub request_id: String,
    /// The host's time, in milliseconds since the Unix epoch. Entities have no clock of
    /// their own, so replay is deterministic.
    pub now_ms: u64,
}

/// A domain error: a stable code to match on and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}

/// How the caller of a command is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<R> {
    /// Answer now.
    Now(R),
    /// Answer later, by request id, from a later decision's [`Decision::answer`].
    Park,
    /// No caller waits (the decision of a wake-up).
    None,
}

/// When the host calls [`crate::Entity::wake`] next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wake {
    /// Leave the wake-up asked for earlier (if any) as it is: what a decision says unless
    /// it names a time, so reads and refusals never disturb a timer.
    #[default]
    Keep,
    /// At this time, in milliseconds since the Unix epoch (replacing any earlier one).
    At(u64),
    /// Cancel any pending wake-up.
    Cancel,
}

/// What an entity decided about one command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Decision<E, R> {
    pub events: Vec<E>,
    pub reply: Reply<R>,
    /// Answers to parked requests: (request id, encoded reply or rejection).
    pub answers: Vec<(String, Result<Vec<u8>, Rejection>)>,
    /// When to call [`crate::Entity::wake`] next.
    pub wake: Wake,
}

impl<E, R> Decision<E, R> {
    /// Answer the caller now with `reply`.
    pub fn reply(reply: R) -> Self {
        Self::with_reply(Reply::Now(reply))
    }

    /// Park the caller: it waits (up to its timeout) until a later decision answers its
    /// request id with [`Decision::answer`] or [`Decision::refuse`]. Keep the request id
    /// ([`Context::request_id`]) in state with an event, so the answer survives a
    /// restart; a retry of a parked request arrives with the same id and keeps its place.
    ///
    /// ```
    /// use casty_guest_sdk::{Context, Decision, Entity, Rejection};
    /// use casty_guest_sdk::testing::{Harness, Outcome, serde_json::json};
    /// use serde::{Deserialize, Serialize};
    ///
    /// /// A mailbox: `Take` waits for a letter, `Post` hands one to the first who waits.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Mailbox { waiting: Vec<String> }
    ///
    /// #[derive(Deserialize)]
    /// enum Command { Take, Post(String) }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum Event { Waiting(String), Delivered }
    ///
    /// impl Entity for Mailbox {
    ///     type Command = Command;
    ///     type Event = Event;
    ///     type Reply = Option<String>;
    ///
    ///     fn handle(&self, ctx: &Context, command: Command) -> Result<Decision<Event, Self::Reply>, Rejection> {
    ///         Ok(match command {
    ///             Command::Take => Decision::park().persist(Event::Waiting(ctx.request_id.clone())),
    ///             Command::Post(letter) => match self.waiting.first() {
    ///                 Some(taker) => Decision::reply(None).persist(Event::Delivered).answer(taker.clone(), &letter),
    ///                 None => Decision::reply(Some(letter)), // nobody waits: handed back
    ///             },
    ///         })
    ///     }
    ///
    ///     fn apply(&mut self, event: Event) {
    ///         match event {
    ///             Event::Waiting(request_id) => self.waiting.push(request_id),
    ///             Event::Delivered => { self.waiting.remove(0); }
    ///         }
    ///     }
    /// }
    ///
    /// let mut mailbox = Harness::<Mailbox>::new("box-1");
    /// assert_eq!(mailbox.send(Command::Take), Err(Outcome::Parked));
    /// let taker = mailbox.last_request_id();
    /// assert_eq!(mailbox.send(Command::Post("hello".into())).unwrap(), json!(null));
    /// assert_eq!(mailbox.answers, vec![(taker, Ok(json!("hello")))]);
    /// ```
    ///
    /// [`Context::request_id`]: crate::Context::request_id
    pub fn park() -> Self {
        Self::with_reply(Reply::Park)
    }

    /// Nothing to reply (for wake-ups).
    pub fn none() -> Self {
        Self::with_reply(Reply::None)
    }

    fn with_reply(reply: Reply<R>) -> Self {
        Self { events: Vec::new(), reply, answers: Vec::new(), wake: Wake::Keep }
    }

    /// Also persist `event`; events are applied in the order they are added.
    pub fn persist(mut self, event: E) -> Self {
        self.events.push(event);
        self
    }

    /// Also answer the parked request `request_id` with `reply` (see [`Decision::park`]).
    pub fn answer<T: Serialize>(mut self, request_id: impl Into<String>, reply: &T) -> Self {
        self.answers.push((request_id.into(), Ok(crate::adapter::encode(reply))));
        self
    }

    /// Also refuse the parked request `request_id`.
    pub fn refuse(mut self, request_id: impl Into<String>, rejection: Rejection) -> Self {
        self.answers.push((request_id.into(), Err(rejection)));
        self
    }

    /// Ask to be woken at `at_ms` (milliseconds since the Unix epoch, the clock of
    /// [`Context::now_ms`]), replacing any earlier request. The host then calls
    /// [`Entity::wake`], whose decision may persist events and ask again. A wake-up can
    /// come a little early after a restart or a leader change, so `wake` checks the time.
    ///
    /// ```
    /// use casty_guest_sdk::{Context, Decision, Entity, Rejection};
    /// use serde::{Deserialize, Serialize};
    ///
    /// /// A reminder that fires once, `after_ms` after it is set.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Reminder { due_ms: Option<u64>, fired: bool }
    ///
    /// #[derive(Deserialize)]
    /// enum Command { Set { after_ms: u64 } }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum Event { Set(u64), Fired }
    ///
    /// impl Entity for Reminder {
    ///     type Command = Command;
    ///     type Event = Event;
    ///     type Reply = u64;
    ///
    ///     fn handle(&self, ctx: &Context, Command::Set { after_ms }: Command) -> Result<Decision<Event, u64>, Rejection> {
    ///         let due = ctx.now_ms + after_ms;
    ///         Ok(Decision::reply(due).persist(Event::Set(due)).wake_at(due))
    ///     }
    ///
    ///     fn apply(&mut self, event: Event) {
    ///         match event {
    ///             Event::Set(due) => *self = Reminder { due_ms: Some(due), fired: false },
    ///             Event::Fired => self.fired = true,
    ///         }
    ///     }
    ///
    ///     fn wake(&self, ctx: &Context) -> Decision<Event, u64> {
    ///         match self.due_ms {
    ///             Some(due) if !self.fired && ctx.now_ms >= due => Decision::none().persist(Event::Fired),
    ///             _ => Decision::none(),
    ///         }
    ///     }
    /// }
    ///
    /// let mut reminder = casty_guest_sdk::testing::Harness::<Reminder>::new("r-1");
    /// reminder.set_now_ms(1_000);
    /// reminder.send(Command::Set { after_ms: 500 }).unwrap();
    /// assert_eq!(reminder.wake_at_ms, Some(1_500));
    /// reminder.set_now_ms(1_500);
    /// reminder.wake();
    /// assert!(reminder.state().fired);
    /// ```
    ///
    /// [`Context::now_ms`]: crate::Context::now_ms
    /// [`Entity::wake`]: crate::Entity::wake
    pub fn wake_at(mut self, at_ms: u64) -> Self {
        self.wake = Wake::At(at_ms);
        self
    }

    /// Cancel any pending wake-up.
    pub fn cancel_wake(mut self) -> Self {
        self.wake = Wake::Cancel;
        self
    }
}
