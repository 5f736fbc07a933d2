//! `sluice decode`: every frame of a captured byte stream, or one message, shown field by
//! field: framing, TTHeader / TTStream header and metainfo, the message envelope, and the
//! payload as JSON (by field id and type without an IDL, by name with one).
//!
//! Everything is read with the proxy's own bounded decoders; bytes that are not a frame end
//! the listing with the reason and where it stopped.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use sluice_framed::{BufferedCodec, FramedCodec};
use sluice_idl::{untyped, Idl};
use sluice_sniff::{sniff_message, Codec, Detection, Message};
use sluice_thrift::kitex_pb::ErrorProto;
use sluice_thrift::{envelope, kitex_pb, ApplicationException, MessageType};
use sluice_ttheader::{int_key, Header};
use sluice_ttstream::StreamFrame;

/// Largest input read (hex or raw), and largest frame decoded.
const MAX_INPUT: usize = 64 << 20;

/// The arguments of `sluice decode`.
#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// A file of raw bytes (a capture's `.bin`) or hex; stdin when absent.
    pub(crate) file: Option<PathBuf>,
    /// The input is hex text (whitespace ignored). Default: guessed from the content.
    #[arg(long, conflicts_with = "raw")]
    pub(crate) hex: bool,
    /// The input is raw bytes.
    #[arg(long)]
    pub(crate) raw: bool,
    /// An IDL (.thrift or .proto) to show payload fields by name.
    #[arg(long)]
    pub(crate) idl: Option<PathBuf>,
    /// More directories to look up includes and imports in.
    #[arg(short = 'I', long = "include")]
    pub(crate) include: Vec<PathBuf>,
    /// The bytes are what a server sent: TTStream data frames are responses. Default: true
    /// when the file name has `s2c` in it.
    #[arg(long)]
    pub(crate) from_server: bool,
    /// One JSON object per frame instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs `sluice decode`.
pub(crate) fn run(args: DecodeArgs) -> ExitCode {
    let input = match read(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sluice decode: {e}");
            return ExitCode::from(2);
        }
    };
    let idl = match &args.idl {
        Some(p) => match Idl::load(p, &args.include) {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!("sluice decode: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let from_server = args.from_server
        || args
            .file
            .as_ref()
            .is_some_and(|f| f.to_string_lossy().contains("s2c"));
    let d = Decoder {
        idl: idl.as_ref(),
        from_server,
    };
    let (frames, stop) = d.frames(&input);
    let mut out = std::io::stdout().lock();
    for f in &frames {
        let _ = if args.json {
            writeln!(out, "{f}")
        } else {
            writeln!(out, "{}", text(f))
        };
    }
    let _ = out.flush();
    match stop {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!("sluice decode: {why}");
            ExitCode::from(1)
        }
    }
}

fn read(args: &DecodeArgs) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    match &args.file {
        Some(p) => {
            let f =
                std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            f.take(MAX_INPUT as u64 + 1)
                .read_to_end(&mut raw)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        }
        None => {
            if std::io::stdin().is_terminal() {
                return Err("give a file, or bytes (hex or raw) on stdin".into());
            }
            std::io::stdin()
                .take(MAX_INPUT as u64 + 1)
                .read_to_end(&mut raw)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
        }
    }
    if raw.len() > MAX_INPUT {
        return Err(format!("input larger than {} MiB", MAX_INPUT >> 20));
    }
    let looks_hex = !raw.is_empty()
        && raw
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if args.hex || (!args.raw && looks_hex) {
        let text = String::from_utf8_lossy(&raw);
        return untyped::from_hex(&text)
            .ok_or_else(|| "the input is not hex (an even number of hex digits)".to_owned());
    }
    Ok(raw)
}

struct Decoder<'a> {
    idl: Option<&'a Idl>,
    from_server: bool,
}

