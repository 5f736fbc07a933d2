//! The watcher and the registration against a real etcd (started by `sluice_testkit::etcd`),
//! with every write and check done through `etcdctl`, an independent client.
//!
//! Each test skips (passes with a note on stderr) when etcd is not installed, unless
//! `SLUICE_REQUIRE_ETCD=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_discovery::kitex::{self, DEFAULT_PREFIX};
use sluice_discovery::{EtcdConfig, Instance, Registration, Snapshot, Watcher};
use sluice_testkit::etcd::EtcdServer;
use tokio::sync::watch;

/// Upper bound for a change to reach a watcher (the brief: well under a second).
const PROMPT: Duration = Duration::from_secs(1);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sluice_discovery=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn start_etcd() -> Option<EtcdServer> {
    init_logs();
    EtcdServer::start()
}

fn config(etcd: &EtcdServer) -> Arc<EtcdConfig> {
    Arc::new(EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
}

/// Runs a blocking etcdctl helper without stalling the runtime's other worker.
fn ctl<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn key(service: &str, addr: &str) -> String {
    kitex::key(DEFAULT_PREFIX, service, addr.parse().unwrap())
}

fn value(addr: &str, weight: i64, tags: &str) -> String {
    format!(r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":{tags}}}"#)
}

/// Waits until `pred` holds for the current snapshot, at most `limit`; returns the snapshot and
/// how long it took. Panics with the last snapshot on timeout.
async fn wait_for(
    rx: &mut watch::Receiver<Snapshot>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> (Snapshot, Duration) {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        {
            let snap = rx.borrow_and_update();
            if pred(&snap) {
                return (snap.clone(), start.elapsed());
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{what}: watcher channel closed"),
            Err(_) => panic!(
                "{what}: not seen within {limit:?}; last snapshot {:?}",
                *rx.borrow()
            ),
        }
    }
}

fn addrs(s: &Snapshot) -> Vec<String> {
    s.instances.iter().map(|i| i.address.to_string()).collect()
}

fn weight_of(s: &Snapshot, addr: &str) -> Option<u32> {
    s.instances
        .iter()
        .find(|i| i.address.to_string() == addr)
        .map(|i| i.weight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_puts_deletes_and_weights() {
    let Some(etcd) = start_etcd() else { return };
    let a = "10.0.0.1:8888";
    let b = "10.0.0.2:8888";
    // One instance exists before the watcher starts (read by the initial Get).
    ctl(|| etcd.put(&key("echo", a), &value(a, 10, "null")));
    let watcher = Watcher::start(config(&etcd), "echo".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    let (snap, _) = wait_for(&mut rx, Duration::from_secs(5), "first read", |s| {
        s.connected
    })
    .await;
    assert_eq!(addrs(&snap), [a]);
    assert!(snap.revision > 0);

    // A second instance, written exactly as Kitex writes it. Latencies are measured from before
    // etcdctl starts (they include its process start-up).
    let t = Instant::now();
    ctl(|| etcd.put(&key("echo", b), &value(b, 10, "null")));
    let (snap, _) = wait_for(&mut rx, PROMPT, "second instance", |s| {
        s.instances.len() == 2
    })
    .await;
    assert_eq!(addrs(&snap), [a, b]);
    eprintln!("put seen {:?} after etcdctl started", t.elapsed());

    // Another service whose name starts the same is not ours; nor is a key of the prefix itself.
    ctl(|| {
        etcd.put(
            &key("echo2", "10.0.0.9:1"),
            &value("10.0.0.9:1", 10, "null"),
        )
    });
    ctl(|| etcd.put("kitex/registry-etcd/echo", &value("10.0.0.8:1", 10, "null")));

    // Re-weight b (also checks that the echo2 write did not leak in meanwhile).
    let t = Instant::now();
    ctl(|| etcd.put(&key("echo", b), &value(b, 50, "null")));
    let (snap, _) = wait_for(&mut rx, PROMPT, "re-weight", |s| {
        weight_of(s, b) == Some(50)
    })
    .await;
    assert_eq!(
        addrs(&snap),
        [a, b],
        "echo2 must not be seen by an echo watch"
    );
    eprintln!("re-weight seen {:?} after etcdctl started", t.elapsed());

    // Weight 0 reads as 10.
    ctl(|| etcd.put(&key("echo", b), &value(b, 0, "null")));
    wait_for(&mut rx, PROMPT, "weight 0", |s| weight_of(s, b) == Some(10)).await;

    // A value that does not decode is skipped (and removes what the key held).
    ctl(|| etcd.put(&key("echo", b), "{not json"));
    let (snap, _) = wait_for(&mut rx, PROMPT, "bad value", |s| s.instances.len() == 1).await;
    assert_eq!(addrs(&snap), [a]);
    assert_eq!(watcher.stats().decode_errors, 1);

    // Delete.
    let t = Instant::now();
    assert_eq!(ctl(|| etcd.del(&key("echo", a))), 1);
    let (snap, _) = wait_for(&mut rx, PROMPT, "delete", |s| s.instances.is_empty()).await;
    assert!(snap.connected);
    eprintln!("delete seen {:?} after etcdctl started", t.elapsed());
    assert_eq!(watcher.stats().failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_filters_by_tags() {
    let Some(etcd) = start_etcd() else { return };
    let tags = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let watcher = Watcher::start(config(&etcd), "tagged".into(), tags);
    let mut rx = watcher.subscribe();
    wait_for(&mut rx, Duration::from_secs(5), "first read", |s| {
        s.connected
    })
    .await;

    let prod = "10.0.1.1:1";
    let dev = "10.0.1.2:1";
    ctl(|| etcd.put(&key("tagged", dev), &value(dev, 10, r#"{"env":"dev"}"#)));
    ctl(|| {
        etcd.put(
            &key("tagged", prod),
            &value(prod, 10, r#"{"env":"prod","zone":"a"}"#),
        )
    });
    let (snap, _) = wait_for(&mut rx, PROMPT, "prod instance", |s| {
        !s.instances.is_empty()
    })
    .await;
    assert_eq!(addrs(&snap), [prod]);
    assert_eq!(
        snap.instances[0].tags.get("zone").map(String::as_str),
        Some("a")
    );

    // dev becomes prod: in; prod becomes dev: out.
    ctl(|| etcd.put(&key("tagged", dev), &value(dev, 10, r#"{"env":"prod"}"#)));
    wait_for(&mut rx, PROMPT, "dev retagged", |s| s.instances.len() == 2).await;
    ctl(|| etcd.put(&key("tagged", prod), &value(prod, 10, r#"{"env":"dev"}"#)));
    let (snap, _) = wait_for(&mut rx, PROMPT, "prod retagged", |s| s.instances.len() == 1).await;
    assert_eq!(addrs(&snap), [dev]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_keeps_instances_through_an_outage_and_catches_up() {
    let Some(mut etcd) = start_etcd() else { return };
    let a = "10.0.2.1:1";
    let b = "10.0.2.2:1";
    ctl(|| etcd.put(&key("svc", a), &value(a, 10, "null")));
    let watcher = Watcher::start(config(&etcd), "svc".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    wait_for(&mut rx, Duration::from_secs(5), "first read", |s| {
        s.connected
    })
    .await;

    ctl(|| etcd.stop());
    let (snap, took) = wait_for(&mut rx, Duration::from_secs(5), "disconnect", |s| {
        !s.connected
    })
    .await;
    assert_eq!(addrs(&snap), [a], "last known instances are kept");
    eprintln!("outage noticed after {took:?}");

    // While etcd is down nothing changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = watcher.snapshot();
    assert!(!snap.connected);
    assert_eq!(addrs(&snap), [a]);
    assert!(watcher.stats().failures >= 1);

    // Back up; a write made right after the restart (likely before the watcher's next retry) is
    // seen through the re-read or the new watch.
    ctl(|| etcd.restart());
    ctl(|| etcd.put(&key("svc", b), &value(b, 10, "null")));
    let (snap, took) = wait_for(&mut rx, Duration::from_secs(10), "catch up", |s| {
        s.connected && s.instances.len() == 2
    })
    .await;
    assert_eq!(addrs(&snap), [a, b]);
    eprintln!("caught up {took:?} after the restart");
    assert_eq!(watcher.stats().reconnects, 1);

    // And the watch is live again.
    ctl(|| etcd.del(&key("svc", a)));
    let (snap, _) = wait_for(&mut rx, PROMPT, "delete after reconnect", |s| {
        s.instances.len() == 1
    })
    .await;
    assert_eq!(addrs(&snap), [b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_started_while_etcd_is_down_connects_later() {
    let Some(mut etcd) = start_etcd() else { return };
    let a = "10.0.3.1:1";
    ctl(|| etcd.put(&key("late", a), &value(a, 10, "null")));
    ctl(|| etcd.stop());
    let watcher = Watcher::start(config(&etcd), "late".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(*rx.borrow(), Snapshot::default());
    ctl(|| etcd.restart());
    let (snap, _) = wait_for(&mut rx, Duration::from_secs(10), "connect", |s| s.connected).await;
    assert_eq!(addrs(&snap), [a]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watcher_or_registration_stops_its_task() {
    let Some(etcd) = start_etcd() else { return };
    let config = config(&etcd);
    let watcher = Watcher::start(config.clone(), "drop".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    wait_for(&mut rx, Duration::from_secs(5), "first read", |s| {
        s.connected
    })
    .await;
    let reg = Registration::start(
        config.clone(),
        "drop".into(),
        Instance::new("10.0.4.1:1".parse().unwrap()),
        Duration::from_secs(60),
    );
    assert!(Arc::strong_count(&config) > 1);
    drop(watcher);
    drop(reg);
    // The tasks held the other references to the config; they are gone once the tasks are.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&config) > 1 {
        assert!(Instant::now() < deadline, "tasks still alive after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The watch channel's sender lived in the task.
    assert!(rx.changed().await.is_err());
}

/// Polls `cond` every 50 ms for at most `limit`; returns how long it took.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ctl(&mut cond) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_puts_keeps_alive_restores_and_deregisters() {
    let Some(etcd) = start_etcd() else { return };
    let ttl = Duration::from_secs(2);
    let instance = Instance::new("127.0.0.1:29788".parse().unwrap());
    let reg = Registration::start(config(&etcd), "kxserver".into(), instance, ttl);
    assert_eq!(reg.key(), "kitex/registry-etcd/kxserver/127.0.0.1:29788");
    let key = reg.key().to_string();

    // The key with exactly the value a Kitex server writes, under a lease.
    eventually(Duration::from_secs(5), "registered", || {
        etcd.get(&key).is_some()
    })
    .await;
    assert_eq!(
        etcd.get(&key).unwrap(),
        r#"{"network":"tcp","address":"127.0.0.1:29788","weight":10,"tags":null}"#
    );
    let lease = ctl(|| etcd.lease_of(&key)).unwrap();
    assert_ne!(lease, 0, "the key must carry a lease");
    assert!(ctl(|| etcd.lease_ttl(lease)).is_some_and(|t| t <= 2));
    // The status follows the put's answer, which may come a moment after etcdctl saw the key.
    eventually(PROMPT, "status registered", || reg.status().registered).await;
    assert_eq!(reg.status().lease, lease);

    // Keep-alive: the key outlives three TTLs.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert!(
            ctl(|| etcd.get(&key)).is_some(),
            "key expired despite keep-alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        ctl(|| etcd.lease_of(&key)),
        Some(lease),
        "same lease all along"
    );

    // Deleted by someone else: put back promptly.
    assert_eq!(ctl(|| etcd.del(&key)), 1);
    let took = eventually(Duration::from_millis(1500), "re-put after delete", || {
        etcd.get(&key).is_some()
    })
    .await;
    eprintln!("key back after {took:?}");
    assert_eq!(ctl(|| etcd.lease_of(&key)), Some(lease));
    eventually(PROMPT, "puts counted", || reg.status().puts >= 2).await;

    // Lease revoked by someone else: a new lease, and the key comes back.
    ctl(|| etcd.etcdctl_ok(&["lease", "revoke", &format!("{lease:x}")]));
    eventually(Duration::from_secs(5), "re-put after lease loss", || {
        etcd.lease_of(&key).is_some_and(|l| l != 0 && l != lease)
    })
    .await;
    assert!(reg.status().leases_granted >= 2);
    let new_lease = ctl(|| etcd.lease_of(&key)).unwrap();

    // Deregister: key gone and lease revoked, promptly.
    let start = Instant::now();
    reg.deregister().await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(ctl(|| etcd.get(&key)), None);
    assert_eq!(ctl(|| etcd.lease_ttl(new_lease)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_an_etcd_restart() {
    let Some(mut etcd) = start_etcd() else { return };
    let mut instance = Instance::new("10.0.5.1:8888".parse().unwrap());
    instance.tags.insert("cluster".into(), "a".into());
    instance.weight = 20;
    let reg = Registration::start(
        config(&etcd),
        "restart".into(),
        instance,
        Duration::from_secs(60),
    );
    let key = reg.key().to_string();
    eventually(Duration::from_secs(5), "registered", || {
        etcd.get(&key).is_some()
    })
    .await;
    assert_eq!(
        ctl(|| etcd.get(&key)).unwrap(),
        r#"{"network":"tcp","address":"10.0.5.1:8888","weight":20,"tags":{"cluster":"a"}}"#
    );

    ctl(|| etcd.stop());
    let start = Instant::now();
    while reg.status().registered {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "outage not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctl(|| etcd.restart());
    // Deleted while the registration was away: put again on reconnection.
    ctl(|| etcd.del(&key));
    eventually(Duration::from_secs(10), "re-put after restart", || {
        etcd.get(&key).is_some()
    })
    .await;
    assert!(ctl(|| etcd.lease_of(&key)).is_some_and(|l| l != 0));
    let start = Instant::now();
    while !reg.status().registered {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reg.deregister().await;
    assert_eq!(ctl(|| etcd.get(&key)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_is_bounded_when_etcd_is_down() {
    let Some(mut etcd) = start_etcd() else { return };
    let reg = Registration::start(
        config(&etcd),
        "down".into(),
        Instance::new("10.0.6.1:1".parse().unwrap()),
        Duration::from_secs(60),
    );
    let key = reg.key().to_string();
    eventually(Duration::from_secs(5), "registered", || {
        etcd.get(&key).is_some()
    })
    .await;
    ctl(|| etcd.stop());
    let start = Instant::now();
    reg.deregister().await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "deregister took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_with_user_and_password() {
    let Some(mut etcd) = start_etcd() else { return };
    ctl(|| etcd.enable_auth("s3cret"));
    let a = "10.0.7.1:1";
    ctl(|| etcd.put(&key("auth", a), &value(a, 10, "null")));

    let good = Arc::new(EtcdConfig {
        username: Some("root".into()),
        password: Some("s3cret".into()),
        ..(*config(&etcd)).clone()
    });
    let watcher = Watcher::start(good.clone(), "auth".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    let (snap, _) = wait_for(&mut rx, Duration::from_secs(5), "authenticated read", |s| {
        s.connected
    })
    .await;
    assert_eq!(addrs(&snap), [a]);
    let reg = Registration::start(
        good,
        "auth".into(),
        Instance::new("10.0.7.2:1".parse().unwrap()),
        Duration::from_secs(60),
    );
    wait_for(&mut rx, PROMPT * 5, "registered instance", |s| {
        s.instances.len() == 2
    })
    .await;
    reg.deregister().await;
    wait_for(&mut rx, PROMPT, "deregistered instance", |s| {
        s.instances.len() == 1
    })
    .await;

    let bad = Arc::new(EtcdConfig {
        username: Some("root".into()),
        password: Some("wrong".into()),
        ..(*config(&etcd)).clone()
    });
    let refused = Watcher::start(bad, "auth".into(), BTreeMap::new());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!refused.snapshot().connected);
    assert!(refused.stats().failures >= 1);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca_cert.pem(),
        server: leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "etcd",
        ),
        client: leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "sluice"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use sluice_discovery::EtcdTls;
    use sluice_testkit::etcd::EtcdTlsPem;

    init_logs();
    let pki = pki();
    let Some(etcd) = EtcdServer::start_tls(EtcdTlsPem {
        ca_cert: pki.ca.clone(),
        server_cert: pki.server.0.clone(),
        server_key: pki.server.1.clone(),
        client: Some(pki.client.clone()),
    }) else {
        return;
    };
    let a = "10.0.8.1:1";
    ctl(|| etcd.put(&key("tls", a), &value(a, 10, "null")));
    let tls = EtcdTls {
        ca_pem: pki.ca.clone().into_bytes(),
        client_cert_pem: Some(pki.client.0.clone().into_bytes()),
        client_key_pem: Some(pki.client.1.clone().into_bytes()),
        server_name: None,
    };
    let config = Arc::new(EtcdConfig {
        tls: Some(tls.clone()),
        ..(*config(&etcd)).clone()
    });
    let watcher = Watcher::start(config.clone(), "tls".into(), BTreeMap::new());
    let mut rx = watcher.subscribe();
    let (snap, _) = wait_for(&mut rx, Duration::from_secs(5), "read over TLS", |s| {
        s.connected
    })
    .await;
    assert_eq!(addrs(&snap), [a]);
    let reg = Registration::start(
        config,
        "tls".into(),
        Instance::new("10.0.8.2:1".parse().unwrap()),
        Duration::from_secs(60),
    );
    let key2 = reg.key().to_string();
    eventually(Duration::from_secs(5), "registered over TLS", || {
        etcd.get(&key2).is_some()
    })
    .await;
    wait_for(&mut rx, PROMPT, "watch over TLS", |s| {
        s.instances.len() == 2
    })
    .await;
    reg.deregister().await;
    assert_eq!(ctl(|| etcd.get(&key2)), None);

    // Without a client certificate etcd refuses the connection.
    let anonymous = Arc::new(EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        tls: Some(EtcdTls {
            client_cert_pem: None,
            client_key_pem: None,
            ..tls
        }),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    });
    let refused = Watcher::start(anonymous, "tls".into(), BTreeMap::new());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!refused.snapshot().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_right_after_start_leaves_no_key() {
    let Some(etcd) = start_etcd() else { return };
    let config = config(&etcd);
    // Stop at various points of the first registration (connect, grant, put in flight, done).
    for (i, delay_ms) in [0u64, 1, 2, 4, 8, 16, 32, 64].into_iter().enumerate() {
        let addr = format!("10.0.9.{}:1", i + 1);
        let reg = Registration::start(
            config.clone(),
            "early".into(),
            Instance::new(addr.parse().unwrap()),
            Duration::from_secs(60),
        );
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        reg.deregister().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = ctl(|| etcd.get_prefix(&kitex::service_prefix(DEFAULT_PREFIX, "early")));
    assert!(left.is_empty(), "keys left behind: {left:?}");
    let leases = ctl(|| etcd.etcdctl_ok(&["lease", "list"]));
    assert!(
        leases.contains("found 0 leases"),
        "leases left behind: {leases}"
    );
}
