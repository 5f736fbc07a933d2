//! `sluice call`: one call (or one stream) to a Kitex-speaking server, JSON in and out, the
//! IDL read at run time.
//!
//! Ping-pong calls are made on a connection of their own with the client crate's sans-IO codec,
//! so `-vv` can show every byte of the request and the reply. Streams go through Sluice's
//! TTStream and gRPC clients.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use sluice_client::codec::{encode_request, ReplyDecoder};
use sluice_client::{Call, Transport};
use sluice_http2::content_type::GrpcCodec;
use sluice_http2::headers::{RPC_PERSIST_PREFIX, RPC_TRANSIT_PREFIX};
use sluice_idl::thrift::{Function, Ty};
use sluice_idl::{Idl, Outcome, ProtoMethod, StreamingMode, ThriftIdl};
use sluice_sniff::Codec;
use sluice_stream::{Incoming, Metadata, StatusCode};
use sluice_thrift::{ExceptionKind, MessageType};
use sluice_ttheader::metainfo::{PERSIST_PREFIX, TRANSIT_PREFIX};
use sluice_ttheader::{int_key, Header};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::human::duration as human;

/// Exit codes, one per class of outcome (documented in README's "Debugging" section).
pub(crate) mod exit {
    /// The call succeeded.
    pub(crate) const OK: u8 = 0;
    /// Bad arguments, IDL or JSON: nothing was sent (clap's own usage errors exit 2 too).
    pub(crate) const USAGE: u8 = 2;
    /// The server could not be reached, the connection broke, or the call timed out.
    pub(crate) const TRANSPORT: u8 = 3;
    /// The server answered with an error: a TApplicationException, a Kitex protobuf error, a
    /// non-OK gRPC status, a TTStream error end, or a non-zero `biz-status`.
    pub(crate) const APPLICATION: u8 = 4;
    /// The method threw one of its declared exceptions (printed as JSON).
    pub(crate) const DECLARED: u8 = 5;
    /// The reply could not be read (not the protocol, or not what the IDL says).
    pub(crate) const PROTOCOL: u8 = 6;
}

/// The arguments of `sluice call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// Server address (host:port).
    pub(crate) address: String,
    /// `Service/Method`, or `Method` when the IDL has one service (proto services by full or
    /// short name).
    pub(crate) method: String,
    /// The IDL: a .thrift or .proto file (includes are looked up beside it and in -I dirs).
    #[arg(long)]
    pub(crate) idl: PathBuf,
    /// More directories to look up includes and imports in.
    #[arg(short = 'I', long = "include")]
    pub(crate) include: Vec<PathBuf>,
    /// ttheader | ttheader-unframed | framed | buffered | ttstream | grpc. Default: ttheader
    /// (Kitex protobuf over TTHeader for a .proto), ttstream for a thrift streaming method,
    /// grpc for a proto streaming one.
    #[arg(long)]
    pub(crate) transport: Option<String>,
    /// The request as JSON (thrift: the arguments by name; proto: the request message), or
    /// @file. Without it the request is read from stdin; client and bidi streams read one
    /// JSON object per line.
    #[arg(short = 'd', long = "data")]
    pub(crate) data: Option<String>,
    /// Transient metainfo key=value (TTHeader/TTStream `RPC_TRANSIT_<key>`, gRPC
    /// `rpc-transit-<key>`); repeatable.
    #[arg(short = 'H', long = "header")]
    pub(crate) headers: Vec<String>,
    /// Persistent metainfo key=value (`RPC_PERSIST_<key>`, `rpc-persist-<key>`); repeatable.
    #[arg(long)]
    pub(crate) persistent: Vec<String>,
    /// A header sent exactly as given, key=value (TTHeader string key, TTStream header, gRPC
    /// metadata); repeatable.
    #[arg(long = "raw-header")]
    pub(crate) raw_headers: Vec<String>,
    /// The call's deadline: 500ms, 3s, 1m.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: String,
    /// The IDL service name sent as TTHeader `isn` (and TTStream `isn`, gRPC `:authority`).
    /// Default: the service's name in the IDL.
    #[arg(long)]
    pub(crate) service_name: Option<String>,
    /// Compact JSON instead of pretty.
    #[arg(long)]
    pub(crate) compact: bool,
    /// -v prints request and response headers and metainfo; -vv also the frames in hex.
    #[arg(short, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// Why a call ended unsuccessfully: the class (exit code) and what to print.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::new(exit::USAGE, e.to_string())
}

