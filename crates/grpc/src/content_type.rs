//! The gRPC `content-type` and the payload codec Kitex derives from it.
//!
//! PROTOCOL-HTTP2: `Content-Type → "content-type" "application/grpc" [("+proto" / "+json" /
//! {custom})]`. Kitex sends `application/grpc` for protobuf and `application/grpc+thrift` for
//! thrift, and its server picks the codec with one rule (kitex-wire.md 5.5): "Thrift if
//! content-subtype is exactly `thrift`, else Protobuf". The server mirrors the request's
//! content type in its response (kitex-wire.md 5.4), so [`GrpcContentType::subtype`] keeps what
//! was received.

/// How the messages of a gRPC call are serialized, as the call's `content-type` says.
///
/// Not to be confused with `sluice_sniff::Codec`, the codec of a ping-pong (non-gRPC) message,
/// read from its envelope's version word: thrift strict binary or Kitex protobuf, each with its
/// own message header. A gRPC message carries no envelope at all: its bytes are the bare
/// protobuf message or thrift struct, and only the content-subtype tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCodec {
    /// Protobuf: no subtype, `+proto`, and (as Kitex decides) any subtype other than `thrift`.
    Protobuf,
    /// Thrift binary structs, no message envelope (kitex-wire.md 5.3): subtype `thrift`.
    Thrift,
}

impl GrpcCodec {
    /// The `content-type` a Kitex client sends for this codec.
    pub const fn content_type(self) -> &'static str {
        match self {
            GrpcCodec::Protobuf => "application/grpc",
            GrpcCodec::Thrift => "application/grpc+thrift",
        }
    }
}

/// A `content-type` value recognised as gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcContentType<'a> {
    subtype: Option<&'a str>,
}

const BASE: &str = "application/grpc";

impl<'a> GrpcContentType<'a> {
    /// Recognises `application/grpc`, optionally followed by `+<subtype>` and by `;` parameters.
    ///
    /// Returns `None` for anything else (including look-alikes such as `application/grpc-web`);
    /// gRPC answers those with HTTP 415. The type and subtype compare ASCII case-insensitively,
    /// as media types do (RFC 9110 8.3.1). Parameters never select the codec.
    ///
    /// Kitex itself takes everything after the first `+` or `;` as the subtype, so it would read
    /// `application/grpc;thrift` as thrift and `application/grpc+thrift;charset=utf-8` as
    /// protobuf. No Kitex peer sends either form; this parser follows the media-type grammar
    /// instead, and the proxy forwards the header unchanged, so the backend still applies its
    /// own rule.
    pub fn parse(value: &'a str) -> Option<GrpcContentType<'a>> {
        let value = value.trim_matches(is_ows);
        let head = value.get(..BASE.len())?;
        if !head.eq_ignore_ascii_case(BASE) {
            return None;
        }
        let rest = &value[BASE.len()..];
        // Parameters start at the first `;`; what is before it is `+subtype` or nothing.
        let media_rest = rest.split_once(';').map_or(rest, |(m, _)| m);
        let media_rest = media_rest.trim_end_matches(is_ows);
        let subtype = if media_rest.is_empty() {
            None
        } else {
            let sub = media_rest.strip_prefix('+')?;
            // `application/grpc+` has an empty subtype; grpc-go treats it as none.
            (!sub.is_empty()).then_some(sub)
        };
        Some(GrpcContentType { subtype })
    }

    /// The content-subtype as received (`thrift` in `application/grpc+thrift`), if any.
    pub fn subtype(&self) -> Option<&'a str> {
        self.subtype
    }

    /// The codec a Kitex server uses for this content type.
    pub fn codec(&self) -> GrpcCodec {
        match self.subtype {
            Some(sub) if sub.eq_ignore_ascii_case("thrift") => GrpcCodec::Thrift,
            _ => GrpcCodec::Protobuf,
        }
    }
}

/// Optional whitespace (RFC 9110 5.6.3).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<(Option<&str>, GrpcCodec)> {
        GrpcContentType::parse(v).map(|c| (c.subtype(), c.codec()))
    }

    #[test]
    fn kitex_content_types() {
        assert_eq!(parse("application/grpc"), Some((None, GrpcCodec::Protobuf)));
        assert_eq!(
            parse("application/grpc+thrift"),
            Some((Some("thrift"), GrpcCodec::Thrift))
        );
        assert_eq!(
            parse("application/grpc+proto"),
            Some((Some("proto"), GrpcCodec::Protobuf))
        );
    }

    #[test]
    fn other_subtypes_are_protobuf_for_kitex() {
        assert_eq!(
            parse("application/grpc+json"),
            Some((Some("json"), GrpcCodec::Protobuf))
        );
        assert_eq!(
            parse("application/grpc+thriftx"),
            Some((Some("thriftx"), GrpcCodec::Protobuf))
        );
        assert_eq!(
            parse("application/grpc+"),
            Some((None, GrpcCodec::Protobuf))
        );
    }

    #[test]
    fn parameters_are_ignored() {
        assert_eq!(
            parse("application/grpc+thrift; charset=utf-8"),
            Some((Some("thrift"), GrpcCodec::Thrift))
        );
        assert_eq!(
            parse("application/grpc;charset=utf-8"),
            Some((None, GrpcCodec::Protobuf))
        );
        assert_eq!(
            parse("application/grpc;thrift"),
            Some((None, GrpcCodec::Protobuf))
        );
        assert_eq!(
            parse("application/grpc+proto ;a=b;c=d"),
            Some((Some("proto"), GrpcCodec::Protobuf))
        );
    }

    #[test]
    fn case_insensitive() {
        assert_eq!(
            parse("Application/GRPC+Thrift"),
            Some((Some("Thrift"), GrpcCodec::Thrift))
        );
    }

    #[test]
    fn not_grpc() {
        for v in [
            "",
            "application/json",
            "application/grp",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/grpc thrift",
            "text/plain; application/grpc",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
    }

    #[test]
    fn codec_content_types_round_trip() {
        for codec in [GrpcCodec::Protobuf, GrpcCodec::Thrift] {
            assert_eq!(parse(codec.content_type()).map(|(_, c)| c), Some(codec));
        }
    }
}
