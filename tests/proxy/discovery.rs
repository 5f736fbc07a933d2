//! Discovery through the binary with a real etcd (Debian's etcd-server, started per test on
//! free loopback ports; skipped with a message when it is missing, required in CI): downstreams
//! found in etcd in Kitex's registry format, an etcd outage, discovering routes, listeners
//! registering themselves, DNS names re-resolved, and reloads under load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{Call, ClientConfig, Endpoint, GenericClient};
use sluice_server::echo::EchoHandler;
use sluice_sniff::Codec;
use sluice_testkit::etcd::EtcdServer;
use sluice_thrift::MessageType;
use sluice_ttheader::{int_key, Header};

use crate::support::*;

/// The value a Kitex v0.16 server with no tags writes (registry-etcd).
fn kitex_value(addr: SocketAddr, weight: i32, tags: Option<&str>) -> String {
    format!(
        r#"{{"network":"tcp","address":"{addr}","weight":{weight},"tags":{}}}"#,
        tags.unwrap_or("null")
    )
}

fn key(service: &str, addr: SocketAddr) -> String {
    format!("kitex/registry-etcd/{service}/{addr}")
}

fn client_to(proxy: SocketAddr) -> Arc<GenericClient> {
    Arc::new(GenericClient::new(
        ClientConfig::new(
            "proxy",
            vec![Endpoint {
                addr: proxy,
                weight: 1,
            }],
        )
        .with_request_timeout(Duration::from_secs(5)),
    ))
}

fn call(to_service: Option<&str>, service: &str) -> Call {
    let mut header = Header::default();
    header.str_kvs.insert(
        sluice_ttheader::str_key::IDL_SERVICE_NAME,
        service.to_owned(),
    );
    if let Some(t) = to_service {
        header.int_kvs.insert(int_key::TO_SERVICE, t.to_owned());
    }
    Call {
        method: "Echo".into(),
        msg_type: MessageType::Call,
        codec: Codec::Thrift,
        args: thrift_args(b"hi"),
        header,
        deadline: None,
    }
}

