//! TLS on every leg through the `sluice` binary: TLS on `ttstream` listeners, TLS to
//! downstreams of every transport (with a client certificate the downstream requires), the
//! errors callers get when a downstream's certificate is refused, and certificates read again
//! on reload. Certificates are made per test with rcgen.
//!
//! The TLS callers are Sluice's own clients (`GenericClient`, `TTStreamClient`): volo-thrift
//! 0.12 has no TLS option on its client or server (only volo's transport layer knows TLS, and
//! volo-thrift does not expose it), so the Volo fixtures cannot be TLS peers here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sluice_client::{
    Call, ClientConfig, ClientTls, Endpoint, GenericClient, OpenStream, TTStreamClient,
};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_server::echo::echo_result;
use sluice_sniff::Codec;
use sluice_stream::{ClientRecv, Incoming, Metadata, Reset, StatusCode, StreamEnd};
use sluice_thrift::{ExceptionKind, MessageType};
use sluice_ttheader::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    exception, read_reply, request, roundtrip, start_echo, thrift_args, Shape, Sluice,
};

/// A certificate authority of the test's own.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A certificate for `localhost` and 127.0.0.1 and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Distinct names: a certificate of another CA is then an unknown issuer, not a bad
        // signature from a CA of the same name.
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A certificate valid for `localhost` and 127.0.0.1 (server and client use alike);
    /// `expired`: valid only during 2020.
    fn issue(&self, name: &str, expired: bool) -> Leaf {
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A directory of the test's own for certificate files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "sluice-tls-{tag}-{}-{}",
            std::process::id(),
            crate::support::free_port()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Writes `name` (replacing it whole, as a deployment would) and returns its path.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client_tls(ca: &Ca) -> ClientTls {
    ClientTls::from_pem(ca.pem.as_bytes(), None)
        .unwrap()
        .with_server_name("localhost")
        .unwrap()
}

fn client_config(addr: SocketAddr, tls: Option<ClientTls>) -> ClientConfig {
    ClientConfig::new("sluice", vec![Endpoint { addr, weight: 1 }]).with_tls(tls)
}

fn call(args: &Bytes) -> Call {
    Call {
        method: "Echo".into(),
        msg_type: MessageType::Call,
        codec: Codec::Thrift,
        args: args.clone(),
        header: Header::default(),
        deadline: None,
    }
}

fn svc(name: &str) -> Header {
    let mut h = Header::default();
    h.str_kvs.insert("isn", name.to_owned());
    h
}

fn open(service: &str) -> OpenStream {
    OpenStream {
        hash: None,
        method: "EchoBidi".into(),
        service: service.into(),
        headers: Metadata::new(),
    }
}

async fn drain(rx: &mut ClientRecv) -> (Vec<Bytes>, Result<StreamEnd, Reset>) {
    let mut msgs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the stream ends in time")
        {
            Incoming::Headers(_) => {}
            Incoming::Message(m) => msgs.push(m),
            Incoming::End(e) => return (msgs, Ok(e)),
            Incoming::Reset(r) => return (msgs, Err(r)),
        }
    }
}

/// Three messages echoed on one TTStream stream, then a clean end.
async fn ttstream_echo(c: &TTStreamClient, service: &str) {
    let (tx, mut rx) = c.open(open(service)).await.unwrap().split();
    let mut sent = Vec::new();
    for i in 0..3 {
        let m = Bytes::from(format!("tls stream message {i}"));
        tx.send(m.clone()).await.unwrap();
        sent.push(m);
    }
    tx.close_send().await.unwrap();
    let (msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, sent, "every message echoed");
    assert_eq!(end, Ok(StreamEnd::ok()));
}

