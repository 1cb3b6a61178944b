//! A pool of channels, one per endpoint, replaced when closed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use crate::{Channel, ClientConfig, ConnectError, Endpoint, EndpointError};

/// Why the pool has no channel to give.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The endpoint string does not parse.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Connecting (or the handshake) failed. Every caller that waited
    /// for the same attempt gets the same error.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
}

/// One connection attempt, shared by every caller that asks while it runs.
type Attempt = Arc<OnceCell<Result<Channel, Arc<ConnectError>>>>;

/// One multiplexed [`Channel`] per endpoint, shared by every caller and
/// replaced by a new connection once it closes. Routers and workers use one
/// to reach the workers that own objects.
///
/// Callers that find no open channel share one connection attempt per
/// endpoint (and its outcome, success or error): a burst of requests to a
/// worker that just restarted opens one connection, not one per request,
/// which the worker's cap on connections still in their handshake would
/// cut down.
pub struct ChannelPool {
    client: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    attempts: Mutex<HashMap<String, Attempt>>,
}

impl fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelPool")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl ChannelPool {
    /// An empty pool connecting with `client`.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            channels: Mutex::default(),
            attempts: Mutex::default(),
        }
    }

    /// The open channel to `endpoint` (as `unix:/path` or `tcp:host:port`),
    /// connecting if there is none or the last one closed.
    pub async fn get(&self, endpoint: &str) -> Result<Channel, PoolError> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .filter(|c| !c.is_closed())
            .cloned();
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let parsed: Endpoint = endpoint.parse()?;
        let attempt = self
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.to_owned())
            .or_default()
            .clone();
        // The first caller connects; the others wait for its outcome (if it
        // is cancelled, the next one connects).
        let outcome = attempt
            .get_or_init(|| async {
                let outcome = Channel::connect(&parsed, self.client.clone())
                    .await
                    .map_err(Arc::new);
                if let Ok(channel) = &outcome {
                    self.channels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(endpoint.to_owned(), channel.clone());
                }
                outcome
            })
            .await
            .clone();
        // Done: the next caller that finds no open channel starts afresh.
        {
            let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            if attempts
                .get(endpoint)
                .is_some_and(|current| Arc::ptr_eq(current, &attempt))
            {
                attempts.remove(endpoint);
            }
        }
        outcome.map_err(PoolError::Connect)
    }
}
