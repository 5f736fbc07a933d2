//! Decoded header fields as gRPC reads them: what HTTP/2 lets a field carry, the
//! compressed-flag rule, and what a response's header blocks say about the call's status.
//!
//! Fields are `(name, value)` pairs as an HPACK decoder yields them, pseudo-headers included,
//! in order. Turning them into protocol-neutral metadata is left to the drivers.
//!
//! The small checks are `#[inline]`: the HTTP/2 driver calls them per field from another crate,
//! where they would otherwise be a call each.

use bytes::Bytes;

use crate::content_type::GrpcContentType;
use crate::headers::{GRPC_ENCODING, GRPC_MESSAGE, GRPC_STATUS};
use crate::status::{percent_decode, Code, Status};

/// Headers HTTP/2 forbids (RFC 9113 8.2.2): a request or response carrying one is malformed,
/// and none is ever sent.
#[inline]
pub fn is_connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

/// Bytes of a field name (RFC 9110 5.1 `tchar`, lower case only: RFC 9113 8.2.1), as a table:
/// one load per byte where a chain of range and set tests costs several.
static NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(
                c,
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
            );
        b += 1;
    }
    t
};

/// A field name HTTP/2 can carry: a non-empty token of lower-case characters (RFC 9110 5.1,
/// RFC 9113 8.2.1), or a pseudo-header name.
#[inline]
pub fn valid_name(name: &[u8]) -> bool {
    let body = name.strip_prefix(b":").unwrap_or(name);
    !body.is_empty() && body.iter().all(|&b| NAME_BYTE[usize::from(b)])
}

/// A field value HTTP/2 can carry: "A field value MUST NOT contain the zero value (ASCII NUL,
/// 0x00), line feed (ASCII LF, 0x0a), or carriage return (ASCII CR, 0x0d) at any position"
/// (RFC 9113 8.2.1).
#[inline]
pub fn valid_value(value: &[u8]) -> bool {
    // Every forbidden byte is below 0x0e: one comparison rules most bytes out.
    !value
        .iter()
        .any(|&b| b < 0x0e && matches!(b, 0 | b'\n' | b'\r'))
}

/// Whether messages in the direction these headers describe carry the compressed flag:
/// `grpc-encoding` names a compressor other than `identity`.
///
/// Messages travel without their flag (the stream API carries bare bytes), so the drivers
/// derive it from the headers: gRPC implementations that compress (grpc-go, Kitex) compress
/// every message of a stream whose `grpc-encoding` is set.
pub fn compressed_by_headers<'a>(mut encoding: impl Iterator<Item = &'a [u8]>) -> bool {
    encoding.any(|v| !v.is_empty() && !v.eq_ignore_ascii_case(b"identity"))
}

/// [`compressed_by_headers`] for decoded fields.
#[inline]
pub fn compressed_in_fields(fields: &[(Bytes, Bytes)]) -> bool {
    compressed_by_headers(
        fields
            .iter()
            .filter(|(k, _)| k.as_ref() == GRPC_ENCODING.as_bytes())
            .map(|(_, v)| v.as_ref()),
    )
}

/// The first value of `name` among decoded fields.
#[inline]
pub fn field<'a>(fields: &'a [(Bytes, Bytes)], name: &str) -> Option<&'a Bytes> {
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == name.as_bytes())
        .map(|(_, v)| v)
}

/// What a response's first header block says, before anything is taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseHead {
    /// A 1xx response: the real one follows.
    Informational,
    /// `:status 200` with a gRPC `content-type`: a gRPC response. With END_STREAM it is
    /// Trailers-Only (read its status with [`trailer_status`]); otherwise messages follow.
    Grpc,
    /// Malformed, or not a gRPC response at all: the call is over with this status.
    Failed(Status),
}

/// Reads a response's first header block (`end_stream`: it carried END_STREAM).
///
/// A field HTTP/2 cannot carry or a missing `:status` is INTERNAL; a non-200 `:status` or a
/// content type that is not gRPC maps through [`Code::from_http_status`] (kitex-wire.md 5.4,
/// HTTPStatusConvTab), with the peer's `grpc-message` appended when it sent one.
pub fn response_head(fields: &[(Bytes, Bytes)], end_stream: bool) -> ResponseHead {
    if let Some((k, _)) = fields
        .iter()
        .find(|(k, v)| !valid_name(k) || !valid_value(v))
    {
        return ResponseHead::Failed(Status::new(
            Code::INTERNAL,
            format!("malformed response header {:?}", String::from_utf8_lossy(k)),
        ));
    }
    let status = field(fields, ":status")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u16>().ok());
    let Some(status) = status else {
        return ResponseHead::Failed(Status::new(
            Code::INTERNAL,
            "response without a valid :status",
        ));
    };
    if (100..200).contains(&status) && !end_stream {
        return ResponseHead::Informational;
    }
    let grpc_content_type = field(fields, "content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| GrpcContentType::parse(v).is_some());
    if status != 200 || !grpc_content_type {
        let code = Code::from_http_status(status);
        let mut message = format!("unexpected HTTP status {status}");
        if !grpc_content_type {
            message.push_str(" without a gRPC content-type");
        }
        if let Some(m) = field(fields, GRPC_MESSAGE) {
            message.push_str(": ");
            message.push_str(&percent_decode(m));
        }
        return ResponseHead::Failed(Status::new(code, message));
    }
    ResponseHead::Grpc
}

/// The status trailers (or Trailers-Only headers) carry: `grpc-status` with `grpc-message`;
/// UNKNOWN when `grpc-status` is missing, INTERNAL when it is malformed.
pub fn trailer_status(fields: &[(Bytes, Bytes)]) -> Status {
    match field(fields, GRPC_STATUS) {
        None => Status::new(Code::UNKNOWN, "grpc-status missing from the trailers"),
        Some(v) => Status::from_header_values(v, field(fields, GRPC_MESSAGE).map(|m| &m[..]))
            .unwrap_or_else(|e| {
                Status::new(
                    Code::INTERNAL,
                    format!("bad grpc-status {:?}: {e}", String::from_utf8_lossy(v)),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_grpc_encoding() {
        let fields =
            |v: &'static [u8]| vec![(Bytes::from_static(b"grpc-encoding"), Bytes::from_static(v))];
        assert!(!compressed_in_fields(&[]));
        assert!(!compressed_in_fields(&fields(b"identity")));
        assert!(!compressed_in_fields(&fields(b"")));
        assert!(compressed_in_fields(&fields(b"gzip")));
    }

    #[test]
    fn the_name_table_is_the_token_rule_for_every_byte() {
        for b in 0..=255u8 {
            let tchar =
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(valid_name(&[b]), tchar, "byte {b:#04x}");
            assert_eq!(
                valid_value(&[b'a', b, b'z']),
                !matches!(b, 0 | b'\n' | b'\r'),
                "byte {b:#04x}"
            );
        }
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
}
