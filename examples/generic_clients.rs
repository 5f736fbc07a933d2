//! The generic clients on their own: calling a downstream service by name, without IDL and
//! without the proxy.
//!
//! * a ping-pong call with [`GenericClient`]: the thrift args struct of
//!   `Echo(1: EchoRequest req)` goes out over TTHeader with the service name (`isn`) and a
//!   metainfo key, and the result struct comes back as bytes;
//! * a TTStream stream with [`TTStreamClient`]: a few messages, then a half-close, then every
//!   message and the end status the server sends.
//!
//! Any Kitex echo service will do as the downstream; so will `sluice echo`:
//!
//! ```sh
//! cargo run -- echo --listen 127.0.0.1:8888 &
//! cargo run --example generic_clients -- 127.0.0.1:8888
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice::client::{Call, ClientConfig, Endpoint, GenericClient, OpenStream, TTStreamClient};
use sluice::sniff::Codec;
use sluice::stream::{Incoming, Metadata, StreamEnd};
use sluice::thrift::{ApplicationException, MessageType};
use sluice::ttheader::Header;

/// The downstream's name, for the clients' errors and logs.
pub const DOWNSTREAM: &str = "echo";

/// What the calls brought back.
#[derive(Debug)]
pub struct Outcome {
    /// The ping-pong reply: the result struct bytes.
    pub reply: Bytes,
    /// Every message the stream sent back, in order.
    pub stream_messages: Vec<Bytes>,
    /// How the stream ended.
    pub stream_end: StreamEnd,
}

/// A thrift struct `{1: string}`: the args of `Echo(1: EchoRequest req)` are this inside field
/// 1, and a streaming message is the bare request struct.
pub fn echo_request(text: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0b, 0x00, 0x01]);
    b.put_i32(text.len() as i32);
    b.put_slice(text.as_bytes());
    b.put_u8(0);
    b.freeze()
}

/// The args struct `{1: EchoRequest}`.
pub fn echo_args(text: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0c, 0x00, 0x01]);
    b.put_slice(&echo_request(text));
    b.put_u8(0);
    b.freeze()
}

/// Calls `EchoService.Echo` once and runs one `EchoBidi` stream of `messages` on the service at
/// `addr`.
pub async fn run(
    addr: SocketAddr,
    messages: &[&str],
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let config = ClientConfig::new(DOWNSTREAM, vec![Endpoint { addr, weight: 1 }]);

    // Ping-pong: TTHeader (the default transport), thrift, with the service name and one
    // metainfo key in the header's string keys.
    let pingpong = GenericClient::new(config.clone());
    let mut header = Header::default();
    header.str_kvs.insert("isn", "EchoService");
    header
        .str_kvs
        .insert("RPC_TRANSIT_example", "generic_clients");
    let reply = pingpong
        .call(Call {
            method: "Echo".into(),
            msg_type: MessageType::Call,
            codec: Codec::Thrift,
            args: echo_args("hello"),
            header,
            deadline: Some(Instant::now() + Duration::from_secs(5)),
        })
        .await?
        .ok_or("a call (not oneway) gets a reply")?;
    if reply.msg_type == MessageType::Exception {
        let (ex, _) = ApplicationException::decode(&reply.body)?;
        return Err(format!("Echo failed: {} (type {})", ex.message, ex.kind.0).into());
    }

    // TTStream: open, send, half-close, then read until the end.
    let streams = TTStreamClient::new(config);
    let (tx, mut rx) = streams
        .open(OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "EchoService".into(),
            headers: Metadata::new(),
        })
        .await?
        .split();
    for m in messages {
        tx.send(echo_request(m)).await?;
    }
    tx.close_send().await?;
    let mut stream_messages = Vec::new();
    let stream_end = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await? {
            Incoming::Headers(_) => {}
            Incoming::Message(m) => stream_messages.push(m),
            Incoming::End(end) => break end,
            Incoming::Reset(r) => return Err(format!("stream reset: {}", r.message).into()),
        }
    };
    Ok(Outcome {
        reply: reply.body,
        stream_messages,
        stream_end,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:8888")
        .parse()?;
    let out = run(addr, &["one", "two", "three"]).await?;
    println!(
        "Echo reply: {} bytes: {:02x?}",
        out.reply.len(),
        &out.reply[..]
    );
    for (i, m) in out.stream_messages.iter().enumerate() {
        println!("stream message {i}: {:02x?}", &m[..]);
    }
    match &out.stream_end.error {
        None => println!("stream ended ok"),
        Some(e) => println!("stream ended with {}: {}", e.code, e.message),
    }
    Ok(())
}
