//! gRPC status: `grpc-status` codes, `grpc-message` percent-encoding, and [`Status`].
//!
//! Wire reference: kitex-wire.md 5.4 ("Responses, trailers and status") and 7.9, on top of the
//! gRPC PROTOCOL-HTTP2 document:
//!
//! * `Status → "grpc-status" 1*DIGIT ; 0-9`
//! * `Status-Message → "grpc-message" Percent-Encoded`, where unreserved bytes are
//!   `%x20-%x24 / %x26-%x7E` (space and VCHAR except `%`) and everything else is `%` and two hex
//!   digits.
//!
//! Kitex departs from standard gRPC in one way that matters here: it sends Kitex `TransError`
//! type ids as gRPC codes (20 for an unknown service, 1 for an unknown method), so [`Code`] is a
//! number, not a closed set.

use std::borrow::Cow;
use std::fmt;

/// A `grpc-status` code.
///
/// The standard codes 0..=16 have named constants. Any other `u32` is kept as it is rather than
/// folded into [`Code::UNKNOWN`], because a proxy must pass Kitex's own codes (such as
/// [`Code::KITEX_UNKNOWN_SERVICE`]) through unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u32);

impl Code {
    /// 0: not an error.
    pub const OK: Code = Code(0);
    /// 1: the operation was cancelled, typically by the caller.
    pub const CANCELLED: Code = Code(1);
    /// 2: unknown error.
    pub const UNKNOWN: Code = Code(2);
    /// 3: the client gave an invalid argument.
    pub const INVALID_ARGUMENT: Code = Code(3);
    /// 4: the deadline expired before the operation completed.
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// 5: some requested entity was not found.
    pub const NOT_FOUND: Code = Code(5);
    /// 6: the entity the client tried to create already exists.
    pub const ALREADY_EXISTS: Code = Code(6);
    /// 7: the caller lacks permission.
    pub const PERMISSION_DENIED: Code = Code(7);
    /// 8: some resource has been exhausted (Kitex also uses it for its overload error).
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    /// 9: the system is not in a state required for the operation.
    pub const FAILED_PRECONDITION: Code = Code(9);
    /// 10: the operation was aborted.
    pub const ABORTED: Code = Code(10);
    /// 11: the operation was attempted past the valid range.
    pub const OUT_OF_RANGE: Code = Code(11);
    /// 12: the operation is not implemented or not supported.
    pub const UNIMPLEMENTED: Code = Code(12);
    /// 13: internal error; Kitex's code for every handler and biz-status error.
    pub const INTERNAL: Code = Code(13);
    /// 14: the service is currently unavailable.
    pub const UNAVAILABLE: Code = Code(14);
    /// 15: unrecoverable data loss or corruption.
    pub const DATA_LOSS: Code = Code(15);
    /// 16: the request lacks valid authentication credentials.
    pub const UNAUTHENTICATED: Code = Code(16);

    /// 20: Kitex's `TransError` id `UnknownService`, which a Kitex server without an
    /// unknown-service handler sends as the gRPC code (kitex-wire.md 5.4). Standard gRPC clients
    /// do not know it.
    pub const KITEX_UNKNOWN_SERVICE: Code = Code(20);

    /// The code with this number, standard or not.
    pub const fn new(code: u32) -> Code {
        Code(code)
    }

    /// The number sent in `grpc-status`.
    pub const fn as_u32(self) -> u32 {
        self.0
    }

    /// Whether the code is one of the 17 defined by gRPC (0..=16).
    pub const fn is_standard(self) -> bool {
        self.0 <= 16
    }

    /// The canonical upper-case name (`"INTERNAL"`) of a standard code, `None` otherwise.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => return None,
        })
    }

    /// Parses a `grpc-status` value: one or more ASCII digits, nothing else.
    ///
    /// Signs, spaces and empty values are rejected because the grammar (`1*DIGIT`) has no room
    /// for them; leading zeros are allowed because it does.
    pub fn parse(value: &[u8]) -> Result<Code, ParseStatusError> {
        if value.is_empty() {
            return Err(ParseStatusError::Empty);
        }
        let mut n: u32 = 0;
        for &b in value {
            if !b.is_ascii_digit() {
                return Err(ParseStatusError::NotDecimal(b));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u32::from(b - b'0')))
                .ok_or(ParseStatusError::Overflow)?;
        }
        Ok(Code(n))
    }

    /// The code a client should report for an HTTP response that is not a gRPC response (no
    /// gRPC `content-type`, or no `grpc-status`), from its HTTP status.
    ///
    /// kitex-wire.md 5.4 (`HTTPStatusConvTab`, the same table as grpc-go and the gRPC document
    /// "HTTP to gRPC Status Code Mapping"): 400 → INTERNAL, 401 → UNAUTHENTICATED,
    /// 403 → PERMISSION_DENIED, 404 → UNIMPLEMENTED, 429/502/503/504 → UNAVAILABLE, anything
    /// else → UNKNOWN.
    pub const fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::INTERNAL,
            401 => Code::UNAUTHENTICATED,
            403 => Code::PERMISSION_DENIED,
            404 => Code::UNIMPLEMENTED,
            429 | 502 | 503 | 504 => Code::UNAVAILABLE,
            _ => Code::UNKNOWN,
        }
    }
}

