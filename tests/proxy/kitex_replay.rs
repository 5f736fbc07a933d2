//! Real Kitex bytes through the proxy: each ping-pong capture's client bytes are replayed into
//! `sluice` in front of a downstream that answers as the captured Kitex server did. What comes
//! back must decode to the captured server replies, and what the downstream receives must decode
//! to the captured requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_server::{DefaultHandler, Request, Response, ResponseBody};
use sluice_sniff::{Detection, Message};
use sluice_testkit::{Capture, Dir};
use sluice_thrift::{envelope, kitex_pb, MessageType};
use sluice_ttheader::{int_key, StrKvs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{start_server, Sluice};

/// One ping-pong message of a capture, decoded.
#[derive(Debug, Clone)]
struct Msg {
    ttheader: Option<sluice_ttheader::Frame>,
    transport: Message,
    /// The whole message (envelope + body).
    message: Bytes,
    method: String,
    msg_type: MessageType,
    seq: i32,
    body: Bytes,
}

fn decode_stream(bytes: &[u8]) -> Vec<Msg> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Ok(Detection::Protocol(shape)) = sluice_sniff::sniff_message(&buf) else {
            panic!("undecodable capture bytes")
        };
        let (ttheader, message) = match shape {
            Message::TTHeader { .. } => {
                let f = sluice_ttheader::Decoder::default()
                    .decode(&mut buf)
                    .unwrap()
                    .unwrap();
                let m = f.payload.clone();
                (Some(f), m)
            }
            Message::Framed { .. } => (
                None,
                sluice_framed::FramedCodec::default()
                    .decode(&mut buf)
                    .unwrap()
                    .unwrap()
                    .message,
            ),
            Message::Buffered => (
                None,
                sluice_framed::BufferedCodec::default()
                    .decode(&mut buf)
                    .unwrap()
                    .unwrap(),
            ),
            other => panic!("unexpected {other:?}"),
        };
        let env = if message[0] == 0x90 {
            kitex_pb::decode_header(&message).unwrap()
        } else {
            envelope::decode_header(&message).unwrap()
        };
        out.push(Msg {
            ttheader,
            transport: shape,
            method: env.name.to_owned(),
            msg_type: env.msg_type,
            seq: env.seq_id,
            body: message.slice(env.body_offset..),
            message,
        });
    }
    out
}

fn strs(kvs: &StrKvs) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into(),
                String::from_utf8_lossy(v).into(),
            )
        })
        .collect()
}

/// Answers each request with the captured reply to the captured request with the same args.
#[derive(Debug, Default)]
struct ReplayHandler {
    replies: HashMap<Bytes, Msg>,
    seen: Mutex<Vec<Request>>,
}

impl DefaultHandler for ReplayHandler {
    async fn handle(&self, req: Request) -> Response {
        self.seen.lock().unwrap().push(req.clone());
        let reply = self.replies.get(&req.args).expect("a captured request");
        Response {
            body: match reply.msg_type {
                MessageType::Exception => ResponseBody::RawException(reply.body.clone()),
                _ => ResponseBody::Reply(reply.body.clone()),
            },
            str_kvs: reply
                .ttheader
                .as_ref()
                .map(|f| f.header.str_kvs.clone())
                .unwrap_or_default(),
        }
    }
}

