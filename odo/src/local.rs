//! Objects hosted in the server's own process (`--workers 0`): the
//! runtime a worker runs, behind the front door without a process boundary
//! or any wire conversion.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::ObjectId;
use odo_router::{ForwardError, Location, ObjectService, SocketEventOut};
use odo_storage::{BackendFactory, ShardSpec, Store};
use odo_worker::{CallScope, Classes, ObjectAddress, RpcCall, Runtime};
use tokio::time::Instant;

use crate::app::{OdoError, ServeOptions};

/// Each class with its kind of storage, as the data directory records it.
pub(crate) fn class_storage(classes: &Classes) -> Vec<(String, String)> {
    classes
        .storage_kinds()
        .into_iter()
        .map(|(class, kind)| (class, kind.as_str().to_owned()))
        .collect()
}

/// Objects hosted in this process (0 workers): the same runtime a worker
/// runs, without the process boundary.
#[derive(Clone)]
pub(crate) struct LocalService {
    pub(crate) runtime: Runtime,
    /// Held while the service lives: one server per data directory.
    _data_lock: Arc<odo_registry::DataDirLock>,
}

impl LocalService {
    pub(crate) async fn open(
        classes: Classes,
        backend: Arc<dyn BackendFactory>,
        options: &ServeOptions,
    ) -> Result<Self, OdoError> {
        let data_lock = odo_registry::DataDirLock::acquire(&options.data_dir)?;
        data_lock.record_class_storage(
            odo_registry::StorageBackend {
                name: &options.storage,
                durable: backend.durable(),
            },
            &class_storage(&classes),
        )?;
        // One process holds every shard: nothing to split, but a split a
        // crash left unfinished is finished before anything is served.
        let splitter = crate::StorageSplitter::new(backend.clone());
        let shards = data_lock.prepare_shards(1, 1, Some(&splitter)).await?;
        let runtime = Runtime::new(classes, options.runtime.clone(), shards);
        for shard in 0..shards {
            let spec = ShardSpec::new(&options.data_dir, shard, 1);
            let store_options = runtime.store_options(&spec, backend.durable());
            let opened = backend.open(spec).await?;
            let store = Store::open_shared(opened, store_options)?;
            runtime
                .open_shard(shard, 1, store)
                .map_err(|e| OdoError::Other(e.to_string()))?;
        }
        Ok(Self {
            runtime,
            _data_lock: Arc::new(data_lock),
        })
    }
}

impl ObjectService for LocalService {
    // In-process: the request goes to the runtime as it is, with no wire
    // conversion at all.
    fn fetch(
        &self,
        object: ObjectAddress,
        request: http::Request<Bytes>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        let runtime = self.runtime.clone();
        async move {
            let scope = CallScope::outside_until(deadline);
            Ok(runtime.fetch_within(object, None, request, scope).await?)
        }
        .boxed()
    }

    fn call(
        &self,
        object: ObjectAddress,
        method: String,
        args: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>> {
        let runtime = self.runtime.clone();
        async move {
            let scope = CallScope::outside_until(deadline);
            Ok(runtime
                .call_within(object, None, RpcCall { method, args }, scope)
                .await?)
        }
        .boxed()
    }

    fn socket_event(
        &self,
        object: ObjectAddress,
        event: SocketEventOut,
        payload: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        let runtime = self.runtime.clone();
        async move {
            let scope = CallScope::outside_until(deadline);
            Ok(runtime
                .socket_event_within(object, &event.into(), payload, scope)
                .await?)
        }
        .boxed()
    }

    fn locate(&self, id: &ObjectId) -> Option<Location> {
        let shard = id.shard(self.runtime.shard_count());
        Some(Location {
            shard,
            epoch: self.runtime.shard_epoch(shard).unwrap_or(0),
            pid: Some(std::process::id()),
        })
    }
}
