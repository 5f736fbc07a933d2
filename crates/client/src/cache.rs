//! Clients created on demand, one per downstream, and reused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{ClientConfig, GenericClient};

/// A cache of [`GenericClient`]s keyed by downstream name.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: RwLock<HashMap<String, Arc<GenericClient>>>,
}

impl ClientCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client for `name`, created with `make()` on first use.
    pub fn get_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> ClientConfig,
    ) -> Arc<GenericClient> {
        if let Some(c) = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return c.clone();
        }
        let mut w = self.clients.write().unwrap_or_else(|e| e.into_inner());
        w.entry(name.to_owned())
            .or_insert_with(|| {
                tracing::debug!(downstream = name, "creating generic client");
                Arc::new(GenericClient::new(make()))
            })
            .clone()
    }

    /// Number of clients created so far.
    pub fn len(&self) -> usize {
        self.clients.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True if no client was created yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
