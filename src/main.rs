//! The `sluice` binary.
//!
//! Today it carries the wire layer only: `sluice demo` builds one request of every ping-pong
//! protocol Kitex speaks, runs it through the sniffer and the decoders, and prints what each
//! layer saw. The proxy (`run`, `check`) lands on top of these crates.

use std::process::ExitCode;

use bytes::{BufMut, BytesMut};
use sluice::sniff::{self, Detection};
use sluice::thrift::{envelope, kitex_pb, MessageType};
use sluice::ttheader::{self, int_key, str_key, Header};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") | None => demo(),
        Some("--version") | Some("-V") => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("sluice: unknown command {other:?}\nusage: sluice [demo | --version]");
            ExitCode::from(2)
        }
    }
}

/// The args struct of `Echo(1: EchoRequest{1: msg})`.
fn args_struct(msg: &str) -> Vec<u8> {
    let mut v = vec![0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01];
    v.put_i32(msg.len() as i32);
    v.put_slice(msg.as_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

fn thrift_call(seq: i32) -> Vec<u8> {
    let mut m = Vec::new();
    envelope::write_header(&mut m, "Echo", MessageType::Call, seq);
    m.extend_from_slice(&args_struct("hello"));
    m
}

fn pb_call(seq: i32) -> Vec<u8> {
    let mut m = Vec::new();
    kitex_pb::write_header(&mut m, "Echo", MessageType::Call, seq);
    m.extend_from_slice(&[0x0a, 0x05, b'h', b'e', b'l', b'l', b'o']);
    m
}

fn demo() -> ExitCode {
    let mut header = Header::new(1, 0);
    header
        .str_kvs
        .insert(str_key::IDL_SERVICE_NAME, "EchoService");
    header.str_kvs.insert("RPC_TRANSIT_DEMO", "1");
    header.int_kvs.insert(int_key::TO_METHOD, "Echo");
    header.int_kvs.insert(int_key::MSG_TYPE, "1");
    let mut cases: Vec<(&str, BytesMut)> = Vec::new();
    for (name, framed, payload) in [
        ("TTHeader + Framed (Kitex default)", true, thrift_call(1)),
        ("TTHeader unframed", false, thrift_call(2)),
        ("TTHeader + Kitex protobuf", true, pb_call(3)),
    ] {
        let mut b = BytesMut::new();
        ttheader::encode(&header, framed, &payload, &mut b).expect("encodes");
        cases.push((name, b));
    }
    let mut framed = BytesMut::new();
    framed.put_u32(thrift_call(4).len() as u32);
    framed.put_slice(&thrift_call(4));
    cases.push(("Framed thrift", framed));
    let mut framed_pb = BytesMut::new();
    framed_pb.put_u32(pb_call(5).len() as u32);
    framed_pb.put_slice(&pb_call(5));
    cases.push(("Framed Kitex protobuf", framed_pb));
    cases.push(("Buffered thrift", BytesMut::from(&thrift_call(6)[..])));

    println!(
        "{:<36} {:<34} {:>6} {:>6}  result",
        "protocol", "sniffed as", "bytes", "seq"
    );
    let mut ok = true;
    for (name, bytes) in cases {
        let sniffed = sniff::sniff_message(&bytes);
        let outcome = decode_one(bytes.clone());
        let seq = outcome.as_ref().map(|s| s.to_string()).unwrap_or_default();
        let result = match &outcome {
            Ok(_) => "ok".to_owned(),
            Err(e) => {
                ok = false;
                format!("FAILED: {e}")
            }
        };
        let sniffed = match sniffed {
            Ok(Detection::Protocol(m)) => format!("{m:?}"),
            Ok(Detection::NotOurs(r)) => format!("refused: {r}"),
            Err(e) => e.to_string(),
        };
        println!(
            "{name:<36} {sniffed:<34} {:>6} {seq:>6}  {result}",
            bytes.len()
        );
    }
    println!("\nThe wire layer is in place; the proxy (`sluice run`) is not yet.");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn decode_one(mut buf: BytesMut) -> Result<i32, String> {
    use sluice::sniff::Message;
    let message = match sniff::sniff_message(&buf).map_err(|e| e.to_string())? {
        Detection::Protocol(Message::TTHeader { .. }) => {
            ttheader::Decoder::default()
                .decode(&mut buf)
                .map_err(|e| e.to_string())?
                .ok_or("incomplete")?
                .payload
        }
        Detection::Protocol(Message::Framed { .. }) => {
            sluice::framed::FramedCodec::default()
                .decode(&mut buf)
                .map_err(|e| e.to_string())?
                .ok_or("incomplete")?
                .message
        }
        Detection::Protocol(Message::Buffered) => sluice::framed::BufferedCodec::default()
            .decode(&mut buf)
            .map_err(|e| e.to_string())?
            .ok_or("incomplete")?,
        other => return Err(format!("unexpected {other:?}")),
    };
    let hdr = envelope::decode_header(&message)
        .or_else(|_| kitex_pb::decode_header(&message))
        .map_err(|e| e.to_string())?;
    Ok(hdr.seq_id)
}
