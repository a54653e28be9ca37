//! Frame bodies decoded as every wire message: a request as the node decodes it (then
//! validated and routed as the dispatcher does), and a response as a client decodes it.
//! Whatever decodes must encode again and decode to the same message.
//!
//! An even first input byte takes the rest as the whole body; an odd one puts a valid
//! header (version and request id) before it, so every input reaches the message decoder.
#![no_main]

use casty_core::protocol::{LENGTH_PREFIX_BYTES, Request, Response, decode_body, encode_frame};
use casty_core::routing::validate_type_name;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The body of a frame carrying `message` as request `id`.
fn body_of<T: Serialize>(id: u64, message: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, id, message);
    frame.split_off(LENGTH_PREFIX_BYTES)
}

/// Decodes `body` as a `T`; what decodes re-encodes to a body that decodes to it again.
fn decode<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<T> {
    match decode_body::<T>(body) {
        Ok((id, message)) => {
            let again = decode_body::<T>(&body_of(id, &message)).expect("an encoded message decodes");
            assert_eq!(again, (id, message), "a message changed on the way round");
            Some(again.1)
        }
        Err((_, e)) => {
            let _ = e.to_wire();
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let body = if first & 1 == 0 {
        rest.to_vec()
    } else {
        // A valid header: the body of a frame carrying nothing (`()` encodes to no bytes).
        let mut body = body_of(u64::from(first), &());
        body.extend_from_slice(rest);
        body
    };
    match decode::<Request>(&body) {
        // The dispatcher routes only what validates.
        Some(Request::Invoke(invoke) | Request::Forwarded(invoke) | Request::Relayed(invoke))
            if invoke.address.validate().is_ok() =>
        {
            let key = invoke.address.entity_key();
            assert!(key.shard.shard < key.shard.shards);
            for partitions in [1, 7, 64] {
                assert!(key.shard.partition(partitions) < partitions);
            }
        }
        Some(Request::Deploy(deployment) | Request::CommitDeploy(deployment)) => {
            let _ = validate_type_name(&deployment.entity_type);
        }
        _ => {}
    }
    let _ = decode::<Response>(&body);
});
