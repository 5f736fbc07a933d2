//! kitex-wire.md 8.7: the TTStream vectors S1..S8 (stream id 1, method `EchoBidi`) decode to
//! the listed fields, re-encode to the same bytes, and the constructors build them.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{decode_one, int_map, str_map};
use sluice_testkit::hex;
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttstream::{BizStatus, FrameType, StreamFrame};

const S1: &str = "00 00 00 36 10 00 00 02 00 00 00 01 00 0b 10 00
01 00 01 00 03 69 73 6e 00 0b 45 63 68 6f 53 65
72 76 69 63 65 10 00 02 00 09 00 08 45 63 68 6f
42 69 64 69 00 1b 00 01 32 00";

const S2: &str = "00 00 00 2f 10 00 00 02 00 00 00 01 00 06 10 00
10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
1b 00 01 33 00 00 0b 00 01 00 00 00 05 68 65 6c
6c 6f 00";

const S3: &str = "00 00 00 22 10 00 00 02 00 00 00 01 00 06 10 00
10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
1b 00 01 34 00 00";

const S4: &str = "00 00 00 22 10 00 00 02 00 00 00 01 00 06 10 00
10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
1b 00 01 32 00 00";

const S5: &str = "00 00 00 2f 10 00 00 02 00 00 00 01 00 06 10 00
10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
1b 00 01 33 00 00 0b 00 01 00 00 00 05 68 65 6c
6c 6f 00";

const S6: &str = "00 00 00 4e 10 00 00 02 00 00 00 01 00 11 10 00
01 00 02 00 0a 62 69 7a 2d 73 74 61 74 75 73 00
03 35 30 32 00 0b 62 69 7a 2d 6d 65 73 73 61 67
65 00 09 62 69 7a 20 65 72 72 6f 72 10 00 02 00
09 00 08 45 63 68 6f 42 69 64 69 00 1b 00 01 34
00 00";

const S7: &str = "00 00 00 49 10 00 00 02 00 00 00 01 00 06 10 00
10 00 02 00 09 00 08 45 63 68 6f 42 69 64 69 00
1b 00 01 34 00 00 80 01 00 03 00 00 00 08 45 63
68 6f 42 69 64 69 00 00 00 01 0b 00 01 00 00 00
04 62 6f 6f 6d 08 00 02 00 00 00 06 00";

const S8: &str = "00 00 00 db 10 00 00 02 00 00 00 01 00 0b 10 00
01 00 01 00 05 74 74 73 63 70 00 08 53 65 72 76
69 63 65 41 10 00 02 00 09 00 08 45 63 68 6f 42
69 64 69 00 1b 00 01 35 00 00 80 01 00 03 00 00
00 08 45 63 68 6f 42 69 64 69 00 00 00 01 0b 00
01 00 00 00 82 75 73 65 72 20 63 6f 64 65 20 69
6e 76 6f 6b 69 6e 67 20 73 74 72 65 61 6d 20 52
50 43 20 77 69 74 68 20 63 6f 6e 74 65 78 74 20
70 72 6f 63 65 73 73 65 64 20 62 79 20 63 6f 6e
74 65 78 74 2e 57 69 74 68 43 61 6e 63 65 6c 20
6f 72 20 63 6f 6e 74 65 78 74 2e 57 69 74 68 54
69 6d 65 6f 75 74 2c 20 74 68 65 6e 20 69 6e 76
6f 6b 69 6e 67 20 63 61 6e 63 65 6c 28 29 20 61
63 74 69 76 65 6c 79 08 00 02 00 00 2e e7 00";

const METHOD: &str = "EchoBidi";
const HELLO: &[u8] = b"\x0b\x00\x01\x00\x00\x00\x05hello\x00";
const CANCEL_MESSAGE: &str = "user code invoking stream RPC with context processed by \
    context.WithCancel or context.WithTimeout, then invoking cancel() actively";

