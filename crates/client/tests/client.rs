//! Generic clients against in-process servers on loopback.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_client::{Balance, Call, ClientConfig, Endpoint, Error, GenericClient, Transport};
use sluice_server::echo::{echo_result, EchoHandler};
use sluice_server::{DefaultHandler, DrainHandle, Request, Response, Server, ServerConfig};
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::Header;
use tokio::net::TcpListener;

/// Echoes, remembers which connection (peer address) each request came on, and optionally
/// tags replies with `crrst`.
#[derive(Debug, Default)]
struct PeerHandler {
    peers: Mutex<Vec<SocketAddr>>,
    reset: bool,
    echo: EchoHandler,
}

impl DefaultHandler for PeerHandler {
    async fn handle(&self, req: Request) -> Response {
        self.peers.lock().unwrap().push(req.peer);
        let mut r = self.echo.handle(req).await;
        if self.reset {
            r.str_kvs.insert("crrst", "1");
        }
        r
    }
}

async fn serve<H: DefaultHandler>(h: Arc<H>) -> (SocketAddr, DrainHandle) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (handle, drain) = sluice_server::drain::channel();
    tokio::spawn(Server::new(ServerConfig::default(), h).serve(l, drain));
    (addr, handle)
}

fn args(msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
    b.put_i32(msg.len() as i32);
    b.put_slice(msg.as_bytes());
    b.put_slice(&[0, 0]);
    b.freeze()
}

fn call(method: &str, msg: &str) -> Call {
    Call {
        method: method.into(),
        msg_type: MessageType::Call,
        codec: Codec::Thrift,
        args: args(msg),
        header: Header::default(),
        deadline: None,
    }
}

fn ep(addr: SocketAddr, weight: u32) -> Endpoint {
    Endpoint { addr, weight }
}

fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn echo_ok(c: &GenericClient, msg: &str) {
    let r = c.call(call("Echo", msg)).await.unwrap().unwrap();
    assert_eq!(r.msg_type, MessageType::Reply);
    assert_eq!(r.body, echo_result(&args(msg)));
}

#[tokio::test]
async fn every_transport_round_trips_and_pools_one_connection() {
    for t in [
        Transport::TTHeader,
        Transport::TTHeaderUnframed,
        Transport::Framed,
        Transport::Buffered,
    ] {
        let h = Arc::new(PeerHandler::default());
        let (addr, _d) = serve(h.clone()).await;
        let mut cfg = ClientConfig::new("echo", vec![ep(addr, 1)]);
        cfg.transport = t;
        let c = GenericClient::new(cfg);
        for i in 0..10 {
            echo_ok(&c, &format!("{t:?} {i}")).await;
        }
        let peers: HashSet<_> = h.peers.lock().unwrap().iter().copied().collect();
        assert_eq!(
            peers.len(),
            1,
            "{t:?}: sequential calls reuse one pooled connection"
        );
    }
}

#[tokio::test]
async fn crrst_retires_the_connection() {
    let h = Arc::new(PeerHandler {
        reset: true,
        ..Default::default()
    });
    let (addr, _d) = serve(h.clone()).await;
    let c = GenericClient::new(ClientConfig::new("echo", vec![ep(addr, 1)]));
    for i in 0..5 {
        echo_ok(&c, &format!("{i}")).await;
    }
    let peers: HashSet<_> = h.peers.lock().unwrap().iter().copied().collect();
    assert_eq!(peers.len(), 5, "each crrst reply retires its connection");
}