/// One ping-pong call and its checked echo.
async fn pingpong_echo(c: &GenericClient, what: &str) {
    let args = thrift_args(what.as_bytes());
    let reply = c.call(call(&args)).await.unwrap().expect("a reply");
    assert_eq!(reply.msg_type, MessageType::Reply, "{what}");
    assert_eq!(reply.body, echo_result(&args), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttstream_listener_over_tls_serves_pingpong_and_ttstream_and_refuses_plain_tcp() {
    let (echo, handler, _d) = start_echo().await;
    let dir = Dir::new("listener");
    let ca = Ca::new("sluice listener test CA");
    let leaf = ca.issue("sluice", false);
    let (cert, key) = (
        dir.write("cert.pem", &leaf.cert),
        dir.write("key.pem", &leaf.key),
    );
    let sluice = Sluice::start(&format!(
        r#"
[[listeners]]
name = "tt-tls"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
tls_cert = "{cert}"
tls_key = "{key}"
[[routes]]
service = "*"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo}"]
[admin]
address = "127.0.0.1:{{admin_port}}"
"#
    ));
    let config = client_config(sluice.addr, Some(client_tls(&ca)));
    // TTHeader ping-pong, on a pooled and on a multiplexed connection.
    pingpong_echo(&GenericClient::new(config.clone()), "pooled over TLS").await;
    pingpong_echo(
        &GenericClient::new(config.clone().with_multiplex(true)),
        "multiplexed over TLS",
    )
    .await;
    // A TTStream stream, forwarded to the plain echo.
    ttstream_echo(&TTStreamClient::new(config), "EchoService").await;
    assert_eq!(handler.requests_seen(), 3, "everything reached the echo");

    // A plain TTHeader caller is refused in the handshake: no reply, at most a TLS alert.
    let mut plain = TcpStream::connect(sluice.addr).await.unwrap();
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    plain
        .write_all(&request(
            shape,
            &Header::default(),
            false,
            "Echo",
            MessageType::Call,
            1,
            &thrift_args(b"plain"),
        ))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got))
        .await
        .expect("the plain connection is closed");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "no reply to a plain caller, at most a TLS alert record: {got:02x?}"
    );
    assert_eq!(handler.requests_seen(), 3, "the plain request went nowhere");
    // A plain client of Sluice's own fails too.
    GenericClient::new(client_config(sluice.addr, None))
        .call(call(&thrift_args(b"plain")))
        .await
        .expect_err("a plain client is refused");
    // Both refusals are counted; the readiness probe that connected and closed is not.
    let (_, metrics) = crate::admin::get(sluice.admin_addr.unwrap(), "/metrics");
    assert!(
        metrics.contains(r#"sluice_refusals_total{listener="tt-tls",reason="tls_handshake"} 2"#),
        "{metrics}"
    );

    let log = sluice.stop();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("the refused handshake is logged: {log}"));
    assert!(
        line.contains("WARN") && line.contains("kind=\"not TLS\"") && line.contains("peer="),
        "at warn, naming the peer and why: {line}"
    );
}

/// A TLS server whose certificate (signed by `ca`) expired in 2021: it completes no handshake.
async fn expired_tls_server(ca: &Ca) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let leaf = ca.issue("expired", true);
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_downstream_transport_over_tls_and_refused_certificates_named() {
    let (echo, handler, _d) = start_echo().await;
    let dir = Dir::new("downstream");
    let ca = Ca::new("sluice downstream test CA");
    let other = Ca::new("some other CA");
    let server = ca.issue("downstream", false);
    let client = ca.issue("front", false);
    let (ca_pem, other_pem) = (
        dir.write("ca.pem", &ca.pem),
        dir.write("other.pem", &other.pem),
    );
    let (cert, key) = (
        dir.write("server.pem", &server.cert),
        dir.write("server-key.pem", &server.key),
    );
    let (client_cert, client_key) = (
        dir.write("client.pem", &client.cert),
        dir.write("client-key.pem", &client.key),
    );
    // The downstream: a second Sluice whose TLS listeners require a client certificate of
    // the CA, in front of the plain echo.
    let tls = format!(
        "tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca_pem}\"\ntls_client_auth = \"required\""
    );
    let down = Sluice::start(&format!(
        r#"
[[listeners]]
name = "tt"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
{tls}
[[listeners]]
name = "grpc"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"
{tls}
[[routes]]
service = "*"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo}"]
"#
    ));
    let (down_tt, down_grpc) = (down.addr, down.grpc_addr.unwrap());
    let expired = expired_tls_server(&ca).await;
    let identity = format!("cert = \"{client_cert}\", key = \"{client_key}\"");
    // The front: plain listeners, TLS to the downstream. `tls` checks the IP address dialled
    // (the certificate's IP SAN); the others name `localhost`.
    let front = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[listeners]]