impl From<u32> for Code {
    fn from(code: u32) -> Code {
        Code(code)
    }
}

impl From<Code> for u32 {
    fn from(code: Code) -> u32 {
        code.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Code({} {name})", self.0),
            None => write!(f, "Code({})", self.0),
        }
    }
}

/// The decimal number, as it goes into `grpc-status`.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a `grpc-status` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseStatusError {
    /// The value is empty.
    #[error("empty grpc-status")]
    Empty,
    /// The value contains a byte that is not an ASCII digit.
    #[error("grpc-status is not decimal: byte {0:#04x}")]
    NotDecimal(u8),
    /// The number does not fit in 32 bits.
    #[error("grpc-status does not fit in 32 bits")]
    Overflow,
}

/// A call's outcome: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The `grpc-status` code.
    pub code: Code,
    /// The message, decoded (not percent-encoded). Empty on success.
    pub message: String,
}

impl Status {
    /// A status with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// Success, with the empty message Kitex sends.
    pub fn ok() -> Status {
        Status::new(Code::OK, String::new())
    }

    /// Whether the code is [`Code::OK`].
    pub fn is_ok(&self) -> bool {
        self.code == Code::OK
    }

    /// Reads the `grpc-status` value and, if present, the `grpc-message` value of trailers.
    ///
    /// The message decodes leniently ([`percent_decode`]); only the code can fail.
    pub fn from_header_values(
        grpc_status: &[u8],
        grpc_message: Option<&[u8]>,
    ) -> Result<Status, ParseStatusError> {
        let code = Code::parse(grpc_status)?;
        let message = grpc_message.map(percent_decode).unwrap_or_default();
        Ok(Status {
            code,
            message: message.into_owned(),
        })
    }

    /// The `grpc-message` value to send: the message, percent-encoded.
    pub fn encoded_message(&self) -> Cow<'_, str> {
        percent_encode(&self.message)
    }
}

/// Whether a byte may appear in `grpc-message` as itself: space and visible ASCII, except `%`.
fn is_unreserved(b: u8) -> bool {
    matches!(b, 0x20..=0x7e) && b != b'%'
}

/// Percent-encodes a status message for `grpc-message`.
///
/// Every byte of the UTF-8 encoding outside `0x20..=0x7E`, and `%` itself, becomes `%XX` with
/// upper-case hex, as grpc-go writes it. The result is always a valid HTTP field value. Borrows
/// when nothing needs escaping, which is the common case (Kitex's own messages are plain ASCII).
pub fn percent_encode(message: &str) -> Cow<'_, str> {
    let bytes = message.as_bytes();
    let Some(first) = bytes.iter().position(|&b| !is_unreserved(b)) else {
        return Cow::Borrowed(message);
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() + 16);
    out.push_str(&message[..first]);
    for &b in &bytes[first..] {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    Cow::Owned(out)
}

