//! The client API for Rust programs that reach objects without HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::{IdError, Namespace, ObjectId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use odo_core::ObjectAddress;

use crate::service::{ForwardError, ObjectService};
use crate::ws::{ClientWebSocket, Door, Upgrade};
use odo_transport::forward::Outcome;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not reach an answer. [`ClientError::retryable`] and
    /// [`ClientError::outcome`] say whether it may have taken effect.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Arguments or results that do not encode or decode.
    #[error("rpc encoding: {0}")]
    Encoding(String),
    /// A malformed request or response.
    #[error("http: {0}")]
    Http(String),
    /// The client has no front door for WebSockets
    /// ([`Client::with_websockets`]).
    #[error("this client opens no WebSockets: give it a Door with Client::with_websockets")]
    NoWebSockets,
    /// The object (or the door) did not accept the WebSocket: its answer.
    #[error("WebSocket refused: {status} {body}")]
    WebSocketRefused {
        /// The answer's status.
        status: u16,
        /// The answer's body, as text.
        body: String,
    },
}

impl ClientError {
    /// Whether sending the same call again is safe and may succeed: it was
    /// never delivered, and what stopped it is transient.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Forward(e) => e.retryable(),
            ClientError::Encoding(_)
            | ClientError::Http(_)
            | ClientError::NoWebSockets
            | ClientError::WebSocketRefused { .. } => false,
        }
    }

    /// What is known of the call's effect on the object.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Forward(e) => e.outcome(),
            // Refused before anything was sent, or the answer could not be
            // decoded after the object ran the call.
            ClientError::Encoding(_) | ClientError::Http(_) => Outcome::Unknown,
            ClientError::NoWebSockets => Outcome::NotDelivered,
            ClientError::WebSocketRefused { .. } => Outcome::Failed,
        }
    }
}

/// Reaches objects through an [`ObjectService`] (usually a
/// [`ClusterService`](crate::ClusterService)).
///
/// ```no_run
/// # async fn demo(client: odo_router::Client) -> Result<(), odo_router::ClientError> {
/// let counters = client.namespace("COUNTER");
/// let stub = counters.get(counters.id_from_name("hot"));
/// let response = stub.fetch(http::Request::post("/counter/hot/increment").body(bytes::Bytes::new()).unwrap()).await?;
/// println!("{:?}", response.body());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    service: Arc<dyn ObjectService>,
    deadline: Duration,
    door: Option<Door>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over `service`, with a 30 s deadline per call.
    pub fn new(service: Arc<dyn ObjectService>) -> Self {
        Self {
            service,
            deadline: Duration::from_secs(30),
            door: None,
        }
    }

    /// Opens WebSockets through `door` (whose outputs the workers must be
    /// able to reach: serve its endpoint with [`Door::handle_request`]).
    pub fn with_websockets(mut self, door: Door) -> Self {
        self.door = Some(door);
        self
    }

    /// The same client with another per-call deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// A handle on the namespace `class`.
    pub fn namespace(&self, class: &str) -> ClientNamespace {
        ClientNamespace {
            namespace: Namespace::new(class),
            client: self.clone(),
        }
    }
}

/// Mints ids and stubs of one namespace.
#[derive(Debug, Clone)]
pub struct ClientNamespace {
    namespace: Namespace,
    client: Client,
}

impl ClientNamespace {
    /// The id of the object called `name`.
    pub fn id_from_name(&self, name: &str) -> ObjectId {
        self.namespace.id_from_name(name)
    }

    /// A new random id.
    pub fn new_unique_id(&self) -> ObjectId {
        self.namespace.new_unique_id()
    }

    /// Parses an id minted by this namespace.
    pub fn id_from_string(&self, text: &str) -> Result<ObjectId, IdError> {
        self.namespace.id_from_string(text)
    }

    /// A stub for the object with this id.
    pub fn get(&self, id: ObjectId) -> ClientStub {
        ClientStub {
            address: ObjectAddress::of_id(self.namespace.name(), id),
            client: self.client.clone(),
        }
    }

    /// A stub for the object called `name` (its name travels with the
    /// requests, for the object's `ctx.name()`).
    pub fn get_by_name(&self, name: &str) -> ClientStub {
        ClientStub {
            address: ObjectAddress::named(self.namespace.name(), name),
            client: self.client.clone(),
        }
    }
}

/// Calls one object.
#[derive(Debug, Clone)]
pub struct ClientStub {
    address: ObjectAddress,
    client: Client,
}

impl ClientStub {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.address.id
    }

    /// Sends an HTTP request to the object.
    pub async fn fetch(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, ClientError> {
        let deadline = Instant::now() + self.client.deadline;
        Ok(self
            .client
            .service
            .fetch(self.address.clone(), request, deadline)
            .await?)
    }

    /// Opens a WebSocket to the object: `request` (a GET, its path and
    /// headers) reaches the object's `fetch` as an upgrade, which may
    /// accept it. The socket is held by the client's [`Door`] like any
    /// client's, so it outlives the object's eviction and its worker.
    pub async fn websocket(
        &self,
        request: http::Request<()>,
    ) -> Result<ClientWebSocket, ClientError> {
        let door = self.client.door.as_ref().ok_or(ClientError::NoWebSockets)?;
        let deadline = Instant::now() + self.client.deadline;
        match door.connect(self.address.clone(), request, deadline).await {
            Ok(socket) => Ok(socket),
            Err(Upgrade::Failed(e)) => Err(e.into()),
            Err(Upgrade::Answer(answer) | Upgrade::Switch(answer)) => {
                Err(ClientError::WebSocketRefused {
                    status: answer.status().as_u16(),
                    body: String::from_utf8_lossy(answer.body()).trim().to_owned(),
                })
            }
        }
    }

    /// Calls RPC method `method` with `args`, decoding the result as `R`.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, ClientError> {
        let args = postcard::to_allocvec(args).map_err(|e| ClientError::Encoding(e.to_string()))?;
        let deadline = Instant::now() + self.client.deadline;
        let result = self
            .client
            .service
            .call(
                self.address.clone(),
                method.to_owned(),
                Bytes::from(args),
                deadline,
            )
            .await?;
        postcard::from_bytes(&result)
            .map_err(|e| ClientError::Encoding(format!("result of {method:?}: {e}")))
    }
}
