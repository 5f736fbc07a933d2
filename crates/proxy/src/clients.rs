//! The generic clients of every downstream, created on demand: one cache for the three
//! families (ping-pong, TTStream, gRPC), keyed by downstream name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sluice_client::{ClientConfig, Counters, Endpoint, GenericClient, PoolCounts, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig};

/// One downstream's clients; each is made the first time a call of its family needs it.
#[derive(Debug)]
struct DownstreamClients {
    config: ClientConfig,
    /// The endpoints discovery found last, when it found any: clients made from now on start
    /// with them, and the lock orders a discovery update against a client being made.
    found: Mutex<Option<Vec<Endpoint>>>,
    pingpong: OnceLock<Arc<GenericClient>>,
    ttstream: OnceLock<Arc<TTStreamClient>>,
    grpc: OnceLock<Arc<GrpcClient>>,
    /// Retries, ejections and refusals of the three clients, and their one in-flight limit.
    shared: sluice_resilience::Shared,
}

impl DownstreamClients {
    /// The settings with the endpoints discovery found last, if any.
    fn current_config(&self) -> ClientConfig {
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = self.config.clone();
        if let Some(eps) = &*found {
            c.endpoints = eps.clone();
        }
        c
    }
}

/// The gRPC client settings of a downstream: its endpoints and weights, connect timeout,
/// message size limit, balance, outlier ejection, backoff and stream limit.
pub(crate) fn grpc_config(c: &ClientConfig) -> GrpcClientConfig {
    let mut g = GrpcClientConfig::new(c.endpoints.iter().map(|e| e.addr).collect())
        .with_connect_timeout(c.connect_timeout)
        .with_max_message_size(c.max_frame_size)
        .with_balance(c.balance)
        .with_outlier(c.outlier)
        .with_failure_backoff(c.failure_backoff)
        .with_max_in_flight(c.max_in_flight);
    g.tls = c.tls.clone();
    g.weights = c.endpoints.iter().map(|e| e.weight).collect();
    g
}

/// The clients of every downstream a request has reached so far.
///
/// Lookups take a read lock on the map of downstreams and clone an `Arc`; the write lock is
/// taken once per downstream, when its first request arrives.
#[derive(Debug, Default)]
pub struct Clients {
    by_name: RwLock<HashMap<String, Arc<DownstreamClients>>>,
}

