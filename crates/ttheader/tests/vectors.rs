//! kitex-wire.md section 8 vectors: each decodes to the fields the spec lists and re-encodes to
//! a frame that decodes equal (maps compared, not key order).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use sluice_testkit::hex;
use sluice_ttheader::{encode, encode_head_ref, flags, int_key, str_key, Decoder, Frame, HeadRef};

fn decode(v: &[u8]) -> Frame {
    let mut buf = BytesMut::from(v);
    let f = Decoder::default()
        .decode(&mut buf)
        .unwrap()
        .expect("whole frame");
    assert!(buf.is_empty(), "leftover bytes");
    f
}

fn strs(f: &Frame) -> BTreeMap<String, String> {
    f.header
        .str_kvs
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into(),
                String::from_utf8_lossy(v).into(),
            )
        })
        .collect()
}

fn ints(f: &Frame) -> BTreeMap<u16, String> {
    f.header
        .int_kvs
        .iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(v).into()))
        .collect()
}

fn map<K: Ord + Clone, const N: usize>(pairs: [(K, &str); N]) -> BTreeMap<K, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

/// Re-encodes and checks the result decodes to the same frame; returns the bytes.
fn round_trip(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    f.encode(&mut out).unwrap();
    let again = decode(&out);
    assert_eq!(again.header.flags, f.header.flags);
    assert_eq!(again.header.seq_id, f.header.seq_id);
    assert_eq!(again.header.protocol_id, f.header.protocol_id);
    assert_eq!(strs(&again), strs(f));
    assert_eq!(ints(&again), ints(f));
    assert_eq!(again.inner_framed, f.inner_framed);
    assert_eq!(again.payload, f.payload);
    // The borrowed-header encoder writes the very same bytes.
    if f.header.transforms.is_empty() && f.header.acl_token.is_none() {
        let int_kvs: Vec<(u16, &[u8])> = f.header.int_kvs.iter().collect();
        let head = HeadRef {
            flags: f.header.flags,
            seq_id: f.header.seq_id,
            protocol_id: f.header.protocol_id,
            str_kvs: &f.header.str_kvs,
            int_kvs: &int_kvs,
        };
        let mut by_ref = BytesMut::new();
        encode_head_ref(&head, f.inner_framed, f.payload.len(), &mut by_ref).unwrap();
        by_ref.extend_from_slice(&f.payload);
        assert_eq!(by_ref, out, "encode_head_ref differs from encode_head");
    }
    out.to_vec()
}

const CALL_8_2: &str = "80010001000000044563686f000000010c00010b000100000005 68656c6c6f0000";
const REPLY_8_2: &str = "80010002000000044563686f000000010c00000b000100000005 68656c6c6f0000";

