//! Bad input: every malformed frame gets its own named error, never a panic, and the decoder
//! never waits for (or reserves) more than the limits allow.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_testkit::{chunks, split_points, Capture, Dir, PINGPONG, TTSTREAM};
use sluice_ttheader::{Decoder, Error, Frame, Limits};

fn minimal() -> Vec<u8> {
    // kitex-wire.md 8.4 (c): no info blocks, unframed CALL.
    sluice_testkit::hex(
        "00 00 00 2f 10 00 00 00 00 00 00 01 00 01 00 00
         00 00 80 01 00 01 00 00 00 04 45 63 68 6f 00 00
         00 01 0c 00 01 0b 00 01 00 00 00 05 68 65 6c 6c
         6f 00 00",
    )
}

fn decode(v: &[u8]) -> Result<Option<Frame>, Error> {
    Decoder::default().decode(&mut BytesMut::from(v))
}

#[test]
fn truncated_frames_ask_for_more_and_reserve_only_the_frame() {
    let v = minimal();
    for n in 0..v.len() {
        let mut buf = BytesMut::from(&v[..n]);
        assert_eq!(Decoder::default().decode(&mut buf), Ok(None), "prefix {n}");
        assert_eq!(buf.len(), n, "nothing consumed");
        if n >= 8 {
            assert!(buf.capacity() >= v.len(), "reserves the rest of the frame");
            assert!(buf.capacity() < v.len() + 64);
        }
    }
}

#[test]
fn length_beyond_the_limit_is_refused_before_buffering() {
    let mut v = minimal();
    v[0..4].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
    let mut buf = BytesMut::from(&v[..8]);
    let err = Decoder::default().decode(&mut buf).unwrap_err();
    assert!(matches!(err, Error::FrameTooLarge { .. }), "{err:?}");
    assert!(buf.capacity() < 1024, "no allocation for the claimed size");
    let small = Decoder::new(Limits {
        max_frame_size: 32,
        ..Limits::default()
    });
    assert!(matches!(
        small.decode(&mut BytesMut::from(&minimal()[..])),
        Err(Error::FrameTooLarge { len: 51, max: 32 })
    ));
}

#[test]
fn bad_magic() {
    let mut v = minimal();
    v[4] = 0x11;
    assert_eq!(decode(&v), Err(Error::BadMagic(0x1100)));
}

#[test]
fn header_size_pointing_outside_the_frame() {
    let mut v = minimal();
    v[12..14].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        decode(&v),
        Err(Error::HeaderOutOfFrame {
            header: 400,
            frame: 51
        })
    );
}

#[test]
fn header_size_zero_and_over_limit() {
    let mut v = minimal();
    v[12..14].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(decode(&v), Err(Error::HeaderTooSmall(0)));
    let tight = Decoder::new(Limits {
        max_header_size: 0,
        ..Limits::default()
    });
    assert_eq!(
        tight.decode(&mut BytesMut::from(&minimal()[..])),
        Err(Error::HeaderTooLarge { len: 4, max: 0 })
    );
}

#[test]
fn length_too_short() {
    let mut v = minimal();
    v[0..4].copy_from_slice(&6u32.to_be_bytes());
    assert_eq!(decode(&v), Err(Error::FrameTooShort(6)));
}

#[test]
fn unknown_info_id() {
    let mut v = minimal();
    v[16] = 0x02;
    assert_eq!(decode(&v), Err(Error::UnknownInfoId(0x02)));
}

#[test]
fn info_block_overrun() {
    let mut v = minimal();
    // A string block claiming one pair in the 2 bytes left of the section.
    v[16] = 0x01;
    v[17] = 0x00;
    assert_eq!(decode(&v), Err(Error::InfoBlockOverrun(0x01)));
}

#[test]
fn unsupported_protocol_and_transforms_overrun() {
    let mut v = minimal();
    v[14] = 0x02; // thrift compact
    assert_eq!(decode(&v), Err(Error::UnsupportedProtocol(0x02)));
    let mut v = minimal();
    v[15] = 5; // 5 transforms in a 4-byte section
    assert_eq!(decode(&v), Err(Error::TransformsOverrun));
}

