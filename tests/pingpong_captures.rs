//! Every ping-pong Kitex capture (TTHeader framed/unframed/mux, Framed, Buffered, Kitex
//! protobuf, and the error replies) through the whole wire layer as a server would run it:
//! connection sniff, per-message sniff, the transport decoder, then the envelope. Each frame must
//! match what the scenario's DECODED.md states, both directions, with no bytes left over; each
//! TTHeader frame must also re-encode to the very bytes Kitex sent.

use bytes::{Bytes, BytesMut};
use sluice::framed::{mesh, BufferedCodec, FramedCodec};
use sluice::sniff::{self, Codec, Detection, Family, Message};
use sluice::thrift::{envelope, kitex_pb, ApplicationException, MessageType};
use sluice::ttheader::{self, Decoder};
use sluice_testkit::{Capture, Dir, Expected, PINGPONG, TTSTREAM};

/// One decoded ping-pong message, as the server driver would see it.
#[derive(Debug)]
struct Decoded {
    sniffed: Message,
    frame_len: usize,
    ttheader: Option<ttheader::Frame>,
    message: Bytes,
}

fn next_message(buf: &mut BytesMut) -> Option<Decoded> {
    if buf.is_empty() {
        return None;
    }
    let sniffed = match sniff::sniff_message(buf).expect("whole capture is available") {
        Detection::Protocol(m) => m,
        Detection::NotOurs(r) => panic!("refused: {r}"),
    };
    let before = buf.len();
    let (ttheader, message) = match sniffed {
        Message::TTHeader { .. } => {
            let f = Decoder::default()
                .decode(buf)
                .unwrap()
                .expect("whole frame");
            let m = f.payload.clone();
            (Some(f), m)
        }
        Message::Framed { .. } => {
            let m = FramedCodec::default()
                .decode(buf)
                .unwrap()
                .expect("whole frame");
            (None, m.message)
        }
        Message::Buffered => (None, BufferedCodec::default().decode(buf).unwrap().unwrap()),
        Message::Mesh { .. } => {
            mesh::decode(buf).unwrap().unwrap();
            return next_message(buf);
        }
        Message::TTStream => panic!("TTStream frame on a ping-pong connection"),
    };
    Some(Decoded {
        sniffed,
        frame_len: before - buf.len(),
        ttheader,
        message,
    })
}

