//! Backends by name: the [`BackendFactory`] trait, which opens one shard's
//! backend, and [`Backends`], the registry of the factories a server can
//! run.
//!
//! A server picks its backend by name (`odo serve --storage NAME`); every
//! process of the server (the main one, which checks the name before it
//! starts anything, and each worker, which opens the shards it is given)
//! looks the name up in its own [`Backends`]. Workers are the same binary
//! as the main process, so they register the same factories. A backend
//! from another crate is one more `register` call: nothing in odo lists
//! backend names.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::StorageError;

/// The longest backend name, in bytes.
pub const MAX_BACKEND_NAME_BYTES: usize = 64;

/// Which shard to open, and where: what a [`BackendFactory`] gets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardSpec {
    /// The shard's number (0-based, below the server's shard count).
    pub shard: u32,
    /// The epoch the shard is assigned at. It only grows for a shard over
    /// the life of a data directory, so a backend whose store outlives
    /// its host (a networked database) can fence a stale holder with it:
    /// refuse writes from an epoch older than the newest it has seen.
    /// Backends in a local, locked directory may ignore it.
    pub epoch: u64,
    /// The server's data directory.
    pub data_dir: PathBuf,
}

impl ShardSpec {
    /// Shard `shard` of the server whose data directory is `data_dir`, at
    /// `epoch`.
    pub fn new(data_dir: impl Into<PathBuf>, shard: u32, epoch: u64) -> Self {
        Self {
            shard,
            epoch,
            data_dir: data_dir.into(),
        }
    }

    /// The shard's own directory, `<data_dir>/shards/<shard>`: where a
    /// backend that keeps files keeps this shard's (it may not exist yet).
    /// Names of objects never reach a path: only the shard's number does.
    pub fn dir(&self) -> PathBuf {
        shard_dir(&self.data_dir, self.shard)
    }
}

/// `<data_dir>/shards/<shard>`.
fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(odo_core::SHARDS_DIR).join(shard.to_string())
}

/// What [`BackendFactory::open`] returns: the opening, to be awaited.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>, StorageError>> + Send>>;

/// Opens one kind of backend, one shard at a time: the unit a server's
/// `--storage NAME` picks.
///
/// Options of the backend (a durability level, a cache size, a database's
/// URL) are the factory's own: build it with them in the binary's `main`,
/// where workers (the same binary) build it the same way. Keep secrets off
/// command lines: read them from the environment or a file there.
///
/// ```
/// use odo_storage::{Backend, BackendFactory, MemoryBackend, OpenFuture, ShardSpec, open_ready};
///
/// /// Every shard in memory, under another name.
/// #[derive(Debug)]
/// struct Scratch;
///
/// impl BackendFactory for Scratch {
///     fn name(&self) -> &str {
///         "scratch"
///     }
///     fn durable(&self) -> bool {
///         false
///     }
///     fn open(&self, _shard: ShardSpec) -> OpenFuture {
///         open_ready(MemoryBackend::new())
///     }
/// }
///
/// let mut backends = odo_storage::Backends::builtin();
/// backends.register(Scratch)?;
/// assert!(!backends.get("scratch")?.durable());
/// # Ok::<(), odo_storage::BackendsError>(())
/// ```
pub trait BackendFactory: Send + Sync + fmt::Debug + 'static {
    /// The backend's name: what `--storage` takes and worker command lines
    /// carry. ASCII lowercase letters, digits, `-` and `_`, starting with a
    /// letter, at most [`MAX_BACKEND_NAME_BYTES`] bytes; it must not change.
    fn name(&self) -> &str;

    /// Whether an acknowledged commit survives the process (and the store
    /// being closed and opened again). A backend that is not durable comes
    /// back empty.
    fn durable(&self) -> bool;

    /// One line for `--help`: what the backend is and where it keeps data.
    fn about(&self) -> &str {
        ""
    }

    /// Opens the backend of `shard` (creating it if it is new).
    ///
    /// The future runs on the async executor: an opening that blocks (files,
    /// locks, recovery) belongs on a blocking thread, which
    /// [`open_blocking`] does; an opening that connects somewhere awaits
    /// in the future itself. The shard is served once it resolves, until
    /// the store is closed ([`Backend::close`]), which happens before the
    /// shard is opened again here or elsewhere.
    fn open(&self, shard: ShardSpec) -> OpenFuture;
}

