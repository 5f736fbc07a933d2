//! Test support for Sluice's codec crates: the real Kitex captures as golden fixtures.
//!
//! The captures live in `../shared/captures` next to the repository (override with the
//! `SLUICE_CAPTURES` environment variable). Each scenario folder has raw bytes per connection and
//! direction (`conn<N>.c2s.bin`, `conn<N>.s2c.bin`) and a `DECODED.md` that states, frame by
//! frame, what the bytes mean. [`Capture::load`] reads both; the expectations in [`Expected`]
//! come from `DECODED.md` only, never from Sluice's own decoders, so tests compare the two.
//!
//! [`h2frames`] splits the HTTP/2 captures into frames, independently of Sluice's own HTTP/2
//! code.
//!
//! [`etcd`] runs a real, throw-away etcd (and `etcdctl` against it) for the service discovery
//! tests; it skips when etcd is not installed.
#![forbid(unsafe_code)]

pub mod etcd;
pub mod h2frames;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Direction of a byte stream within a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
}

impl Dir {
    /// `"c2s"` or `"s2c"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::C2s => "c2s",
            Dir::S2c => "s2c",
        }
    }
}

/// One TCP connection of a capture.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Connection index (accept order).
    pub index: usize,
    /// Client-to-server bytes.
    pub c2s: Vec<u8>,
    /// Server-to-client bytes.
    pub s2c: Vec<u8>,
}

impl Conn {
    /// The bytes of one direction.
    pub fn bytes(&self, dir: Dir) -> &[u8] {
        match dir {
            Dir::C2s => &self.c2s,
            Dir::S2c => &self.s2c,
        }
    }
}

/// What `DECODED.md` says about one frame. Fields a frame does not have stay `None`/empty.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Frame number in the index.
    pub index: usize,
    /// Connection.
    pub conn: usize,
    /// Direction.
    pub dir: Option<Dir>,
    /// Byte offset of the frame in its connection/direction stream.
    pub offset: usize,
    /// Frame length in bytes.
    pub len: usize,
    /// The one-line summary from the frame index.
    pub summary: String,
    /// TTHeader LENGTH.
    pub length: Option<u32>,
    /// TTHeader FLAGS.
    pub flags: Option<u16>,
    /// TTHeader SEQUENCE ID (or stream id).
    pub seq_id: Option<i32>,
    /// TTHeader HEADER SIZE in words.
    pub header_words: Option<u16>,
    /// TTHeader PROTOCOL ID.
    pub protocol_id: Option<u8>,
    /// String KVs.
    pub str_kvs: BTreeMap<String, String>,
    /// Integer KVs.
    pub int_kvs: BTreeMap<u16, String>,
    /// Inner Framed length inside TTHeader, if present.
    pub inner_framed_len: Option<u32>,
    /// Framed (no TTHeader) frame length.
    pub frame_length: Option<u32>,
    /// Message type from the thrift or Kitex-pb envelope (1 call, 2 reply, 3 exception).
    pub msg_type: Option<u8>,
    /// Method name from the envelope.
    pub method: Option<String>,
    /// Seq id from the envelope.
    pub msg_seq_id: Option<i32>,
    /// Payload length stated for TTStream frames (`PAYLOAD (N bytes)`).
    pub payload_len: Option<usize>,
    /// Exception message from the summary line, if the frame carries one.
    pub exception_message: Option<String>,
    /// Exception type id, if stated.
    pub exception_type: Option<i32>,
    /// Quoted strings of the payload from the summary (`{1:{1:"kx...|"}}` gives `kx...|`).
    pub payload_strings: Vec<String>,
}

/// A whole scenario: its connections and the frames `DECODED.md` lists.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Scenario name (folder name).
    pub name: String,
    /// Connections in accept order.
    pub conns: Vec<Conn>,
    /// Frames in the order of the index.
    pub frames: Vec<Expected>,
}

/// Directory of the captures.
pub fn captures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_CAPTURES") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..");
    root.join("shared/captures")
}