/// Decodes a `grpc-message` value.
///
/// Lenient by design, because the message is only ever shown to people and a status must never be
/// lost over its text: a `%` not followed by two hex digits is kept as it is, bytes that should
/// have been escaped but were not are accepted, and bytes that do not form UTF-8 become U+FFFD.
/// Borrows when the value has no escapes and is valid UTF-8.
pub fn percent_decode(value: &[u8]) -> Cow<'_, str> {
    if !value.contains(&b'%') {
        return String::from_utf8_lossy(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if b == b'%' {
            let hi = value.get(i + 1).and_then(|&h| hex_value(h));
            let lo = value.get(i + 2).and_then(|&l| hex_value(l));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventeen_standard_codes() {
        let names: Vec<_> = (0..=16).map(|n| Code::new(n).name().unwrap()).collect();
        assert_eq!(names.len(), 17);
        assert_eq!(names[0], "OK");
        assert_eq!(names[13], "INTERNAL");
        assert_eq!(names[16], "UNAUTHENTICATED");
        assert!((0..=16).all(|n| Code::new(n).is_standard()));
        assert_eq!(Code::new(17).name(), None);
        assert!(!Code::KITEX_UNKNOWN_SERVICE.is_standard());
        assert_eq!(Code::KITEX_UNKNOWN_SERVICE.as_u32(), 20);
    }

    #[test]
    fn parse_status() {
        assert_eq!(Code::parse(b"0"), Ok(Code::OK));
        assert_eq!(Code::parse(b"13"), Ok(Code::INTERNAL));
        assert_eq!(Code::parse(b"20"), Ok(Code::KITEX_UNKNOWN_SERVICE));
        assert_eq!(Code::parse(b"013"), Ok(Code::INTERNAL));
        assert_eq!(Code::parse(b"4294967295"), Ok(Code::new(u32::MAX)));
    }

    #[test]
    fn parse_status_errors() {
        assert_eq!(Code::parse(b""), Err(ParseStatusError::Empty));
        assert_eq!(Code::parse(b"abc"), Err(ParseStatusError::NotDecimal(b'a')));
        assert_eq!(Code::parse(b"-1"), Err(ParseStatusError::NotDecimal(b'-')));
        assert_eq!(Code::parse(b"+1"), Err(ParseStatusError::NotDecimal(b'+')));
        assert_eq!(Code::parse(b" 1"), Err(ParseStatusError::NotDecimal(b' ')));
        assert_eq!(Code::parse(b"1 "), Err(ParseStatusError::NotDecimal(b' ')));
        assert_eq!(Code::parse(b"4294967296"), Err(ParseStatusError::Overflow));
        assert_eq!(
            Code::parse(b"99999999999999999999"),
            Err(ParseStatusError::Overflow)
        );
    }

    #[test]
    fn format_status() {
        assert_eq!(Code::INTERNAL.to_string(), "13");
        assert_eq!(Code::new(20).to_string(), "20");
        assert_eq!(format!("{:?}", Code::INTERNAL), "Code(13 INTERNAL)");
        assert_eq!(format!("{:?}", Code::new(20)), "Code(20)");
    }

    #[test]
    fn http_status_mapping() {
        let table = [
            (400, Code::INTERNAL),
            (401, Code::UNAUTHENTICATED),
            (403, Code::PERMISSION_DENIED),
            (404, Code::UNIMPLEMENTED),
            (429, Code::UNAVAILABLE),
            (502, Code::UNAVAILABLE),
            (503, Code::UNAVAILABLE),
            (504, Code::UNAVAILABLE),
            (200, Code::UNKNOWN),
            (500, Code::UNKNOWN),
            (418, Code::UNKNOWN),
        ];
        for (http, code) in table {
            assert_eq!(Code::from_http_status(http), code, "HTTP {http}");
        }
    }

    #[test]
    fn encode_message() {
        assert!(matches!(
            percent_encode("biz error"),
            Cow::Borrowed("biz error")
        ));
        assert_eq!(percent_encode(""), "");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(percent_encode("\u{7f}~ "), "%7F~ ");
        assert_eq!(percent_encode("héllo"), "h%C3%A9llo");
        assert_eq!(percent_encode("日"), "%E6%97%A5");
    }

    #[test]
    fn decode_message() {
        assert_eq!(percent_decode(b"plain text"), "plain text");
        assert!(matches!(percent_decode(b"plain"), Cow::Borrowed("plain")));
        assert_eq!(percent_decode(b"100%25"), "100%");
        assert_eq!(percent_decode(b"h%C3%A9llo"), "héllo");
        assert_eq!(percent_decode(b"h%c3%a9llo"), "héllo");
        assert_eq!(percent_decode(b"a%0Ab"), "a\nb");
    }

    #[test]
    fn decode_message_is_lenient() {
        // Invalid escapes pass through unchanged.
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(percent_decode(b"%4"), "%4");
        assert_eq!(percent_decode(b"%zz"), "%zz");
        assert_eq!(percent_decode(b"%4g%41"), "%4gA");
        assert_eq!(percent_decode(b"%%41"), "%A");
        // Unescaped non-ASCII is accepted; bytes that are not UTF-8 become U+FFFD.
        assert_eq!(percent_decode("héllo".as_bytes()), "héllo");
        assert_eq!(percent_decode(b"%FF"), "\u{fffd}");
        assert_eq!(percent_decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(percent_decode(b"%C3"), "\u{fffd}");
    }

    #[test]
    fn status_from_trailers() {
        // The Trailers-Only error of captures grpc-*-echofail.
        let s = Status::from_header_values(
            b"13",
            Some(b"kxserver: injected failure for EchoFail [biz error]"),
        )
        .unwrap();
        assert_eq!(s.code, Code::INTERNAL);
        assert_eq!(
            s.message,
            "kxserver: injected failure for EchoFail [biz error]"
        );
        assert!(!s.is_ok());

        let ok = Status::from_header_values(b"0", Some(b"")).unwrap();
        assert_eq!(ok, Status::ok());
        assert!(ok.is_ok());
        assert_eq!(
            Status::from_header_values(b"0", None).unwrap(),
            Status::ok()
        );
        assert_eq!(
            Status::from_header_values(b"x", None),
            Err(ParseStatusError::NotDecimal(b'x'))
        );
    }

    #[test]
    fn status_encoded_message() {
        let s = Status::new(Code::UNAVAILABLE, "down: 100%\r\n");
        assert_eq!(s.encoded_message(), "down: 100%25%0D%0A");
        assert_eq!(
            Status::from_header_values(b"14", Some(s.encoded_message().as_bytes())).unwrap(),
            s
        );
    }
}
