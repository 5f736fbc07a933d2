//! Following one service's instances in etcd.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchRequestSender, WatchResponse};
use sluice_io::RateLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::client::{connect, timed};
use crate::{kitex, EtcdConfig, EtcdError, FormatError, Instance};

/// Most instances a [`Watcher`] keeps for one service. Keys past it are left out (counted in
/// [`WatchStats::over_cap`] and logged) until a later re-read finds room.
pub const MAX_INSTANCES: usize = 10_000;

/// Largest gRPC message accepted from etcd (a Get of [`MAX_INSTANCES`] values, or a batch of
/// watch events). tonic's default of 4 MiB could make a large service unreadable.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// After this long without a watch message, a progress request checks that the stream is alive.
const PROBE_AFTER: Duration = Duration::from_secs(10);

/// Re-reads in a row (without backoff) after the watch revision was compacted.
const MAX_COMPACTION_RETRIES: u32 = 3;

/// At most one warning of a kind per this period; the rest are counted and summarised.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a [`Watcher`] currently knows about its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The instances whose tags match, sorted by address, one per address (the first key wins
    /// when two keys name the same address). During an etcd outage, the last known ones.
    pub instances: Arc<Vec<Instance>>,
    /// Whether the watch is live. `false` before the first read and while etcd is unreachable.
    pub connected: bool,
    /// The etcd revision the instances are as of (0 before the first read).
    pub revision: i64,
}

impl Default for Snapshot {
    /// No instances, not connected, revision 0.
    fn default() -> Snapshot {
        Snapshot {
            instances: Arc::new(Vec::new()),
            connected: false,
            revision: 0,
        }
    }
}

/// Counters of a [`Watcher`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Times the watch broke or could not be established (each is followed by a retry).
    pub failures: u64,
    /// Times the service was read again after the watch had been live and broke.
    pub reconnects: u64,
    /// Values that did not decode as a Kitex instance (skipped).
    pub decode_errors: u64,
    /// Instances left out because the service had [`MAX_INSTANCES`] already.
    pub over_cap: u64,
    /// Times the watch revision had been compacted, forcing a re-read.
    pub compactions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    failures: AtomicU64,
    reconnects: AtomicU64,
    decode_errors: AtomicU64,
    over_cap: AtomicU64,
    compactions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Follows the instances of one service: `<prefix>/<service>/` in etcd.
///
/// It reads the prefix (Get), then watches it from the next revision, and publishes a
/// [`Snapshot`] on every change, normally within milliseconds of the etcd write. Instances whose
/// tags do not include every `(key, value)` of the filter are left out; values that do not decode
/// are skipped with a rate-limited warning naming the key and the reason.
///
/// When etcd is unreachable or the watch breaks, the snapshot keeps the last known instances with
/// `connected: false`, one warning is logged for the outage, and the watcher reconnects with
/// exponential backoff (100 ms doubling to 5 s, with jitter). On reconnection it reads the prefix
/// again, so changes made meanwhile are seen; the same happens when the watch revision has been
/// compacted. A watch that stays silent is probed (progress request every 10 s) so a stalled
/// connection is noticed.
///
/// The watcher owns its task: dropping it stops the task.
#[derive(Debug)]
pub struct Watcher {
    service: String,
    rx: watch::Receiver<Snapshot>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts watching `service` (instances under `<config.prefix>/<service>/`) with the tag
    /// filter `tags` (empty: all instances). Must be called within a Tokio runtime. Returns at
    /// once; the first snapshot with `connected: true` follows when etcd answers.
    pub fn start(
        config: Arc<EtcdConfig>,
        service: String,
        tags: BTreeMap<String, String>,
    ) -> Watcher {
        Watcher::start_with(config, service, tags, PROBE_AFTER)
    }

    /// [`start`](Self::start) with the quiet time after which the stream is probed.
    fn start_with(
        config: Arc<EtcdConfig>,
        service: String,
        tags: BTreeMap<String, String>,
        probe_after: Duration,
    ) -> Watcher {
        let (tx, rx) = watch::channel(Snapshot::default());
        let counters = Arc::new(Counters::default());
        let state = State {
            prefix: kitex::service_prefix(&config.prefix, &service),
            service: service.clone(),
            tags,
            probe_after,
            instances: BTreeMap::new(),
            counters: counters.clone(),
            decode_warn: RateLog::new(1, WARN_EVERY),
            cap_warn: RateLog::new(1, WARN_EVERY),
        };
        let task = tokio::spawn(run(config, state, tx));
        Watcher {
            service,
            rx,
            counters,
            task,
        }
    }

