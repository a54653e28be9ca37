//! A register: one value under a name, replaced atomically.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ClientError;
use crate::facade::{Target, decode_optional, encode_value, target_options};

/// A distributed register holding one `T`, as `d.register::<Config>("config")`.
#[derive(Debug, Clone)]
pub struct Register<T> {
    target: Target,
    _type: PhantomData<fn() -> T>,
}

impl<T> Register<T> {
    pub(crate) fn new(target: Target) -> Self {
        Self { target, _type: PhantomData }
    }

    target_options!();
}

impl<T: Serialize + DeserializeOwned> Register<T> {
    async fn send<R: DeserializeOwned>(&self, command: Value) -> Result<R, ClientError> {
        self.target.call(&self.target.name, command).await
    }

    /// The value, or `None` if it was never set.
    pub async fn get(&self) -> Result<Option<T>, ClientError> {
        decode_optional(self.send(json!("get")).await?)
    }

    pub async fn set(&self, value: &T) -> Result<(), ClientError> {
        self.send::<Value>(json!({ "set": { "value": encode_value(value)? } })).await.map(drop)
    }

    /// Sets `new` if the register holds `expected` (`None`: if it was never set); returns
    /// whether it did. Values compare by their canonical encoding.
    pub async fn compare_and_set(&self, expected: Option<&T>, new: &T) -> Result<bool, ClientError> {
        let expected = expected.map(encode_value).transpose()?;
        self.send(json!({ "compare_and_set": { "expected": expected, "new": encode_value(new)? } })).await
    }

    /// Sets `value`; returns the previous one.
    pub async fn get_and_set(&self, value: &T) -> Result<Option<T>, ClientError> {
        decode_optional(self.send(json!({ "get_and_set": { "value": encode_value(value)? } })).await?)
    }
}
