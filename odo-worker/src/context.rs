//! What an object sees of the world: its identity, its storage, other
//! objects, and background work.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use odo_core::ObjectId;
use odo_storage::{ObjectStorage, ObjectTurns};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ObjectError;
use crate::types::{Request, Response};
use odo_core::ObjectAddress;

use crate::call::{CallScope, Cluster, WaitGuard, Waits};
use crate::socket::{SocketKey, SocketView, WebSocket, WebSocketError};
use crate::stub::{NamespaceHandle, Stub};
use odo_core::socket::ACCEPT_TAGS_HEADER;

/// The context of one live object, handed to every handler.
pub struct Context {
    pub(crate) target: ObjectAddress,
    pub(crate) activation: u64,
    /// The object's storage and the runtime's control of its turns; the
    /// object's code reaches only the storage view.
    pub(crate) storage: ObjectTurns,
    /// The class's kind of storage, to open the object's view again.
    pub(crate) storage_kind: crate::types::ClassStorage,
    pub(crate) cluster: Arc<dyn Cluster>,
    /// The scope of the event being handled, this object included in its
    /// chain: calls made now inherit its deadline.
    pub(crate) scope: CallScope,
    /// Created by the first `wait_until`: most objects never need it.
    pub(crate) background: OnceLock<Arc<AtomicUsize>>,
    /// Tasks started by `wait_until` in the current turn: they run once
    /// the turn's writes are durable, and never if it fails.
    pub(crate) deferred: Vec<Deferred>,
    /// The object's WebSockets and what the current turn does to them.
    pub(crate) sockets: Arc<SocketView>,
    /// The socket the fetch being handled would accept: set while a
    /// front door's upgrade request is handled, taken by the accept.
    pub(crate) upgrade: Option<SocketKey>,
    /// Where the calls its turn waits on are noted (the object table).
    pub(crate) waits: Arc<dyn Waits>,
}