impl Decoder<'_> {
    /// Every frame in `input`, and why the listing stopped early (if it did).
    fn frames(&self, input: &[u8]) -> (Vec<Value>, Option<String>) {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            match self.frame(&input[pos..]) {
                Ok((mut v, used)) => {
                    if let Value::Object(m) = &mut v {
                        let mut head = Map::new();
                        head.insert("frame".into(), json!(out.len()));
                        head.insert("offset".into(), json!(pos));
                        head.insert("length".into(), json!(used));
                        head.extend(std::mem::take(m));
                        *m = head;
                    }
                    out.push(v);
                    pos += used;
                }
                Err(why) => {
                    return (
                        out,
                        Some(format!(
                            "at byte {pos} ({} bytes left): {why}",
                            input.len() - pos
                        )),
                    )
                }
            }
        }
        (out, None)
    }

    fn frame(&self, buf: &[u8]) -> Result<(Value, usize), String> {
        if buf.starts_with(b"PRI * HTTP/2.0") {
            return Err("an HTTP/2 (gRPC) connection: sluice decode reads TTHeader, Framed, Buffered and TTStream".into());
        }
        // A lone Kitex protobuf message (no framing) is a message of its own.
        if buf.len() >= 2 && buf[0] == 0x90 && buf[1] == 0x01 {
            let m = self.message(&Bytes::copy_from_slice(buf), Codec::KitexProtobuf)?;
            return Ok((json!({"framing": "none", "message": m}), buf.len()));
        }
        let detected = match sniff_message(buf) {
            Ok(d) => d,
            Err(_) if buf.len() < 8 => {
                return Err(format!("{} bytes are too few for a frame", buf.len()))
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut b = BytesMut::from(buf);
        match detected {
            Detection::Protocol(Message::TTHeader { .. })
            | Detection::Protocol(Message::TTStream) => {
                let dec = sluice_ttheader::Decoder::new(sluice_ttheader::Limits {
                    max_frame_size: MAX_INPUT,
                    ..Default::default()
                });
                let f = dec
                    .decode(&mut b)
                    .map_err(|e| format!("not a TTHeader frame: {e}"))?
                    .ok_or_else(|| "a TTHeader frame cut short".to_owned())?;
                let used = buf.len() - b.len();
                if f.header.is_streaming() {
                    let sf = StreamFrame::from_ttheader(f)
                        .map_err(|e| format!("not a TTStream frame: {e}"))?;
                    return Ok((self.stream_frame(sf), used));
                }
                let mut v = header_json(&f.header);
                v.insert(
                    "framing".into(),
                    json!(if f.inner_framed {
                        "ttheader"
                    } else {
                        "ttheader-unframed"
                    }),
                );
                let codec = if f.payload.first() == Some(&0x90) {
                    Codec::KitexProtobuf
                } else {
                    Codec::Thrift
                };
                v.insert("message".into(), self.message(&f.payload, codec)?);
                Ok((Value::Object(reorder(v)), used))
            }
            Detection::Protocol(Message::Framed { codec }) => {
                let m = FramedCodec::new(MAX_INPUT)
                    .decode(&mut b)
                    .map_err(|e| format!("not a Framed message: {e}"))?
                    .ok_or_else(|| "a Framed message cut short".to_owned())?;
                let used = buf.len() - b.len();
                Ok((
                    json!({"framing": "framed", "message": self.message(&m.message, codec)?}),
                    used,
                ))
            }
            Detection::Protocol(Message::Buffered) => {
                let m = BufferedCodec::new(MAX_INPUT)
                    .decode(&mut b)
                    .map_err(|e| format!("not a Buffered message: {e}"))?
                    .ok_or_else(|| "a Buffered message cut short".to_owned())?;
                let used = buf.len() - b.len();
                Ok((
                    json!({"framing": "buffered", "message": self.message(&m, Codec::Thrift)?}),
                    used,
                ))
            }
            Detection::Protocol(Message::Mesh { .. }) => {
                Err("a mesh header: not shown by sluice decode".into())
            }
            Detection::NotOurs(why) => {
                // Maybe a bare thrift struct (a payload cut out of a message).
                match untyped::thrift_struct(buf) {
                    Ok((v, used)) if used == buf.len() => {
                        Ok((json!({"framing": "none", "struct": v}), used))
                    }
                    _ => Err(why.to_string()),
                }
            }
        }
    }

    /// A thrift or Kitex protobuf message: envelope, then the body as JSON.
    fn message(&self, msg: &Bytes, codec: Codec) -> Result<Value, String> {
        let env = match codec {
            Codec::Thrift => envelope::decode_header(msg),
            Codec::KitexProtobuf => kitex_pb::decode_header(msg),
        }
        .map_err(|e| format!("bad message envelope: {e}"))?;
        let body = &msg[env.body_offset..];
        let mut m = Map::new();
        m.insert(
            "codec".into(),
            json!(match codec {
                Codec::Thrift => "thrift",
                Codec::KitexProtobuf => "kitex-protobuf",
            }),
        );
        m.insert("type".into(), json!(env.msg_type.as_str()));
        m.insert("method".into(), json!(env.name));
        m.insert("seq_id".into(), json!(env.seq_id));
        let reply = !env.msg_type.is_request();
        if env.msg_type == MessageType::Exception {
            let (t, message) = exception_of(codec, body)?;
            m.insert("exception".into(), json!({"type": t, "message": message}));
            return Ok(Value::Object(m));
        }
        let payload = match codec {
            Codec::Thrift => self.thrift_body(env.name, body, reply),
            Codec::KitexProtobuf => self.pb_body(env.name, body, reply),
        };
        m.insert("payload".into(), payload);
        Ok(Value::Object(m))
    }

    fn thrift_body(&self, method: &str, body: &[u8], reply: bool) -> Value {
        if let Some(Idl::Thrift(t)) = self.idl {
            if let Some(f) = t.find_function(method) {
                let r = if reply {
                    t.decode_struct(f.result, body)
                } else {
                    t.decode_args(f, body)
                };
                if let Ok(v) = r {
                    return v;
                }
            }
        }
        untyped_thrift(body)
    }

    fn pb_body(&self, method: &str, body: &[u8], reply: bool) -> Value {
        if let Some(Idl::Proto(p)) = self.idl {
            if let Ok(m) = p.method(None, method) {
                let r = if reply {
                    m.decode_response(body)
                } else {
                    m.decode_request(body)
                };
                if let Ok(v) = r {
                    return v;
                }
            }
        }
        untyped::pb_message(body).unwrap_or_else(|e| undecoded(&e, body))
    }

    fn stream_frame(&self, f: StreamFrame) -> Value {
        let mut v = header_json(&f.header);
        v.insert("framing".into(), json!("ttstream"));
        let method = String::from_utf8_lossy(&f.method).into_owned();
        let mut s = Map::new();
        s.insert("frame_type".into(), json!(f.kind.as_str()));
        s.insert("stream_id".into(), json!(f.stream_id));
        s.insert("method".into(), json!(method));
        if f.payload.starts_with(&[0x80, 0x01]) {
            // Kitex sends a Trailer's or RST's exception as a whole thrift EXCEPTION message.
            match self.message(&f.payload, Codec::Thrift) {
                Ok(m) => {
                    v.insert("message".into(), m);
                }
                Err(e) => {
                    s.insert("payload_error".into(), json!(e));
                }
            }
        } else if !f.payload.is_empty() {
            if f.kind.carries_exception() {
                match exception_of(Codec::Thrift, &f.payload) {
                    Ok((t, message)) => {
                        s.insert("exception".into(), json!({"type": t, "message": message}));
                    }
                    Err(e) => {
                        s.insert("payload_error".into(), json!(e));
                    }
                }
            } else {
                s.insert("payload".into(), self.bare_struct(&method, &f.payload));
            }
        }
        v.insert("stream".into(), Value::Object(s));
        Value::Object(reorder(v))
    }

    /// A TTStream data payload: the method's argument struct (from the client) or its
    /// response struct (from the server), by name with a thrift IDL.
    fn bare_struct(&self, method: &str, body: &[u8]) -> Value {
        if let Some(Idl::Thrift(t)) = self.idl {
            let idx = t.find_function(method).and_then(|f| {
                let from = if self.from_server { f.result } else { f.args };
                t.structs[from]
                    .fields
                    .iter()
                    .find(|x| !self.from_server || x.id == 0)
                    .and_then(|x| match x.ty {
                        sluice_idl::Ty::Struct(s) => Some(s),
                        _ => None,
                    })
            });
            if let Some(Ok(v)) = idx.map(|i| t.decode_struct(i, body)) {
                return v;
            }
        }
        untyped_thrift(body)
    }
}

/// A thrift struct by field id and type, or its bytes with why they are not one.
fn untyped_thrift(body: &[u8]) -> Value {
    untyped::thrift_struct(body)
        .map(|(v, _)| v)
        .unwrap_or_else(|e| undecoded(&e, body))
}

fn undecoded(e: &sluice_idl::Error, body: &[u8]) -> Value {
    json!({"undecoded": e.to_string(), "hex": untyped::to_hex(body)})
}

/// The type and message of an EXCEPTION body: a `TApplicationException` (thrift) or a Kitex
/// `ErrorProto` (protobuf).
pub(crate) fn exception_of(codec: Codec, body: &[u8]) -> Result<(i32, String), String> {
    match codec {
        Codec::Thrift => ApplicationException::decode(body)
            .map(|(e, _)| (e.kind.0, e.message))
            .map_err(|e| format!("not a TApplicationException: {e}")),
        Codec::KitexProtobuf => ErrorProto::decode(body)
            .map(|e| (e.type_id, e.message))
            .map_err(|e| format!("not a Kitex ErrorProto: {e}")),
    }
}

fn header_json(h: &Header) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("seq_id".into(), json!(h.seq_id));
    m.insert("flags".into(), json!(format!("{:#06x}", h.flags)));
    m.insert(
        "protocol_id".into(),
        json!(format!("{:#04x}", h.protocol_id)),
    );
    let mut ints = Map::new();
    for (k, v) in h.int_kvs.iter() {
        let name = int_key::name(k)
            .map(|n| format!("{k} ({n})"))
            .unwrap_or_else(|| k.to_string());
        ints.insert(name, json!(String::from_utf8_lossy(v)));
    }
    m.insert("int_kvs".into(), Value::Object(ints));
    let mut strs = Map::new();
    for (k, v) in h.str_kvs.iter() {
        strs.insert(
            String::from_utf8_lossy(k).into_owned(),
            json!(String::from_utf8_lossy(v)),
        );
    }
    m.insert("str_kvs".into(), Value::Object(strs));
    if let Some(t) = &h.acl_token {
        m.insert("acl_token".into(), json!(String::from_utf8_lossy(t)));
    }
    m
}