/// The ping-pong scenarios (TTHeader, Framed, Buffered, Kitex protobuf).
pub const PINGPONG: &[&str] = &[
    "ttheader-unary",
    "ttheader-framed-unary",
    "ttheader-unframed-unary",
    "ttheader-mux-unary",
    "ttheader-echofail",
    "framed-unary",
    "framed-echofail",
    "buffered-unary",
    "buffered-echofail",
    "pb-unary",
    "pb-echofail",
    "ttstream-unary",
];

/// The TTStream scenarios.
pub const TTSTREAM: &[&str] = &[
    "ttstream-bidi",
    "ttstream-client",
    "ttstream-server",
    "ttstream-bidi-error",
    "ttstream-bidi-cancel",
    "ttstream-echofail",
    "ttstream-bidi-multi",
];

/// The gRPC scenarios.
pub const GRPC: &[&str] = &[
    "grpc-thrift-unary",
    "grpc-thrift-bidi",
    "grpc-thrift-echofail",
    "grpc-thrift-bidi-error",
    "grpc-thrift-bidi-cancel",
    "grpc-pb-unary",
    "grpc-pb-unary-multi",
    "grpc-pb-bidi",
    "grpc-pb-echofail",
    "grpc-streaming-bidi",
];

impl Capture {
    /// Loads a scenario by folder name. Panics with a clear message if it is missing: tests
    /// that use captures cannot run without them.
    pub fn load(name: &str) -> Capture {
        let dir = captures_dir().join(name);
        let decoded = std::fs::read_to_string(dir.join("DECODED.md")).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e} (set SLUICE_CAPTURES to the captures folder)",
                dir.join("DECODED.md").display()
            )
        });
        let mut conns = Vec::new();
        for index in 0.. {
            let c2s = dir.join(format!("conn{index}.c2s.bin"));
            if !c2s.exists() {
                break;
            }
            let s2c = dir.join(format!("conn{index}.s2c.bin"));
            conns.push(Conn {
                index,
                c2s: std::fs::read(&c2s).unwrap(),
                s2c: std::fs::read(&s2c).unwrap_or_default(),
            });
        }
        Capture {
            name: name.to_owned(),
            conns,
            frames: parse_decoded(&decoded),
        }
    }

    /// Frames of one connection and direction, in stream order.
    pub fn frames_of(&self, conn: usize, dir: Dir) -> Vec<&Expected> {
        let mut v: Vec<&Expected> = self
            .frames
            .iter()
            .filter(|f| f.conn == conn && f.dir == Some(dir))
            .collect();
        v.sort_by_key(|f| f.offset);
        v
    }
}

/// Parses the frame sections of a `DECODED.md`.
pub fn parse_decoded(text: &str) -> Vec<Expected> {
    let mut frames: Vec<Expected> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut in_block = false;
    let mut pending_key: Option<KeyKind> = None;
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("### [") {
            // "### [4] conn0 client -> server, offset 152, 203 bytes (chunk #2)"
            let mut e = Expected::default();
            let (idx, rest) = rest.split_once("] conn").expect("frame heading");
            e.index = idx.parse().unwrap();
            let (conn, rest) = rest.split_once(' ').unwrap();
            e.conn = conn.parse().unwrap();
            e.dir = Some(if rest.starts_with("client -> server") {
                Dir::C2s
            } else {
                Dir::S2c
            });
            e.offset = between(rest, "offset ", ",").parse().unwrap();
            let size_part = rest.split(", ").nth(2).expect("frame size");
            e.len = between(size_part, "", " bytes").parse().unwrap();
            // The summary is the next non-empty line.
            for l in lines.by_ref() {
                if !l.trim().is_empty() {
                    e.summary = l.trim().to_owned();
                    break;
                }
            }
            parse_summary(&mut e);
            frames.push(e);
            in_block = false;
            pending_key = None;
            continue;
        }
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let Some(e) = frames.last_mut() else { continue };
        let ann = annotation(line);
        if ann.is_empty() {
            continue;
        }
        parse_annotation(e, ann, &mut pending_key);
    }
    frames
}

