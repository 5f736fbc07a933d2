//! Framed and Buffered against the spec vectors, the captures, every split, and bad input.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_framed::{mesh, BufferedCodec, Codec, Error, FramedCodec};
use sluice_testkit::{chunks, hex, split_points, Capture, Dir};

const REQ_8_3: &str = "0000002180010001000000044563686f000000010c00010b00010000000568656c6c6f0000";
const ONEWAY_8_3: &str =
    "0000002780010004 0000000a 4563686f4f6e65776179 00000002 0c00010b00010000000568656c6c6f0000";

#[test]
fn framed_vectors() {
    let v = hex(REQ_8_3);
    let mut buf = BytesMut::from(&v[..]);
    let m = FramedCodec::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(m.codec, Codec::Thrift);
    assert_eq!(&m.message[..], &v[4..]);
    let mut out = BytesMut::new();
    FramedCodec::default().encode(&m.message, &mut out).unwrap();
    assert_eq!(&out[..], &v[..]);

    let ow = hex(ONEWAY_8_3);
    let m = FramedCodec::default()
        .decode(&mut BytesMut::from(&ow[..]))
        .unwrap()
        .unwrap();
    let h = sluice_thrift::envelope::decode_header(&m.message).unwrap();
    assert_eq!(
        (h.name, h.msg_type),
        ("EchoOneway", sluice_thrift::MessageType::Oneway)
    );

    let pb = hex("00000017900100010000000445636 86f000000010a0568656c6c6f");
    let m = FramedCodec::default()
        .decode(&mut BytesMut::from(&pb[..]))
        .unwrap()
        .unwrap();
    assert_eq!(m.codec, Codec::KitexProtobuf);
}

#[test]
fn buffered_vector_and_prefixes() {
    let v = hex(&REQ_8_3[8..]);
    assert_eq!(v.len(), 33);
    let codec = BufferedCodec::default();
    for n in 0..v.len() {
        assert_eq!(codec.message_len(&v[..n]), Ok(None), "prefix {n}");
    }
    let mut two = v.clone();
    two.extend_from_slice(&v);
    let mut buf = BytesMut::from(&two[..]);
    assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], &v[..]);
    assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], &v[..]);
    assert!(buf.is_empty());
}

#[test]
fn mesh_vector_8_6() {
    let v = hex("ffaf00140001000369736e000b4563686f5365727669636500000021800100010000000445636 86f000000010c00010b00010000000568656c6c6f0000");
    let mut buf = BytesMut::from(&v[..]);
    let h = mesh::decode(&mut buf).unwrap().unwrap();
    assert_eq!(h.str_kvs.get_str("isn"), Some("EchoService"));
    let m = FramedCodec::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(m.message.len(), 33);
    assert!(buf.is_empty());
    // Truncated header: wait; pair past the end: named error.
    assert_eq!(mesh::decode(&mut BytesMut::from(&v[..10])), Ok(None));
    let mut bad = v.clone();
    bad[5] = 2; // two pairs claimed, one present
    assert!(matches!(
        mesh::decode(&mut BytesMut::from(&bad[..])),
        Err(Error::Mesh(_))
    ));
}

