//! W3C trace context: the proxy relays a caller's trace and continues it as one hop.
//!
//! Spec: [W3C Trace Context](https://www.w3.org/TR/trace-context/), section 3.2 (`traceparent`)
//! and 3.3 (`tracestate`).
//!
//! A request or stream that arrives with a valid `traceparent` goes downstream with a child's:
//! the same trace id and flags, and as parent id a fresh random span id that stands for this
//! hop. The caller's `tracestate` passes through unchanged. A request without one, or with an
//! invalid one, goes downstream as it came: the proxy never starts a trace of its own here.
//!
//! Which keys carry the header depends on the protocol (Kitex's obs-opentelemetry sends it as
//! transient metainfo):
//!
//! | protocol | keys read and rewritten, in this order |
//! | --- | --- |
//! | TTHeader (ping-pong), TTStream | [`KITEX_TRACEPARENT`] (`RPC_TRANSIT_traceparent`), [`TRACEPARENT`] |
//! | gRPC | [`TRACEPARENT`], [`KITEX_GRPC_TRACEPARENT`] (`rpc-transit-traceparent`) |
//!
//! The first key (in this order) holding a valid value is the one continued. Every key of the
//! list holding a valid value of the same trace is rewritten ([`TraceContext::same_trace`]);
//! a key naming another trace, or holding an invalid value, is left as it is.

use std::fmt;

use bytes::Bytes;
use rand::Rng;

/// The standard header name (HTTP, gRPC metadata).
pub const TRACEPARENT: &str = "traceparent";

/// The standard `tracestate` header name; it is passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// Kitex transient metainfo `traceparent` as a TTHeader / TTStream string key.
pub const KITEX_TRACEPARENT: &str = "RPC_TRANSIT_traceparent";

/// Kitex transient metainfo `traceparent` as gRPC metadata (`rpc-transit-<key>`).
pub const KITEX_GRPC_TRACEPARENT: &str = "rpc-transit-traceparent";

/// The keys read on TTHeader requests and TTStream streams, in the order they are tried.
pub const TTHEADER_KEYS: [&str; 2] = [KITEX_TRACEPARENT, TRACEPARENT];

/// The keys read on gRPC streams, in the order they are tried.
pub const GRPC_KEYS: [&str; 2] = [TRACEPARENT, KITEX_GRPC_TRACEPARENT];

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

/// The `sampled` bit of the trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The header's version (`00` today; higher versions are read as version 00).
    pub version: u8,
    /// The trace id, never all zero.
    pub trace_id: [u8; 16],
    /// The caller's span id (the header's `parent-id`), never all zero.
    pub parent_id: [u8; 8],
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// One hop of a trace: the span this proxy stands for while it forwards a request or stream.
///
/// `trace_id` and `flags` are the caller's; `span_id` is this hop's own (what goes downstream
/// as the new `traceparent`'s parent id); `parent_span_id` is the caller's span, or all zero
/// when the hop starts a trace of its own (a root span).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id, shared by every hop of the trace; never all zero.
    pub trace_id: [u8; 16],
    /// This hop's span id: random, never all zero.
    pub span_id: [u8; 8],
    /// The caller's span id (the incoming `parent-id`); all zero for a root span.
    pub parent_span_id: [u8; 8],
    /// The trace flags, as the caller sent them; bit 0 is `sampled`.
    pub flags: u8,
}

/// Bytes as lower-case hex, for logs (`{}`) without an allocation.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

// === impl TraceParent ===

impl TraceParent {
    /// Parses a `traceparent` value. `None` when it is invalid, which callers treat as absent:
    /// a wrong length, upper-case or other non-hex characters, version `ff`, an all-zero trace
    /// id or parent id, or a misplaced `-`.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        // "version = 2HEXDIGLC": two lower-case hex digits, then the dash.
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(value[0], value[1])?;
        // "Version ff is invalid."
        if version == 0xff {
            return None;
        }
        // For version 00 the header is exactly 55 characters. "If a higher version is
        // detected, the implementation SHOULD try to parse it": the version-00 fields from the
        // first 55 characters, and then "the 2 characters are either the end of the string or
        // a dash".
        if version == 0 && value.len() != TRACEPARENT_LEN {
            return None;
        }
        if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        decode_hex(&value[3..35], &mut trace_id)?;
        let mut parent_id = [0u8; 8];
        decode_hex(&value[36..52], &mut parent_id)?;
        let flags = hex_byte(value[53], value[54])?;
        // "All bytes as zero (00000000000000000000000000000000) is considered an invalid
        // value" (trace-id); likewise for parent-id.
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// True if the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

// === impl TraceContext ===

impl TraceContext {
    /// The hop that continues `parent`: the same trace id and flags, a new random span id.
    pub fn child_of(parent: &TraceParent) -> TraceContext {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: new_span_id(),
            parent_span_id: parent.parent_id,
            flags: parent.flags,
        }
    }

