//! Header fields as both drivers handle them, in and out of `sluice-stream`'s [`Metadata`]:
//! filtering and encoding of what leaves, metadata and stream ends from what arrives. The
//! checks that need no stream type (field validity, the compressed-flag rule, the status a
//! response carries) are `sluice_grpc::fields`; they are re-exported here for the drivers.
//!
//! Neither driver's machinery is imported here: the connection engine reads responses through
//! [`response_head`] and [`end_from`] as the client does.

use bytes::Bytes;
use sluice_grpc::fields::{trailer_status, ResponseHead};
use sluice_h2wire::hpack::Encoder;
use sluice_stream::{ErrorStatus, Metadata, StatusCode, StreamEnd};

pub(crate) use sluice_grpc::fields::{
    compressed_by_headers, compressed_in_fields, field, is_connection_specific, valid_name,
    valid_value,
};

use crate::headers::GRPC_ENCODING;

/// [`compressed_by_headers`] for [`Metadata`].
pub(crate) fn compressed_in_metadata(md: &Metadata) -> bool {
    compressed_by_headers(
        md.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(GRPC_ENCODING.as_bytes()))
            .map(|(_, v)| v),
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

/// What a response's first header block says.
pub(crate) enum Head {
    /// A 1xx response: the real one follows.
    Informational,
    /// Response headers of a gRPC response; messages follow.
    Headers {
        /// The metadata, without pseudo-headers and `content-type`.
        md: Metadata,
        /// `grpc-encoding` is set: messages may be compressed.
        compressed: bool,
    },
    /// The response is over: Trailers-Only, or not a gRPC response at all.
    End(StreamEnd),
}

/// Reads a response's first header block: `sluice_grpc::fields::response_head` decides, then
/// the decoded list itself becomes the stream's metadata or its end (no copy of the fields).
pub(crate) fn response_head(fields: Vec<(Bytes, Bytes)>, end_stream: bool) -> Head {
    match sluice_grpc::fields::response_head(&fields, end_stream) {
        ResponseHead::Informational => Head::Informational,
        ResponseHead::Failed(status) => Head::End(StreamEnd::error(
            StatusCode::Grpc(status.code.as_u32()),
            status.message,
        )),
        // Trailers-Only.
        ResponseHead::Grpc if end_stream => Head::End(end_from(fields)),
        ResponseHead::Grpc => {
            let compressed = compressed_in_fields(&fields);
            Head::Headers {
                md: metadata_from_fields(fields, |name| name == b"content-type"),
                compressed,
            }
        }
    }
}

/// The end of a stream from its trailers (or Trailers-Only headers).
pub(crate) fn end_from(fields: Vec<(Bytes, Bytes)>) -> StreamEnd {
    let status = trailer_status(&fields);
    let trailers = metadata_from_fields(fields, |name| {
        matches!(name, b"grpc-status" | b"grpc-message" | b"content-type")
    });
    StreamEnd {
        error: (!status.is_ok()).then(|| ErrorStatus {
            code: StatusCode::Grpc(status.code.as_u32()),
            message: status.message,
        }),
        trailers,
    }
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