async fn replay(name: &str) {
    let cap = Capture::load(name);
    let mut handler = ReplayHandler::default();
    let mut conns = Vec::new();
    for conn in &cap.conns {
        let reqs = decode_stream(conn.bytes(Dir::C2s));
        let reps = decode_stream(conn.bytes(Dir::S2c));
        assert_eq!(reqs.len(), reps.len(), "{name}");
        for r in &reqs {
            let rep = reps
                .iter()
                .find(|x| x.seq == r.seq)
                .expect("reply with the same seq");
            handler.replies.insert(r.body.clone(), rep.clone());
        }
        conns.push((conn.bytes(Dir::C2s).to_vec(), reqs, reps));
    }
    let handler = Arc::new(handler);
    let (down, _drain) = start_server(handler.clone()).await;
    let sluice = Sluice::start(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[routes]]
service = "*"
downstream = "kitex"
[downstreams.kitex]
endpoints = ["{down}"]
transport = "ttheader"
"#
    ));
    for (c2s, reqs, reps) in conns {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(&c2s).await.unwrap();
        // Read until every reply is in (they may come in any order for a mux client).
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        while got.len() < reps.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{name}: sluice closed before replying");
            if let Ok(Detection::Protocol(_)) = sluice_sniff::sniff_message(&buf) {
                // Decode whatever whole replies are there.
                let whole = whole_prefix(&buf);
                if whole > 0 {
                    got.extend(decode_stream(&buf.split_to(whole)));
                }
            }
        }
        for want in &reps {
            let have = got
                .iter()
                .find(|m| m.seq == want.seq)
                .unwrap_or_else(|| panic!("{name}: no reply for seq {}", want.seq));
            let what = format!("{name} seq {}", want.seq);
            assert_eq!(
                have.transport, want.transport,
                "{what}: same transport and inner framing"
            );
            assert_eq!(
                (have.method.as_str(), have.msg_type),
                (want.method.as_str(), want.msg_type),
                "{what}"
            );
            assert_eq!(
                have.message, want.message,
                "{what}: the reply message is byte-identical"
            );
            match (&have.ttheader, &want.ttheader) {
                (Some(h), Some(w)) => {
                    assert_eq!(h.header.seq_id, w.header.seq_id, "{what}");
                    assert_eq!(h.header.flags, w.header.flags, "{what}");
                    assert_eq!(h.inner_framed, w.inner_framed, "{what}");
                    assert_eq!(
                        h.header.int_kvs.get_str(int_key::MSG_TYPE),
                        w.header.int_kvs.get_str(int_key::MSG_TYPE),
                        "{what}: MsgType"
                    );
                    assert_eq!(
                        strs(&h.header.str_kvs),
                        strs(&w.header.str_kvs),
                        "{what}: backward metainfo"
                    );
                }
                (None, None) => {}
                _ => panic!("{what}: TTHeader on one side only"),
            }
            if want.msg_type == MessageType::Exception && want.message[0] == 0x80 {
                let a = sluice_thrift::ApplicationException::decode(&have.body)
                    .unwrap()
                    .0;
                let b = sluice_thrift::ApplicationException::decode(&want.body)
                    .unwrap()
                    .0;
                assert_eq!(a, b, "{what}: exception type and message");
            }
        }
        // What the downstream received decodes to the captured requests.
        let seen = handler.seen.lock().unwrap().clone();
        for want in &reqs {
            let r = seen
                .iter()
                .find(|r| r.args == want.body)
                .unwrap_or_else(|| panic!("{name}: downstream never saw seq {}", want.seq));
            assert_eq!(
                (r.method.as_str(), r.msg_type),
                (want.method.as_str(), want.msg_type),
                "{name}"
            );
            if let Some(w) = &want.ttheader {
                let got = strs(&r.header.str_kvs);
                for (k, v) in strs(&w.header.str_kvs) {
                    assert_eq!(
                        got.get(&k),
                        Some(&v),
                        "{name}: metainfo {k} reaches the downstream"
                    );
                }
                for k in [
                    int_key::FROM_SERVICE,
                    int_key::TO_SERVICE,
                    int_key::FROM_METHOD,
                ] {
                    assert_eq!(
                        r.header.int_kvs.get(k),
                        w.header.int_kvs.get(k),
                        "{name}: int key {k}"
                    );
                }
                let timeout: u64 = r
                    .header
                    .int_kvs
                    .get_str(int_key::RPC_TIMEOUT)
                    .unwrap()
                    .parse()
                    .unwrap();
                let orig: u64 = w
                    .header
                    .int_kvs
                    .get_str(int_key::RPC_TIMEOUT)
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    timeout <= orig && timeout + 1000 > orig,
                    "{name}: remaining deadline {timeout} of {orig}"
                );
            }
        }
    }
}

/// Length of the whole ping-pong messages at the start of `buf`.
fn whole_prefix(buf: &[u8]) -> usize {
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let n = match sluice_sniff::sniff_message(rest) {
            Ok(Detection::Protocol(Message::TTHeader { .. })) => {
                sluice_ttheader::Decoder::default().frame_len(rest).unwrap()
            }
            Ok(Detection::Protocol(Message::Framed { .. })) => {
                sluice_framed::FramedCodec::default()
                    .frame_len(rest)
                    .unwrap()
            }
            Ok(Detection::Protocol(Message::Buffered)) => sluice_framed::BufferedCodec::default()
                .message_len(rest)
                .unwrap(),
            _ => None,
        };
        match n {
            Some(n) if n <= rest.len() => pos += n,
            _ => break,
        }
    }
    pos
}

macro_rules! replay_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                replay($name).await;
            }
        )*
    };
}

replay_tests! {
    replay_ttheader_unary => "ttheader-unary",
    replay_ttheader_framed_unary => "ttheader-framed-unary",
    replay_ttheader_unframed_unary => "ttheader-unframed-unary",
    replay_ttheader_mux_unary => "ttheader-mux-unary",
    replay_ttheader_echofail => "ttheader-echofail",
    replay_framed_unary => "framed-unary",
    replay_framed_echofail => "framed-echofail",
    replay_buffered_unary => "buffered-unary",
    replay_buffered_echofail => "buffered-echofail",
    replay_pb_unary => "pb-unary",
    replay_pb_echofail => "pb-echofail",
    replay_ttstream_unary => "ttstream-unary",
}