    /// A hop that starts a trace of its own: random trace and span ids, no parent, sampled.
    /// Used for span export only; the relay never sends one downstream.
    pub fn new_root() -> TraceContext {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&new_span_id());
        trace_id[8..].copy_from_slice(&new_span_id());
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: [0; 8],
            flags: FLAG_SAMPLED,
        }
    }

    /// The first valid `traceparent` among `keys` (in that order), looked up with `get`, and
    /// the hop that continues it. `None` when no key holds a valid one; then nothing is
    /// allocated and `get` is called once per key.
    pub fn continue_from<'v>(
        keys: &[&str],
        get: impl Fn(&str) -> Option<&'v [u8]>,
    ) -> Option<TraceContext> {
        keys.iter()
            .find_map(|k| TraceParent::parse(get(k)?))
            .map(|parent| TraceContext::child_of(&parent))
    }

    /// The `traceparent` to send downstream: version 00 (the version this proxy speaks, even
    /// when the caller's was higher), this trace, this hop's span as the parent, the flags.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        encode_hex(&self.trace_id, &mut out[3..35]);
        encode_hex(&self.span_id, &mut out[36..52]);
        encode_hex(&[self.flags], &mut out[53..55]);
        out
    }

    /// [`traceparent`](Self::traceparent) as a header value.
    pub fn traceparent_value(&self) -> Bytes {
        Bytes::copy_from_slice(&self.traceparent())
    }

    /// True if `value` is a valid `traceparent` of this trace: a key of the list holding one
    /// gets the hop's `traceparent` (the key continued, and any other naming the same trace).
    pub fn same_trace(&self, value: &[u8]) -> bool {
        TraceParent::parse(value).is_some_and(|p| p.trace_id == self.trace_id)
    }

    /// True if the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The caller's span, or `None` for a root span.
    pub fn parent(&self) -> Option<[u8; 8]> {
        (self.parent_span_id != [0; 8]).then_some(self.parent_span_id)
    }

    /// The trace id as hex, for logs.
    pub fn trace_id_hex(&self) -> Hex<'_> {
        Hex(&self.trace_id)
    }
}