#[test]
fn inner_length_mismatch() {
    // 8.4 (d) with the inner length changed from 33 to 32.
    let mut v = sluice_testkit::hex(
        "00 00 00 3b 10 00 00 00 00 00 00 01 00 03 00 00
         10 00 01 00 16 00 01 32 00 00 00 00 00 21 80 01
         00 02 00 00 00 04 45 63 68 6f 00 00 00 01 0c 00
         00 0b 00 01 00 00 00 05 68 65 6c 6c 6f 00 00",
    );
    v[29] = 0x20;
    assert_eq!(
        decode(&v),
        Err(Error::InnerLengthMismatch {
            inner: 32,
            payload: 33
        })
    );
}

#[test]
fn a_bad_frame_is_consumed_and_the_next_one_is_not() {
    let mut v = minimal();
    v[16] = 0x07;
    let mut two = v.clone();
    two.extend_from_slice(&minimal());
    let mut buf = BytesMut::from(&two[..]);
    assert_eq!(
        Decoder::default().decode(&mut buf),
        Err(Error::UnknownInfoId(0x07))
    );
    assert_eq!(&buf[..], &minimal()[..]);
}

/// Decodes a whole stream fed in the given chunks; returns the frames.
fn feed(stream: &[u8], points: &[usize]) -> Vec<Frame> {
    let dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks(stream, points) {
        buf.extend_from_slice(chunk);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "leftover bytes");
    out
}

fn ttheader_streams() -> Vec<(String, Vec<u8>, Vec<usize>)> {
    let mut out = Vec::new();
    for name in PINGPONG.iter().chain(TTSTREAM) {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let frames = cap.frames_of(conn.index, dir);
                if !frames.iter().all(|f| f.length.is_some()) || frames.is_empty() {
                    continue; // not TTHeader (Framed / Buffered)
                }
                let bounds = frames.iter().map(|f| f.offset).collect();
                out.push((
                    format!("{name} conn{} {}", conn.index, dir.as_str()),
                    conn.bytes(dir).to_vec(),
                    bounds,
                ));
            }
        }
    }
    out
}

#[test]
fn every_split_of_every_capture_yields_the_same_frames() {
    let streams = ttheader_streams();
    assert!(
        streams.len() >= 30,
        "found {} TTHeader streams",
        streams.len()
    );
    for (what, bytes, bounds) in streams {
        let whole = feed(&bytes, &[]);
        assert_eq!(whole.len(), bounds.len(), "{what}");
        for points in split_points(bytes.len(), &bounds) {
            assert_eq!(feed(&bytes, &points), whole, "{what} split at {points:?}");
        }
    }
}

fn decode_all(bytes: &[u8]) {
    let dec = Decoder::new(Limits {
        max_frame_size: 1 << 16,
        max_header_size: 1 << 12,
    });
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        // Whatever decodes must re-encode (when within encode limits) and decode equal.
        let mut out = BytesMut::new();
        if f.encode(&mut out).is_ok() {
            let again = dec.decode(&mut out).unwrap().unwrap();
            assert_eq!(again.header.seq_id, f.header.seq_id);
            assert_eq!(again.payload, f.payload);
        }
    }
    assert!(buf.capacity() <= (1 << 16) + bytes.len() + 64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_captures_never_panic(
        pick in 0usize..1000,
        muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let streams = CAPTURE_STREAMS.with(|s| s.clone());
        let (_, mut bytes, _) = streams[pick % streams.len()].clone();
        for (at, val) in muts {
            let i = at % bytes.len();
            bytes[i] = val;
        }
        let cut = cut % (bytes.len() + 1);
        decode_all(&bytes[..cut]);
    }
}

thread_local! {
    static CAPTURE_STREAMS: Vec<(String, Vec<u8>, Vec<usize>)> = ttheader_streams();
}

#[test]
fn a_large_length_claim_reserves_a_step_not_the_frame() {
    // A claim of 16 MiB (within the limit) with 100 bytes behind it.
    let mut v = minimal();
    v[0..4].copy_from_slice(&((16 << 20) - 8u32).to_be_bytes());
    v.resize(100, 0);
    let mut buf = BytesMut::from(&v[..]);
    assert_eq!(Decoder::default().decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() <= 100 + sluice_ttheader::RESERVE_STEP,
        "reserved {} bytes for 100 that arrived",
        buf.capacity()
    );
}