    /// A receiver of the snapshots; the current one is available at once with `borrow()`.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.rx.clone()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    /// The service this watcher follows.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The counters so far.
    pub fn stats(&self) -> WatchStats {
        let c = &self.counters;
        WatchStats {
            failures: c.failures.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            decode_errors: c.decode_errors.load(Ordering::Relaxed),
            over_cap: c.over_cap.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
        }
    }
}

/// The task's view of the service.
#[derive(Debug)]
struct State {
    prefix: String,
    service: String,
    tags: BTreeMap<String, String>,
    /// Quiet time after which the watch stream is probed.
    probe_after: Duration,
    /// Matching instances by key.
    instances: BTreeMap<Vec<u8>, Instance>,
    counters: Arc<Counters>,
    decode_warn: RateLog,
    cap_warn: RateLog,
}

impl State {
    /// Applies a put of `key` = `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        match kitex::decode(value) {
            Err(e) => {
                self.instances.remove(key);
                self.decode_error(key, &e);
            }
            Ok(instance) if !instance.has_tags(&self.tags) => {
                self.instances.remove(key);
            }
            Ok(instance) => {
                if self.instances.len() >= MAX_INSTANCES && !self.instances.contains_key(key) {
                    bump(&self.counters.over_cap);
                    if let Some(held_back) = self.cap_warn.allow() {
                        tracing::warn!(
                            service = %self.service,
                            key = %String::from_utf8_lossy(key),
                            cap = MAX_INSTANCES,
                            held_back,
                            "too many instances for one service; leaving this one out"
                        );
                    }
                    return;
                }
                self.instances.insert(key.to_vec(), instance);
            }
        }
    }

    fn decode_error(&mut self, key: &[u8], error: &FormatError) {
        bump(&self.counters.decode_errors);
        if let Some(held_back) = self.decode_warn.allow() {
            tracing::warn!(
                service = %self.service,
                key = %String::from_utf8_lossy(key),
                reason = %error,
                held_back,
                "skipping a registry value that is not a Kitex instance"
            );
        }
    }

    /// Applies a delete of `key`.
    fn delete(&mut self, key: &[u8]) {
        self.instances.remove(key);
    }

    /// Replaces everything with the result of a Get.
    fn reload<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        self.instances.clear();
        for (key, value) in kvs {
            self.put(key, value);
        }
    }

    /// The instances sorted by address, one per address.
    fn list(&self) -> Vec<Instance> {
        let mut list: Vec<Instance> = self.instances.values().cloned().collect();
        // Stable: among equal addresses the first key stays first and is kept.
        list.sort_by_key(|i| i.address);
        list.dedup_by_key(|i| i.address);
        list
    }

    /// Publishes the current instances as connected at `revision`; receivers are woken only when
    /// the instances or the connected flag change.
    fn publish(&self, tx: &watch::Sender<Snapshot>, revision: i64) {
        let list = self.list();
        tx.send_if_modified(|s| {
            s.revision = revision;
            let changed = !s.connected || *s.instances != list;
            if changed {
                s.instances = Arc::new(list);
                s.connected = true;
            }
            changed
        });
    }
}

