//! Replies whose handler-supplied keys cannot be encoded still go out, consistent with their
//! envelope.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_server::{DefaultHandler, Request, Response, Server, ServerConfig};
use sluice_thrift::{envelope, MessageType};
use sluice_ttheader::{int_key, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Replies with a key/value too large for any TTHeader (> 65532 bytes of header section).
struct HugeKeys;

impl DefaultHandler for HugeKeys {
    async fn handle(&self, req: Request) -> Response {
        let mut r = Response::reply(req.args);
        r.str_kvs.insert("big-1", vec![b'x'; 40_000]);
        r.str_kvs.insert("big-2", vec![b'y'; 40_000]);
        r
    }
}

#[tokio::test]
async fn unencodable_reply_keys_are_dropped_and_the_reply_stays_a_reply() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (_h, drain) = sluice_server::drain::channel();
    tokio::spawn(Server::new(ServerConfig::default(), Arc::new(HugeKeys)).serve(l, drain));

    let mut msg = BytesMut::new();
    envelope::write_header(&mut msg, "Echo", MessageType::Call, 9);
    msg.extend_from_slice(&[0x0c, 0x00, 0x01, 0x00, 0x00]);
    let mut req = BytesMut::new();
    sluice_ttheader::encode(&Header::new(9, 0), true, &msg, &mut req).unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&req).await.unwrap();

    let mut buf = BytesMut::new();
    let frame = loop {
        if let Some(f) = sluice_ttheader::Decoder::default()
            .decode(&mut buf)
            .unwrap()
        {
            break f;
        }
        assert!(s.read_buf(&mut buf).await.unwrap() > 0, "connection closed");
    };
    let env = envelope::decode_header(&frame.payload).unwrap();
    assert_eq!((env.msg_type, env.seq_id), (MessageType::Reply, 9));
    assert_eq!(
        frame.header.int_kvs.get(int_key::MSG_TYPE),
        Some(&Bytes::from_static(b"2")),
        "MsgType agrees with the envelope"
    );
    assert!(
        frame.header.str_kvs.is_empty(),
        "the oversized keys were dropped"
    );
    assert_eq!(
        &frame.payload[env.body_offset..],
        &[0x0c, 0x00, 0x01, 0x00, 0x00]
    );
}