/// What a vector must decode to.
struct Want {
    name: &'static str,
    hex: &'static str,
    len: usize,
    header_words: u16,
    kind: FrameType,
    strs: &'static [(&'static str, &'static str)],
    payload_len: usize,
}

const WANT: [Want; 8] = [
    Want {
        name: "S1",
        hex: S1,
        len: 58,
        header_words: 11,
        kind: FrameType::Header,
        strs: &[("isn", "EchoService")],
        payload_len: 0,
    },
    Want {
        name: "S2",
        hex: S2,
        len: 51,
        header_words: 6,
        kind: FrameType::Data,
        strs: &[],
        payload_len: 13,
    },
    Want {
        name: "S3",
        hex: S3,
        len: 38,
        header_words: 6,
        kind: FrameType::Trailer,
        strs: &[],
        payload_len: 0,
    },
    Want {
        name: "S4",
        hex: S4,
        len: 38,
        header_words: 6,
        kind: FrameType::Header,
        strs: &[],
        payload_len: 0,
    },
    Want {
        name: "S5",
        hex: S5,
        len: 51,
        header_words: 6,
        kind: FrameType::Data,
        strs: &[],
        payload_len: 13,
    },
    Want {
        name: "S6",
        hex: S6,
        len: 82,
        header_words: 17,
        kind: FrameType::Trailer,
        strs: &[("biz-status", "502"), ("biz-message", "biz error")],
        payload_len: 0,
    },
    Want {
        name: "S7",
        hex: S7,
        len: 77,
        header_words: 6,
        kind: FrameType::Trailer,
        strs: &[],
        payload_len: 39,
    },
    Want {
        name: "S8",
        hex: S8,
        len: 223,
        header_words: 11,
        kind: FrameType::Rst,
        strs: &[("ttscp", "ServiceA")],
        payload_len: 165,
    },
];

#[test]
fn every_vector_decodes_to_its_fields_and_re_encodes_to_itself() {
    for w in &WANT {
        let bytes = hex(w.hex);
        assert_eq!(bytes.len(), w.len, "{}", w.name);
        assert_eq!(u16::from_be_bytes([bytes[12], bytes[13]]), w.header_words);
        let f = decode_one(&bytes);
        assert_eq!(f.kind, w.kind, "{}", w.name);
        assert_eq!(f.stream_id, 1);
        assert_eq!(f.method_str(), Some(METHOD));
        assert_eq!(f.header.flags, 0x0002);
        assert_eq!(f.header.seq_id, 1);
        assert_eq!(f.header.protocol_id, 0x10);
        assert!(f.header.transforms.is_empty() && f.header.acl_token.is_none());
        let strs: BTreeMap<String, String> = w
            .strs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(str_map(&f.header.str_kvs), strs, "{}", w.name);
        let ints = BTreeMap::from([(9, METHOD.to_owned()), (27, (w.kind as u8).to_string())]);
        assert_eq!(int_map(&f.header.int_kvs), ints, "{}", w.name);
        assert_eq!(f.payload.len(), w.payload_len, "{}", w.name);
        assert_eq!(f.encoded_len(), w.len);
        assert_eq!(
            &f.to_bytes().unwrap()[..],
            &bytes[..],
            "{} re-encodes",
            w.name
        );
        // Decoding the re-encoded frame gives the same frame.
        assert_eq!(decode_one(&f.to_bytes().unwrap()), f);
    }
}

#[test]
fn data_payloads_are_bare_structs() {
    for v in [S2, S5] {
        let f = decode_one(&hex(v));
        assert_eq!(&f.payload[..], HELLO);
        assert_eq!(f.exception(), Ok(None));
    }
}

