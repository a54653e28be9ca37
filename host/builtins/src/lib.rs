//! The built-in entity components (counter, ...), compiled from `entities/` by this
//! crate's build script and embedded, so `casty-host` needs no step beyond `cargo build`.
//! They are ordinary components: the host loads them exactly as it loads a user's.
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The path of a component built for tests or an example (`faulty`, `bank-account`), if
/// there is one by that name.
pub fn test_component_path(name: &str) -> Option<&'static str> {
    TEST_COMPONENTS.iter().find(|(n, _)| *n == name).map(|(_, path)| *path)
}
