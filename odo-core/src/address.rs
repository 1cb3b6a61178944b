//! Which object: the one address type from the route to the runtime.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::id::{Namespace, ObjectId};

/// An object as everyone addresses it: the router after extracting it from
/// a request, a forwarder sending a call, the runtime delivering an event.
/// Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectAddress {
    /// The class (namespace) name, such as `COUNTER`.
    pub class: Arc<str>,
    /// The object.
    pub id: ObjectId,
    /// The name the id was derived from, when it was addressed by name (the
    /// object sees it as `ctx.name()`).
    pub name: Option<Arc<str>>,
}

impl ObjectAddress {
    /// The object `name` of class `class` (`id_from_name`).
    pub fn named(class: &str, name: &str) -> Self {
        Self {
            class: Arc::from(class),
            id: Namespace::new(class).id_from_name(name),
            name: Some(Arc::from(name)),
        }
    }

    /// The object with id `id` of class `class`.
    pub fn of_id(class: &str, id: ObjectId) -> Self {
        Self {
            class: Arc::from(class),
            id,
            name: None,
        }
    }
}

impl fmt::Display for ObjectAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{}/{name} ({})", self.class, self.id),
            None => write!(f, "{}/{}", self.class, self.id),
        }
    }
}