#[test]
fn bad_input_named_errors() {
    let codec = FramedCodec::new(1024);
    // Length over the limit: refused from the first 4 bytes, nothing buffered.
    let mut buf = BytesMut::from(&[0x00, 0x10, 0x00, 0x00][..]);
    assert_eq!(
        codec.decode(&mut buf),
        Err(Error::TooLarge {
            len: 0x10_0004,
            max: 1024
        })
    );
    assert!(buf.capacity() < 64);
    assert_eq!(
        codec.decode(&mut BytesMut::from(&[0, 0, 0, 3][..])),
        Err(Error::TooShort(3))
    );
    let mut compact = hex("00000012 8221010445636 86f1c180568656c6c6f0000");
    assert_eq!(
        codec.decode(&mut BytesMut::from(&compact[..])),
        Err(Error::BadMagic(0x8221_0104))
    );
    compact[4] = 0x80;
    compact[5] = 0x01;
    assert!(codec.decode(&mut BytesMut::from(&compact[..])).is_ok());

    let b = BufferedCodec::new(40);
    // Negative string length inside the args struct.
    let mut neg = hex(&REQ_8_3[8..]);
    neg[22..26].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(
        b.message_len(&neg),
        Err(Error::Thrift(sluice_thrift::Error::NegativeLength(-5)))
    );
    // Depth 65.
    let mut deep = hex("80010001000000044563686f00000001");
    for _ in 0..64 {
        deep.extend_from_slice(&[0x0c, 0x00, 0x01]);
    }
    deep.extend(std::iter::repeat_n(0u8, 65));
    assert_eq!(
        BufferedCodec::default().message_len(&deep),
        Err(Error::Thrift(sluice_thrift::Error::DepthLimit(64)))
    );
    // Over the size limit, refused before the bytes arrive.
    let mut big = hex("80010001000000044563686f000000010b0001 7fffffff");
    assert!(matches!(b.message_len(&big), Err(Error::TooLarge { .. })));
    big[0] = 0x81;
    assert!(matches!(
        b.message_len(&big),
        Err(Error::Thrift(sluice_thrift::Error::BadVersion(_)))
    ));
}

fn feed_framed(stream: &[u8], points: &[usize]) -> Vec<bytes::Bytes> {
    let codec = FramedCodec::default();
    let mut buf = BytesMut::new();
    let mut out = vec![];
    for c in chunks(stream, points) {
        buf.extend_from_slice(c);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m.message);
        }
    }
    assert!(buf.is_empty());
    out
}

fn feed_buffered(stream: &[u8], points: &[usize]) -> Vec<bytes::Bytes> {
    let codec = BufferedCodec::default();
    let mut buf = BytesMut::new();
    let mut out = vec![];
    for c in chunks(stream, points) {
        buf.extend_from_slice(c);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert!(buf.is_empty());
    out
}

#[test]
fn captures_in_every_split() {
    for (name, framed) in [
        ("framed-unary", true),
        ("framed-echofail", true),
        ("buffered-unary", false),
        ("buffered-echofail", false),
    ] {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let bytes = conn.bytes(dir);
                let exp = cap.frames_of(conn.index, dir);
                let bounds: Vec<usize> = exp.iter().map(|e| e.offset).collect();
                let feed = if framed { feed_framed } else { feed_buffered };
                let whole = feed(bytes, &[]);
                assert_eq!(whole.len(), exp.len(), "{name}");
                for (m, e) in whole.iter().zip(&exp) {
                    let framing = if framed { 4 } else { 0 };
                    assert_eq!(m.len() + framing, e.len, "{name} frame #{}", e.index);
                }
                for points in split_points(bytes.len(), &bounds) {
                    assert_eq!(feed(bytes, &points), whole, "{name} {points:?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut a = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = FramedCodec::new(1 << 12).decode(&mut a) {}
        let mut b = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = BufferedCodec::new(1 << 12).decode(&mut b) {}
        let mut c = BytesMut::from(&bytes[..]);
        let _ = mesh::decode(&mut c);
        prop_assert!(a.capacity() <= (1 << 12) + 256 + 64);
    }

    #[test]
    fn mutated_buffered_never_panics(muts in proptest::collection::vec((0usize..44, any::<u8>()), 1..6)) {
        let cap = Capture::load("buffered-unary");
        let mut bytes = cap.conns[0].c2s.clone();
        for (i, v) in muts { bytes[i] = v; }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = BufferedCodec::default().decode(&mut buf) {}
    }
}

#[test]
fn a_large_length_claim_reserves_a_step_not_the_frame() {
    let codec = FramedCodec::new(16 << 20);
    // 16 MiB claimed, a strict-binary CALL begun, 100 bytes in all.
    let mut v = vec![0x00, 0xff, 0xff, 0xf0, 0x80, 0x01, 0x00, 0x01];
    v.resize(100, 0);
    let mut buf = BytesMut::from(&v[..]);
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() <= 100 + 64 * 1024,
        "reserved {} bytes for 100 that arrived",
        buf.capacity()
    );
}