// === impl Hex ===

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        for chunk in self.0.chunks(buf.len() / 2) {
            let out = &mut buf[..chunk.len() * 2];
            encode_hex(chunk, out);
            // Only hex digits were written.
            f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A random span id, never all zero.
fn new_span_id() -> [u8; 8] {
    let mut rng = rand::rng();
    loop {
        let id: u64 = rng.random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// One lower-case hex digit's value.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

/// Decodes `hex` (twice as long as `out`) into `out`; `None` on a character that is not a
/// lower-case hex digit.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example of the spec's section 3.2.2.3 (and its sampled variant).
    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const SPEC_NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    const TRACE_ID: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const PARENT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn parse(s: &str) -> Option<TraceParent> {
        TraceParent::parse(s.as_bytes())
    }

    #[test]
    fn spec_examples() {
        let p = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(
            p,
            TraceParent {
                version: 0,
                trace_id: TRACE_ID,
                parent_id: PARENT_ID,
                flags: 1
            }
        );
        assert!(p.sampled());
        let p = parse(SPEC_NOT_SAMPLED).unwrap();
        assert_eq!(p.flags, 0);
        assert!(!p.sampled());
    }

    #[test]
    fn invalid_values_are_absent() {
        let cases = [
            ("", "empty"),
            ("00", "short"),
            (&SPEC_EXAMPLE[..54], "one character short"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "version 00, longer",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-010",
                "version 00, 56 chars",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zero parent id",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "upper-case trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                "upper-case parent id",
            ),
            (
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "upper-case version",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "non-hex trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                "non-hex parent id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                "non-hex flags",
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "non-hex version",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "first dash",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
                "second dash",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
                "third dash",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
                "dash moved",
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "leading space",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                "trailing space",
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                "higher, no dash",
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "higher, short",
            ),
        ];
        for (value, why) in cases {
            assert_eq!(parse(value), None, "{why}: {value:?}");
        }
        let mut not_utf8 = SPEC_EXAMPLE.as_bytes().to_vec();
        not_utf8[10] = 0xff;
        assert_eq!(TraceParent::parse(&not_utf8), None);
    }

    #[test]
    fn higher_versions_read_as_version_00() {
        // "If a higher version is detected, the implementation SHOULD try to parse it."
        let p = parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            (p.version, p.trace_id, p.parent_id, p.flags),
            (0xcc, TRACE_ID, PARENT_ID, 1)
        );
        let p =
            parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds")
                .unwrap();
        assert_eq!((p.trace_id, p.parent_id, p.flags), (TRACE_ID, PARENT_ID, 1));
        // The child speaks version 00.
        let child = TraceContext::child_of(&p).traceparent();
        assert_eq!(&child[..3], b"00-");
    }

    #[test]
    fn child_keeps_trace_and_flags_with_a_new_span() {
        let parent = parse(SPEC_EXAMPLE).unwrap();
        let child = TraceContext::child_of(&parent);
        assert_eq!(child.trace_id, TRACE_ID);
        assert_eq!(child.parent_span_id, PARENT_ID);
        assert_eq!(child.parent(), Some(PARENT_ID));
        assert_eq!(child.flags, 1);
        assert!(child.sampled());
        assert_ne!(child.span_id, [0; 8]);
        assert_ne!(child.span_id, PARENT_ID);
        let header = child.traceparent();
        let text = std::str::from_utf8(&header).unwrap();
        assert!(
            text.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{text}"
        );
        assert!(text.ends_with("-01"), "{text}");
        assert_eq!(&text[36..52], Hex(&child.span_id).to_string());
        let again = TraceParent::parse(&header).unwrap();
        assert_eq!(again.parent_id, child.span_id);
        assert!(child.same_trace(SPEC_NOT_SAMPLED.as_bytes()));
        assert!(!child.same_trace(b"garbage"));
        // Two hops of the same caller get two span ids.
        assert_ne!(TraceContext::child_of(&parent).span_id, child.span_id);
        assert_eq!(
            child.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn continue_from_tries_the_keys_in_order() {
        let kvs = [
            (KITEX_TRACEPARENT, "not a traceparent"),
            (TRACEPARENT, SPEC_NOT_SAMPLED),
        ];
        let get = |k: &str| {
            kvs.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_bytes())
        };
        let c = TraceContext::continue_from(&TTHEADER_KEYS, get).unwrap();
        assert_eq!(c.flags, 0, "the invalid Kitex key is skipped");
        assert_eq!(TraceContext::continue_from(&GRPC_KEYS[1..], get), None);
        assert_eq!(TraceContext::continue_from(&TTHEADER_KEYS, |_| None), None);
    }

    proptest! {
        /// Any valid context formats to a header that parses back to it.
        #[test]
        fn traceparent_round_trips(
            trace_id in any::<[u8; 16]>().prop_filter("non-zero", |t| *t != [0; 16]),
            span_id in any::<[u8; 8]>().prop_filter("non-zero", |s| *s != [0; 8]),
            flags in any::<u8>(),
        ) {
            let c = TraceContext { trace_id, span_id, parent_span_id: [0; 8], flags };
            let header = c.traceparent();
            let p = TraceParent::parse(&header).unwrap();
            prop_assert_eq!((p.version, p.trace_id, p.parent_id, p.flags), (0, trace_id, span_id, flags));
            prop_assert_eq!(c.parent(), None);
            let hex = Hex(&trace_id).to_string();
            prop_assert_eq!(hex.as_bytes(), &header[3..35]);
        }

        /// Arbitrary bytes never panic, and whatever parses formats back to the same text
        /// (version 00 values only: a higher version's tail is not kept).
        #[test]
        fn random_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(p) = TraceParent::parse(&value) {
                if p.version == 0 {
                    let c = TraceContext { trace_id: p.trace_id, span_id: p.parent_id, parent_span_id: [0; 8], flags: p.flags };
                    prop_assert_eq!(&c.traceparent()[..], &value[..]);
                }
            }
        }

        /// Valid-looking values with one character changed are either still valid (another hex
        /// digit) or rejected, never misread.
        #[test]
        fn one_character_changed(at in 0usize..TRACEPARENT_LEN, c in any::<u8>()) {
            let mut value = SPEC_EXAMPLE.as_bytes().to_vec();
            value[at] = c;
            if let Some(p) = TraceParent::parse(&value) {
                let c = TraceContext { trace_id: p.trace_id, span_id: p.parent_id, parent_span_id: [0; 8], flags: p.flags };
                if p.version == 0 {
                    prop_assert_eq!(&c.traceparent()[..], &value[..]);
                }
            }
        }
    }
}