fn check(exp: &Expected, got: &Decoded, what: &str) {
    assert_eq!(got.frame_len, exp.len, "{what}: frame length");
    if let Some(f) = &got.ttheader {
        let h = &f.header;
        assert_eq!(Some(h.flags), exp.flags, "{what}: flags");
        assert_eq!(Some(h.seq_id), exp.seq_id, "{what}: seq id");
        assert_eq!(Some(h.protocol_id), exp.protocol_id, "{what}: protocol id");
        assert_eq!(
            Some((h.encoded_section_len() / 4) as u16),
            exp.header_words,
            "{what}: header size"
        );
        let strs: std::collections::BTreeMap<String, String> = h
            .str_kvs
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(strs, exp.str_kvs, "{what}: string key/values");
        let ints: std::collections::BTreeMap<u16, String> = h
            .int_kvs
            .iter()
            .map(|(k, v)| (k, String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        assert_eq!(ints, exp.int_kvs, "{what}: int key/values");
        assert_eq!(
            f.inner_framed,
            exp.inner_framed_len.is_some(),
            "{what}: inner framing"
        );
        if let Some(n) = exp.inner_framed_len {
            assert_eq!(f.payload.len(), n as usize, "{what}: inner length");
        }
        assert!(
            matches!(got.sniffed, Message::TTHeader { framed, .. } if framed == f.inner_framed)
        );
        // Kitex's encoding rules reproduce the frame byte for byte when the pairs keep their order.
        let mut out = BytesMut::new();
        f.encode(&mut out).unwrap();
        assert_eq!(out.len(), got.frame_len, "{what}: re-encoded length");
    }
    let codec = got.sniffed.codec().unwrap();
    let hdr = match codec {
        Codec::Thrift => envelope::decode_header(&got.message).unwrap(),
        Codec::KitexProtobuf => kitex_pb::decode_header(&got.message).unwrap(),
    };
    assert_eq!(
        Some(hdr.msg_type as u8),
        exp.msg_type,
        "{what}: message type"
    );
    assert_eq!(Some(hdr.name), exp.method.as_deref(), "{what}: method");
    assert_eq!(Some(hdr.seq_id), exp.msg_seq_id, "{what}: message seq id");
    if let Some(f) = &got.ttheader {
        assert_eq!(
            f.header.seq_id, hdr.seq_id,
            "{what}: TTHeader seq equals payload seq"
        );
    }
    let body = &got.message[hdr.body_offset..];
    match (hdr.msg_type, codec) {
        (MessageType::Exception, Codec::Thrift) => {
            let (ex, used) = ApplicationException::decode(body).unwrap();
            assert_eq!(used, body.len(), "{what}: exception fills the message");
            assert_eq!(Some(ex.message), exp.exception_message, "{what}");
            if exp.exception_type.is_some() {
                assert_eq!(Some(ex.kind.0), exp.exception_type, "{what}");
            }
        }
        (MessageType::Exception, Codec::KitexProtobuf) => {
            let e = kitex_pb::ErrorProto::decode(body).unwrap();
            assert_eq!(Some(e.message), exp.exception_message, "{what}");
        }
        (_, Codec::Thrift) => {
            // The body is one whole struct: the skipper must end exactly at the message end.
            let n = sluice::thrift::skip_struct(body, 64, body.len()).unwrap();
            assert_eq!(n, body.len(), "{what}: struct ends at the message end");
        }
        _ => {}
    }
    for s in &exp.payload_strings {
        assert!(
            body.windows(s.len()).any(|w| w == s.as_bytes()),
            "{what}: payload holds {s:?}"
        );
    }
}

#[test]
fn every_pingpong_capture_decodes_as_decoded_md_says() {
    let mut frames_checked = 0;
    for name in PINGPONG {
        let cap = Capture::load(name);
        assert!(!cap.frames.is_empty(), "{name}: no frames listed");
        for conn in &cap.conns {
            assert_eq!(
                sniff::sniff_connection(&conn.c2s),
                Ok(Detection::Protocol(Family::PingPong)),
                "{name} conn{}",
                conn.index
            );
            for dir in [Dir::C2s, Dir::S2c] {
                let expected = cap.frames_of(conn.index, dir);
                let mut buf = BytesMut::from(conn.bytes(dir));
                let mut offset = 0;
                for exp in &expected {
                    let what = format!(
                        "{name} conn{} {} frame #{}",
                        conn.index,
                        dir.as_str(),
                        exp.index
                    );
                    assert_eq!(offset, exp.offset, "{what}: offset");
                    let got = next_message(&mut buf).unwrap_or_else(|| panic!("{what}: missing"));
                    check(exp, &got, &what);
                    offset += got.frame_len;
                    frames_checked += 1;
                }
                assert!(
                    buf.is_empty(),
                    "{name} conn{} {}: {} bytes left over",
                    conn.index,
                    dir.as_str(),
                    buf.len()
                );
            }
        }
    }
    assert!(frames_checked >= 50, "only {frames_checked} frames checked");
}

#[test]
fn ttheader_capture_frames_re_encode_byte_for_byte() {
    for name in PINGPONG.iter().chain(TTSTREAM) {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let bytes = conn.bytes(dir);
                if !ttheader::is_ttheader(bytes) {
                    continue;
                }
                let mut buf = BytesMut::from(bytes);
                let mut out = BytesMut::new();
                while let Some(f) = Decoder::default().decode(&mut buf).unwrap() {
                    f.encode(&mut out).unwrap();
                }
                assert_eq!(
                    &out[..],
                    bytes,
                    "{name} conn{} {}",
                    conn.index,
                    dir.as_str()
                );
            }
        }
    }
}

#[test]
fn connection_sniff_of_every_capture() {
    for name in TTSTREAM {
        for conn in &Capture::load(name).conns {
            assert_eq!(
                sniff::sniff_connection(&conn.c2s),
                Ok(Detection::Protocol(Family::TTStream)),
                "{name}"
            );
        }
    }
    for name in sluice_testkit::GRPC {
        for conn in &Capture::load(name).conns {
            assert_eq!(
                sniff::sniff_connection(&conn.c2s),
                Ok(Detection::Protocol(Family::Http2)),
                "{name}"
            );
        }
    }
}

#[test]
fn every_prefix_of_every_first_message_sniffs_incomplete_then_the_same_answer() {
    for name in PINGPONG.iter().chain(TTSTREAM).chain(sluice_testkit::GRPC) {
        for conn in &Capture::load(name).conns {
            let bytes = &conn.c2s;
            let full_conn = sniff::sniff_connection(bytes).unwrap();
            let full_msg = sniff::sniff_message(bytes);
            for n in 0..bytes.len().min(256) {
                match sniff::sniff_connection(&bytes[..n]) {
                    Ok(d) => assert_eq!(d, full_conn, "{name}: connection sniff at {n}"),
                    Err(inc) => assert!(inc.needed > n, "{name}: needed {} at {n}", inc.needed),
                }
                match sniff::sniff_message(&bytes[..n]) {
                    Ok(d) => assert_eq!(Ok(d), full_msg, "{name}: message sniff at {n}"),
                    Err(inc) => assert!(inc.needed > n),
                }
            }
        }
    }
}
