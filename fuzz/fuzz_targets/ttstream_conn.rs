//! The TTStream driver behind the real sniffer, fed structure-aware input: the fuzzer chooses
//! a sequence of frames (kind, stream id, method, keys, payload), raw byte runs, repeats and
//! pauses of virtual time, and the client writes them after one valid Header that opens
//! stream 1 (so the connection is sniffed as TTStream). The echo streaming handler serves
//! every stream with small limits (8 streams, 64 KiB frames). The connection must end, without
//! a panic, once the client has closed.
#![no_main]
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{run_connection, serve_with_server, Step};
use sluice_server::Cluster;
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::str_key;
use sluice_ttstream::{FrameType, StreamFrame};

/// Bytes one input may write in all (repeats included), so every run stays quick. (The reset
/// budget's burst of 1000 is out of reach at this size; `crates/server/tests/hardening.rs`
/// covers it.)
const MAX_BYTES: usize = 64 * 1024;

/// Virtual time one input may wait in all: past the idle and frame timeouts (10 s and 5 s).
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Arbitrary, Debug)]
enum Op {
    /// One frame.
    Frame(FrameOp),
    /// The same frames several times (stream floods, reset floods, the stream limit):
    /// `count % 8` times for a `count` below 224, else `(count - 223) * 16` times (up to 512),
    /// so that most inputs stay small (and quick) and a flood is still one byte away.
    Repeat { count: u8, frames: Vec<FrameOp> },
    /// Bytes as they are: a broken or partial frame, or anything else.
    Raw(Vec<u8>),
    /// Virtual time passes before the next bytes, in tenths of a second (frame and idle
    /// timeouts, the reset budget's refill).
    Wait(u8),
}

#[derive(Arbitrary, Debug)]
struct FrameOp {
    kind: Kind,
    stream: u8,
    method: u8,
    keys: Vec<(KeyName, Vec<u8>)>,
    payload: Payload,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Meta,
    Header,
    Data,
    Trailer,
    Rst,
}

#[derive(Arbitrary, Debug)]
enum KeyName {
    Service,
    CancelPath,
    BizStatus,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Bytes(Vec<u8>),
    /// A thrift EXCEPTION message (what Rst and Trailer frames carry).
    Exception {
        kind: i32,
        message: String,
    },
}

/// The methods the echo handler tells apart, and two it does not know.
const METHODS: [&str; 6] = [
    "EchoBidi",
    "EchoClient",
    "EchoServer",
    "EchoBidiFail",
    "Echo",
    "",
];

impl FrameOp {
    fn encode(&self, out: &mut BytesMut) {
        let kind = match self.kind {
            Kind::Meta => FrameType::Meta,
            Kind::Header => FrameType::Header,
            Kind::Data => FrameType::Data,
            Kind::Trailer => FrameType::Trailer,
            Kind::Rst => FrameType::Rst,
        };
        // Mostly a few small ids, so frames meet open streams; now and then an id a server
        // must refuse or treat with care.
        let id = match self.stream {
            0 => 0,
            1 => -1,
            2 => i32::MAX,
            3 => i32::MIN,
            n => i32::from(n % 8) + 1,
        };
        let method = METHODS[usize::from(self.method) % METHODS.len()];
        let mut f = StreamFrame::new(kind, id, Bytes::from_static(method.as_bytes()));
        for (name, value) in &self.keys {
            let key: Bytes = match name {
                KeyName::Service => Bytes::from_static(str_key::IDL_SERVICE_NAME.as_bytes()),
                KeyName::CancelPath => Bytes::from_static(str_key::TTSTREAM_CANCEL_PATH.as_bytes()),
                KeyName::BizStatus => Bytes::from_static(str_key::BIZ_STATUS.as_bytes()),
                KeyName::Other(n) => Bytes::from(format!("k{n}")),
            };
            f.header.str_kvs.insert(key, Bytes::copy_from_slice(value));
        }
        f.payload = match &self.payload {
            Payload::Bytes(b) => Bytes::copy_from_slice(b),
            Payload::Exception { kind, message } => sluice_ttstream::exception_payload(
                method,
                id,
                &ApplicationException::new(ExceptionKind(*kind), message.clone()),
            ),
        };
        // A frame the encoder refuses (too large a header) is left out.
        let mark = out.len();
        if f.encode(out).is_err() {
            out.truncate(mark);
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut steps = Vec::new();
    let mut bytes = BytesMut::new();
    StreamFrame::client_header(1, "EchoBidi", "EchoService", Vec::<(Bytes, Bytes)>::new())
        .encode(&mut bytes)
        .expect("a valid Header");
    let mut waited = Duration::ZERO;
    // Bytes already handed to earlier steps.
    let mut written = 0;
    'ops: for op in &ops {
        match op {
            Op::Frame(f) => f.encode(&mut bytes),
            Op::Repeat { count, frames } => {
                let times = match *count {
                    c @ 0..=223 => usize::from(c % 8),
                    c => (usize::from(c) - 223) * 16,
                };
                for _ in 0..times {
                    for f in frames {
                        f.encode(&mut bytes);
                    }
                    if written + bytes.len() > MAX_BYTES || frames.is_empty() {
                        break;
                    }
                }
            }
            Op::Raw(b) => bytes.extend_from_slice(b),
            Op::Wait(tenths) => {
                let d = Duration::from_millis(u64::from(*tenths) * 100);
                if waited + d <= MAX_WAIT {
                    waited += d;
                    written += bytes.len();
                    steps.push(Step::Write(bytes.split().freeze()));
                    steps.push(Step::Wait(d));
                }
            }
        }
        if written + bytes.len() > MAX_BYTES {
            break 'ops;
        }
    }
    steps.push(Step::Write(bytes.freeze()));
    run_connection(steps, serve_with_server(Cluster::TTStream));
});
