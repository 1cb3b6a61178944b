//! A pool of channels, one per endpoint, replaced when closed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use crate::{Channel, ClientConfig, ConnectError, Endpoint, EndpointError};

/// Why the pool has no channel to give.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The endpoint string does not parse.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Connecting (or the handshake) failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// One multiplexed [`Channel`] per endpoint, shared by every caller and
/// replaced by a new connection once it closes. Routers and workers use one
/// to reach the workers that own objects.
pub struct ChannelPool {
    client: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
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
        let channel = Channel::connect(&parsed, self.client.clone()).await?;
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
    }
}
