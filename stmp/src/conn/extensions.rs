//! Typed values attached to a connection.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::RwLock;

use crate::sync::{read, write};

#[derive(Default)]
pub(crate) struct Extensions {
    values: RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Extensions {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) {
        write(&self.values).insert(TypeId::of::<T>(), Box::new(value));
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        read(&self.values)
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
            .cloned()
    }

    pub(crate) fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        write(&self.values)
            .remove(&TypeId::of::<T>())
            .and_then(|value| value.downcast::<T>().ok())
            .map(|value| *value)
    }
}