/// What the IDL says about the method.
enum Method<'a> {
    Thrift(&'a ThriftIdl, &'a Function, String),
    Proto(ProtoMethod),
}

impl Method<'_> {
    fn streaming(&self) -> StreamingMode {
        match self {
            Method::Thrift(_, f, _) => f.streaming,
            Method::Proto(m) => m.streaming(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Method::Thrift(_, f, _) => &f.name,
            Method::Proto(m) => m.name(),
        }
    }

    fn service_name(&self) -> &str {
        match self {
            Method::Thrift(_, _, s) => s.rsplit('.').next().unwrap_or(s),
            Method::Proto(m) => m.service_name(),
        }
    }
}

/// Runs `sluice call`.
pub(crate) async fn run(args: CallArgs) -> ExitCode {
    match call(&args).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("sluice call: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn call(args: &CallArgs) -> Result<(), Failure> {
    let timeout = parse_timeout(&args.timeout).map_err(usage)?;
    let (service, method) = match args.method.rsplit_once('/') {
        Some((s, m)) => (Some(s).filter(|s| !s.is_empty()), m),
        None => (None, args.method.as_str()),
    };
    let idl = Idl::load(&args.idl, &args.include).map_err(usage)?;
    let m = match &idl {
        Idl::Thrift(t) => {
            let s = t.service(service).map_err(usage)?;
            let f = t.function(Some(&s.name), method).map_err(usage)?;
            Method::Thrift(t, f, s.name.clone())
        }
        Idl::Proto(p) => Method::Proto(p.method(service, method).map_err(usage)?),
    };
    let streaming = m.streaming();
    let transport = match args.transport.as_deref() {
        Some(t) => t.to_owned(),
        None => match (&m, streaming) {
            (_, StreamingMode::Unary) => "ttheader".into(),
            (Method::Thrift(..), _) => "ttstream".into(),
            (Method::Proto(_), _) => "grpc".into(),
        },
    };
    let addr = resolve(&args.address).await?;
    let meta = Meta::parse(args)?;
    let deadline = Instant::now() + timeout;
    let out = Output {
        compact: args.compact,
        verbose: args.verbose,
    };
    let isn = args
        .service_name
        .clone()
        .unwrap_or_else(|| m.service_name().to_owned());
    match transport.as_str() {
        "ttstream" | "grpc" => {
            if transport == "ttstream" && matches!(m, Method::Proto(_)) {
                return Err(usage(
                    "TTStream carries thrift: use --transport grpc for a .proto method",
                ));
            }
            stream(args, &m, &transport, addr, &meta, &isn, deadline, out).await
        }
        t => {
            let t: Transport = t
                .parse()
                .map_err(|e| usage(format!("{e}; streams use ttstream or grpc")))?;
            if streaming != StreamingMode::Unary {
                return Err(usage(format!(
                    "{} is a streaming method ({streaming:?}): use --transport ttstream or grpc",
                    m.name()
                )));
            }
            let json = read_one(args.data.as_deref())?;
            pingpong(&m, t, addr, &json, &meta, &isn, deadline, out).await
        }
    }
}

/// Metainfo and headers to send, as the user gave them.
struct Meta {
    transient: Vec<(String, String)>,
    persistent: Vec<(String, String)>,
    raw: Vec<(String, String)>,
}

impl Meta {
    fn parse(args: &CallArgs) -> Result<Self, Failure> {
        let pairs = |v: &[String], flag: &str| -> Result<Vec<(String, String)>, Failure> {
            v.iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| usage(format!("{flag} {kv:?}: expected key=value")))
                })
                .collect()
        };
        Ok(Self {
            transient: pairs(&args.headers, "-H")?,
            persistent: pairs(&args.persistent, "--persistent")?,
            raw: pairs(&args.raw_headers, "--raw-header")?,
        })
    }

    /// As TTHeader string keys or TTStream headers.
    fn kitex(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for (k, val) in &self.persistent {
            v.push((format!("{PERSIST_PREFIX}{k}"), val.clone()));
        }
        for (k, val) in &self.transient {
            v.push((format!("{TRANSIT_PREFIX}{k}"), val.clone()));
        }
        v.extend(self.raw.iter().cloned());
        v
    }

    /// As gRPC metadata (Kitex's mapping: lower case, `_` as `-`).
    fn grpc(&self) -> Vec<(String, String)> {
        let key = |k: &str| k.to_ascii_lowercase().replace('_', "-");
        let mut v = Vec::new();
        for (k, val) in &self.persistent {
            v.push((format!("{RPC_PERSIST_PREFIX}{}", key(k)), val.clone()));
        }
        for (k, val) in &self.transient {
            v.push((format!("{RPC_TRANSIT_PREFIX}{}", key(k)), val.clone()));
        }
        v.extend(self.raw.iter().cloned());
        v
    }
}