/// The message of a reply that should be a REPLY, for assertions.
fn why(r: &sluice_client::Reply) -> String {
    if r.msg_type == MessageType::Exception {
        sluice_thrift::ApplicationException::decode(&r.body)
            .map(|(e, _)| e.message)
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// Calls until one succeeds or `within` passes.
async fn until_ok(c: &GenericClient, service: &str, within: Duration) {
    let start = Instant::now();
    loop {
        match c.call(call(None, service)).await {
            Ok(Some(r)) if r.msg_type == MessageType::Reply => return,
            other => assert!(
                start.elapsed() < within,
                "no successful call within {within:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds, for at most `within`; the time it took.
async fn within(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Closed-loop callers through the proxy until stopped: successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(proxy: SocketAddr, service: &'static str, callers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let c = client_to(proxy);
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match c.call(call(None, service)).await {
                            Ok(Some(r)) if r.msg_type == MessageType::Reply => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if errors.len() < 5 {
                                    errors.push(format!("{other:?}"));
                                }
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the callers: (successes, failures, the first errors).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn etcd_config(etcd: &EtcdServer, body: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[admin]
address = "127.0.0.1:{{admin_port}}"

[discovery.etcd]
endpoints = ["{}"]
{body}
"#,
        etcd.endpoint()
    )
}

async fn metrics_text(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// One HTTP/1.1 request to the admin listener: status and body.
pub(crate) async fn http_request(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut out))
        .await
        .expect("admin answers")
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap();
    (status, body)
}

async fn http_get(admin: SocketAddr, path: &str) -> (u16, String) {
    http_request(admin, "GET", path).await
}

/// The value of a series in the text format (`name{labels}` exactly as written), if present.
pub(crate) fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_found_in_etcd_follows_every_change_without_failing_a_call() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let (a, ea, _da) = start_echo().await;
    let (b, eb, _db) = start_echo().await;
    let (c, ec, _dc) = start_echo().await;
    // Another service whose name starts the same: never picked for `echo`.
    let (other, eo, _do) = start_echo().await;
    etcd.put(&key("echo2", other), &kitex_value(other, 10, None));
    let proxy = Sluice::start(&etcd_config(
        &etcd,
        r#"
[downstreams.echo]
discovery = "etcd"
balance = "weighted-random"

[downstreams.prod]
discovery = "etcd"
service = "echo"
tags = { env = "prod" }

[[routes]]
service = "ProdService"
downstream = "prod"

[[routes]]
service = "*"
downstream = "echo"
"#,
    ));
    let c1 = client_to(proxy.addr);
    etcd.put(&key("echo", a), &kitex_value(a, 10, None));
    until_ok(&c1, "EchoService", Duration::from_secs(3)).await;

    let load = Load::start(proxy.addr, "EchoService", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second instance: used within a second.
    let before_b = eb.requests_seen();
    etcd.put(&key("echo", b), &kitex_value(b, 10, None));
    let took = within(Duration::from_secs(1), "b takes calls", || {
        eb.requests_seen() > before_b + 10
    })
    .await;
    eprintln!("second instance used after {took:?}");
    // Re-weighted: b at weight 1 against a's 10 gets few of the calls.
    etcd.put(&key("echo", b), &kitex_value(b, 1, None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a0, b0) = (ea.requests_seen(), eb.requests_seen());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (da, db) = (ea.requests_seen() - a0, eb.requests_seen() - b0);
    assert!(
        da > 4 * db,
        "weights 10:1 give a most calls (a {da}, b {db})"
    );
    // A weight of 0 reads as 10, as in Kitex: back to an even share.
    etcd.put(&key("echo", b), &kitex_value(b, 0, None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a0, b0) = (ea.requests_seen(), eb.requests_seen());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (da, db) = (ea.requests_seen() - a0, eb.requests_seen() - b0);
    assert!(db * 3 > da, "weight 0 is 10 (a {da}, b {db})");
    // The first instance leaves: every call moves to b, none fails.
    assert_eq!(etcd.del(&key("echo", a)), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a_after = ea.requests_seen();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ea.requests_seen(), a_after, "a removed: no call reaches it");
    let (ok, failed, errors) = load.finish().await;
    assert!(ok > 100, "the load ran ({ok} calls)");
    assert_eq!(
        failed, 0,
        "no call failed while instances came and went: {errors:?}"
    );
    assert_eq!(eo.requests_seen(), 0, "echo2 is another service");

    // Tags: only instances whose tags include env=prod serve the `prod` downstream.
    etcd.put(
        &key("echo", c),
        &kitex_value(c, 10, Some(r#"{"env":"prod","zone":"z1"}"#)),
    );
    until_ok(&c1, "ProdService", Duration::from_secs(3)).await;
    let b_before = eb.requests_seen();
    for _ in 0..20 {
        let r = c1.call(call(None, "ProdService")).await.unwrap().unwrap();
        assert_eq!(r.msg_type, MessageType::Reply);
    }
    assert!(ec.requests_seen() >= 20, "the prod instance serves prod");
    assert_eq!(
        eb.requests_seen(),
        b_before,
        "the untagged instance does not"
    );

    let text = metrics_text(proxy.admin_addr.unwrap()).await;
    assert_eq!(
        series(&text, r#"sluice_discovery_endpoints{downstream="echo"}"#),
        Some(2.0),
        "b and c are echo's instances now:\n{text}"
    );
    assert_eq!(
        series(
            &text,
            r#"sluice_discovery_source_up{downstream="echo",source="etcd"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_the_last_endpoints_serve_and_the_watch_resumes() {
    let Some(mut etcd) = EtcdServer::start() else {
        return;
    };
    let (a, ea, _da) = start_echo().await;
    let (b, eb, _db) = start_echo().await;
    let proxy = Sluice::start(&etcd_config(
        &etcd,
        r#"
[downstreams.echo]
discovery = "etcd"

[[routes]]
service = "*"
downstream = "echo"
"#,
    ));
    let c = client_to(proxy.addr);
    etcd.put(&key("echo", a), &kitex_value(a, 10, None));
    until_ok(&c, "EchoService", Duration::from_secs(3)).await;

    etcd.stop();
    let admin = proxy.admin_addr.unwrap();
    within(Duration::from_secs(15), "the outage is seen", || {
        futures_lite_block(metrics_text(admin))
            .contains(r#"sluice_discovery_source_up{downstream="echo",source="etcd"} 0"#)
    })
    .await;
    let before = ea.requests_seen();
    for _ in 0..50 {
        let r = c.call(call(None, "EchoService")).await.unwrap().unwrap();
        assert_eq!(r.msg_type, MessageType::Reply, "etcd down: a still serves");
    }
    assert_eq!(ea.requests_seen(), before + 50);
    let text = metrics_text(admin).await;
    assert!(
        series(
            &text,
            r#"sluice_discovery_errors_total{downstream="echo",reason="etcd_unreachable"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the outage is counted:\n{text}"
    );

    etcd.restart();
    // Changed after the restart: b in, a out. The resumed watch sees both.
    etcd.put(&key("echo", b), &kitex_value(b, 10, None));
    etcd.del(&key("echo", a));
    let start = Instant::now();
    while eb.requests_seen() == 0 {
        if start.elapsed() > Duration::from_secs(15) {
            panic!("the watch did not resume:\n{}", proxy.stop());
        }
        let _ = c.call(call(None, "EchoService")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("watch resumed after {:?}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a_now = ea.requests_seen();
    for _ in 0..20 {
        c.call(call(None, "EchoService")).await.unwrap().unwrap();
    }
    assert_eq!(ea.requests_seen(), a_now, "a was removed while away");
    let log = proxy.stop();
    assert!(
        log.contains("etcd: unreachable"),
        "the outage is logged:\n{log}"
    );
}

/// A blocking wait on a future from inside a polling closure (the tests' runtime has two
/// worker threads, so one may block briefly).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovering_route_sends_each_service_to_its_instances_and_caps_the_clients() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let (a, ea, _da) = start_echo().await;
    let (b, eb, _db) = start_echo().await;
    etcd.put(&key("svc-a", a), &kitex_value(a, 10, None));
    etcd.put(&key("svc-b", b), &kitex_value(b, 10, None));
    let proxy = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[admin]
address = "127.0.0.1:{{admin_port}}"

[discovery]
max_services = 20

[discovery.etcd]
endpoints = ["{}"]

[[routes]]
service = "*"
discover = "etcd"
transport = "ttheader"
"#,
        etcd.endpoint()
    ));
    let c = client_to(proxy.addr);
    // ToService (int key 6) names the destination; the IDL service is something else.
    for _ in 0..5 {
        let r = c
            .call(call(Some("svc-a"), "EchoService"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.msg_type, MessageType::Reply, "{}", why(&r));
        let r = c
            .call(call(Some("svc-b"), "EchoService"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.msg_type, MessageType::Reply, "{}", why(&r));
    }
    assert_eq!((ea.requests_seen(), eb.requests_seen()), (5, 5));
    // Without ToService, the IDL service name is looked up.
    let r = c.call(call(None, "svc-b")).await.unwrap().unwrap();
    assert_eq!(r.msg_type, MessageType::Reply);
    assert_eq!(eb.requests_seen(), 6);
    // No instances: a clear error naming the service.
    let r = c
        .call(call(Some("svc-c"), "EchoService"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.msg_type, MessageType::Exception);
    let (e, _) = sluice_thrift::ApplicationException::decode(&r.body).unwrap();
    assert!(
        e.message.contains("no instances of service \"svc-c\""),
        "{}",
        e.message
    );
    // Invented names: never more clients than the cap.
    let mut refused = 0;
    for i in 0..10_000 {
        let r = c
            .call(call(Some(&format!("invented-{i}")), "EchoService"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.msg_type, MessageType::Exception);
        let (e, _) = sluice_thrift::ApplicationException::decode(&r.body).unwrap();
        if e.message.contains("max_services") {
            refused += 1;
        }
    }
    assert!(
        refused > 9_900,
        "past the cap new services are refused ({refused})"
    );
    let text = metrics_text(proxy.admin_addr.unwrap()).await;
    let made = series(&text, "sluice_discovered_services").unwrap();
    assert!(made <= 20.0, "at most max_services clients ({made})");
    // The services in use still work past the cap.
    let r = c
        .call(call(Some("svc-a"), "EchoService"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.msg_type, MessageType::Reply, "{}", why(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_registers_in_kitex_format_keeps_its_lease_and_leaves_first_on_drain() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let (echo, _e, _d) = start_echo().await;
    let mut proxy = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
register = "sluice-gateway"

[discovery.etcd]
endpoints = ["{}"]
register_ttl_ms = 2000

[downstreams.echo]
endpoints = ["{echo}"]

[[routes]]
service = "*"
downstream = "echo"
"#,
        etcd.endpoint()
    ));
    let k = key("sluice-gateway", proxy.addr);
    let want = format!(
        r#"{{"network":"tcp","address":"{}","weight":10,"tags":null}}"#,
        proxy.addr
    );
    within(Duration::from_secs(5), "registered", || {
        etcd.get(&k).is_some()
    })
    .await;
    assert_eq!(
        etcd.get(&k).as_deref(),
        Some(want.as_str()),
        "Kitex's exact value"
    );
    let lease = etcd.lease_of(&k).expect("on a lease");
    assert!(lease != 0);
    // Kept alive past three TTLs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(etcd.get(&k).as_deref(), Some(want.as_str()), "kept alive");
    // Deleted by someone else: put back.
    etcd.del(&k);
    within(Duration::from_secs(3), "put back", || {
        etcd.get(&k).is_some()
    })
    .await;

    proxy.terminate();
    within(Duration::from_secs(5), "deregistered on SIGTERM", || {
        etcd.get(&k).is_none()
    })
    .await;
    assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
    let log = proxy.stop();
    let gone = log.find("deregistered from etcd").expect("logged");
    let drain = log.find("draining listeners").expect("logged");
    assert!(
        gone < drain,
        "the key goes before the listeners drain:\n{log}"
    );
}

/// Adds `lines` to /etc/hosts for the test and restores the file on drop; `None` when the file
/// cannot be written (not root).
struct HostsEntries {
    original: String,
}

impl HostsEntries {
    fn set(lines: &str, original: Option<&str>) -> Option<HostsEntries> {
        let original = match original {
            Some(o) => o.to_owned(),
            None => std::fs::read_to_string("/etc/hosts").ok()?,
        };
        let mut text = original.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(lines);
        std::fs::write("/etc/hosts", text).ok()?;
        Some(HostsEntries { original })
    }
}

impl Drop for HostsEntries {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/hosts", &self.original);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_downstream_spreads_over_every_address_and_follows_changes() {
    // Two loopback addresses, one port: the same name resolves to both.
    let port = free_port();
    let mut servers = Vec::new();
    let mut handlers = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let h = Arc::new(EchoHandler::new());
        let (handle, drain) = sluice_server::drain::channel();
        tokio::spawn(
            sluice_server::Server::new(sluice_server::ServerConfig::default(), h.clone())
                .serve(l, drain),
        );
        servers.push(handle);
        handlers.push(h);
    }
    let name = format!("sluice-dns-test-{}", std::process::id());
    let Some(hosts) = HostsEntries::set(&format!("127.0.0.1 {name}\n127.0.0.2 {name}\n"), None)
    else {
        assert_ne!(
            std::env::var("SLUICE_REQUIRE_HOSTS").as_deref(),
            Ok("1"),
            "/etc/hosts is not writable and SLUICE_REQUIRE_HOSTS=1: the DNS test needs root"
        );
        eprintln!("skipping: /etc/hosts is not writable (the DNS test needs root)");
        return;
    };
    let proxy = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[downstreams.web]
discovery = "dns"
endpoints = ["{name}:{port}"]
dns_refresh_ms = 200
# In turn, so that 20 calls in a row reach both addresses for sure.
balance = "round-robin"

[[routes]]
service = "*"
downstream = "web"
"#
    ));
    let c = client_to(proxy.addr);
    until_ok(&c, "EchoService", Duration::from_secs(3)).await;
    for _ in 0..20 {
        c.call(call(None, "EchoService")).await.unwrap().unwrap();
    }
    assert!(
        handlers.iter().all(|h| h.requests_seen() >= 8),
        "both addresses serve: {:?}",
        handlers
            .iter()
            .map(|h| h.requests_seen())
            .collect::<Vec<_>>()
    );
    // The name now resolves to 127.0.0.2 only.
    let original = hosts.original.clone();
    drop(hosts);
    let _hosts = HostsEntries::set(&format!("127.0.0.2 {name}\n"), Some(&original))
        .expect("writable a moment ago");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let first = handlers[0].requests_seen();
    for _ in 0..20 {
        c.call(call(None, "EchoService")).await.unwrap().unwrap();
    }
    assert_eq!(
        handlers[0].requests_seen(),
        first,
        "127.0.0.1 is no longer used"
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_call_and_a_bad_file_keeps_the_old_config() {
    let (a, ea, _da) = start_echo().await;
    let (b, eb, _db) = start_echo().await;
    // Bound and released again and again by the reloads: a port below the ephemeral range, so
    // no other test is given it meanwhile by a bind to port 0.
    let extra_port = (0..10_000u16)
        .map(|i| 20_000 + ((std::process::id() as u16).wrapping_mul(7).wrapping_add(i)) % 10_000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range");
    let base = |endpoint: SocketAddr, extra_listener: bool, extra_route: bool| {
        let mut t = format!(
            r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[admin]
address = "127.0.0.1:{{admin_port}}"

[downstreams.echo]
endpoints = ["{endpoint}"]

[downstreams.other]
endpoints = ["{b}"]
"#
        );
        if extra_listener {
            t.push_str(&format!(
                "\n[[listeners]]\nname = \"extra\"\naddress = \"127.0.0.1:{extra_port}\"\ncluster = \"ttstream\"\n"
            ));
        }
        if extra_route {
            t.push_str("\n[[routes]]\nservice = \"OtherService\"\ndownstream = \"other\"\n");
        }
        t.push_str("\n[[routes]]\nservice = \"*\"\ndownstream = \"echo\"\n");
        t
    };
    let proxy = Sluice::start(&base(a, false, false));
    let admin = proxy.admin_addr.unwrap();
    let path = proxy.config_path().to_path_buf();
    let fill = |t: String| {
        t.replace("{port}", &proxy.addr.port().to_string())
            .replace("{admin_port}", &admin.port().to_string())
    };
    let c = client_to(proxy.addr);
    // A closed-loop `sluice bench` through the proxy for the whole series of reloads.
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "--target"])
        .arg(proxy.addr.to_string())
        .args([
            "--concurrency",
            "8",
            "--duration",
            "12",
            "--warmup",
            "0",
            "--size",
            "256",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for i in 0..20 {
        let (endpoint, extra_listener, extra_route) = match i % 4 {
            0 => (b, true, true),
            1 => (a, true, false),
            2 => (b, false, true),
            _ => (a, false, false),
        };
        std::fs::write(&path, fill(base(endpoint, extra_listener, extra_route))).unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &proxy.pid().to_string()])
            .status();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let extra: SocketAddr = format!("127.0.0.1:{extra_port}").parse().unwrap();
        if i % 4 == 0 {
            // Reloaded: the new route and the new listener are in force.
            let c2 = client_to(extra);
            within(Duration::from_secs(3), "the added listener serves", || {
                futures_lite_block(c2.call(call(None, "OtherService")))
                    .is_ok_and(|r| r.is_some_and(|r| r.msg_type == MessageType::Reply))
            })
            .await;
        }
        if i % 4 == 3 {
            within(Duration::from_secs(3), "the removed listener stops", || {
                std::net::TcpStream::connect(extra).is_err()
            })
            .await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the reloads ran while the bench did ({:?})",
        started.elapsed()
    );
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("\"{name}\":")).expect(&line) + name.len() + 3;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("ok") > 1000, "the bench ran: {line}");
    assert_eq!(
        field("errors"),
        0,
        "no call failed across 20 reloads: {line}"
    );
    assert!(ea.requests_seen() > 0 && eb.requests_seen() > 0);

    // A broken file: refused with the key and reason, counted, the old config stays.
    std::fs::write(
        &path,
        fill(base(a, false, false)).replace("downstream = \"echo\"", "downstream = \"nope\""),
    )
    .unwrap();
    let (status, body) = http_request(admin, "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("routes[0].downstream"), "{body}");
    let r = c.call(call(None, "EchoService")).await.unwrap().unwrap();
    assert_eq!(r.msg_type, MessageType::Reply, "the old routes still serve");
    let text = metrics_text(admin).await;
    assert_eq!(
        series(&text, r#"sluice_config_reloads_total{result="failed"}"#),
        Some(1.0)
    );
    assert!(series(&text, r#"sluice_config_reloads_total{result="ok"}"#).unwrap() >= 20.0);
    // And a good one through POST /reload.
    std::fs::write(&path, fill(base(b, false, true))).unwrap();
    let (status, body) = http_request(admin, "POST", "/reload").await;
    assert_eq!((status, body.as_str()), (200, "reloaded\n"));
    let before = eb.requests_seen();
    c.call(call(None, "EchoService")).await.unwrap().unwrap();
    assert_eq!(eb.requests_seen(), before + 1, "echo now points at b");
}

/// The next message of a stream (headers skipped), within 5 s.
async fn next_message(rx: &mut sluice_stream::ClientRecv) -> bytes::Bytes {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(sluice_stream::Incoming::Message(m)) => return m,
            Ok(sluice_stream::Incoming::Headers(_)) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

/// One echo exchange on a stream: one message out, the same back, a clean end.
pub(crate) async fn stream_echo(stream: sluice_stream::ClientStream) -> Result<(), String> {
    use sluice_stream::Incoming;
    let (tx, mut rx) = stream.split();
    let m = bytes::Bytes::from_static(&[0x0b, 0x00, 0x01, 0, 0, 0, 2, b'h', b'i', 0]);
    tx.send(m.clone()).await.map_err(|e| format!("{e:?}"))?;
    tx.close_send().await.map_err(|e| format!("{e:?}"))?;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| "no end in 10 s".to_owned())?
        {
            Incoming::Headers(_) => {}
            Incoming::Message(b) => got.push(b),
            Incoming::End(e) if e.error.is_none() && got == [m.clone()] => return Ok(()),
            other => return Err(format!("{other:?} after {got:?}")),
        }
    }
}

fn ttstream_open() -> sluice_client::OpenStream {
    sluice_client::OpenStream {
        hash: None,
        method: "EchoBidi".into(),
        service: "EchoService".into(),
        headers: sluice_stream::Metadata::new(),
    }
}

pub(crate) fn grpc_open(authority: &str, destination: Option<&str>) -> sluice_http2::OpenRequest {
    let mut headers = sluice_stream::Metadata::new();
    if let Some(d) = destination {
        headers.push("destination-service", d.to_owned());
    }
    sluice_http2::OpenRequest {
        path: "/echo.EchoService/EchoBidi".into(),
        content_type: "application/grpc".into(),
        authority: authority.into(),
        headers,
        deadline: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_etcd_and_grpc_calls_are_discovered_by_their_destination() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let (a, _ea, drain_a) = start_echo().await;
    let (b, _eb, _db) = start_echo().await;
    let proxy = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[listeners]]
name = "grpc"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"

[discovery.etcd]
endpoints = ["{}"]

[downstreams.echo]
discovery = "etcd"

[[routes]]
service = "EchoService"
downstream = "echo"

[[routes]]
service = "*"
discover = "etcd"
"#,
        etcd.endpoint()
    ));
    etcd.put(&key("echo", a), &kitex_value(a, 10, None));
    let tt = sluice_client::TTStreamClient::new(ClientConfig::new(
        "proxy",
        vec![Endpoint {
            addr: proxy.addr,
            weight: 1,
        }],
    ));
    let grpc_addr = proxy.grpc_addr.unwrap();
    let grpc = sluice_http2::GrpcClient::new(sluice_http2::GrpcClientConfig::new(vec![grpc_addr]));
    // Both stream clients of `echo` are made while a is its only instance.
    let start = Instant::now();
    loop {
        let served = match tt.open(ttstream_open()).await {
            Ok(s) => stream_echo(s).await.is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "a serves streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // gRPC to `echo` by route (the path's service is EchoService).
    stream_echo(grpc.open(&grpc_open("whatever", None)).await.unwrap())
        .await
        .unwrap();
    // b in, a out and gone: the clients made before move over.
    etcd.put(&key("echo", b), &kitex_value(b, 10, None));
    etcd.del(&key("echo", a));
    tokio::time::sleep(Duration::from_millis(700)).await;
    drain_a.drain();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..4 {
        stream_echo(tt.open(ttstream_open()).await.unwrap())
            .await
            .expect("TTStream reaches b");
        stream_echo(grpc.open(&grpc_open("whatever", None)).await.unwrap())
            .await
            .expect("gRPC reaches b");
    }

    // A gRPC call for another IDL service goes to the discovering route: the destination is
    // `destination-service`, else `:authority` without its port.
    etcd.put(&key("kxserver", b), &kitex_value(b, 10, None));
    let other = |authority: &str, destination: Option<&str>| {
        let mut r = grpc_open(authority, destination);
        r.path = "/echo.OtherService/EchoBidi".into();
        r
    };
    stream_echo(grpc.open(&other("kxserver:8888", None)).await.unwrap())
        .await
        .expect(":authority names kxserver");
    stream_echo(grpc.open(&other("nobody", Some("kxserver"))).await.unwrap())
        .await
        .expect("destination-service names kxserver");
    let err = stream_echo(grpc.open(&other("nobody", None)).await.unwrap())
        .await
        .expect_err("no instances of nobody");
    assert!(
        err.contains("Unavailable") || err.contains("UNAVAILABLE") || err.contains("14"),
        "{err}"
    );
    assert!(err.contains("nobody"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_a_changed_file_reloads_and_unchanged_downstreams_keep_their_pools_and_streams()
{
    // The downstream counts its connections: a kept pool opens no new one.
    let handler = Arc::new(EchoHandler::new());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = l.local_addr().unwrap();
    let server =
        sluice_server::Server::new(sluice_server::ServerConfig::default(), handler.clone())
            .with_streaming(handler.clone());
    let stats = server.stats();
    let (_handle, drain) = sluice_server::drain::channel();
    tokio::spawn(server.serve(l, drain));
    let (other, eo, _do) = start_echo().await;
    let file = |extra_route: bool| {
        let mut t = format!(
            r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[downstreams.echo]
endpoints = ["{echo}"]

[downstreams.other]
endpoints = ["{other}"]
"#
        );
        if extra_route {
            t.push_str("\n[[routes]]\nservice = \"OtherService\"\ndownstream = \"other\"\n");
        }
        t.push_str("\n[[routes]]\nservice = \"*\"\ndownstream = \"echo\"\n");
        t
    };
    let proxy = Sluice::start_with(&file(false), &["--watch"]);
    let fill = |t: String| t.replace("{port}", &proxy.addr.port().to_string());
    let c = client_to(proxy.addr);
    c.call(call(None, "EchoService")).await.unwrap().unwrap();
    // A TTStream stream open across the reloads.
    let tt = sluice_client::TTStreamClient::new(ClientConfig::new(
        "proxy",
        vec![Endpoint {
            addr: proxy.addr,
            weight: 1,
        }],
    ));
    let (tx, mut rx) = tt.open(ttstream_open()).await.unwrap().split();
    let exchange = |i: u8| bytes::Bytes::from(vec![0x0b, 0x00, 0x01, 0, 0, 0, 1, b'a' + i, 0]);
    tx.send(exchange(0)).await.unwrap();
    assert_eq!(next_message(&mut rx).await, exchange(0));
    let conns = stats.connections.load(Ordering::Relaxed);

    // The file changes (an added route): reloaded within about a second, no signal sent.
    std::fs::write(proxy.config_path(), fill(file(true))).unwrap();
    let start = Instant::now();
    loop {
        let r = c.call(call(None, "OtherService")).await.unwrap().unwrap();
        if r.msg_type == MessageType::Reply && eo.requests_seen() > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "--watch reloads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Twice more, and calls to the unchanged downstream go on over the same pooled
    // connection; the stream opened before goes on too.
    for (i, extra) in [(1u8, false), (2, true)] {
        std::fs::write(proxy.config_path(), fill(file(extra))).unwrap();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        for _ in 0..5 {
            let r = c.call(call(None, "EchoService")).await.unwrap().unwrap();
            assert_eq!(r.msg_type, MessageType::Reply);
        }
        tx.send(exchange(i)).await.unwrap();
        assert_eq!(
            next_message(&mut rx).await,
            exchange(i),
            "the stream survives"
        );
    }
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        conns,
        "the unchanged downstream kept its connections"
    );
    let log = proxy.stop();
    assert!(
        log.matches("configuration reloaded").count() >= 3,
        "each change reloaded:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_service_unused_for_its_idle_timeout_is_closed() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let (a, ea, _da) = start_echo().await;
    etcd.put(&key("svc-a", a), &kitex_value(a, 10, None));
    let proxy = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[admin]
address = "127.0.0.1:{{admin_port}}"

[discovery]
service_idle_timeout_ms = 400

[discovery.etcd]
endpoints = ["{}"]

[[routes]]
service = "*"
discover = "etcd"
"#,
        etcd.endpoint()
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    let r = c
        .call(call(Some("svc-a"), "EchoService"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.msg_type, MessageType::Reply, "{}", why(&r));
    let services = |text: &str| series(text, "sluice_discovered_services");
    assert_eq!(services(&metrics_text(admin).await), Some(1.0));
    let took = within(Duration::from_secs(3), "closed when idle", || {
        futures_lite_block(metrics_text(admin)).contains("sluice_discovered_services 0")
    })
    .await;
    assert!(
        took >= Duration::from_millis(200),
        "not before it was idle ({took:?})"
    );
    // And made again on the next request.
    let r = c
        .call(call(Some("svc-a"), "EchoService"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.msg_type, MessageType::Reply, "{}", why(&r));
    assert_eq!(ea.requests_seen(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_connection_limit_of_a_running_listener() {
    use tokio::io::AsyncReadExt;
    let (echo, _e, _d) = start_echo().await;
    let file = |max: usize| {
        format!(
            r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[limits]
max_connections = {max}

[downstreams.echo]
endpoints = ["{echo}"]

[[routes]]
service = "*"
downstream = "echo"
"#
        )
    };
    let proxy = Sluice::start(&file(3));
    let fill = |t: String| t.replace("{port}", &proxy.addr.port().to_string());
    // Sluice::start's readiness probe took one slot for a moment; hold the three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = client_to(proxy.addr);
        c.call(call(None, "EchoService")).await.unwrap().unwrap();
        held.push(c);
    }
    let refused = |addr: SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    assert!(refused(proxy.addr).await, "a fourth connection is refused");
    std::fs::write(proxy.config_path(), fill(file(10))).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The accept that notices the new limit may still be the old one's refusal.
    let _ = refused(proxy.addr).await;
    let c = client_to(proxy.addr);
    let r = c.call(call(None, "EchoService")).await.unwrap().unwrap();
    assert_eq!(
        r.msg_type,
        MessageType::Reply,
        "room for more after the reload"
    );
    for c in &held {
        c.call(call(None, "EchoService")).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_change_a_discovered_downstream_or_the_etcd_connection_fail_no_call() {
    let Some(etcd_a) = EtcdServer::start() else {
        return;
    };
    let Some(etcd_b) = EtcdServer::start() else {
        return;
    };
    let (a, ea, _da) = start_echo().await;
    let (b, eb, _db) = start_echo().await;
    etcd_a.put(&key("echo", a), &kitex_value(a, 10, None));
    etcd_b.put(&key("echo", b), &kitex_value(b, 10, None));
    let file = |etcd: &EtcdServer, connect_timeout_ms: u64| {
        format!(
            r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
register = "gw"

[discovery.etcd]
endpoints = ["{}"]

[downstreams.echo]
discovery = "etcd"
connect_timeout_ms = {connect_timeout_ms}

[[routes]]
service = "*"
downstream = "echo"
"#,
            etcd.endpoint()
        )
    };
    let proxy = Sluice::start(&file(&etcd_a, 1000));
    let fill = |t: String| t.replace("{port}", &proxy.addr.port().to_string());
    let hup = || {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &proxy.pid().to_string()])
            .status();
    };
    until_ok(
        &client_to(proxy.addr),
        "EchoService",
        Duration::from_secs(3),
    )
    .await;
    let gw = key("gw", proxy.addr);
    within(Duration::from_secs(3), "registered in a", || {
        etcd_a.get(&gw).is_some()
    })
    .await;
    let load = Load::start(proxy.addr, "EchoService", 4);
    // The downstream's own settings change: new clients, started on the endpoints found.
    std::fs::write(proxy.config_path(), fill(file(&etcd_a, 1500))).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(eb.requests_seen(), 0);
    // Another etcd: watched there (b's instance) and registered there, gone from a.
    std::fs::write(proxy.config_path(), fill(file(&etcd_b, 1500))).unwrap();
    hup();
    within(Duration::from_secs(3), "b's instance serves", || {
        eb.requests_seen() > 20
    })
    .await;
    within(Duration::from_secs(3), "registered in b, not in a", || {
        etcd_b.get(&gw).is_some() && etcd_a.get(&gw).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_now = ea.requests_seen();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ea.requests_seen(), a_now, "a's etcd is no longer followed");
    let (ok, failed, errors) = load.finish().await;
    assert!(ok > 100, "the load ran ({ok})");
    assert_eq!(failed, 0, "no call failed across the reloads: {errors:?}");
}
