//! Property tests: peer bytes never panic or over-allocate, and the encoders round-trip.

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use sluice_grpc::{
    encode, encode_prefix, format_timeout, parse_timeout, percent_decode, percent_encode, Code,
    GrpcContentType, MessageDecoder, MessageError, MethodPath, MAX_TIMEOUT, PREFIX_LEN,
};

/// Durations spread over every `grpc-timeout` unit, up to the longest one the header holds.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..200_000_000).prop_map(Duration::from_nanos),
        (0u64..200_000_000_000).prop_map(Duration::from_nanos),
        (0u64..=u64::MAX).prop_map(Duration::from_nanos),
        (0..=MAX_TIMEOUT.as_secs(), 0u32..1_000_000_000)
            .prop_map(|(s, n)| Duration::new(s, n).min(MAX_TIMEOUT)),
    ]
}

/// Peer bytes: either noise, or prefix-shaped segments whose flags and lengths are mostly
/// plausible, so that the decoder gets past the prefix checks often.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let segment = (
        prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        prop_oneof![0u32..150, any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..150),
    )
        .prop_map(|(flag, len, body)| {
            let mut v = vec![flag];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&body);
            v
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(segment, 0..6).prop_map(|segs| segs.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes, fed in arbitrary pieces: no panic, messages within the limit, errors leave
    /// the buffer untouched, and the buffer never grows by more than one bounded message.
    #[test]
    fn decoder_survives_random_bytes(
        data in stream_bytes(),
        max in 0usize..128,
        piece in 1usize..64,
    ) {
        let dec = MessageDecoder::with_max_message_size(max);
        // What the buffer may hold at most: everything fed so far plus one message, with slack
        // for the allocator doubling a vector. A decoder that trusted a declared length would
        // blow through this by up to 4 GiB.
        let bound = 2 * (data.len() + PREFIX_LEN + max) + 64;
        let mut buf = BytesMut::new();
        'outer: for chunk in data.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                let len_before = buf.len();
                let cap_before = buf.capacity();
                match dec.decode(&mut buf) {
                    Ok(Some(m)) => prop_assert!(m.data.len() <= max),
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), len_before);
                        prop_assert!(buf.capacity() <= bound, "{} > {}", buf.capacity(), bound);
                        break;
                    }
                    Err(e) => {
                        prop_assert_eq!(buf.len(), len_before);
                        prop_assert_eq!(buf.capacity(), cap_before);
                        let named = matches!(
                            e,
                            MessageError::TooLarge { .. } | MessageError::BadCompressedFlag(_)
                        );
                        prop_assert!(named, "{:?}", e);
                        break 'outer;
                    }
                }
            }
        }
        if let Err(e) = dec.finish(&buf) {
            let truncated = matches!(e, MessageError::Truncated { .. });
            prop_assert!(truncated, "{:?}", e);
        }
    }

    /// A declared length above the limit fails as soon as the prefix is complete, without
    /// reserving room for the body.
    #[test]
    fn oversized_length_fails_immediately(max in 0usize..1_000_000, over in 1u32..1_000, flag in 0u8..2) {
        let len = u32::try_from(max).unwrap() + over;
        let mut buf = BytesMut::from(&encode_prefix(len as usize, flag == 1).unwrap()[..]);
        let cap = buf.capacity();
        let dec = MessageDecoder::with_max_message_size(max);
        prop_assert_eq!(
            dec.decode(&mut buf),
            Err(MessageError::TooLarge { len: u64::from(len), max: max as u64 })
        );
        prop_assert_eq!(buf.capacity(), cap);
        prop_assert_eq!(buf.len(), PREFIX_LEN);
    }

    /// Encoded messages decode to themselves however the bytes are cut.
    #[test]
    fn messages_round_trip(
        msgs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..100)), 0..8),
        piece in 1usize..40,
    ) {
        let mut wire = Vec::new();
        for (compressed, body) in &msgs {
            encode(body, *compressed, &mut wire).unwrap();
        }
        let dec = MessageDecoder::with_max_message_size(100);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            buf.extend_from_slice(chunk);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push((m.compressed, m.data.to_vec()));
            }
        }
        prop_assert_eq!(dec.finish(&buf), Ok(()));
        prop_assert_eq!(got, msgs);
    }

    /// Formatting never shortens the deadline, stays within 8 digits, and overshoots by at most
    /// one part in a hundred thousand (a unit is only coarser than `n` when the value in it still
    /// has at least 6 digits).
    #[test]
    fn timeout_format_never_shortens(d in duration()) {
        let s = format_timeout(d);
        prop_assert!(s.len() <= 9, "{}", s);
        let back = parse_timeout(s.as_bytes()).unwrap();
        prop_assert!(back >= d, "{} parsed to {:?} < {:?}", s, back, d);
        let err = (back - d).as_nanos();
        prop_assert!(err * 100_000 <= d.as_nanos(), "{} is {} ns off {:?}", s, err, d);
    }

    /// Any valid header value parses, and formatting the result gives back the same duration.
    #[test]
    fn timeout_values_round_trip(value in 0u64..100_000_000, unit in prop::sample::select(&b"numSMH"[..])) {
        let header = format!("{value}{}", char::from(unit));
        let d = parse_timeout(header.as_bytes()).unwrap();
        prop_assert_eq!(parse_timeout(format_timeout(d).as_bytes()), Ok(d));
    }

    /// Arbitrary bytes never panic the header parsers.
    #[test]
    fn header_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        let _ = parse_timeout(&bytes);
        let _ = Code::parse(&bytes);
        let decoded = percent_decode(&bytes);
        prop_assert!(decoded.len() <= 3 * bytes.len());
        let text = String::from_utf8_lossy(&bytes);
        let _ = GrpcContentType::parse(&text);
        if let Ok(p) = MethodPath::parse(&text) {
            prop_assert_eq!(format!("/{}/{}", p.qualified_service(), p.method), text.as_ref());
        }
    }

    /// Well-formed paths split into the parts they were built from.
    #[test]
    fn method_paths_split(
        package in "([a-z][a-z0-9_]{0,5}\\.){0,3}",
        service in "[A-Za-z][A-Za-z0-9_]{0,10}",
        method in "[A-Za-z][A-Za-z0-9_]{0,10}",
    ) {
        let path = format!("/{package}{service}/{method}");
        let p = MethodPath::parse(&path).unwrap();
        prop_assert_eq!(p.package, package.strip_suffix('.').unwrap_or(""));
        prop_assert_eq!(p.service, service.as_str());
        prop_assert_eq!(p.method, method.as_str());
        prop_assert_eq!(p.qualified_service(), format!("{package}{service}"));
    }

    /// grpc-status values round-trip through their decimal form.
    #[test]
    fn status_code_round_trip(n in any::<u32>()) {
        prop_assert_eq!(Code::parse(Code::new(n).to_string().as_bytes()), Ok(Code::new(n)));
    }

    /// Any string survives percent-encoding, and the encoding is a valid grpc-message value.
    #[test]
    fn percent_round_trip(s in any::<String>()) {
        let encoded = percent_encode(&s);
        prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        prop_assert_eq!(percent_decode(encoded.as_bytes()), s.as_str());
    }

    /// Messages with stray `%` and raw bytes still decode without loss where they are valid.
    #[test]
    fn percent_decode_passes_plain_text_through(s in "[ -$&-~]*") {
        prop_assert_eq!(percent_decode(s.as_bytes()), s.as_str());
        prop_assert_eq!(percent_encode(&s), s.as_str());
    }
}