#[derive(Clone, Copy)]
struct Output {
    compact: bool,
    verbose: u8,
}

impl Output {
    fn json(&self, v: &Value) {
        let s = if self.compact {
            v.to_string()
        } else {
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    fn line(&self, v: &Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    fn info(&self, level: u8, s: impl AsRef<str>) {
        if self.verbose >= level {
            eprintln!("{}", s.as_ref());
        }
    }

    fn hex(&self, dir: &str, what: &str, b: &[u8]) {
        if self.verbose >= 2 {
            eprintln!("{dir} {what} ({} bytes)", b.len());
            for chunk in b.chunks(16) {
                let hex: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
                let text: String = chunk
                    .iter()
                    .map(|&c| {
                        if (0x20..0x7f).contains(&c) {
                            c as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                eprintln!("{dir}   {:<48} {text}", hex.join(" "));
            }
        }
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, Failure> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| usage(format!("cannot resolve {address:?} (expected host:port)")))
}

/// Parses `--timeout`: `500ms`, `3s`, `1m`, `1m 30s`; more than nothing, less than a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("--timeout {s:?}: {e} (expected e.g. 500ms, 3s, 1m)"))?;
    if d.is_zero() || d >= Duration::from_secs(86_400) {
        return Err(format!(
            "--timeout {s:?}: out of range (more than 0, less than a day)"
        ));
    }
    Ok(d)
}

/// The request text: `-d`, `-d @file`, or stdin (`{}` when stdin is a terminal).
fn read_input(data: Option<&str>) -> Result<String, Failure> {
    match data {
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {path}: {e}")))
            }
            None => Ok(d.to_owned()),
        },
        None if std::io::stdin().is_terminal() => Ok("{}".to_owned()),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
            Ok(s)
        }
    }
}

fn read_one(data: Option<&str>) -> Result<String, Failure> {
    let s = read_input(data)?;
    Ok(if s.trim().is_empty() { "{}".into() } else { s })
}

fn parse_json(text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| usage(format!("invalid JSON: {e}")))
}

/// Encodes a unary request body (thrift args struct or protobuf message).
fn encode_unary(m: &Method<'_>, json: &str) -> Result<Bytes, Failure> {
    match m {
        Method::Thrift(t, f, _) => t
            .encode_args(f, &parse_json(json)?)
            .map(BytesMut::freeze)
            .map_err(usage),
        Method::Proto(p) => p.encode_request(json).map(Bytes::from).map_err(usage),
    }
}

#[allow(clippy::too_many_arguments)]
async fn pingpong(
    m: &Method<'_>,
    transport: Transport,
    addr: SocketAddr,
    json: &str,
    meta: &Meta,
    isn: &str,
    deadline: Instant,
    out: Output,
) -> Result<(), Failure> {
    let codec = match m {
        Method::Thrift(..) => Codec::Thrift,
        Method::Proto(_) => Codec::KitexProtobuf,
    };
    if transport == Transport::Buffered && codec == Codec::KitexProtobuf {
        return Err(usage(
            "Kitex protobuf has no Buffered form: use ttheader or framed",
        ));
    }
    let oneway = matches!(m, Method::Thrift(_, f, _) if f.oneway);
    let args = encode_unary(m, json)?;
    let mut header = Header::default();
    if transport.is_ttheader() {
        header.str_kvs.insert("isn", isn.to_owned());
        for (k, v) in meta.kitex() {
            header.str_kvs.insert(k, v);
        }
    } else if !meta.kitex().is_empty() {
        out.info(
            0,
            format!(
                "sluice call: note: {} carries no headers; -H/--persistent/--raw-header are not sent",
                transport.as_str()
            ),
        );
    }
    let mut call = Call {
        method: m.name().to_owned(),
        msg_type: if oneway {
            MessageType::Oneway
        } else {
            MessageType::Call
        },
        codec,
        args,
        header,
        deadline: Some(deadline),
    };
    let seq_id = 1;
    let head = encode_request(&mut call, transport, seq_id, false)
        .map_err(|e| usage(format!("cannot encode the request header: {e}")))?;
    let started = Instant::now();
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut conn = match tokio::time::timeout(left(), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(Failure::new(
                exit::TRANSPORT,
                format!("cannot connect to {addr}: {e}"),
            ))
        }
        Err(_) => {
            return Err(Failure::new(
                exit::TRANSPORT,
                format!("connecting to {addr} timed out"),
            ))
        }
    };
    let _ = conn.set_nodelay(true);
    out.info(
        1,
        format!(
            "* connected to {addr} in {} ({}, {})",
            human(started.elapsed()),
            transport.as_str(),
            if codec == Codec::Thrift {
                "thrift binary"
            } else {
                "Kitex protobuf"
            }
        ),
    );
    if transport.is_ttheader() {
        print_header(&out, ">", &call.header);
    }
    let mut frame = BytesMut::with_capacity(head.len() + call.args.len());
    frame.extend_from_slice(&head);
    frame.extend_from_slice(&call.args);
    out.hex(">", "request frame", &frame);
    let io = async {
        conn.write_all(&frame).await?;
        conn.flush().await?;
        if oneway {
            return Ok(None);
        }
        let dec = ReplyDecoder::new(64 << 20);
        let mut buf = BytesMut::with_capacity(4096);
        // Every byte read, for -vv only: the decoder consumes `buf`.
        let mut seen = BytesMut::new();
        loop {
            match dec.decode(&mut buf, transport) {
                Ok(Some(r)) => {
                    let used = seen.len().saturating_sub(buf.len());
                    return Ok(Some((r, seen.freeze().slice(..used))));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the reply is not a valid {} frame: {e}", transport.as_str()),
                    ))
                }
            }
            let n = conn.read_buf(&mut buf).await?;
            if out.verbose >= 2 {
                seen.extend_from_slice(&buf[buf.len() - n..]);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    if buf.is_empty() {
                        "the server closed the connection without a reply".to_owned()
                    } else {
                        format!(
                            "the server closed the connection after {} bytes of a reply",
                            buf.len()
                        )
                    },
                ));
            }
        }
    };
    let (raw, frame) = match tokio::time::timeout(left(), io).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            out.info(1, "* oneway: no reply expected");
            return Ok(());
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Failure::new(exit::PROTOCOL, e.to_string()))
        }
        Ok(Err(e)) => return Err(Failure::new(exit::TRANSPORT, format!("{addr}: {e}"))),
        Err(_) => {
            return Err(Failure::new(
                exit::TRANSPORT,
                format!("no reply from {addr} within the timeout"),
            ))
        }
    };
    out.hex("<", "reply frame", &frame);
    out.info(
        1,
        format!(
            "* {} seq {} in {}",
            raw.reply.msg_type.as_str(),
            raw.envelope_seq,
            human(started.elapsed())
        ),
    );
    let reply = raw.reply;
    if transport.is_ttheader() {
        print_header(&out, "<", &reply.header);
    }
    if raw.envelope_seq != seq_id {
        return Err(Failure::new(
            exit::PROTOCOL,
            format!("the reply's seq id is {}, not {seq_id}", raw.envelope_seq),
        ));
    }
    if reply.msg_type == MessageType::Exception {
        let (kind, message) = crate::decode::exception_of(codec, &reply.body)
            .map_err(|e| Failure::new(exit::PROTOCOL, format!("an EXCEPTION whose body is {e}")))?;
        return Err(Failure::new(
            exit::APPLICATION,
            format!(
                "the server answered with an exception: type {kind} ({}): {message}",
                exception_name(kind)
            ),
        ));
    }
    let biz = biz_error(
        reply.header.str_kvs.get_str("biz-status"),
        reply.header.str_kvs.get_str("biz-message"),
    );
    let shown = show_reply(m, &reply.body, out)?;
    match (biz, shown) {
        (Some(b), _) => Err(Failure::new(exit::APPLICATION, b)),
        (None, Some(declared)) => Err(Failure::new(exit::DECLARED, declared)),
        (None, None) => Ok(()),
    }
}

