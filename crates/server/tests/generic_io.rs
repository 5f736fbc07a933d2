//! `Server::serve_connection` over a byte stream that is not a socket: an in-memory
//! `tokio::io::duplex` pipe carries a ping-pong request and a TTStream stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_server::echo::EchoHandler;
use sluice_server::{Drain, Server, ServerConfig};
use sluice_thrift::{envelope, MessageType};
use sluice_ttheader::Header;
use sluice_ttstream::{FrameDecoder, FrameType, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

/// An echo server serving the far end of a new duplex pipe; the near end and the serving task.
fn serve_pipe() -> (DuplexStream, JoinHandle<()>) {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let echo = Arc::new(EchoHandler::new());
    let server = Server::new(ServerConfig::default(), echo.clone()).with_streaming(echo);
    let task = tokio::spawn(async move {
        server
            .serve_connection(server_end, PEER, Drain::never())
            .await
    });
    (client, task)
}

/// Waits for the serving task; it must end once the client has closed.
async fn ends(task: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the connection ends after the client closes")
        .expect("the connection task does not panic");
}

#[tokio::test]
async fn a_pingpong_request_is_answered_over_a_duplex_pipe() {
    let (mut client, task) = serve_pipe();
    let mut msg = BytesMut::new();
    envelope::write_header(&mut msg, "Echo", MessageType::Call, 7);
    msg.extend_from_slice(&[
        0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0, 0, 0, 2, b'h', b'i', 0, 0,
    ]);
    let mut req = BytesMut::new();
    sluice_ttheader::encode(&Header::new(7, 0), true, &msg, &mut req).unwrap();
    client.write_all(&req).await.unwrap();

    let dec = sluice_ttheader::Decoder::default();
    let mut buf = BytesMut::new();
    let reply = loop {
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            break f;
        }
        assert!(client.read_buf(&mut buf).await.unwrap() > 0, "closed");
    };
    assert_eq!(reply.header.seq_id, 7);
    let env = envelope::decode_header(&reply.payload).unwrap();
    assert_eq!(env.msg_type, MessageType::Reply);
    assert_eq!(env.seq_id, 7);
    // The args struct comes back as the result's success field.
    assert_eq!(
        &reply.payload[env.body_offset..],
        &[0x0c, 0x00, 0x00, 0x0b, 0x00, 0x01, 0, 0, 0, 2, b'h', b'i', 0, 0]
    );
    drop(client);
    ends(task).await;
}

#[tokio::test]
async fn a_ttstream_stream_is_served_over_a_duplex_pipe() {
    let (mut client, task) = serve_pipe();
    let mut out = BytesMut::new();
    StreamFrame::client_header(1, "EchoBidi", "EchoService", Vec::<(Bytes, Bytes)>::new())
        .encode(&mut out)
        .unwrap();
    StreamFrame::data(
        1,
        "EchoBidi",
        Bytes::from_static(b"\x0b\x00\x01\x00\x00\x00\x01a\x00"),
    )
    .encode(&mut out)
    .unwrap();
    StreamFrame::trailer(1, "EchoBidi")
        .encode(&mut out)
        .unwrap();
    client.write_all(&out).await.unwrap();

    let dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut kinds = Vec::new();
    let mut echoed = None;
    while kinds.last() != Some(&FrameType::Trailer) {
        match dec.decode(&mut buf).unwrap() {
            Some(f) => {
                assert_eq!(f.stream_id, 1);
                if f.kind == FrameType::Data {
                    echoed = Some(f.payload.clone());
                }
                kinds.push(f.kind);
            }
            None => assert!(client.read_buf(&mut buf).await.unwrap() > 0, "closed"),
        }
    }
    assert_eq!(
        kinds,
        [FrameType::Header, FrameType::Data, FrameType::Trailer]
    );
    assert_eq!(
        echoed.as_deref(),
        Some(&b"\x0b\x00\x01\x00\x00\x00\x01a\x00"[..])
    );
    client.shutdown().await.unwrap();
    drop(client);
    ends(task).await;
}