/// An [`OpenFuture`] that runs `open` on tokio's blocking threads: for
/// backends whose opening does blocking I/O. Must be awaited inside a tokio
/// runtime.
pub fn open_blocking<B, F>(open: F) -> OpenFuture
where
    B: Backend,
    F: FnOnce() -> Result<B, StorageError> + Send + 'static,
{
    Box::pin(async move {
        let backend = tokio::task::spawn_blocking(open)
            .await
            .map_err(|e| StorageError::backend("opening a shard's backend", e))??;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// An [`OpenFuture`] for a backend already open.
pub fn open_ready(backend: impl Backend) -> OpenFuture {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    Box::pin(std::future::ready(Ok(backend)))
}

/// Why a backend cannot be registered or found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendsError {
    /// No backend of that name is registered.
    #[error("unknown storage backend {name:?}; the registered backends are: {}", known.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// Every registered name, in registration order.
        known: Vec<String>,
    },
    /// A backend of that name is already registered.
    #[error("a storage backend named {name:?} is already registered")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// The factory's name is not a usable backend name.
    #[error(
        "{name:?} is not a usable storage backend name: use ASCII lowercase letters, digits, '-' and '_', starting with a letter, at most {MAX_BACKEND_NAME_BYTES} bytes"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
}

fn valid_name(name: &str) -> bool {
    name.len() <= MAX_BACKEND_NAME_BYTES
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The backends a server can run, by name, in registration order.
///
/// [`Backends::builtin`] holds `fjall` (with the `fjall` feature, on by
/// default) and `memory`; [`Backends::new`] holds none. Cheap to clone.
#[derive(Clone, Default)]
pub struct Backends {
    factories: Vec<Arc<dyn BackendFactory>>,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Backends {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// The backends of this crate: `fjall` (durable, on disk; with the
    /// `fjall` feature) and `memory`.
    pub fn builtin() -> Self {
        let mut backends = Self::new();
        #[cfg(feature = "fjall")]
        backends
            .factories
            .push(Arc::new(crate::FjallFactory::default()));
        backends.factories.push(Arc::new(crate::MemoryFactory));
        backends
    }

    /// Adds `factory` under its [`name`](BackendFactory::name).
    ///
    /// # Errors
    ///
    /// [`BackendsError::Duplicate`] if that name is taken (the registered
    /// factory stays), [`BackendsError::InvalidName`] if the name is not
    /// usable.
    pub fn register(&mut self, factory: impl BackendFactory) -> Result<(), BackendsError> {
        self.register_shared(Arc::new(factory))
    }

    /// Like [`register`](Self::register), for a factory already shared.
    pub fn register_shared(
        &mut self,
        factory: Arc<dyn BackendFactory>,
    ) -> Result<(), BackendsError> {
        let name = factory.name();
        if !valid_name(name) {
            return Err(BackendsError::InvalidName { name: name.into() });
        }
        if self.factories.iter().any(|f| f.name() == name) {
            return Err(BackendsError::Duplicate { name: name.into() });
        }
        self.factories.push(factory);
        Ok(())
    }

    /// The factory named `name`.
    ///
    /// # Errors
    ///
    /// [`BackendsError::Unknown`], listing the registered names.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn BackendFactory>, BackendsError> {
        self.factories
            .iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| BackendsError::Unknown {
                name: name.into(),
                known: self.names().map(str::to_owned).collect(),
            })
    }

    /// Every registered name, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.iter().map(|f| f.name())
    }

    /// Every registered factory, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn BackendFactory>> {
        self.factories.iter()
    }
}

/// The factory of [`MemoryBackend`](crate::MemoryBackend)s, named `memory`:
/// every shard in memory, lost when its process exits.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryFactory;

impl BackendFactory for MemoryFactory {
    fn name(&self) -> &str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    fn about(&self) -> &str {
        "in memory: everything is lost when a worker exits"
    }

    fn open(&self, _shard: ShardSpec) -> OpenFuture {
        open_ready(crate::MemoryBackend::new())
    }
}

/// The factory of [`FjallBackend`](crate::FjallBackend)s, named `fjall`:
/// one fjall database per shard in [`ShardSpec::dir`], opened with
/// `options`.
#[cfg(feature = "fjall")]
#[derive(Debug, Default, Clone)]
pub struct FjallFactory {
    /// The options every shard is opened with.
    pub options: crate::FjallOptions,
}

#[cfg(feature = "fjall")]
impl BackendFactory for FjallFactory {
    fn name(&self) -> &str {
        "fjall"
    }

    fn durable(&self) -> bool {
        true
    }

    fn about(&self) -> &str {
        "durable, on disk (fjall), one database per shard under DATA_DIR/shards/N"
    }

    fn open(&self, shard: ShardSpec) -> OpenFuture {
        let options = self.options.clone();
        open_blocking(move || crate::FjallBackend::open(shard.dir(), options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["memory", "fjall", "log-file_2", &"a".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Memory",
            "2fa",
            "-x",
            "a b",
            "ä",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