/// `framing` first, then the header fields, then the rest.
fn reorder(m: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = m;
    if let Some(f) = rest.remove("framing") {
        out.insert("framing".into(), f);
    }
    out.extend(rest);
    out
}

/// A frame as a few lines of text.
fn text(f: &Value) -> String {
    let mut s = String::new();
    let g = |k: &str| f.get(k).cloned().unwrap_or(Value::Null);
    s.push_str(&format!(
        "frame {} at byte {} ({} bytes): {}",
        g("frame"),
        g("offset"),
        g("length"),
        g("framing").as_str().unwrap_or("?")
    ));
    if f.get("flags").is_some() {
        s.push_str(&format!(
            ", seq {} flags {} protocol {}",
            g("seq_id"),
            g("flags").as_str().unwrap_or(""),
            g("protocol_id").as_str().unwrap_or("")
        ));
    }
    s.push('\n');
    for (what, key) in [("int", "int_kvs"), ("str", "str_kvs")] {
        if let Some(Value::Object(kv)) = f.get(key) {
            for (k, v) in kv {
                s.push_str(&format!("  {what} {k} = {}\n", v));
            }
        }
    }
    // A TTStream frame's or a message's exception and payload, after its own line.
    let body = |s: &mut String, v: &Value| {
        if let Some(e) = v.get("exception") {
            s.push_str(&format!(
                "  exception type {}: {}\n",
                e["type"], e["message"]
            ));
        }
        if let Some(p) = v.get("payload") {
            s.push_str(&format!("  {p}\n"));
        }
    };
    if let Some(st) = f.get("stream") {
        s.push_str(&format!(
            "  ttstream {} stream {} method {}\n",
            st["frame_type"].as_str().unwrap_or("?"),
            st["stream_id"],
            st["method"]
        ));
        body(&mut s, st);
    }
    if let Some(m) = f.get("message") {
        s.push_str(&format!(
            "  {} {} {} seq {}\n",
            m["codec"].as_str().unwrap_or("?"),
            m["type"].as_str().unwrap_or("?"),
            m["method"],
            m["seq_id"]
        ));
        body(&mut s, m);
    }
    if let Some(st) = f.get("struct") {
        s.push_str(&format!("  {st}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder<'static> {
        Decoder {
            idl: None,
            from_server: false,
        }
    }

    #[test]
    fn a_framed_call_shows_its_envelope_and_payload() {
        // Framed thrift CALL "Echo" seq 1, args {1: {1: "hello"}}.
        let msg = untyped::from_hex(
            "00000021 80010001 00000004 4563686f 00000001 0c0001 0b0001 00000005 68656c6c6f 00 00",
        )
        .unwrap();
        let (frames, stop) = decoder().frames(&msg);
        assert_eq!(stop, None);
        assert_eq!(frames.len(), 1);
        let m = &frames[0]["message"];
        assert_eq!(frames[0]["framing"], "framed");
        assert_eq!(m["method"], "Echo");
        assert_eq!(m["type"], "CALL");
        assert_eq!(m["payload"]["1:struct"]["1:string"], "hello");
    }

    #[test]
    fn garbage_stops_the_listing_with_a_reason() {
        let (frames, stop) = decoder().frames(b"GET / HTTP/1.1\r\n\r\n");
        assert!(frames.is_empty());
        assert!(stop.unwrap().contains("HTTP/1"));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decoder().frames(&b);
        }

        #[test]
        fn random_bytes_after_a_ttheader_head_never_panic(
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            let mut v = vec![0, 0, 0, (b.len() + 10) as u8, 0x10, 0, 0, 0, 0, 0, 0, 1, 0, 1];
            v.extend_from_slice(&b);
            let _ = decoder().frames(&v);
        }
    }
}