#[test]
fn a_ttheader_framed_request() {
    let v = hex("
        00 00 00 73 10 00 00 00 00 00 00 01 00 11 00 00
        01 00 01 00 03 69 73 6e 00 0b 45 63 68 6f 53 65
        72 76 69 63 65 10 00 05 00 01 00 06 66 72 61 6d
        65 64 00 03 00 06 63 6c 69 65 6e 74 00 06 00 04
        65 63 68 6f 00 09 00 04 45 63 68 6f 00 16 00 01
        31 00 00 00 00 21 80 01 00 01 00 00 00 04 45 63
        68 6f 00 00 00 01 0c 00 01 0b 00 01 00 00 00 05
        68 65 6c 6c 6f 00 00");
    assert_eq!(v.len(), 119);
    let f = decode(&v);
    assert_eq!(
        (f.header.flags, f.header.seq_id, f.header.protocol_id),
        (0, 1, 0)
    );
    assert!(f.header.transforms.is_empty());
    assert_eq!(strs(&f), map([("isn".to_string(), "EchoService")]));
    assert_eq!(
        ints(&f),
        map([
            (1, "framed"),
            (3, "client"),
            (6, "echo"),
            (9, "Echo"),
            (22, "1")
        ])
    );
    assert!(f.inner_framed);
    assert_eq!(&f.payload[..], &hex(CALL_8_2)[..]);
    assert_eq!(
        f.header.str_kvs.get_str(str_key::IDL_SERVICE_NAME),
        Some("EchoService")
    );
    assert_eq!(f.header.int_kvs.get_str(int_key::TO_METHOD), Some("Echo"));
    // Pairs are kept in wire order, so this vector re-encodes byte for byte.
    assert_eq!(round_trip(&f), v);
}

#[test]
fn b_ttheader_unframed_request() {
    let v = hex("
        00 00 00 67 10 00 00 00 00 00 00 01 00 0f 00 00
        01 00 01 00 03 69 73 6e 00 0b 45 63 68 6f 53 65
        72 76 69 63 65 10 00 04 00 01 00 08 75 6e 66 72
        61 6d 65 64 00 06 00 04 65 63 68 6f 00 09 00 04
        45 63 68 6f 00 16 00 01 31 00 80 01 00 01 00 00
        00 04 45 63 68 6f 00 00 00 01 0c 00 01 0b 00 01
        00 00 00 05 68 65 6c 6c 6f 00 00");
    assert_eq!(v.len(), 107);
    let f = decode(&v);
    assert!(!f.inner_framed);
    assert_eq!(
        ints(&f),
        map([(1, "unframed"), (6, "echo"), (9, "Echo"), (22, "1")])
    );
    assert_eq!(&f.payload[..], &hex(CALL_8_2)[..]);
    assert_eq!(round_trip(&f), v);
}

#[test]
fn c_minimal_request() {
    let v = hex("
        00 00 00 2f 10 00 00 00 00 00 00 01 00 01 00 00
        00 00 80 01 00 01 00 00 00 04 45 63 68 6f 00 00
        00 01 0c 00 01 0b 00 01 00 00 00 05 68 65 6c 6c
        6f 00 00");
    let f = decode(&v);
    assert!(f.header.str_kvs.is_empty() && f.header.int_kvs.is_empty());
    assert!(!f.inner_framed);
    assert_eq!(f.payload.len(), 33);
    assert_eq!(round_trip(&f), v);
}

#[test]
fn d_reply() {
    let v = hex("
        00 00 00 3b 10 00 00 00 00 00 00 01 00 03 00 00
        10 00 01 00 16 00 01 32 00 00 00 00 00 21 80 01
        00 02 00 00 00 04 45 63 68 6f 00 00 00 01 0c 00
        00 0b 00 01 00 00 00 05 68 65 6c 6c 6f 00 00");
    let f = decode(&v);
    assert_eq!(ints(&f), map([(22, "2")]));
    assert!(f.inner_framed);
    assert_eq!(&f.payload[..], &hex(REPLY_8_2)[..]);
    assert_eq!(round_trip(&f), v);
}

#[test]
fn e_biz_status_reply() {
    let v = hex("
        00 00 00 7f 10 00 00 00 00 00 00 01 00 18 00 00
        01 00 03 00 0a 62 69 7a 2d 73 74 61 74 75 73 00
        03 35 30 32 00 0b 62 69 7a 2d 6d 65 73 73 61 67
        65 00 09 62 69 7a 20 65 72 72 6f 72 00 09 62 69
        7a 2d 65 78 74 72 61 00 1b 7b 22 64 65 74 61 69
        6c 22 3a 22 74 65 73 74 20 62 69 7a 20 65 72 72
        6f 72 22 7d 10 00 01 00 16 00 01 32 00 00 00 00
        00 11 80 01 00 02 00 00 00 04 45 63 68 6f 00 00
        00 01 00");
    assert_eq!(v.len(), 131);
    let f = decode(&v);
    assert_eq!(
        strs(&f),
        map([
            ("biz-status".to_string(), "502"),
            ("biz-message".to_string(), "biz error"),
            ("biz-extra".to_string(), r#"{"detail":"test biz error"}"#),
        ])
    );
    assert_eq!(f.header.str_kvs.get_str(str_key::BIZ_STATUS), Some("502"));
    assert!(f.inner_framed);
    assert_eq!(f.payload.len(), 17);
    assert_eq!(round_trip(&f), v);
}

#[test]
fn f_crrst_exception() {
    let v = hex("
        00 00 00 65 10 00 00 00 00 00 00 01 00 06 00 00
        01 00 01 00 05 63 72 72 73 74 00 01 31 10 00 01
        00 16 00 01 33 00 00 00 00 3f 80 01 00 03 00 00
        00 04 45 63 68 6f 00 00 00 01 0b 00 01 00 00 00
        20 75 6e 6b 6e 6f 77 6e 20 73 65 72 76 69 63 65
        20 46 6f 6f 2c 20 6d 65 74 68 6f 64 20 45 63 68
        6f 08 00 02 00 00 00 14 00");
    let f = decode(&v);
    assert_eq!(f.header.str_kvs.get_str(str_key::CONN_RESET), Some("1"));
    assert_eq!(ints(&f), map([(22, "3")]));
    let (name, seq, ex) = sluice_thrift::ApplicationException::decode_message(&f.payload).unwrap();
    assert_eq!((name.as_str(), seq), ("Echo", 1));
    assert_eq!(ex.kind, sluice_thrift::ExceptionKind::UNKNOWN_SERVICE);
    assert_eq!(ex.message, "unknown service Foo, method Echo");
    assert_eq!(round_trip(&f), v);
}

#[test]
fn pb_request_8_5() {
    let v = hex("
        00 00 00 61 10 00 00 00 00 00 00 01 00 0f 00 00
        01 00 01 00 03 69 73 6e 00 0b 45 63 68 6f 53 65
        72 76 69 63 65 10 00 04 00 01 00 06 66 72 61 6d
        65 64 00 06 00 04 65 63 68 6f 00 09 00 04 45 63
        68 6f 00 16 00 01 31 00 00 00 00 00 00 17 90 01
        00 01 00 00 00 04 45 63 68 6f 00 00 00 01 0a 05
        68 65 6c 6c 6f");
    let f = decode(&v);
    assert_eq!(f.header.protocol_id, 0);
    assert!(
        f.inner_framed,
        "Kitex protobuf always carries the inner length"
    );
    let h = sluice_thrift::kitex_pb::decode_header(&f.payload).unwrap();
    assert_eq!((h.name, h.seq_id), ("Echo", 1));
    assert_eq!(
        &f.payload[h.body_offset..],
        &hex("0a 05 68 65 6c 6c 6f")[..]
    );
    assert_eq!(round_trip(&f), v);
}

#[test]
fn ttstream_vectors_8_7_are_ttheader_frames() {
    // S1 client Header frame and S8 RST: the TTHeader layer keeps every field.
    let s1 = hex("
        00 00 00 36 10 00 00 02 00 00 00 01 00 0b 10 00
        01 00 01 00 03 69 73 6e 00 0b 45 63 68 6f 53 65
        72 76 69 63 65 10 00 02 00 09 00 08 45 63 68 6f
        42 69 64 69 00 1b 00 01 32 00");
    let f = decode(&s1);
    assert_eq!(f.header.flags, flags::STREAMING);
    assert_eq!(f.header.protocol_id, 0x10);
    assert!(!f.inner_framed);
    assert!(f.payload.is_empty());
    assert_eq!(ints(&f), map([(9, "EchoBidi"), (27, "2")]));
    assert_eq!(round_trip(&f), s1);

    // S2 data frame: a bare struct payload, never mistaken for an inner length.
    let s2 = hex("
        00 00 00 2f 10 00 00 02 00 00 00 01 00 06 10 00
        10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
        1b 00 01 33 00 00 0b 00 01 00 00 00 05 68 65 6c
        6c 6f 00");
    let f = decode(&s2);
    assert_eq!(
        &f.payload[..],
        &hex("0b 00 01 00 00 00 05 68 65 6c 6c 6f 00")[..]
    );
    assert_eq!(round_trip(&f), s2);
}

#[test]
fn acl_token_transforms_padding_and_repeats_are_kept() {
    // Hand-built: 1 transform (ZLIB, kept, not applied), an ACL block, padding bytes between
    // blocks, and a repeated string key (the later value wins, as in Kitex).
    let mut section = vec![0x00, 0x01, 0x01];
    section.extend_from_slice(&[0x11, 0x00, 0x03, b't', b'o', b'k']);
    section.push(0x00); // padding in the middle
    section.extend_from_slice(&[0x01, 0x00, 0x01, 0x00, 0x01, b'k', 0x00, 0x01, b'1']);
    section.extend_from_slice(&[0x01, 0x00, 0x01, 0x00, 0x01, b'k', 0x00, 0x01, b'2']);
    while section.len() % 4 != 0 {
        section.push(0);
    }
    let payload = hex(CALL_8_2);
    let mut v = Vec::new();
    v.extend_from_slice(&((10 + section.len() + payload.len()) as u32).to_be_bytes());
    v.extend_from_slice(&[0x10, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xfe]);
    v.extend_from_slice(&((section.len() / 4) as u16).to_be_bytes());
    v.extend_from_slice(&section);
    v.extend_from_slice(&payload);
    let f = decode(&v);
    assert_eq!(f.header.seq_id, -2);
    assert_eq!(f.header.transforms, vec![0x01]);
    assert_eq!(f.header.acl_token.as_deref(), Some(&b"tok"[..]));
    assert_eq!(strs(&f), map([("k".to_string(), "2")]));
    round_trip(&f);
}

#[test]
fn encoder_pads_and_mirrors_framing() {
    let mut h = sluice_ttheader::Header::new(42, 0);
    h.int_kvs
        .insert(int_key::MSG_TYPE, Bytes::from_static(b"2"));
    let mut out = BytesMut::new();
    let payload = hex(REPLY_8_2);
    encode(&h, true, &payload, &mut out).unwrap();
    assert_eq!(
        u16::from_be_bytes([out[12], out[13]]) as usize * 4,
        h.encoded_section_len()
    );
    let f = decode(&out);
    assert!(f.inner_framed);
    assert_eq!(&f.payload[..], &payload[..]);
    let mut out2 = BytesMut::new();
    encode(&h, false, &payload, &mut out2).unwrap();
    assert_eq!(out2.len() + 4, out.len());
    assert!(!decode(&out2).inner_framed);
}