#[test]
fn exception_and_biz_status_payloads() {
    let s3 = decode_one(&hex(S3));
    assert_eq!((s3.exception(), s3.biz_status()), (Ok(None), Ok(None)));

    let s6 = decode_one(&hex(S6));
    assert_eq!(s6.exception(), Ok(None));
    assert_eq!(s6.biz_status(), Ok(Some(BizStatus::new(502, "biz error"))));

    let s7 = decode_one(&hex(S7));
    assert_eq!(
        s7.exception(),
        Ok(Some(ApplicationException::new(
            ExceptionKind::INTERNAL_ERROR,
            "boom"
        )))
    );
    assert_eq!(s7.biz_status(), Ok(None));

    let s8 = decode_one(&hex(S8));
    assert_eq!(s8.cancel_path(), Some("ServiceA"));
    assert_eq!(
        s8.exception(),
        Ok(Some(ApplicationException::new(
            ExceptionKind::TTSTREAM_USER_CANCEL,
            CANCEL_MESSAGE
        )))
    );
}

#[test]
fn constructors_build_the_vectors_byte_for_byte() {
    let no_meta: [(Bytes, Bytes); 0] = [];
    let boom = ApplicationException::new(ExceptionKind::INTERNAL_ERROR, "boom");
    let cancel = ApplicationException::new(ExceptionKind::TTSTREAM_USER_CANCEL, CANCEL_MESSAGE);
    let built = [
        (
            S1,
            StreamFrame::client_header(1, METHOD, "EchoService", no_meta),
        ),
        (S2, StreamFrame::data(1, METHOD, HELLO)),
        (S3, StreamFrame::trailer(1, METHOD)),
        (S4, StreamFrame::server_header(1, METHOD)),
        (S5, StreamFrame::data(1, METHOD, HELLO)),
        (
            S6,
            StreamFrame::trailer_with_biz_status(1, METHOD, &BizStatus::new(502, "biz error")),
        ),
        (S7, StreamFrame::trailer_with_exception(1, METHOD, &boom)),
        (
            S8,
            StreamFrame::rst(1, METHOD, Some(&cancel), Some("ServiceA")),
        ),
    ];
    for (i, (v, f)) in built.iter().enumerate() {
        assert_eq!(
            &f.to_bytes().unwrap()[..],
            &hex(v)[..],
            "S{} from its constructor",
            i + 1
        );
        assert_eq!(
            &decode_one(&hex(v)),
            f,
            "S{} decodes to the constructed frame",
            i + 1
        );
    }
}

#[test]
fn client_header_keeps_metadata_order_after_isn() {
    let f = StreamFrame::client_header(
        1,
        METHOD,
        "EchoService",
        [("RPC_TRANSIT_KX_REQ_ID", "req-0"), ("RPC_PERSIST_A", "b")],
    );
    let keys: Vec<&[u8]> = f.header.str_kvs.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [&b"isn"[..], b"RPC_TRANSIT_KX_REQ_ID", b"RPC_PERSIST_A"]
    );
    // No service name, no `isn` (Kitex leaves empty names out).
    let anon = StreamFrame::client_header(1, METHOD, "", [("k", "v")]);
    assert_eq!(anon.service(), None);
    assert_eq!(anon.header.str_kvs.len(), 1);
    assert_eq!(
        decode_one(&f.to_bytes().unwrap()).service(),
        Some("EchoService")
    );
}

#[test]
fn s8_without_ttscp_is_the_captured_rst_payload() {
    // kitex-wire.md 8.7: the captured cancel RST equals S8 without its `ttscp` block, up to
    // int-key order; the payloads are byte-identical.
    let s8 = decode_one(&hex(S8));
    let cap = sluice_testkit::Capture::load("ttstream-bidi-cancel");
    let e = &cap.frames[4];
    let bytes = &cap.conns[e.conn].c2s[e.offset..e.offset + e.len];
    let rst = decode_one(bytes);
    assert_eq!(rst.kind, FrameType::Rst);
    assert_eq!(rst.payload, s8.payload);
    let mut stripped = s8.clone();
    stripped.header.str_kvs.remove("ttscp");
    assert_eq!(
        int_map(&stripped.header.int_kvs),
        int_map(&rst.header.int_kvs)
    );
    assert_eq!(stripped.header.str_kvs, rst.header.str_kvs);
    assert_eq!(stripped.encoded_len(), bytes.len());
}