/// Prints a unary reply body; `Some(message)` when it held a declared exception.
fn show_reply(m: &Method<'_>, body: &[u8], out: Output) -> Result<Option<String>, Failure> {
    let bad = |e: sluice_idl::Error| {
        Failure::new(
            exit::PROTOCOL,
            format!("the reply does not match the IDL: {e}"),
        )
    };
    match m {
        Method::Thrift(t, f, _) => {
            let (v, declared) = outcome(t.decode_result(f, body).map_err(bad)?);
            out.json(&v);
            Ok(declared)
        }
        Method::Proto(p) => {
            out.json(&p.decode_response(body).map_err(bad)?);
            Ok(None)
        }
    }
}

/// A thrift result as printed: the success value, or `{"<field>": exception}` with the message
/// that says which declared exception it is.
fn outcome(o: Outcome) -> (Value, Option<String>) {
    match o {
        Outcome::Success(v) => (v, None),
        Outcome::Exception {
            field,
            type_name,
            value,
        } => {
            let message = format!("the method threw its declared exception {field} ({type_name})");
            let mut obj = serde_json::Map::new();
            obj.insert(field, value);
            (Value::Object(obj), Some(message))
        }
    }
}

fn biz_error(status: Option<&str>, message: Option<&str>) -> Option<String> {
    let s = status?;
    (s != "0").then(|| {
        format!(
            "biz error: biz-status {s}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        )
    })
}

fn print_header(out: &Output, dir: &str, h: &Header) {
    if out.verbose == 0 {
        return;
    }
    for (k, v) in h.int_kvs.iter() {
        let name = int_key::name(k).unwrap_or("?");
        eprintln!("{dir} {k} ({name}): {}", printable(v));
    }
    for (k, v) in h.str_kvs.iter() {
        eprintln!("{dir} {}: {}", printable(k), printable(v));
    }
}

fn print_metadata(out: &Output, dir: &str, what: &str, md: &Metadata) {
    if out.verbose == 0 {
        return;
    }
    eprintln!("{dir} ({what})");
    for (k, v) in md.iter() {
        eprintln!("{dir} {}: {}", printable(k), printable(v));
    }
}

/// A header key or value as text, control characters and invalid UTF-8 escaped (volo, for
/// one, writes the message type as the raw byte 0x02).
fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.into_owned()
    }
}

