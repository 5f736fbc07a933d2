//! Bad input: each kind of malformed frame or payload gets its own named error, never a panic;
//! random bytes and mutated captures never make the decoder panic.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_testkit::{hex, Capture, Dir, TTSTREAM};
use sluice_thrift::{envelope, ApplicationException, ExceptionKind, MessageType};
use sluice_ttheader::{flags, int_key, protocol_id, Header};
use sluice_ttstream::{parse_exception, Error, FrameDecoder, FrameType, Side, Stream, StreamFrame};

/// kitex-wire.md 8.7 S2: a client Data frame.
fn s2() -> Vec<u8> {
    hex("00 00 00 2f 10 00 00 02 00 00 00 01 00 06 10 00
         10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
         1b 00 01 33 00 00 0b 00 01 00 00 00 05 68 65 6c
         6c 6f 00")
}

/// A TTHeader frame with the streaming flag and the given keys 27 and 9.
fn frame_with(kind: Option<&[u8]>, method: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut h = Header::new(1, flags::STREAMING);
    h.protocol_id = protocol_id::THRIFT_STRUCT;
    if let Some(m) = method {
        h.int_kvs
            .insert(int_key::TO_METHOD, Bytes::copy_from_slice(m));
    }
    if let Some(k) = kind {
        h.int_kvs
            .insert(int_key::FRAME_TYPE, Bytes::copy_from_slice(k));
    }
    let mut out = BytesMut::new();
    sluice_ttheader::encode(&h, false, payload, &mut out).unwrap();
    out.to_vec()
}

fn decode(bytes: &[u8]) -> Result<Option<StreamFrame>, Error> {
    FrameDecoder::default().decode(&mut BytesMut::from(bytes))
}

#[test]
fn missing_streaming_flag() {
    let mut v = s2();
    v[7] = 0x00;
    assert_eq!(decode(&v), Err(Error::NotStreaming { flags: 0 }));
    // Refused from the first 8 bytes, before the frame is buffered, and left in the buffer.
    let mut buf = BytesMut::from(&v[..8]);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(Error::NotStreaming { flags: 0 })
    );
    assert_eq!(buf.len(), 8);
    // The mux-request flag alone is not the streaming flag either.
    v[7] = 0x01;
    assert_eq!(decode(&v), Err(Error::NotStreaming { flags: 1 }));
    // Through the TTHeader path as well.
    let frame = sluice_ttheader::Decoder::default()
        .decode(&mut BytesMut::from(&v[..]))
        .unwrap()
        .unwrap();
    assert_eq!(
        StreamFrame::try_from(frame),
        Err(Error::NotStreaming { flags: 1 })
    );
}

#[test]
fn ping_pong_ttheader_on_a_stream_connection() {
    // ttstream-unary: a ttstream client's unary call is plain TTHeader, flags 0.
    let cap = Capture::load("ttstream-unary");
    assert_eq!(
        decode(&cap.conns[0].c2s),
        Err(Error::NotStreaming { flags: 0 })
    );
}

#[test]
fn missing_frame_type() {
    let v = frame_with(None, Some(b"EchoBidi"), b"");
    assert_eq!(decode(&v), Err(Error::MissingFrameType));
}

#[test]
fn unknown_frame_types() {
    for bad in [&b"0"[..], b"6", b"", b"03", b"+3", b"x", b"27"] {
        let v = frame_with(Some(bad), Some(b"EchoBidi"), b"");
        assert_eq!(
            decode(&v),
            Err(Error::UnknownFrameType(Bytes::copy_from_slice(bad))),
            "{bad:?}"
        );
    }
}

#[test]
fn missing_method() {
    let v = frame_with(Some(b"3"), None, b"\x00");
    assert_eq!(decode(&v), Err(Error::MissingMethod));
    // An empty method is present: it is the router's business, not the codec's.
    let f = decode(&frame_with(Some(b"3"), Some(b""), b"\x00"))
        .unwrap()
        .unwrap();
    assert_eq!(f.method_str(), Some(""));
}

#[test]
fn a_bad_frame_is_taken_off_the_buffer_so_the_next_can_follow() {
    let mut bytes = frame_with(Some(b"9"), Some(b"M"), b"");
    bytes.extend_from_slice(&s2());
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(Error::UnknownFrameType(_))
    ));
    assert_eq!(buf.len(), s2().len());
    assert_eq!(dec.decode(&mut buf).unwrap().unwrap().kind, FrameType::Data);
}