/// The task: sessions with backoff in between, forever.
async fn run(config: Arc<EtcdConfig>, mut state: State, tx: watch::Sender<Snapshot>) {
    let mut backoff = Backoff::new();
    let mut link = Link::default();
    loop {
        let Err(error) = session(&config, &mut state, &tx, &mut backoff, &mut link).await;
        bump(&state.counters.failures);
        tx.send_if_modified(|s| std::mem::replace(&mut s.connected, false));
        if link.down_since.is_none() {
            link.down_since = Some(Instant::now());
            if link.ever_up {
                tracing::warn!(
                    service = %state.service,
                    %error,
                    kept = state.instances.len(),
                    "etcd watch lost; keeping the last known instances and reconnecting"
                );
            } else {
                tracing::warn!(service = %state.service, %error, "etcd unreachable; retrying");
            }
        } else {
            tracing::debug!(service = %state.service, %error, "etcd watch retry failed");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Outage bookkeeping across sessions.
#[derive(Debug, Default)]
struct Link {
    /// Set while etcd is unreachable (from the first failure to the next successful read).
    down_since: Option<Instant>,
    /// Whether a read ever succeeded.
    ever_up: bool,
}

/// One connection: read, watch, follow; on compaction, read again. Returns when anything fails.
async fn session(
    config: &EtcdConfig,
    state: &mut State,
    tx: &watch::Sender<Snapshot>,
    backoff: &mut Backoff,
    link: &mut Link,
) -> Result<Infallible, EtcdError> {
    let client = connect(config).await?;
    let mut compactions = 0;
    loop {
        let revision = read(config, &client, state).await?;
        // Counters before the snapshot, so a receiver woken by it sees them updated.
        if link.ever_up {
            if let Some(since) = link.down_since.take() {
                bump(&state.counters.reconnects);
                tracing::info!(
                    service = %state.service,
                    down_for = ?since.elapsed(),
                    instances = state.instances.len(),
                    "etcd watch restored"
                );
            }
        } else {
            link.ever_up = true;
            link.down_since = None;
        }
        state.publish(tx, revision);
        match follow(config, &client, state, tx, revision, backoff).await {
            Err(EtcdError::Compacted { compact_revision })
                if compactions < MAX_COMPACTION_RETRIES =>
            {
                compactions += 1;
                bump(&state.counters.compactions);
                tracing::info!(
                    service = %state.service,
                    compact_revision,
                    "watch revision compacted; reading the service again"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads every key under the prefix (at most [`MAX_INSTANCES`] + 1) into `state`; returns the
/// revision of the read.
async fn read(config: &EtcdConfig, client: &Client, state: &mut State) -> Result<i64, EtcdError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let limit = i64::try_from(MAX_INSTANCES + 1).unwrap_or(i64::MAX);
    let options = GetOptions::new().with_prefix().with_limit(limit);
    let resp = timed(
        "get",
        config.request_timeout,
        kv.get(state.prefix.as_bytes().to_vec(), Some(options)),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    state.reload(resp.kvs().iter().map(|kv| (kv.key(), kv.value())));
    if resp.more() {
        bump(&state.counters.over_cap);
        if let Some(held_back) = state.cap_warn.allow() {
            tracing::warn!(
                service = %state.service,
                cap = MAX_INSTANCES,
                held_back,
                "more keys under the service prefix than the cap; the rest are left out"
            );
        }
    }
    tracing::debug!(
        service = %state.service,
        revision,
        keys = resp.kvs().len(),
        instances = state.instances.len(),
        "read service from etcd"
    );
    Ok(revision)
}

/// Watches the prefix from `revision + 1` and applies every event until the stream fails.
async fn follow(
    config: &EtcdConfig,
    client: &Client,
    state: &mut State,
    tx: &watch::Sender<Snapshot>,
    revision: i64,
    backoff: &mut Backoff,
) -> Result<Infallible, EtcdError> {
    let mut wc = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let stream = timed(
        "watch",
        config.request_timeout,
        wc.watch(state.prefix.as_bytes().to_vec(), Some(options)),
    )
    .await?;
    let (mut sender, mut responses) = stream.split();
    let mut created = false;
    let mut probing = false;
    loop {
        let wait = if probing || !created {
            config.request_timeout
        } else {
            state.probe_after
        };
        match tokio::time::timeout(wait, responses.message()).await {
            Ok(Ok(Some(resp))) => {
                probing = false;
                if !created {
                    created = true;
                    // The watch is live: the next outage starts from the shortest delay.
                    backoff.reset();
                }
                apply(state, tx, &resp)?;
            }
            Ok(Ok(None)) => return Err(EtcdError::StreamClosed { op: "watch" }),
            Ok(Err(source)) => {
                return Err(EtcdError::Client {
                    op: "watch",
                    source,
                })
            }
            Err(_) if probing || !created => {
                return Err(EtcdError::Timeout {
                    op: if created {
                        "watch progress"
                    } else {
                        "watch create"
                    },
                    timeout: wait,
                })
            }
            Err(_) => {
                probe(config, &mut sender).await?;
                probing = true;
            }
        }
    }
}

/// Asks etcd for a progress notification on the watch stream (answered even when nothing
/// changed), to tell a quiet stream from a dead one.
async fn probe(config: &EtcdConfig, sender: &mut WatchRequestSender) -> Result<(), EtcdError> {
    timed(
        "watch progress",
        config.request_timeout,
        sender.request_progress(),
    )
    .await
}

/// Applies one watch response and publishes the result.
fn apply(
    state: &mut State,
    tx: &watch::Sender<Snapshot>,
    resp: &WatchResponse,
) -> Result<(), EtcdError> {
    if resp.compact_revision() > 0 {
        return Err(EtcdError::Compacted {
            compact_revision: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        return Err(EtcdError::WatchCanceled {
            reason: resp.cancel_reason().to_string(),
        });
    }
    if resp.events().is_empty() {
        // `created` or a progress notification: nothing changed.
        return Ok(());
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        match event.event_type() {
            EventType::Put => state.put(kv.key(), kv.value()),
            EventType::Delete => state.delete(kv.key()),
        }
    }
    let revision = resp.header().map_or(0, |h| h.revision());
    state.publish(tx, revision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tags: &[(&str, &str)]) -> State {
        State {
            prefix: "p/s/".into(),
            service: "s".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            probe_after: PROBE_AFTER,
            instances: BTreeMap::new(),
            counters: Arc::new(Counters::default()),
            decode_warn: RateLog::new(1, WARN_EVERY),
            cap_warn: RateLog::new(1, WARN_EVERY),
        }
    }

    fn value(addr: &str, weight: i64, tags: &str) -> Vec<u8> {
        format!(r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":{tags}}}"#)
            .into_bytes()
    }

    #[test]
    fn puts_deletes_filters_and_dedup() {
        let mut s = state(&[("env", "prod")]);
        s.put(b"p/s/a", &value("10.0.0.2:1", 5, r#"{"env":"prod"}"#));
        s.put(
            b"p/s/b",
            &value("10.0.0.1:1", 5, r#"{"env":"prod","x":"y"}"#),
        );
        s.put(b"p/s/c", &value("10.0.0.3:1", 5, r#"{"env":"dev"}"#));
        s.put(b"p/s/d", &value("10.0.0.4:1", 5, "null"));
        let addrs: Vec<String> = s.list().iter().map(|i| i.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:1", "10.0.0.2:1"]);
        // Re-tagging out of the filter removes; a bad value removes and counts.
        s.put(b"p/s/a", &value("10.0.0.2:1", 5, r#"{"env":"dev"}"#));
        s.put(b"p/s/b", b"{oops");
        assert!(s.list().is_empty());
        assert_eq!(s.counters.decode_errors.load(Ordering::Relaxed), 1);
        // Two keys, one address: one instance, the first key's.
        let mut s = state(&[]);
        s.put(b"p/s/x2", &value("10.0.0.9:1", 2, "null"));
        s.put(b"p/s/x1", &value("10.0.0.9:1", 1, "null"));
        let list = s.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].weight, 1);
        s.delete(b"p/s/x1");
        assert_eq!(s.list()[0].weight, 2);
    }

    #[test]
    fn cap_is_enforced() {
        let mut s = state(&[]);
        for i in 0..MAX_INSTANCES + 5 {
            let port = 1000 + i;
            let key = format!("p/s/{i}");
            s.put(
                key.as_bytes(),
                &value(&format!("10.0.0.1:{port}"), 1, "null"),
            );
        }
        assert_eq!(s.instances.len(), MAX_INSTANCES);
        assert_eq!(s.counters.over_cap.load(Ordering::Relaxed), 5);
        // Updating a kept key still works at the cap.
        s.put(b"p/s/0", &value("10.0.0.1:1000", 7, "null"));
        assert_eq!(s.instances[b"p/s/0".as_slice()].weight, 7);
    }

    /// Progress probes keep a quiet watch up, and a stalled etcd (SIGSTOP: the connection stays
    /// open but nothing answers) is noticed through them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quiet_watch_is_probed_and_a_stalled_etcd_is_noticed() {
        let Some(etcd) = sluice_testkit::etcd::EtcdServer::start() else {
            return;
        };
        let config = Arc::new(EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(700),
            ..EtcdConfig::default()
        });
        let probe_after = Duration::from_millis(200);
        let watcher = Watcher::start_with(config, "quiet".into(), BTreeMap::new(), probe_after);
        let mut rx = watcher.subscribe();
        let connected = |rx: &mut watch::Receiver<Snapshot>, want: bool, limit: Duration| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(limit, rx.wait_for(|s| s.connected == want))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        };
        assert!(connected(&mut rx, true, Duration::from_secs(5)).await);
        // Many probe periods of silence: still connected, no failure.
        tokio::time::sleep(probe_after * 8).await;
        assert!(watcher.snapshot().connected);
        assert_eq!(watcher.stats().failures, 0);

        tokio::task::block_in_place(|| etcd.pause());
        // Noticed within a probe period plus the request timeout (and some slack).
        assert!(
            connected(&mut rx, false, Duration::from_secs(3)).await,
            "stall not noticed"
        );
        tokio::task::block_in_place(|| etcd.resume());
        assert!(
            connected(&mut rx, true, Duration::from_secs(10)).await,
            "not reconnected after the stall"
        );
        assert_eq!(watcher.stats().reconnects, 1);
    }

    #[test]
    fn publish_wakes_only_on_change() {
        let (tx, mut rx) = watch::channel(Snapshot::default());
        let mut s = state(&[]);
        s.put(b"p/s/a", &value("10.0.0.1:1", 1, "null"));
        s.publish(&tx, 5);
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert!(snap.connected);
        assert_eq!(snap.revision, 5);
        assert_eq!(snap.instances.len(), 1);
        s.publish(&tx, 6);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().revision, 6);
    }
}