name = "grpc"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"
[[routes]]
service = "mux"
downstream = "tls-mux"
[[routes]]
service = "Grpc"
downstream = "tls-grpc"
[[routes]]
service = "WrongCa"
downstream = "wrong-ca"
[[routes]]
service = "Expired"
downstream = "expired"
[[routes]]
service = "*"
downstream = "tls"
[downstreams.tls]
endpoints = ["{down_tt}"]
tls = {{ ca = "{ca_pem}", {identity} }}
[downstreams.tls-mux]
endpoints = ["{down_tt}"]
multiplex = true
tls = {{ ca = "{ca_pem}", server_name = "localhost", {identity} }}
[downstreams.tls-grpc]
endpoints = ["{down_grpc}"]
tls = {{ ca = "{ca_pem}", server_name = "localhost", {identity} }}
[downstreams.wrong-ca]
endpoints = ["{down_tt}"]
tls = {{ ca = "{other_pem}", server_name = "localhost", {identity} }}
[downstreams.expired]
endpoints = ["{expired}"]
tls = {{ ca = "{ca_pem}", server_name = "localhost" }}
"#
    ));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    // Ping-pong, pooled and multiplexed.
    for service in ["EchoService", "mux"] {
        let args = thrift_args(service.as_bytes());
        let r = roundtrip(front.addr, shape, &svc(service), "Echo", &args).await;
        assert_eq!(r.msg_type, MessageType::Reply, "{service}");
        assert_eq!(r.body, echo_result(&args), "{service}");
    }
    // TTStream.
    ttstream_echo(
        &TTStreamClient::new(client_config(front.addr, None)),
        "EchoService",
    )
    .await;
    // gRPC, unary and bidi, to the downstream's gRPC listener (ALPN h2).
    let grpc = GrpcClient::new(GrpcClientConfig::new(vec![front.grpc_addr.unwrap()]));
    let grpc_req = |service: &str, method: &str| OpenRequest {
        path: format!("/tls.{service}/{method}"),
        content_type: "application/grpc".into(),
        authority: String::new(),
        headers: Metadata::new(),
        deadline: None,
    };
    for method in ["Echo", "EchoBidi"] {
        let (tx, mut rx) = grpc.open(&grpc_req("Grpc", method)).await.unwrap().split();
        let pb = Bytes::from_static(&[0x0a, 0x03, b't', b'l', b's']);
        tx.send(pb.clone()).await.unwrap();
        tx.close_send().await.unwrap();
        let (msgs, end) = drain(&mut rx).await;
        assert_eq!(msgs, vec![pb], "gRPC {method}");
        assert_eq!(end, Ok(StreamEnd::ok()), "gRPC {method}");
    }
    assert_eq!(handler.requests_seen(), 5, "every call reached the echo");

    // A certificate of an unknown CA: each family gets Unavailable naming the TLS failure.
    let r = roundtrip(
        front.addr,
        shape,
        &svc("WrongCa"),
        "Echo",
        &thrift_args(b"x"),
    )
    .await;
    let ex = exception(&r);
    assert_eq!(ex.kind, ExceptionKind::INTERNAL_ERROR);
    assert!(
        ex.message.contains("TLS handshake failed")
            && ex
                .message
                .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        ex.message
    );
    let (_, end) = {
        let (tx, mut rx) = TTStreamClient::new(client_config(front.addr, None))
            .open(open("WrongCa"))
            .await
            .unwrap()
            .split();
        let _ = tx.send(Bytes::from_static(b"x")).await;
        drain(&mut rx).await
    };
    let error = end.expect("a Trailer").error.expect("an error");
    assert_eq!(error.code, StatusCode::TTStream(6), "{error:?}");
    assert!(
        error.message.contains("TLS handshake failed") && error.message.contains("UnknownIssuer"),
        "{}",
        error.message
    );
    let (tx, mut rx) = grpc
        .open(&grpc_req("WrongCa", "Echo"))
        .await
        .unwrap()
        .split();
    let _ = tx.send(Bytes::from_static(b"x")).await;
    let (_, end) = drain(&mut rx).await;
    let error = end.expect("a status").error.expect("an error");
    assert_eq!(error.code, StatusCode::Grpc(14), "UNAVAILABLE: {error:?}");
    assert!(
        error.message.contains("TLS handshake with")
            && error
                .message
                .contains("failed: invalid peer certificate: UnknownIssuer"),
        "{}",
        error.message
    );
    // An expired certificate says so.
    let r = roundtrip(
        front.addr,
        shape,
        &svc("Expired"),
        "Echo",
        &thrift_args(b"x"),
    )
    .await;
    let ex = exception(&r);
    assert!(
        ex.message.contains("TLS handshake failed")
            && ex
                .message
                .contains("invalid peer certificate: certificate expired"),
        "{}",
        ex.message
    );
    assert_eq!(
        handler.requests_seen(),
        5,
        "no refused call reached the echo"
    );
}

