//! Header fields as both drivers handle them: validation of what arrives, filtering and
//! encoding of what leaves, and the compressed-flag rule.

use bytes::Bytes;
use sluice_h2wire::hpack::Encoder;
use sluice_stream::Metadata;

use crate::headers::GRPC_ENCODING;

/// Headers HTTP/2 forbids (RFC 9113 8.2.2): a request or response carrying one is malformed,
/// and none is ever sent.
pub(crate) fn is_connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// A field name HTTP/2 can carry: a non-empty token of lower-case characters (RFC 9110 5.1,
/// RFC 9113 8.2.1), or a pseudo-header name.
pub(crate) fn valid_name(name: &[u8]) -> bool {
    let body = name.strip_prefix(b":").unwrap_or(name);
    !body.is_empty()
        && body.iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A field value HTTP/2 can carry: "A field value MUST NOT contain the zero value (ASCII NUL,
/// 0x00), line feed (ASCII LF, 0x0a), or carriage return (ASCII CR, 0x0d) at any position"
/// (RFC 9113 8.2.1).
pub(crate) fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| matches!(b, 0 | b'\n' | b'\r'))
}

/// Whether messages in the direction these headers describe carry the compressed flag:
/// `grpc-encoding` names a compressor other than `identity`.
///
/// The stream API carries message bytes without the flag, so the drivers derive it from the
/// headers: gRPC implementations that compress (grpc-go, Kitex) compress every message of a
/// stream whose `grpc-encoding` is set.
pub(crate) fn compressed_by_headers<'a>(mut encoding: impl Iterator<Item = &'a [u8]>) -> bool {
    encoding.any(|v| !v.is_empty() && !v.eq_ignore_ascii_case(b"identity"))
}

/// [`compressed_by_headers`] for [`Metadata`].
pub(crate) fn compressed_in_metadata(md: &Metadata) -> bool {
    compressed_by_headers(
        md.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(GRPC_ENCODING.as_bytes()))
            .map(|(_, v)| v),
    )
}

/// [`compressed_by_headers`] for decoded fields.
pub(crate) fn compressed_in_fields(fields: &[(Bytes, Bytes)]) -> bool {
    compressed_by_headers(
        fields
            .iter()
            .filter(|(k, _)| k.as_ref() == GRPC_ENCODING.as_bytes())
            .map(|(_, v)| v.as_ref()),
    )
}

/// Appends `md` to a header block in order, leaving out pseudo-headers, connection-specific
/// names, the names `skip` rejects, and pairs HTTP/2 cannot carry (logged). Values are passed
/// as they are, `-bin` base64 text included.
pub(crate) fn encode_metadata(
    enc: &Encoder,
    md: &Metadata,
    skip: impl Fn(&[u8]) -> bool,
    out: &mut impl bytes::BufMut,
) {
    for (k, v) in md.iter() {
        if k.first() == Some(&b':') || is_connection_specific(k) || skip(k) {
            continue;
        }
        if !valid_name(k) {
            tracing::warn!(name = ?String::from_utf8_lossy(k), "dropping metadata with an invalid HTTP/2 header name");
            continue;
        }
        if !valid_value(v) {
            tracing::warn!(name = %String::from_utf8_lossy(k), "dropping metadata with an invalid HTTP/2 header value");
            continue;
        }
        enc.field(k, v, out);
    }
}

/// The regular fields of a decoded list as [`Metadata`], in order, leaving out the names `skip`
/// rejects. Pseudo-headers are never included.
pub(crate) fn metadata_from_fields(
    mut fields: Vec<(Bytes, Bytes)>,
    skip: impl Fn(&[u8]) -> bool,
) -> Metadata {
    // Filtered in place: the decoded list becomes the metadata without another allocation.
    fields.retain(|(k, _)| k.first() != Some(&b':') && !skip(k));
    Metadata(fields)
}

/// The first value of `name` among decoded fields.
pub(crate) fn field<'a>(fields: &'a [(Bytes, Bytes)], name: &str) -> Option<&'a Bytes> {
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == name.as_bytes())
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_h2wire::hpack::Decoder;

    #[test]
    fn compression_follows_grpc_encoding() {
        let mut md = Metadata::new();
        assert!(!compressed_in_metadata(&md));
        md.push("grpc-encoding", "identity");
        assert!(!compressed_in_metadata(&md));
        md.push("Grpc-Encoding", "gzip");
        assert!(compressed_in_metadata(&md));
        assert!(compressed_in_fields(&[(
            Bytes::from_static(b"grpc-encoding"),
            Bytes::from_static(b"gzip")
        )]));
    }

    #[test]
    fn names_and_values_http2_can_carry() {
        for ok in [
            &b"x-user"[..],
            b"grpc-status-details-bin",
            b":path",
            b"a!#$%&'*+-.^_`|~9",
        ] {
            assert!(valid_name(ok), "{ok:?}");
        }
        for bad in [&b""[..], b":", b"X-User", b"bad name", b"a:b", b"\xff"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_value(b"any text \xe2\x98\x83, even\ttabs"));
        for bad in [&b"a\nb"[..], b"a\rb", b"a\0b"] {
            assert!(!valid_value(bad));
        }
    }

    #[test]
    fn metadata_round_trip_skips_forbidden_names() {
        let mut md = Metadata::new();
        md.push("x-user", "a");
        md.push("connection", "close");
        md.push("trace-bin", "AAEC");
        md.push("bad name", "x");
        md.push("x-bad-value", "a\nb");
        md.push(":path", "/x");
        md.push("x-skipped", "s");
        md.push("x-user", "b");
        let enc = Encoder::new();
        let mut block = Vec::new();
        encode_metadata(&enc, &md, |k| k == b"x-skipped", &mut block);
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(&Bytes::from(block), usize::MAX, |n, v| fields.push((n, v)))
            .unwrap();
        let back = metadata_from_fields(fields, |_| false);
        let pairs: Vec<(&[u8], &[u8])> = back.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (&b"x-user"[..], &b"a"[..]),
                (b"trace-bin", b"AAEC"),
                (b"x-user", b"b"),
            ]
        );
    }
}