#[test]
fn ttheader_errors_pass_through_untouched() {
    let mut v = s2();
    v[4] = 0x11;
    let mut buf = BytesMut::from(&v[..]);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(Error::Header(sluice_ttheader::Error::BadMagic(0x1100)))
    );
    assert_eq!(buf.len(), v.len(), "buffer untouched");
    // An unknown info block inside the header section.
    let mut v = s2();
    v[16] = 0x07;
    assert_eq!(
        decode(&v),
        Err(Error::Header(sluice_ttheader::Error::UnknownInfoId(0x07)))
    );
    // Oversized: refused before buffering, whatever the flags.
    let mut v = s2();
    v[0..4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
    v[7] = 0;
    assert!(matches!(
        FrameDecoder::default().decode(&mut BytesMut::from(&v[..8])),
        Err(Error::Header(sluice_ttheader::Error::FrameTooLarge { .. }))
    ));
}

#[test]
fn truncated_frames_wait() {
    let v = s2();
    for n in 0..v.len() {
        assert_eq!(decode(&v[..n]), Ok(None), "prefix {n}");
    }
}

fn trailer_with_payload(payload: Vec<u8>) -> StreamFrame {
    StreamFrame::trailer(1, "EchoBidi").with_payload(payload)
}

#[test]
fn exception_payload_must_be_an_exception_message() {
    for (ty, name) in [
        (MessageType::Call, "CALL"),
        (MessageType::Reply, "REPLY"),
        (MessageType::Oneway, "ONEWAY"),
    ] {
        let mut p = Vec::new();
        envelope::write_header(&mut p, "EchoBidi", ty, 1);
        p.extend_from_slice(b"\x0b\x00\x01\x00\x00\x00\x01x\x00");
        let f = trailer_with_payload(p.clone());
        assert_eq!(f.exception(), Err(Error::NotAnException(ty)));
        assert!(f.exception().unwrap_err().to_string().contains(name));
        let rst = StreamFrame::rst(1, "EchoBidi", None, None).with_payload(p.clone());
        assert_eq!(rst.exception(), Err(Error::NotAnException(ty)));
        assert_eq!(parse_exception(&p), Err(Error::NotAnException(ty)));
    }
}

#[test]
fn unreadable_exception_payloads() {
    let ex = ApplicationException::new(ExceptionKind::INTERNAL_ERROR, "boom");
    let good = sluice_ttstream::exception_payload("EchoBidi", 1, &ex).to_vec();
    assert_eq!(parse_exception(&good), Ok(ex));
    // A bare struct (what a Data payload is), a truncated message, trailing bytes.
    let bare = b"\x0b\x00\x01\x00\x00\x00\x05hello\x00".to_vec();
    let truncated = good[..good.len() - 3].to_vec();
    let mut trailing = good.clone();
    trailing.push(0);
    for (what, p) in [
        ("bare", bare),
        ("truncated", truncated),
        ("trailing", trailing),
    ] {
        let err = trailer_with_payload(p).exception().unwrap_err();
        assert!(
            matches!(err, Error::BadExceptionPayload(_)),
            "{what}: {err:?}"
        );
        assert!(std::error::Error::source(&err).is_some(), "{what}");
    }
    assert!(matches!(
        parse_exception(&[]),
        Err(Error::BadExceptionPayload(_))
    ));
}

#[test]
fn state_errors_name_the_frame() {
    let mut s = Stream::new(Side::Server, 1).unwrap();
    let err = s.recv(FrameType::Data).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DATA frame from the client before the client's Header opened the stream"
    );
}

fn capture_streams() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in TTSTREAM {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                out.push(conn.bytes(dir).to_vec());
            }
        }
    }
    out
}

thread_local! {
    static STREAMS: Vec<Vec<u8>> = capture_streams();
}

/// Decodes until the bytes run out or an error; every decoded frame must re-encode to a frame
/// that decodes equal, and its helpers and the state machine must not panic.
fn exercise(bytes: &[u8]) {
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::from(bytes);
    let mut server = Stream::new(Side::Server, 1).unwrap();
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        let _ = f.exception();
        let _ = f.biz_status();
        let _ = f.cancel_path();
        let _ = server.recv(f.kind);
        let _ = server.send(f.kind);
        if let Ok(again) = f.to_bytes() {
            let back = dec.decode(&mut BytesMut::from(&again[..]));
            assert_eq!(back, Ok(Some(f)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_valid_prefix_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        // Start like a TTStream frame so the random part reaches the key checks.
        let mut bytes = s2()[..16].to_vec();
        bytes.extend_from_slice(&tail);
        exercise(&bytes);
    }

    #[test]
    fn mutated_captures_never_panic(
        pick in any::<usize>(),
        muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = STREAMS.with(|s| s[pick % s.len()].clone());
        for (at, val) in muts {
            let i = at % bytes.len();
            bytes[i] = val;
        }
        let cut = cut % (bytes.len() + 1);
        exercise(&bytes[..cut]);
    }
}