#[tokio::test]
async fn round_robin_skips_a_dead_endpoint_during_its_backoff() {
    let h = Arc::new(PeerHandler::default());
    let (addr, _d) = serve(h.clone()).await;
    let dead = dead_addr();
    let mut cfg = ClientConfig::new("echo", vec![ep(dead, 1), ep(addr, 1)]);
    cfg.failure_backoff = Duration::from_secs(30);
    let c = GenericClient::new(cfg);
    for i in 0..20 {
        echo_ok(&c, &format!("{i}")).await;
    }
    assert_eq!(h.peers.lock().unwrap().len(), 20);
    // With only dead endpoints the error names the downstream and the cause.
    let c = GenericClient::new(ClientConfig::new("gone", vec![ep(dead, 1)]));
    let e = c.call(call("Echo", "x")).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("\"gone\"") && text.contains(&dead.to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn weighted_random_follows_the_weights() {
    let light = Arc::new(PeerHandler::default());
    let heavy = Arc::new(PeerHandler::default());
    let (a, _da) = serve(light.clone()).await;
    let (b, _db) = serve(heavy.clone()).await;
    let mut cfg = ClientConfig::new("echo", vec![ep(a, 1), ep(b, 9)]);
    cfg.balance = Balance::WeightedRandom;
    let c = GenericClient::new(cfg);
    for i in 0..1000 {
        echo_ok(&c, &format!("{i}")).await;
    }
    let l = light.peers.lock().unwrap().len();
    let hv = heavy.peers.lock().unwrap().len();
    assert_eq!(l + hv, 1000);
    assert!(
        (40..=170).contains(&l),
        "about 10% to the light endpoint, got {l}"
    );
}

#[tokio::test]
async fn multiplexed_calls_share_one_connection() {
    let h = Arc::new(PeerHandler::default());
    let (addr, _d) = serve(h.clone()).await;
    let mut cfg = ClientConfig::new("echo", vec![ep(addr, 1)]);
    cfg.multiplex = true;
    let c = Arc::new(GenericClient::new(cfg));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = c.clone();
        // Different sleeps so replies come back out of order.
        tasks.spawn(async move {
            let msg = format!("m{i}");
            let r = c
                .call(call(&format!("Sleep{}", (50 - i) % 7 * 10), &msg))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.body, echo_result(&args(&msg)));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let peers: HashSet<_> = h.peers.lock().unwrap().iter().copied().collect();
    assert_eq!(peers.len(), 1);
}

#[tokio::test]
async fn deadline_gives_a_timeout_and_the_pool_recovers() {
    let h = Arc::new(PeerHandler::default());
    let (addr, _d) = serve(h.clone()).await;
    for multiplex in [false, true] {
        let mut cfg = ClientConfig::new("echo", vec![ep(addr, 1)]);
        cfg.multiplex = multiplex;
        let c = GenericClient::new(cfg);
        let mut slow = call("Sleep500", "x");
        slow.deadline = Some(Instant::now() + Duration::from_millis(50));
        let start = Instant::now();
        let e = c.call(slow).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(start.elapsed() < Duration::from_millis(400));
        // The late reply must not be taken for the next call's reply.
        echo_ok(&c, "after").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        echo_ok(&c, "later").await;
    }
}

#[tokio::test]
async fn oneway_gets_no_reply_and_reaches_the_server() {
    let h = Arc::new(EchoHandler::new());
    let (addr, _d) = serve(h.clone()).await;
    for t in [Transport::TTHeader, Transport::Framed, Transport::Buffered] {
        let mut cfg = ClientConfig::new("echo", vec![ep(addr, 1)]);
        cfg.transport = t;
        let c = GenericClient::new(cfg);
        let mut ow = call("EchoOneway", "x");
        ow.msg_type = MessageType::Oneway;
        assert!(c.call(ow).await.unwrap().is_none());
    }
    let start = Instant::now();
    while h.oneway_seen() < 3 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A downstream that accepts connections and keeps them, reading nothing and answering
/// nothing, all in one task.
async fn silent_downstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            kept.push(s);
        }
    });
    addr
}