/// A `wait_until` task waiting for its turn to end, holding the object
/// alive (its guard) meanwhile.
pub(crate) struct Deferred {
    task: futures_util::future::BoxFuture<'static, ()>,
    guard: BackgroundGuard,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("target", &self.target)
            .field("activation", &self.activation)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.target.id
    }

    /// The name the object was addressed by, when it was addressed by name.
    pub fn name(&self) -> Option<&str> {
        self.target.name.as_deref()
    }

    /// The object's class (namespace) name.
    pub fn class(&self) -> &str {
        &self.target.class
    }

    /// A value unique to this live instance: it changes whenever the object
    /// is activated again (after eviction, a reset or a move).
    pub fn activation(&self) -> String {
        crate::activation::activation_name(self.activation)
    }

    /// The object's transactional storage, alarm included. For an object
    /// of a SQLite-backed class, [`ObjectStorage::sql`] is its database;
    /// its key-value API and alarm are in the same database and commit
    /// with its SQL, in the turn's one implicit transaction.
    ///
    /// The view has no way to commit or roll back the turn: the runtime
    /// ends every turn, committing its writes only if the handler succeeded.
    ///
    /// ```compile_fail
    /// // Object code cannot end its own turn.
    /// fn commit_early(ctx: &mut odo_worker::Context) {
    ///     ctx.storage().commit_turn();
    /// }
    /// ```
    pub fn storage(&mut self) -> &mut ObjectStorage {
        self.storage.storage()
    }

    /// Keeps the object alive (not evicted) until `task` finishes. The task
    /// runs concurrently with the object's events and cannot touch its state;
    /// use it for work that outlives a response (the equivalent of
    /// `waitUntil`).
    ///
    /// It passes the same output gate as the turn's response: it starts
    /// only once the writes the turn made (and every earlier write of the
    /// object) are durable, so nothing it sends can reveal state a crash
    /// could take back; if the turn fails, or its commit does, it never
    /// runs.
    pub fn wait_until(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let background = self.background.get_or_init(Arc::default).clone();
        background.fetch_add(1, Ordering::SeqCst);
        self.deferred.push(Deferred {
            task: Box::pin(task),
            guard: BackgroundGuard(background),
        });
    }

    /// A handle on namespace `class`, to mint ids and stubs of other objects
    /// (in any namespace, on any worker). Call them through
    /// [`Context::fetch`] and [`Context::call`].
    pub fn namespace(&self, class: &str) -> NamespaceHandle {
        NamespaceHandle::new(class, self.cluster.clone(), true, Duration::ZERO)
    }

    /// The time left before the caller of the event being handled stops
    /// waiting: calls to other objects must be answered within it.
    pub fn remaining(&self) -> Duration {
        self.scope
            .deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Sends `request` to another object, once every write this object made
    /// so far is durable (the output gate). The writes of the current turn
    /// made before the call are committed first, in their own batch: they
    /// stay even if the turn fails later (see DURABILITY.md).
    ///
    /// The call has what is left of the current event's deadline
    /// ([`Context::remaining`]); a call to an object that is waiting on this
    /// one (a cycle, such as a call to itself) fails at once with
    /// [`odo_core::WireError::CallCycle`].
    pub async fn fetch(&mut self, stub: &Stub, request: Request) -> Result<Response, ObjectError> {
        self.scope
            .check_cycle(&stub.target().id)
            .map_err(crate::call::CallError::from)?;
        self.flush().await?;
        let _waiting = WaitGuard::new(&self.waits, self.target.id, stub.target().id);
        Ok(stub.fetch_unchecked(request, self.scope.clone()).await?)
    }

    /// Calls RPC method `method` of another object, once every write this
    /// object made so far is durable (see [`Context::fetch`]).
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &mut self,
        stub: &Stub,
        method: &str,
        args: &A,
    ) -> Result<R, ObjectError> {
        let args = Stub::encode_call(method, args)?;
        self.scope
            .check_cycle(&stub.target().id)
            .map_err(crate::call::CallError::from)?;
        self.flush().await?;
        let _waiting = WaitGuard::new(&self.waits, self.target.id, stub.target().id);
        Ok(stub.call_encoded(method, args, self.scope.clone()).await?)
    }

    /// Accepts the WebSocket of the upgrade request being handled (see
    /// [`is_websocket_upgrade`](crate::is_websocket_upgrade)) with up to 10
    /// `tags` (each 1 to 256 bytes), and returns the `101` answer to give.
    /// The socket stays open at the front door, whatever happens to this
    /// instance: its messages come back as `websocket_message` events,
    /// waking the object if it was evicted. Refused with a
    /// [`WebSocketError`] (the client is answered 400) outside an upgrade
    /// or past a limit (32,768 sockets per object).
    pub fn accept_websocket<I, T>(&mut self, tags: I) -> Result<Response, ObjectError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let key = match self.upgrade.take() {
            Some(key) => key,
            None => return Err(WebSocketError::NotAnUpgrade.into()),
        };
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        let header = serde_json::to_string(&tags)
            .ok()
            .and_then(|t| http::HeaderValue::from_str(&t).ok());
        let Some(header) = header else {
            self.upgrade = Some(key);
            return Err(WebSocketError::BadTag { len: 0 }.into());
        };
        if let Err(e) = self.sockets.accept(key.clone(), tags) {
            self.upgrade = Some(key);
            return Err(e.into());
        }
        let mut response = Response::new(bytes::Bytes::new());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(ACCEPT_TAGS_HEADER, header);
        Ok(response)
    }

    /// The object's open WebSockets (those with `tag`, if given), in the
    /// order they were accepted: the same sockets, tags and attachments
    /// after the object was evicted or its worker replaced.
    pub fn websockets(&self, tag: Option<&str>) -> Vec<WebSocket> {
        self.sockets.list(tag)
    }

    /// The tags `ws` was accepted with.
    pub fn tags(&self, ws: &WebSocket) -> Vec<String> {
        ws.tags()
    }

    /// Sets the object's auto-response: any of its sockets that receives
    /// exactly the text `request` is answered `response` by the front door,
    /// without waking the object (each at most 2,048 characters). Like a
    /// send, it takes effect once the turn's writes are durable.
    pub fn set_websocket_auto_response(
        &mut self,
        request: &str,
        response: &str,
    ) -> Result<(), ObjectError> {
        Ok(self
            .sockets
            .set_auto_response(Some((request.to_owned(), response.to_owned())))?)
    }

    /// Removes the object's auto-response.
    pub fn clear_websocket_auto_response(&mut self) {
        // Removing has no text to check.
        let _ = self.sockets.set_auto_response(None);
    }

    /// The object's auto-response pair (request, response), if set.
    pub fn websocket_auto_response(&self) -> Option<(String, String)> {
        self.sockets.auto_response()
    }

    /// When the front door last answered `ws` with the auto-response, in
    /// milliseconds since the Unix epoch (as of the last event the socket
    /// brought), if ever.
    pub fn auto_response_timestamp(&self, ws: &WebSocket) -> Option<u64> {
        self.sockets.auto_response_ms(&ws.key)
    }

    /// Commits the writes of the current turn so far and waits until every
    /// write this object made is durable.
    pub async fn flush(&mut self) -> Result<(), ObjectError> {
        match self.storage.commit_turn() {
            Some(durable) => Ok(durable.wait().await?),
            None => Ok(()),
        }
    }
}

/// Opens the storage view of object `id` of a class whose storage is
/// `kind`, in `store`.
pub(crate) fn open_view(
    store: &odo_storage::Store,
    id: ObjectId,
    kind: crate::types::ClassStorage,
) -> Result<ObjectTurns, odo_storage::StorageError> {
    match kind {
        crate::types::ClassStorage::KeyValue => Ok(store.object(id)),
        crate::types::ClassStorage::Sqlite => store.sql_object(id),
    }
}

/// Whether the object has no background task running.
pub(crate) fn background_idle(ctx: &Context) -> bool {
    ctx.background
        .get()
        .is_none_or(|running| running.load(Ordering::SeqCst) == 0)
}

/// Starts the tasks a successful turn deferred, each once `durable` (the
/// turn's output gate) resolves; a failed commit drops them.
pub(crate) fn start_deferred(tasks: Vec<Deferred>, durable: Option<odo_storage::CommitWait>) {
    for Deferred { task, guard } in tasks {
        let durable = durable.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(durable) = durable
                && durable.wait().await.is_err()
            {
                return;
            }
            task.await;
        });
    }
}

pub(crate) struct BackgroundGuard(Arc<AtomicUsize>);

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