/// The name of a TApplicationException / Kitex error type id.
fn exception_name(kind: i32) -> &'static str {
    ExceptionKind(kind).name().unwrap_or("APPLICATION")
}

/// How a stream's messages are encoded and shown.
enum StreamBody<'a> {
    /// Thrift over TTStream or streaming gRPC: the bare argument / response structs.
    ThriftBare {
        idl: &'a ThriftIdl,
        arg: usize,
        arg_name: String,
        resp: Option<usize>,
    },
    /// Thrift unary over gRPC: args and result structs.
    ThriftStructs(&'a ThriftIdl, &'a Function),
    /// Protobuf messages.
    Proto(&'a ProtoMethod),
}

impl StreamBody<'_> {
    fn encode(&self, json: &str) -> Result<Bytes, Failure> {
        match self {
            StreamBody::ThriftBare {
                idl, arg, arg_name, ..
            } => {
                let v = parse_json(json)?;
                // `{"req": {...}}` (the argument by name) or the bare struct `{...}`.
                let inner = match &v {
                    Value::Object(o) if o.len() == 1 && o.contains_key(arg_name) => &o[arg_name],
                    other => other,
                };
                idl.encode_struct(*arg, inner)
                    .map(BytesMut::freeze)
                    .map_err(usage)
            }
            StreamBody::ThriftStructs(idl, f) => idl
                .encode_args(f, &parse_json(json)?)
                .map(BytesMut::freeze)
                .map_err(usage),
            StreamBody::Proto(p) => p.encode_request(json).map(Bytes::from).map_err(usage),
        }
    }

    /// The JSON of a response message; `Err` for one that does not decode.
    fn decode(&self, b: &[u8]) -> Result<(Value, Option<String>), sluice_idl::Error> {
        match self {
            StreamBody::ThriftBare { idl, resp, .. } => match resp {
                Some(r) => idl.decode_struct(*r, b).map(|v| (v, None)),
                None => sluice_idl::untyped::thrift_struct(b).map(|(v, _)| (v, None)),
            },
            StreamBody::ThriftStructs(idl, f) => idl.decode_result(f, b).map(outcome),
            StreamBody::Proto(p) => p.decode_response(b).map(|v| (v, None)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    args: &CallArgs,
    m: &Method<'_>,
    transport: &str,
    addr: SocketAddr,
    meta: &Meta,
    isn: &str,
    deadline: Instant,
    out: Output,
) -> Result<(), Failure> {
    let streaming = m.streaming();
    let body = match m {
        Method::Thrift(idl, f, _) => {
            if transport == "grpc" && streaming == StreamingMode::Unary {
                StreamBody::ThriftStructs(idl, f)
            } else {
                let a = &idl.structs[f.args];
                let (arg, arg_name) = match a.fields.as_slice() {
                    [one] => match &one.ty {
                        Ty::Struct(s) => (*s, one.name.clone()),
                        _ => {
                            return Err(usage(format!(
                                "{}: a streaming method's argument must be a struct",
                                f.name
                            )))
                        }
                    },
                    _ => {
                        return Err(usage(format!(
                            "{}: a streaming method takes exactly one argument",
                            f.name
                        )))
                    }
                };
                let resp = idl.structs[f.result]
                    .fields
                    .iter()
                    .find(|x| x.id == 0)
                    .and_then(|x| match x.ty {
                        Ty::Struct(s) => Some(s),
                        _ => None,
                    });
                StreamBody::ThriftBare {
                    idl,
                    arg,
                    arg_name,
                    resp,
                }
            }
        }
        Method::Proto(p) => StreamBody::Proto(p),
    };
    let started = Instant::now();
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || Failure::new(exit::TRANSPORT, format!("{addr}: the call timed out"));
    let mut md = Metadata::new();
    // The client that opens the stream lives as long as the call: it owns the connection.
    let tt_client;
    let grpc_client;
    let stream = if transport == "ttstream" {
        for (k, v) in meta.kitex() {
            md.push(k, v);
        }
        print_metadata(&out, ">", "stream headers", &md);
        tt_client = sluice_client::TTStreamClient::new(
            sluice_client::ClientConfig::new(
                "call",
                vec![sluice_client::Endpoint { addr, weight: 1 }],
            )
            .with_connect_timeout(left()),
        );
        let open = tt_client.open(sluice_client::OpenStream {
            method: m.name().to_owned(),
            service: isn.to_owned(),
            hash: None,
            headers: md,
        });
        match tokio::time::timeout(left(), open).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::new(exit::TRANSPORT, e.to_string())),
            Err(_) => return Err(timed_out()),
        }
    } else {
        for (k, v) in meta.grpc() {
            md.push(k, v);
        }
        let (path, content_type) = match m {
            Method::Thrift(..) => (
                format!("/{}/{}", m.service_name(), m.name()),
                GrpcCodec::Thrift.content_type(),
            ),
            Method::Proto(p) => (
                format!("/{}/{}", p.service_full_name(), p.name()),
                GrpcCodec::Protobuf.content_type(),
            ),
        };
        out.info(
            1,
            format!("> :path {path}\n> content-type: {content_type}\n> :authority {isn}"),
        );
        print_metadata(&out, ">", "metadata", &md);
        grpc_client = sluice_http2::GrpcClient::new(
            sluice_http2::GrpcClientConfig::new(vec![addr]).with_connect_timeout(left()),
        );
        let req = sluice_http2::OpenRequest {
            path,
            content_type: content_type.into(),
            authority: isn.to_owned(),
            headers: md,
            deadline: Some(deadline),
        };
        let open = grpc_client.open(&req);
        match tokio::time::timeout(left(), open).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::new(exit::TRANSPORT, e.to_string())),
            Err(_) => return Err(timed_out()),
        }
    };
    out.info(
        1,
        format!("* stream open to {addr} in {}", human(started.elapsed())),
    );
    let (send, mut recv) = stream.split();
    // Requests: one for unary and server streams, one per JSON line for client and bidi.
    let many = matches!(streaming, StreamingMode::Client | StreamingMode::Bidi);
    let sender = async {
        let send_one = |text: String, n: usize| {
            let send = send.clone();
            let body = &body;
            async move {
                let msg = body
                    .encode(&text)
                    .map_err(|f| Failure::new(f.code, format!("request {n}: {}", f.message)))?;
                // A stream the server already ended takes no more: the receiver reports how
                // it ended, so sending just stops.
                Ok::<bool, Failure>(send.send(msg).await.is_ok())
            }
        };
        if !many {
            if !send_one(read_one(args.data.as_deref())?, 1).await? {
                return Ok(());
            }
        } else if let Some(d) = args.data.as_deref() {
            let text = read_input(Some(d))?;
            let mut n = 0;
            for v in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
                n += 1;
                let v = v.map_err(|e| usage(format!("request {n}: invalid JSON: {e}")))?;
                if !send_one(v.to_string(), n).await? {
                    return Ok(());
                }
            }
        } else {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut n = 0;
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| usage(format!("cannot read stdin: {e}")))?
            {
                if line.trim().is_empty() {
                    continue;
                }
                n += 1;
                if !send_one(line, n).await? {
                    return Ok(());
                }
            }
        }
        let _ = send.close_send().await;
        Ok::<(), Failure>(())
    };
    let receiver = async {
        let mut declared = None;
        loop {
            match recv.recv().await {
                Incoming::Headers(h) => print_metadata(&out, "<", "response headers", &h),
                Incoming::Message(b) => match body.decode(&b) {
                    Ok((v, d)) => {
                        if streaming == StreamingMode::Unary || streaming == StreamingMode::Client {
                            out.json(&v);
                        } else {
                            out.line(&v);
                        }
                        declared = declared.or(d);
                    }
                    Err(e) => {
                        return Err(Failure::new(
                            exit::PROTOCOL,
                            format!("a response message does not match the IDL: {e}"),
                        ))
                    }
                },
                Incoming::End(end) => {
                    print_metadata(&out, "<", "trailers", &end.trailers);
                    out.info(
                        1,
                        format!("* stream ended after {}", human(started.elapsed())),
                    );
                    if let Some(e) = end.error {
                        let what = match e.code {
                            StatusCode::Grpc(c) => {
                                format!("gRPC status {c} ({}): {}", grpc_code_name(c), e.message)
                            }
                            StatusCode::TTStream(c) => format!(
                                "the stream ended with error type {c} ({}): {}",
                                exception_name(c),
                                e.message
                            ),
                        };
                        return Err(Failure::new(exit::APPLICATION, what));
                    }
                    if let Some(b) = biz_error(
                        end.trailers.get_str("biz-status"),
                        end.trailers.get_str("biz-message"),
                    ) {
                        return Err(Failure::new(exit::APPLICATION, b));
                    }
                    return match declared {
                        Some(d) => Err(Failure::new(exit::DECLARED, d)),
                        None => Ok(()),
                    };
                }
                Incoming::Reset(r) => {
                    return Err(Failure::new(
                        exit::TRANSPORT,
                        format!("the stream was reset (code {}): {}", r.code, r.message),
                    ))
                }
            }
        }
    };
    let both = async {
        // The receiver decides the outcome; a sender failure (bad JSON on line n) ends the
        // call at once.
        let sender = async {
            if let Err(f) = sender.await {
                send.reset(sluice_stream::Reset {
                    code: sluice_stream::ResetCode::Gone,
                    message: "sluice call: bad request".into(),
                    cancel_path: None,
                })
                .await;
                return f;
            }
            std::future::pending().await
        };
        tokio::select! {
            f = sender => Err(f),
            r = receiver => r,
        }
    };
    match tokio::time::timeout(left(), both).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    }
}

/// The name of a gRPC status code.
fn grpc_code_name(c: u32) -> &'static str {
    sluice_http2::Code::new(c).name().unwrap_or("?")
}