impl Clients {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, name: &str, config: impl FnOnce() -> ClientConfig) -> Arc<DownstreamClients> {
        if let Some(d) = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return d.clone();
        }
        let mut w = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        w.entry(name.to_owned())
            .or_insert_with(|| {
                let config = config();
                Arc::new(DownstreamClients {
                    // One limit for the downstream, whichever family its calls are.
                    shared: sluice_resilience::Shared::new(config.max_in_flight),
                    config,
                    found: Mutex::new(None),
                    pingpong: OnceLock::new(),
                    ttstream: OnceLock::new(),
                    grpc: OnceLock::new(),
                })
            })
            .clone()
    }

    /// The ping-pong client of downstream `name`, created from `config()` on first use.
    pub fn pingpong(
        &self,
        name: &str,
        config: impl FnOnce() -> ClientConfig,
    ) -> Arc<GenericClient> {
        let d = self.entry(name, config);
        d.pingpong
            .get_or_init(|| {
                tracing::debug!(downstream = name, "creating ping-pong client");
                Arc::new(GenericClient::with_shared(
                    d.current_config(),
                    d.shared.clone(),
                ))
            })
            .clone()
    }

    /// The TTStream client of downstream `name`, created from `config()` on first use.
    pub fn ttstream(
        &self,
        name: &str,
        config: impl FnOnce() -> ClientConfig,
    ) -> Arc<TTStreamClient> {
        let d = self.entry(name, config);
        d.ttstream
            .get_or_init(|| {
                tracing::debug!(downstream = name, "creating TTStream client");
                Arc::new(TTStreamClient::with_shared(
                    d.current_config(),
                    d.shared.clone(),
                ))
            })
            .clone()
    }

    /// The gRPC client of downstream `name`, created from `config()` on first use (its
    /// endpoints, connect timeout, message size limit and TLS).
    pub fn grpc(&self, name: &str, config: impl FnOnce() -> ClientConfig) -> Arc<GrpcClient> {
        let d = self.entry(name, config);
        d.grpc
            .get_or_init(|| {
                tracing::debug!(downstream = name, "creating gRPC client");
                Arc::new(GrpcClient::with_shared(
                    grpc_config(&d.current_config()),
                    d.shared.clone(),
                ))
            })
            .clone()
    }

    /// Gives downstream `name` the endpoints discovery found: its clients made so far switch
    /// to them (calls and streams in flight finish where they are), and clients made later
    /// start with them.
    pub fn set_endpoints(
        &self,
        name: &str,
        config: impl FnOnce() -> ClientConfig,
        endpoints: Vec<Endpoint>,
    ) {
        let d = self.entry(name, config);
        let mut found = d.found.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = d.pingpong.get() {
            c.set_endpoints(&endpoints);
        }
        if let Some(c) = d.ttstream.get() {
            c.set_endpoints(&endpoints);
        }
        if let Some(c) = d.grpc.get() {
            let weighted: Vec<_> = endpoints.iter().map(|e| (e.addr, e.weight)).collect();
            c.set_weighted_endpoints(&weighted);
        }
        *found = Some(endpoints);
    }

    /// Forgets downstream `name`'s clients: calls and streams in flight finish on them, new
    /// ones get new clients (from a new configuration, after a reload). Returns the endpoints
    /// discovery had found for it, if any.
    pub fn remove(&self, name: &str) -> Option<Vec<Endpoint>> {
        let d = self
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        let found = d.found.lock().unwrap_or_else(|e| e.into_inner()).take();
        found
    }

    /// Replaces downstream `name`'s clients by new ones made from `config` (settings changed on
    /// a reload, source the same): calls and streams in flight finish on the old ones. The new
    /// ones start on the endpoints discovery found for the old ones, in one step under the
    /// lock, so that no request in between gets clients with none.
    pub fn renew(&self, name: &str, config: ClientConfig) {
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let Some(old) = map.remove(name) else {
            return;
        };
        let found = old.found.lock().unwrap_or_else(|e| e.into_inner()).take();
        if found.is_some() {
            map.insert(
                name.to_owned(),
                Arc::new(DownstreamClients {
                    shared: sluice_resilience::Shared::new(config.max_in_flight),
                    config,
                    found: Mutex::new(found),
                    pingpong: OnceLock::new(),
                    ttstream: OnceLock::new(),
                    grpc: OnceLock::new(),
                }),
            );
        }
    }

    /// Number of downstreams that have clients.
    pub fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True if no downstream was called yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each downstream's connections now: its ping-pong pool (idle, in use, multiplexed) and
    /// its gRPC client's HTTP/2 connections.
    pub fn pool_counts(&self) -> Vec<(String, PoolCounts, usize)> {
        let made = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        made.iter()
            .map(|(name, d)| {
                (
                    name.clone(),
                    d.pingpong
                        .get()
                        .map(|c| c.pool_counts())
                        .unwrap_or_default(),
                    d.grpc.get().map_or(0, |c| c.open_connections()),
                )
            })
            .collect()
    }

    /// Each downstream's retry, ejection and refusal counts, and its endpoints ejected now
    /// (ping-pong client).
    pub fn resilience_counts(&self) -> Vec<(String, Arc<Counters>, usize)> {
        let made = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        made.iter()
            .map(|(name, d)| {
                let ejected = d.pingpong.get().map_or(0, |c| c.ejected());
                (name.clone(), d.shared.counters.clone(), ejected)
            })
            .collect()
    }

    /// True when some downstream of `configured` may be usable: it has an endpoint (the ones
    /// discovery found, once it found any), and its
    /// ping-pong client, if one was made, has an endpoint outside its failure backoff. (Only
    /// the ping-pong client keeps a backoff; a downstream no call has reached yet counts as
    /// usable.)
    pub fn any_usable<'a>(
        &self,
        configured: impl IntoIterator<Item = (&'a String, &'a ClientConfig)>,
    ) -> bool {
        let made = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        configured.into_iter().any(|(name, config)| {
            let made = made.get(name);
            // Discovery's endpoints, once it found some, else the configured ones.
            let has_endpoints = made
                .and_then(|d| {
                    let found = d.found.lock().unwrap_or_else(|e| e.into_inner());
                    found.as_ref().map(|f| !f.is_empty())
                })
                .unwrap_or(!config.endpoints.is_empty());
            has_endpoints
                && made
                    .and_then(|d| d.pingpong.get())
                    .is_none_or(|c| c.has_usable_endpoint())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_entry_per_downstream_and_one_client_per_family() {
        let cache = Clients::new();
        let mut made = 0;
        let a1 = cache.pingpong("a", || {
            made += 1;
            ClientConfig::new("a", vec![])
        });
        let a2 = cache.pingpong("a", || {
            made += 1;
            ClientConfig::new("a", vec![])
        });
        assert!(Arc::ptr_eq(&a1, &a2));
        let t1 = cache.ttstream("a", || unreachable!("the config is kept"));
        let t2 = cache.ttstream("a", || unreachable!());
        assert!(Arc::ptr_eq(&t1, &t2));
        let g1 = cache.grpc("a", || unreachable!());
        let g2 = cache.grpc("a", || unreachable!());
        assert!(Arc::ptr_eq(&g1, &g2));
        cache.pingpong("b", || ClientConfig::new("b", vec![]));
        assert_eq!(made, 1);
        assert_eq!(cache.len(), 2);
    }
}