/// Sends SIGHUP (a reload) to `sluice`.
fn hup(sluice: &Sluice) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &sluice.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Retries `f` until it holds (a reload is applied asynchronously), up to 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_listener_and_downstream_certificates_again() {
    let (echo, _h, _d) = start_echo().await;
    let dir = Dir::new("reload");
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let leaf = old_ca.issue("before", false);
    let (cert, key) = (
        dir.write("cert.pem", &leaf.cert),
        dir.write("key.pem", &leaf.key),
    );
    let down = Sluice::start(&format!(
        r#"
[[listeners]]
name = "tt-tls"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
tls_cert = "{cert}"
tls_key = "{key}"
[[routes]]
service = "*"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo}"]
"#
    ));
    // The front trusts the new CA only, through a file the test replaces later.
    let trusted = dir.write("trusted.pem", &new_ca.pem);
    let front = Sluice::start(&format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[routes]]
service = "*"
downstream = "down"
[downstreams.down]
endpoints = ["{}"]
tls = {{ ca = "{trusted}", server_name = "localhost" }}
"#,
        down.addr
    ));
    let through_front = || async {
        let shape = Shape::TTHeader {
            framed: true,
            flags: 0,
        };
        let mut s = TcpStream::connect(front.addr).await.unwrap();
        s.write_all(&request(
            shape,
            &svc("EchoService"),
            false,
            "Echo",
            MessageType::Call,
            1,
            &thrift_args(b"r"),
        ))
        .await
        .unwrap();
        read_reply(
            &mut s,
            &mut bytes::BytesMut::new(),
            shape,
            Duration::from_secs(5),
        )
        .await
        .expect("a reply")
    };
    // The old certificate is not trusted by the front, nor by a client of the new CA.
    let r = through_front().await;
    assert!(
        exception(&r).message.contains("UnknownIssuer"),
        "{:?}",
        exception(&r)
    );
    let direct = |ca: &Ca| {
        let c = GenericClient::new(client_config(down.addr, Some(client_tls(ca))));
        async move { c.call(call(&thrift_args(b"direct"))).await }
    };
    direct(&old_ca)
        .await
        .expect("the old certificate is served");

    // The listener's files get a certificate of the new CA; SIGHUP; new connections see it.
    let leaf = new_ca.issue("after", false);
    dir.write("cert.pem", &leaf.cert);
    dir.write("key.pem", &leaf.key);
    hup(&down);
    eventually("the new certificate is served after the reload", || async {
        direct(&new_ca).await.is_ok()
    })
    .await;
    let e = direct(&old_ca)
        .await
        .expect_err("the old CA no longer fits");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // The front, which trusts the new CA, now reaches the downstream.
    let r = through_front().await;
    assert_eq!(
        r.msg_type,
        MessageType::Reply,
        "the front trusts the new CA"
    );
    // The front's CA file changes, its configuration text does not: the reload reads the
    // file again, and the downstream gets new clients with what it holds.
    dir.write("trusted.pem", &old_ca.pem);
    hup(&front);
    eventually("the front reads its CA file again", || async {
        through_front().await.msg_type == MessageType::Exception
    })
    .await;
    let r = through_front().await;
    assert!(
        exception(&r).message.contains("UnknownIssuer"),
        "{:?}",
        exception(&r)
    );
    let log = down.stop();
    assert!(log.contains("configuration reloaded"), "{log}");
}