/// Waits until the runtime runs no more than `n` tasks; false after 5 s.
async fn alive_tasks_back_to(n: usize) -> bool {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..500 {
        if metrics.num_alive_tasks() <= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_dropped_multiplexed_client_leaves_no_connection_task_behind() {
    let addr = silent_downstream().await;
    tokio::task::yield_now().await;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut cfg = ClientConfig::new("silent", vec![Endpoint { addr, weight: 1 }]);
    cfg.multiplex = true;
    let client = GenericClient::new(cfg);
    let mut c = call("Echo", "x");
    c.deadline = Some(Instant::now() + Duration::from_millis(100));
    assert!(matches!(client.call(c).await, Err(Error::Timeout { .. })));
    drop(client);
    assert!(
        alive_tasks_back_to(baseline).await,
        "the connection's reader or writer outlived its client"
    );
}

#[tokio::test]
async fn a_dropped_ttstream_client_leaves_no_connection_task_behind() {
    let addr = silent_downstream().await;
    tokio::task::yield_now().await;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let client = sluice_client::TTStreamClient::new(ClientConfig::new(
        "silent",
        vec![Endpoint { addr, weight: 1 }],
    ));
    let stream = client
        .open(sluice_client::OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "EchoService".into(),
            headers: Default::default(),
        })
        .await
        .unwrap();
    drop(stream);
    drop(client);
    assert!(
        alive_tasks_back_to(baseline).await,
        "the connection's reader or writer outlived its client"
    );
}

/// Discovery replaces endpoints while calls run: an endpoint that stays keeps its pooled
/// connection, a new one takes calls at once, a removed one gets no new calls, and a call in
/// flight on it when it is removed still gets its reply.
#[tokio::test]
async fn set_endpoints_keeps_pools_adds_and_drains() {
    let a = Arc::new(PeerHandler::default());
    let b = Arc::new(PeerHandler::default());
    let (addr_a, _da) = serve(a.clone()).await;
    let (addr_b, _db) = serve(b.clone()).await;
    let c = Arc::new(GenericClient::new(
        ClientConfig::new("echo", vec![ep(addr_a, 1)])
            .with_balance(sluice_client::Balance::RoundRobin),
    ));
    echo_ok(&c, "one").await;
    c.set_endpoints(&[ep(addr_a, 1), ep(addr_b, 1)]);
    assert_eq!(c.endpoints(), vec![ep(addr_a, 1), ep(addr_b, 1)]);
    for i in 0..10 {
        echo_ok(&c, &format!("{i}")).await;
    }
    let peers_a: HashSet<_> = a.peers.lock().unwrap().iter().copied().collect();
    assert_eq!(peers_a.len(), 1, "a kept its pooled connection");
    assert_eq!(a.peers.lock().unwrap().len(), 6, "round robin over both");
    assert_eq!(b.peers.lock().unwrap().len(), 5);

    // A call in flight on b when b is removed: it is answered.
    let slow = Arc::new(SlowHandler {
        delay: Duration::from_millis(300),
    });
    let (addr_s, _ds) = serve(slow).await;
    c.set_endpoints(&[ep(addr_s, 1)]);
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.call(call("Echo", "late")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.set_endpoints(&[ep(addr_a, 1)]);
    let r = in_flight.await.unwrap().unwrap().unwrap();
    assert_eq!(r.body, echo_result(&args("late")), "drained, not cut");
    let before = a.peers.lock().unwrap().len();
    for i in 0..4 {
        echo_ok(&c, &format!("after {i}")).await;
    }
    assert_eq!(a.peers.lock().unwrap().len(), before + 4, "only a is used");
    assert_eq!(b.peers.lock().unwrap().len(), 5, "b is used no more");
    assert_eq!(
        c.pool_counts().idle,
        1,
        "the removed endpoints' pools are gone"
    );

    c.set_endpoints(&[]);
    assert!(matches!(
        c.call(call("Echo", "x")).await,
        Err(Error::NoEndpoint { .. })
    ));
}

#[derive(Debug)]
struct SlowHandler {
    delay: Duration,
}

impl DefaultHandler for SlowHandler {
    async fn handle(&self, req: Request) -> Response {
        tokio::time::sleep(self.delay).await;
        EchoHandler::default().handle(req).await
    }
}

/// `max_connections` pooled connections at most: a call past them waits for one to come back,
/// and past `max_pending` waiting calls a call is refused at once.
#[tokio::test]
async fn max_connections_queue_up_to_max_pending_then_refuse() {
    let slow = Arc::new(SlowHandler {
        delay: Duration::from_millis(400),
    });
    let (addr, _d) = serve(slow).await;
    let c = Arc::new(GenericClient::new(
        ClientConfig::new("slow", vec![ep(addr, 1)])
            .with_max_connections(2)
            .with_max_pending(1),
    ));
    let running: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.call(call("Echo", &format!("{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let refused = c.call(call("Echo", "x")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Overloaded {
                limit: sluice_client::Limit::MaxPending(1),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_eq!(
        c.counters()
            .over_max_pending
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for r in running {
        r.await.unwrap().unwrap().unwrap();
    }
    let counts = c.pool_counts();
    assert_eq!(
        counts.idle + counts.in_use,
        2,
        "never more than max_connections"
    );
}
