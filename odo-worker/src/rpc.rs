//! RPC calls as an object receives them and the replies it gives.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ObjectError;

/// An RPC call as the object receives it.
#[derive(Debug, Clone)]
pub struct RpcCall {
    /// The method name.
    pub method: String,
    /// The arguments, postcard-encoded by the caller's stub.
    pub args: Bytes,
}

impl RpcCall {
    /// Decodes the arguments as `T`.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, ObjectError> {
        postcard::from_bytes(&self.args)
            .map_err(|e| ObjectError::BadArguments(format!("arguments of {:?}: {e}", self.method)))
    }
}

/// The encoded result of an RPC call.
#[derive(Debug, Clone)]
pub struct RpcReply(pub(crate) Bytes);

impl RpcReply {
    /// Encodes `value` as the result.
    pub fn new<T: Serialize>(value: &T) -> Result<Self, ObjectError> {
        postcard::to_allocvec(value)
            .map(|v| RpcReply(Bytes::from(v)))
            .map_err(|e| ObjectError::Failed(format!("cannot encode the result: {e}")))
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}