#[derive(Debug)]
enum KeyKind {
    Str(String),
    Int(u16),
}

/// The annotation column of a hex-dump line: what follows the hex bytes.
fn annotation(line: &str) -> &str {
    // Lines are "OFFSET(8 hex)  HEX BYTES ...  annotation" or all spaces then an annotation.
    let bytes = line.as_bytes();
    let start = if bytes.len() > 10 && bytes[..8].iter().all(u8::is_ascii_hexdigit) {
        10
    } else {
        0
    };
    // Hex bytes occupy up to column 59 (16 * 3 = 48 chars after the offset).
    let hex_end = (start + 48).min(line.len());
    let rest = if start == 10 {
        &line[hex_end.min(line.len())..]
    } else {
        line
    };
    rest.trim()
}

fn parse_annotation(e: &mut Expected, ann: &str, pending_key: &mut Option<KeyKind>) {
    let num_after = |prefix: &str| -> Option<i64> {
        let rest = ann.strip_prefix(prefix)?;
        let tok = rest.split_whitespace().next()?;
        if let Some(h) = tok.strip_prefix("0x") {
            i64::from_str_radix(h, 16).ok()
        } else {
            tok.parse().ok()
        }
    };
    if let Some(v) = num_after("LENGTH = ") {
        e.length = Some(v as u32);
    } else if let Some(v) = num_after("FRAME LENGTH = ") {
        e.frame_length = Some(v as u32);
    } else if let Some(v) = num_after("FLAGS = ") {
        e.flags = Some(v as u16);
    } else if let Some(v) = num_after("SEQUENCE ID = ") {
        e.seq_id = Some(v as i32);
    } else if let Some(v) = num_after("HEADER SIZE = ") {
        e.header_words = Some(v as u16);
    } else if let Some(v) = num_after("PROTOCOL ID = ") {
        e.protocol_id = Some(v as u8);
    } else if let Some(v) = num_after("PAYLOAD: inner Framed length = ") {
        e.inner_framed_len = Some(v as u32);
    } else if let Some(rest) = ann.strip_prefix("PAYLOAD (") {
        e.payload_len = rest.split_whitespace().next().and_then(|t| t.parse().ok());
    } else if let Some(v) = num_after("thrift message: version 0x8001, type = ") {
        e.msg_type.get_or_insert(v as u8);
    } else if let Some(v) = num_after("Kitex protobuf: magic 0x9001, message type = ") {
        e.msg_type.get_or_insert(v as u8);
    } else if let Some(rest) = ann.strip_prefix("method name = ") {
        e.method.get_or_insert_with(|| unquote(rest));
    } else if let Some(v) = num_after("message seq id = ") {
        e.msg_seq_id.get_or_insert(v as i32);
    } else if let Some(rest) = ann.strip_prefix("key = ") {
        *pending_key = Some(if rest.starts_with('"') {
            KeyKind::Str(unquote(rest))
        } else {
            KeyKind::Int(rest.split_whitespace().next().unwrap().parse().unwrap())
        });
    } else if let Some(rest) = ann.strip_prefix("value = ") {
        match pending_key.take() {
            Some(KeyKind::Str(k)) => {
                e.str_kvs.insert(k, unquote(rest));
            }
            Some(KeyKind::Int(k)) => {
                e.int_kvs.insert(k, unquote(rest));
            }
            None => {}
        }
    }
}

/// The text between the first pair of double quotes (`"abc" (empty)` gives `abc`).
fn unquote(s: &str) -> String {
    let s = s.trim();
    let Some(body) = s.strip_prefix('"') else {
        return s.to_owned();
    };
    let end = body.rfind('"').unwrap_or(body.len());
    body[..end].replace("\\\"", "\"").replace("\\\\", "\\")
}

