//! Wiring the front door's WebSockets into a server: the door's transport
//! endpoint (where workers send their objects' outputs), the in-process
//! link when the objects live in this process, and the descriptor limit.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::socket::SocketOutput;
use odo_router::Door;
use odo_transport::{Endpoint, Server, ServerConfig};
use odo_worker::WebSocketDoors;

use crate::OdoError;

/// The front door's endpoint for workers, beside the registry's control
/// endpoint: a Unix socket in the same private directory, or a TCP port on
/// loopback.
pub(crate) fn door_endpoint(control: &Endpoint) -> Result<Endpoint, OdoError> {
    let text = match control {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let dir = path
                .parent()
                .ok_or_else(|| OdoError::Other("the control socket has no directory".into()))?;
            format!("unix:{}", dir.join("door.sock").display())
        }
        _ => "tcp:127.0.0.1:0".to_owned(),
    };
    text.parse()
        .map_err(|e| OdoError::Other(format!("the front door's endpoint: {e}")))
}

/// Binds the front door's endpoint; returns the server and the endpoint
/// it listens on.
pub(crate) async fn bind_door(endpoint: &Endpoint, token: &str) -> Result<Server, OdoError> {
    Server::bind(
        endpoint,
        ServerConfig {
            peer_name: "front door".into(),
            ..ServerConfig::new(token)
        },
    )
    .await
    .map_err(|e| OdoError::Other(format!("the front door cannot listen for workers: {e}")))
}

/// Serves `door`'s endpoint until `stop` resolves.
pub(crate) fn serve_door(
    server: Server,
    door: Door,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let handler = odo_transport::handler_fn(move |request, body| {
        let answer = door.handle_request(request, body);
        async move { answer }
    });
    tokio::spawn(server.serve(Arc::new(handler), stop))
}

/// Objects in this process hand their outputs to the front door directly.
pub(crate) struct LocalDoors(pub(crate) Door);

impl WebSocketDoors for LocalDoors {
    fn submit(&self, _door: &str, output: SocketOutput, body: Bytes) -> BoxFuture<'static, bool> {
        let applied = self.0.apply(output, body).is_ok();
        async move { applied }.boxed()
    }

    fn shard_sockets_page(
        &self,
        _door: &str,
        asked: odo_core::socket::ShardSockets,
    ) -> BoxFuture<'static, Result<odo_core::socket::ShardSocketsPage, String>> {
        let page = self
            .0
            .shard_sockets_page(&asked, odo_router::SOCKET_RECORDS_PAGE_BYTES);
        async move { Ok(page) }.boxed()
    }
}

/// Raises this process's open-file limit to its hard limit: every open
/// WebSocket holds a descriptor.
pub(crate) fn raise_fd_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        use tracing::{info, warn};
        let limit = getrlimit(Resource::Nofile);
        if limit.current == limit.maximum {
            return;
        }
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => info!(limit = ?limit.maximum, "open-file limit raised to its hard limit"),
            Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
}
