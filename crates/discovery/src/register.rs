//! Registering one listener, as a Kitex server does.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseGrantOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::client::{connect, timed};
use crate::{kitex, EtcdConfig, EtcdError, Instance};

/// Limit for [`Registration::deregister`]: delete and revoke, connection included.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Shortest keep-alive period, whatever the TTL.
const MIN_KEEPALIVE: Duration = Duration::from_millis(500);

/// Lease re-grants in a row within one connection before backing off (a key put with a fresh
/// lease that is reported lost at once points at a server problem).
const MAX_LEASE_RETRIES: u32 = 3;

/// What a [`Registration`] has achieved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// Whether the key is in etcd as far as the registration knows: put, and etcd reachable
    /// since. `false` before the first put and while etcd is unreachable.
    pub registered: bool,
    /// The lease the key was last put with (0 before the first put).
    pub lease: i64,
    /// Puts of the key: the first, and each re-put (key deleted, lease lost, reconnection).
    pub puts: u64,
    /// Leases granted.
    pub leases_granted: u64,
}

/// The self-registration of one listener: `<prefix>/<service>/<address>` with the Kitex JSON
/// value, attached to a lease that is kept alive.
///
/// The task grants a lease (TTL rounded up to whole seconds), puts the key, sends keep-alives
/// every third of the TTL, and watches its own key: if the key is deleted it is put again at once,
/// and if the lease is lost a new one is granted and the key put again. While etcd is unreachable
/// it retries with exponential backoff (100 ms doubling to 5 s, with jitter), logging one warning
/// per outage, and puts the key again on reconnection (reusing the lease if it is still alive).
///
/// Dropping a `Registration` stops the task without touching etcd (the key then disappears when
/// its lease expires); call [`deregister`](Self::deregister) to remove the key at once.
#[derive(Debug)]
pub struct Registration {
    key: String,
    status: Arc<Mutex<RegistrationStatus>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Registration {
    /// Starts registering `instance` as `service`, with a lease of `ttl` (Kitex uses 60 s; at
    /// least 1 s). Must be called within a Tokio runtime. Returns at once; see
    /// [`status`](Self::status) for progress.
    pub fn start(
        config: Arc<EtcdConfig>,
        service: String,
        instance: Instance,
        ttl: Duration,
    ) -> Registration {
        let key = kitex::key(&config.prefix, &service, instance.address);
        let status = Arc::new(Mutex::new(RegistrationStatus::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let keeper = Keeper {
            config,
            key: key.clone(),
            value: kitex::encode(&instance),
            ttl_secs: i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
                .unwrap_or(i64::MAX)
                .max(1),
            status: status.clone(),
            client: None,
            lease: None,
            down_since: None,
            ever_up: false,
        };
        let task = tokio::spawn(keeper.run(stop_rx));
        Registration {
            key,
            status,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The etcd key, `<prefix>/<service>/<host:port>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Progress so far.
    pub fn status(&self) -> RegistrationStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the registration: deletes the key (if it is still attached to this
    /// registration's lease) and revokes the lease, within [`DEREGISTER_TIMEOUT`] in all, then
    /// stops the task. Call it first thing on drain, so clients stop picking this instance.
    /// When etcd cannot be reached in time, the key stays until its lease expires.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        // The task bounds its own clean-up by DEREGISTER_TIMEOUT; this is the backstop.
        let limit = DEREGISTER_TIMEOUT + Duration::from_millis(500);
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                key = %self.key,
                "deregistration did not finish in time; the key stays until its lease expires"
            );
        }
    }
}

/// The task's state.
struct Keeper {
    config: Arc<EtcdConfig>,
    key: String,
    value: String,
    ttl_secs: i64,
    status: Arc<Mutex<RegistrationStatus>>,
    /// The current connection, for the clean-up.
    client: Option<Client>,
    /// The lease the key was last put with.
    lease: Option<i64>,
    down_since: Option<Instant>,
    ever_up: bool,
}

impl Keeper {
    fn update(&self, f: impl FnOnce(&mut RegistrationStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Keeps the registration until `stop` fires (or its sender is dropped), then cleans up.
    async fn run(mut self, stop: oneshot::Receiver<()>) {
        tokio::select! {
            _ = stop => {}
            never = self.maintain() => match never {},
        }
        let key = self.key.clone();
        match tokio::time::timeout(DEREGISTER_TIMEOUT, self.remove()).await {
            Ok(Ok(())) => tracing::info!(%key, "deregistered from etcd"),
            Ok(Err(error)) => {
                tracing::warn!(
                    %key,
                    %error,
                    "deregistration failed; the key stays until its lease expires"
                );
            }
            Err(_) => tracing::warn!(
                %key,
                timeout = ?DEREGISTER_TIMEOUT,
                "deregistration did not finish in time; the key stays until its lease expires"
            ),
        }
        self.update(|s| s.registered = false);
    }

    /// Deletes the key if it still carries our lease, and revokes the lease.
    async fn remove(&mut self) -> Result<(), EtcdError> {
        let Some(lease) = self.lease else {
            return Ok(()); // no lease granted yet, so nothing was put
        };
        let client = match self.client.take() {
            Some(c) => c,
            None => connect(&self.config).await?,
        };
        let rt = self.config.request_timeout;
        let txn = Txn::new()
            .when([Compare::lease(self.key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        let mut kv = client.kv_client();
        let txn_result = timed("delete", rt, kv.txn(txn)).await;
        let mut leases = client.lease_client();
        let revoke = timed("lease revoke", rt, leases.revoke(lease)).await;
        txn_result?;
        match revoke {
            Err(e) if is_lease_not_found(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Sessions with backoff in between, forever.
    async fn maintain(&mut self) -> Infallible {
        let mut backoff = Backoff::new();
        loop {
            let Err(error) = self.session(&mut backoff).await;
            self.client = None;
            self.update(|s| s.registered = false);
            if self.down_since.is_none() {
                self.down_since = Some(Instant::now());
                tracing::warn!(key = %self.key, %error, "etcd registration interrupted; retrying");
            } else {
                tracing::debug!(key = %self.key, %error, "etcd registration retry failed");
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// One connection: lease, put, keep alive, watch the key. Returns when anything fails.
    async fn session(&mut self, backoff: &mut Backoff) -> Result<Infallible, EtcdError> {
        let client = connect(&self.config).await?;
        self.client = Some(client.clone());
        let mut lease_retries = 0;
        loop {
            match self.hold(&client, backoff).await {
                Err(EtcdError::LeaseLost { lease }) if lease_retries < MAX_LEASE_RETRIES => {
                    lease_retries += 1;
                    tracing::warn!(
                        key = %self.key,
                        lease = format!("{lease:x}"),
                        "etcd lease lost; granting a new one"
                    );
                    self.lease = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The lease to put the key with: the previous one if it is still alive, else a new one.
    /// Returns `(lease, granted ttl in seconds)`.
    async fn lease(&mut self, client: &Client) -> Result<(i64, i64), EtcdError> {
        let rt = self.config.request_timeout;
        let mut leases = client.lease_client();
        if let Some(id) = self.lease {
            let resp = timed("lease ttl", rt, leases.time_to_live(id, None)).await?;
            if resp.ttl() > 0 {
                return Ok((id, resp.granted_ttl().max(1)));
            }
            self.lease = None;
        }
        // The lease id is chosen here rather than by etcd and recorded before the grant, so a
        // deregistration that interrupts the grant or the put still knows which lease to revoke
        // (revoking also removes the key if the put went through).
        let id = new_lease_id();
        self.lease = Some(id);
        let options = LeaseGrantOptions::new().with_id(id);
        let resp = timed(
            "lease grant",
            rt,
            leases.grant(self.ttl_secs, Some(options)),
        )
        .await?;
        self.update(|s| s.leases_granted += 1);
        tracing::debug!(
            key = %self.key,
            lease = format!("{:x}", resp.id()),
            ttl = resp.ttl(),
            "granted etcd lease"
        );
        Ok((resp.id(), resp.ttl().max(1)))
    }

    /// Puts the key with `lease`; returns the revision of the put.
    async fn put(&mut self, client: &Client, lease: i64) -> Result<i64, EtcdError> {
        let mut kv = client.kv_client();
        let options = PutOptions::new().with_lease(lease);
        let put = kv.put(self.key.clone(), self.value.clone(), Some(options));
        let resp = match timed("put", self.config.request_timeout, put).await {
            Err(e) if is_lease_not_found(&e) => return Err(EtcdError::LeaseLost { lease }),
            other => other?,
        };
        self.update(|s| {
            s.registered = true;
            s.lease = lease;
            s.puts += 1;
        });
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Puts the key and keeps it: keep-alives every third of the TTL, re-put on deletion.
    async fn hold(
        &mut self,
        client: &Client,
        backoff: &mut Backoff,
    ) -> Result<Infallible, EtcdError> {
        let rt = self.config.request_timeout;
        let (lease, ttl) = self.lease(client).await?;
        let revision = self.put(client, lease).await?;
        if !self.ever_up {
            self.ever_up = true;
            tracing::info!(
                key = %self.key,
                lease = format!("{lease:x}"),
                ttl,
                "registered in etcd"
            );
        } else if let Some(since) = self.down_since.take() {
            tracing::info!(
                key = %self.key,
                lease = format!("{lease:x}"),
                down_for = ?since.elapsed(),
                "registration restored"
            );
        }
        self.down_since = None;

        let mut leases = client.lease_client();
        let (mut keeper, mut acks) = match timed("keep-alive", rt, leases.keep_alive(lease)).await {
            Err(EtcdError::Client {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => return Err(EtcdError::LeaseLost { lease }),
            other => other?,
        };
        let mut watches = client.watch_client();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let (_watch_requests, mut events) =
            timed("watch", rt, watches.watch(self.key.clone(), Some(options)))
                .await?
                .split();
        backoff.reset();

        let period =
            Duration::from_millis(u64::try_from(ttl).unwrap_or(1) * 1000 / 3).max(MIN_KEEPALIVE);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    timed("keep-alive", rt, keeper.keep_alive()).await?;
                    let ack = timed("keep-alive", rt, acks.message()).await?
                        .ok_or(EtcdError::StreamClosed { op: "keep-alive" })?;
                    if ack.ttl() <= 0 {
                        return Err(EtcdError::LeaseLost { lease });
                    }
                }
                msg = events.message() => {
                    let resp = msg
                        .map_err(|source| EtcdError::Client { op: "watch", source })?
                        .ok_or(EtcdError::StreamClosed { op: "watch" })?;
                    if resp.canceled() || resp.compact_revision() > 0 {
                        return Err(EtcdError::WatchCanceled {
                            reason: resp.cancel_reason().to_string(),
                        });
                    }
                    let deleted = resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete);
                    if deleted {
                        tracing::warn!(
                            key = %self.key,
                            "registration key was deleted; putting it again"
                        );
                        self.put(client, lease).await?;
                    }
                }
            }
        }
    }
}

/// A random positive lease id (0 would let etcd choose).
fn new_lease_id() -> i64 {
    loop {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

/// Whether etcd answered "requested lease not found".
fn is_lease_not_found(e: &EtcdError) -> bool {
    match e {
        EtcdError::Client {
            source: etcd_client::Error::GRpcStatus(status),
            ..
        } => status.message().contains("lease not found"),
        EtcdError::Client {
            source: etcd_client::Error::LeaseKeepAliveError(msg),
            ..
        } => msg.contains("lease not found"),
        _ => false,
    }
}
