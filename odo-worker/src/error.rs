//! Why a handler failed, and what that does to its object.

use std::fmt;

/// Why a handler failed. Any error resets the object, except
/// [`ObjectError::UnknownMethod`], [`ObjectError::BadArguments`] and
/// [`ObjectError::WebSocket`], which are the caller's mistakes (or a limit
/// it crossed) and leave the instance as it was; the turn is rolled back
/// and the caller answered 400.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A storage operation failed (a limit, or the backend).
    #[error(transparent)]
    Storage(#[from] odo_storage::StorageError),
    /// No RPC method of that name.
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    /// RPC arguments that do not decode.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// A call to another object failed.
    #[error(transparent)]
    Call(#[from] crate::call::CallError),
    /// A WebSocket operation was refused (a limit, not an upgrade).
    #[error(transparent)]
    WebSocket(#[from] crate::socket::WebSocketError),
    /// Anything else the handler reports.
    #[error("{0}")]
    Failed(String),
}

impl ObjectError {
    /// An error with a message, for handlers.
    pub fn msg(message: impl fmt::Display) -> Self {
        ObjectError::Failed(message.to_string())
    }

    /// Whether this error resets the object.
    pub fn resets(&self) -> bool {
        !matches!(
            self,
            ObjectError::UnknownMethod(_)
                | ObjectError::BadArguments(_)
                | ObjectError::WebSocket(_)
        )
    }
}
