//! Sniffing against the spec's vectors and named refusals.

use sluice_sniff::{
    sniff_connection, sniff_message, Codec, Detection, Family, Incomplete, Message, Refusal,
};
use sluice_testkit::hex;

fn msg(v: &[u8]) -> Detection<Message> {
    sniff_message(v).unwrap()
}

#[test]
fn spec_vectors_per_message() {
    // 8.2 Buffered
    let buffered = hex("80010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(msg(&buffered), Detection::Protocol(Message::Buffered));
    // 8.3 Framed
    let framed = hex("0000002180010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        msg(&framed),
        Detection::Protocol(Message::Framed {
            codec: Codec::Thrift
        })
    );
    // 8.5 Framed Kitex protobuf
    let pb = hex("00000017900100010000000445636 86f000000010a0568656c6c6f");
    assert_eq!(
        msg(&pb),
        Detection::Protocol(Message::Framed {
            codec: Codec::KitexProtobuf
        })
    );
    // 8.4 (a) TTHeader framed, (b) unframed
    let a = hex("00000073100000000000000100110000010001000369736e000b4563686f536572766963651000050001000666726 16d656400030006636c69656e74000600046563686f000900044563686f001600013100000000218001000100000004 4563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        msg(&a),
        Detection::Protocol(Message::TTHeader {
            framed: true,
            codec: Codec::Thrift
        })
    );
    let b = hex("000000671000000000000001000f0000010001000369736e000b4563686f536572766963651000040001000875 6e6672616d6564000600046563686f000900044563686f00160001310080010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        msg(&b),
        Detection::Protocol(Message::TTHeader {
            framed: false,
            codec: Codec::Thrift
        })
    );
    // 8.6 mesh header + framed thrift
    let mesh = hex("ffaf00140001000369736e000b4563686f5365727669636500000021800100010000000445636 86f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        msg(&mesh),
        Detection::Protocol(Message::Mesh {
            framed: true,
            codec: Codec::Thrift
        })
    );
    assert_eq!(
        sniff_connection(&mesh),
        Ok(Detection::Protocol(Family::PingPong))
    );
    // 8.7 S1 TTStream header frame
    let s1 = hex("000000361000000200000001000b1000010001000369736e000b4563686f5365727669636510000200090008 4563686f42696469001b00013200");
    assert_eq!(
        sniff_connection(&s1),
        Ok(Detection::Protocol(Family::TTStream))
    );
    assert_eq!(msg(&s1), Detection::Protocol(Message::TTStream));
}

#[test]
fn http2_preface_needs_8_bytes() {
    let preface = sluice_sniff::HTTP2_PREFACE;
    for n in 0..8 {
        assert_eq!(
            sniff_connection(&preface[..n]),
            Err(Incomplete { needed: 8 })
        );
    }
    assert_eq!(
        sniff_connection(preface),
        Ok(Detection::Protocol(Family::Http2))
    );
}

#[test]
fn mux_flag_is_not_streaming() {
    // FLAGS 0x0001 (mux client) stays ping-pong, as Kitex's detection decides.
    let mut a = hex("000000 2f10000001000000010001000000008001000100000004 4563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        sniff_connection(&a),
        Ok(Detection::Protocol(Family::PingPong))
    );
    a[7] = 0x03;
    assert_eq!(
        sniff_connection(&a),
        Ok(Detection::Protocol(Family::TTStream))
    );
}

#[test]
fn ttheader_needs_its_header_and_eight_payload_bytes() {
    let b = hex("000000671000000000000001000f0000010001000369736e000b4563686f536572766963651000040001000875 6e6672616d6564000600046563686f000900044563686f00160001310080010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    assert_eq!(
        sniff_message(&b[..40]),
        Err(Incomplete {
            needed: 14 + 60 + 8
        })
    );
    assert!(sniff_message(&b[..82]).is_ok());
}

#[test]
fn named_refusals() {
    // Thrift compact, buffered and framed (8.9).
    let compact = hex("8221010445636 86f1c180568656c6c6f0000");
    assert_eq!(
        sniff_connection(&compact),
        Ok(Detection::NotOurs(Refusal::ThriftCompact))
    );
    assert_eq!(msg(&compact), Detection::NotOurs(Refusal::ThriftCompact));
    let mut framed_compact = vec![0, 0, 0, 18];
    framed_compact.extend_from_slice(&compact);
    assert_eq!(
        msg(&framed_compact),
        Detection::NotOurs(Refusal::ThriftCompact)
    );
    // Non-strict binary: name length first.
    let non_strict = hex("000000044563686f01000000010c0001");
    assert_eq!(
        sniff_connection(&non_strict),
        Ok(Detection::NotOurs(Refusal::ThriftNonStrict))
    );
    let mut framed_ns = vec![0, 0, 0, 16];
    framed_ns.extend_from_slice(&non_strict);
    assert_eq!(
        msg(&framed_ns),
        Detection::NotOurs(Refusal::ThriftNonStrict)
    );
    // HTTP/1 and TLS.
    assert_eq!(
        sniff_connection(b"GET / HTTP/1.1\r\n"),
        Ok(Detection::NotOurs(Refusal::Http1))
    );
    assert_eq!(
        sniff_connection(b"POST /x HTTP/1.1"),
        Ok(Detection::NotOurs(Refusal::Http1))
    );
    let tls = hex("160301020001 0001fc0303");
    assert_eq!(sniff_connection(&tls), Ok(Detection::NotOurs(Refusal::Tls)));
    // Kitex protobuf without the length.
    let pb = hex("900100010000000445636 86f00000001");
    assert_eq!(
        sniff_connection(&pb),
        Ok(Detection::NotOurs(Refusal::BufferedProtobuf))
    );
    // TTHeader with a compact protocol id or a non-thrift payload.
    let mut c = hex("0000002f1000000000000001000100000000 80010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    c[14] = 0x02;
    assert_eq!(msg(&c), Detection::NotOurs(Refusal::TTHeaderProtocol(0x02)));
    c[14] = 0x00;
    c[18] = 0x12;
    assert_eq!(msg(&c), Detection::NotOurs(Refusal::TTHeaderPayload));
    // Header size pointing outside the frame.
    let mut h = hex("0000002f1000000000000001000100000000 80010001000000044563686f000000010c00010b00010000000568656c6c6f0000");
    h[12] = 0xff;
    assert_eq!(msg(&h), Detection::NotOurs(Refusal::TTHeaderMalformed));
    // Garbage.
    assert_eq!(
        sniff_connection(&[0x42; 8]),
        Ok(Detection::NotOurs(Refusal::Unknown))
    );
}

/// Found by the `sniff` fuzz target: the non-strict heuristic used to look at as much of the
/// name as had arrived, so a longer prefix could change the answer. Every answer must be final.
#[test]
fn answers_never_change_with_more_bytes() {
    let mut inputs =
        vec![include_bytes!("../testdata/fuzz-prefix-unstable-non-strict.bin").to_vec()];
    inputs.push(hex("000000044563686f01000000010c0001"));
    inputs.push(hex("000000ac4661696c000000010a106b78"));
    for input in inputs {
        let full = sniff_message(&input);
        for n in 0..input.len() {
            if let Ok(early) = sniff_message(&input[..n]) {
                assert_eq!(Ok(early), full, "prefix {n} of {input:02x?}");
            }
            if let (Ok(early), Ok(late)) = (sniff_connection(&input[..n]), sniff_connection(&input))
            {
                assert_eq!(early, late);
            }
        }
    }
}