fn parse_summary(e: &mut Expected) {
    let s = e.summary.replace("\\|", "|");
    if let Some(i) = s.find("exception '") {
        let rest = &s[i + "exception '".len()..];
        let end = rest.rfind('\'').unwrap_or(rest.len());
        e.exception_message = Some(rest[..end].to_owned());
        if let Some(t) = rest[end..].split("(type ").nth(1) {
            e.exception_type = t.trim_end_matches(')').parse().ok();
        }
    }
    if let Some(i) = s.find("{'message': '") {
        let rest = &s[i + "{'message': '".len()..];
        let end = rest.find("', 'type': ").unwrap_or(rest.len());
        e.exception_message = Some(rest[..end].to_owned());
        e.exception_type = rest[end..]
            .trim_start_matches("', 'type': ")
            .trim_end_matches('}')
            .parse()
            .ok();
    }
    // Quoted payload strings inside {...}.
    if let Some(i) = s.find('{') {
        let mut rest = &s[i..];
        while let Some(q) = rest.find('"') {
            let after = &rest[q + 1..];
            let Some(end) = after.find('"') else { break };
            e.payload_strings.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let start = s.find(a).map(|i| i + a.len()).unwrap_or(0);
    let end = s[start..].find(b).map(|i| i + start).unwrap_or(s.len());
    &s[start..end]
}

/// Bytes from a hex string; whitespace is ignored.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Every way to split `bytes` that a decoder must survive: byte by byte (`None` chunking),
/// and, for each frame boundary `b`, splits at `b - 1`, `b` and `b + 1`.
pub fn split_points(bytes_len: usize, boundaries: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![(1..bytes_len).collect::<Vec<_>>()];
    for &b in boundaries {
        for p in [b.wrapping_sub(1), b, b + 1] {
            if p > 0 && p < bytes_len {
                out.push(vec![p]);
            }
        }
    }
    out
}

/// Cuts `bytes` at `points` (sorted ascending) into chunks.
pub fn chunks<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for &p in points {
        out.push(&bytes[last..p]);
        last = p;
    }
    out.push(&bytes[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ttheader_unary() {
        let c = Capture::load("ttheader-unary");
        assert_eq!(c.conns.len(), 1);
        assert_eq!(c.frames.len(), 4);
        let f = &c.frames[0];
        assert_eq!(
            (f.conn, f.dir, f.offset, f.len),
            (0, Some(Dir::C2s), 0, 178)
        );
        assert_eq!(f.length, Some(174));
        assert_eq!(f.flags, Some(0));
        assert_eq!(f.seq_id, Some(1));
        assert_eq!(f.header_words, Some(29));
        assert_eq!(
            f.str_kvs.get("isn").map(String::as_str),
            Some("EchoService")
        );
        assert_eq!(
            f.str_kvs.get("RPC_TRANSIT_KX_REQ_ID").map(String::as_str),
            Some("req-0")
        );
        assert_eq!(f.int_kvs.len(), 8);
        assert_eq!(f.int_kvs.get(&3).map(String::as_str), Some(""));
        assert_eq!(f.int_kvs.get(&12).map(String::as_str), Some("5000"));
        assert_eq!(f.inner_framed_len, Some(44));
        assert_eq!(f.msg_type, Some(1));
        assert_eq!(f.method.as_deref(), Some("Echo"));
        assert_eq!(f.msg_seq_id, Some(1));
        assert_eq!(f.payload_strings, vec!["kx00000000.0000|".to_owned()]);
    }

    #[test]
    fn parses_ttstream_rst() {
        let c = Capture::load("ttstream-bidi-cancel");
        let f = &c.frames[4];
        assert_eq!(f.int_kvs.get(&27).map(String::as_str), Some("5"));
        assert_eq!(f.payload_len, Some(165));
        assert_eq!(f.exception_type, Some(12007));
        assert!(f
            .exception_message
            .as_deref()
            .unwrap()
            .starts_with("user code invoking"));
    }
}
