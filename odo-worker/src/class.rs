//! The class registry: which Rust type serves which namespace.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use odo_core::{Namespace, NamespaceTag};

use crate::actor::{self, ActorStart, Factory};
use crate::object::DurableObject;
use crate::types::ClassStorage;

/// Why a class cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    /// Two classes with one name.
    #[error("class {0:?} is registered twice")]
    Duplicate(String),
    /// A name that cannot appear in a URL path segment or a log line.
    #[error("class name {0:?} must be 1 to 64 characters of A-Z, a-z, 0-9 and _")]
    BadName(String),
}

/// The object classes a binary hosts, by name.
///
/// ```
/// # use odo_worker::{Classes, Context, DurableObject, ObjectError, Request, Response};
/// # struct Counter;
/// # impl DurableObject for Counter {
/// #     fn create(_: &Context) -> Self { Counter }
/// #     async fn fetch(&mut self, _: &mut Context, _: Request) -> Result<Response, ObjectError> { Ok(Response::new(Default::default())) }
/// # }
/// let mut classes = Classes::default();
/// classes.register::<Counter>("COUNTER")?;
/// assert!(classes.contains("COUNTER"));
/// # Ok::<(), odo_worker::ClassError>(())
/// ```
#[derive(Default, Clone)]
pub struct Classes {
    by_name: HashMap<Arc<str>, Arc<ClassEntry>>,
    by_tag: HashMap<NamespaceTag, Arc<str>>,
}

impl fmt::Debug for Classes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

pub(crate) struct ClassEntry {
    pub(crate) name: Arc<str>,
    pub(crate) namespace: Namespace,
    pub(crate) storage: ClassStorage,
    pub(crate) spawner: Box<dyn Spawn>,
}

impl Classes {
    /// Registers `T` as the class called `name` (its namespace name); each
    /// activation builds its instance with [`DurableObject::create`].
    pub fn register<T: DurableObject>(&mut self, name: &str) -> Result<&mut Self, ClassError> {
        self.register_with(name, T::create)
    }

    /// Registers the class called `name`, whose instances `factory` builds.
    /// The factory can capture what every instance shares (configuration,
    /// clients, channels): the equivalent of a Worker's `env`.
    pub fn register_with<T, F>(&mut self, name: &str, factory: F) -> Result<&mut Self, ClassError>
    where
        T: DurableObject,
        F: Fn(&crate::Context) -> T + Send + Sync + 'static,
    {
        self.register_as(name, ClassStorage::KeyValue, factory)
    }

    /// Registers `T` as the SQLite-backed class called `name`: each of its
    /// objects owns a SQLite database, reached with
    /// [`ObjectStorage::sql`](odo_storage::ObjectStorage::sql)
    /// (`ctx.storage().sql()`), which also holds its key-value API and
    /// alarm.
    pub fn register_sqlite<T: DurableObject>(
        &mut self,
        name: &str,
    ) -> Result<&mut Self, ClassError> {
        self.register_as(name, ClassStorage::Sqlite, T::create)
    }

    /// Registers the class called `name`, whose instances `factory` builds,
    /// with `storage` as its kind of storage.
    pub fn register_as<T, F>(
        &mut self,
        name: &str,
        storage: ClassStorage,
        factory: F,
    ) -> Result<&mut Self, ClassError>
    where
        T: DurableObject,
        F: Fn(&crate::Context) -> T + Send + Sync + 'static,
    {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ClassError::BadName(name.to_owned()));
        }
        if self.by_name.contains_key(name) {
            return Err(ClassError::Duplicate(name.to_owned()));
        }
        let name: Arc<str> = Arc::from(name);
        let namespace = Namespace::new(&*name);
        self.by_tag.insert(namespace.tag(), name.clone());
        self.by_name.insert(
            name.clone(),
            Arc::new(ClassEntry {
                name,
                namespace,
                storage,
                spawner: Box::new(Spawner::<T>(Arc::new(factory))),
            }),
        );
        Ok(self)
    }

    /// Whether a class of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The registered class names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// Each registered class with its kind of storage, sorted by name:
    /// what a data directory records.
    pub fn storage_kinds(&self) -> Vec<(String, ClassStorage)> {
        let mut kinds: Vec<(String, ClassStorage)> = self
            .by_name
            .values()
            .map(|entry| (entry.name.to_string(), entry.storage))
            .collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        kinds
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<ClassEntry>> {
        self.by_name.get(name)
    }

    pub(crate) fn by_tag(&self, tag: NamespaceTag) -> Option<&Arc<ClassEntry>> {
        self.by_tag
            .get(&tag)
            .and_then(|name| self.by_name.get(name))
    }
}

/// Starts the actor of one object of a class; erases the class's type.
pub(crate) trait Spawn: Send + Sync {
    fn spawn(&self, start: ActorStart);
}

/// Starts actors of class `T`, building instances with its factory.
struct Spawner<T>(Factory<T>);

impl<T: DurableObject> Spawn for Spawner<T> {
    fn spawn(&self, start: ActorStart) {
        tokio::spawn(actor::run::<T>(start, self.0.clone()));
    }
}
