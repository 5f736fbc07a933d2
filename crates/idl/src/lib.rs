//! Runtime IDL for Sluice's tools and payload routing.
//!
//! Forwarding never needs an IDL: payloads cross the proxy as bytes. Three things do want one,
//! and they load it at run time instead of generating code:
//!
//! * `sluice call` encodes JSON arguments to a thrift args struct or a protobuf message and
//!   decodes the reply back to JSON ([`ThriftIdl`], [`ProtoIdl`]);
//! * `sluice decode` shows payloads as JSON, by name with an IDL or by field id and type
//!   without one ([`untyped`]);
//! * a route's `field` / `equals` compiles a path of field names into field ids once, so each
//!   request reads that one field and skips the rest ([`FieldMatch`]).
//!
//! Thrift files are parsed with `pilota-thrift-parser`; `.proto` files are compiled with
//! `protox` and their messages handled with `prost-reflect`. Every read of payload bytes is
//! bounded: lengths against the buffer, nesting at [`MAX_DEPTH`] levels.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

mod error;
mod names;
pub mod proto;
pub mod thrift;
pub mod untyped;

pub use error::Error;
pub use proto::{PbLeaf, ProtoIdl, ProtoMethod};
pub use thrift::{Outcome, ThriftIdl, Ty};

use sluice_thrift::field::{pb_field, thrift_field, Scalar};

/// Nesting limit for reading payloads, as Kitex's skip decoder has.
pub const MAX_DEPTH: usize = sluice_thrift::DEFAULT_MAX_DEPTH;

/// A method's streaming mode: the thrift `streaming.mode` annotation, or `stream` in proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamingMode {
    /// One request, one response.
    Unary,
    /// Many requests, one response.
    Client,
    /// One request, many responses.
    Server,
    /// Many of each.
    Bidi,
}

/// A thrift or protobuf IDL, chosen by the file's extension.
#[derive(Debug, Clone)]
pub enum Idl {
    /// A `.thrift` file and its includes.
    Thrift(ThriftIdl),
    /// A `.proto` file and its imports.
    Proto(ProtoIdl),
}

impl Idl {
    /// Loads `path` (`.thrift` or `.proto`), resolving includes beside each file and in
    /// `include_dirs`.
    pub fn load(path: &Path, include_dirs: &[PathBuf]) -> Result<Self, Error> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("thrift") => ThriftIdl::load(path, include_dirs).map(Idl::Thrift),
            Some("proto") => ProtoIdl::load(path, include_dirs).map(Idl::Proto),
            _ => Err(Error::UnknownKind(path.to_owned())),
        }
    }
}

/// A route's payload condition: the field at a path of names equals a value.
///
/// Built once from the IDL (names become field ids, `equals` becomes the value's wire form);
/// [`matches`](Self::matches) then reads only that field of each request.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMatch {
    path: Steps,
    expected: Expected,
    streaming: StreamingMode,
}

#[derive(Debug, Clone, PartialEq)]
enum Steps {
    Thrift(Vec<(i16, u8)>),
    Pb(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Bytes(Vec<u8>),
    Int(i64),
    Double(f64),
}

impl FieldMatch {
    /// The condition "`path` in the arguments of `service`.`method` equals `equals`".
    ///
    /// For thrift, `path` starts at an argument name (`req.tenant`); for protobuf at a field
    /// of the request message (`tenant`, `header.tenant`). `equals` is read as the leaf's
    /// type: a string as is, numbers in decimal, `true` / `false`, an enum value by name or
    /// number.
    pub fn new(
        idl: &Idl,
        service: Option<&str>,
        method: &str,
        path: &str,
        equals: &str,
    ) -> Result<Self, Error> {
        let bad = |what: &str| Error::FieldPath {
            path: path.to_owned(),
            reason: format!("equals = {equals:?} is not {what}"),
        };
        let int = |what: &str| equals.trim().parse::<i64>().map_err(|_| bad(what));
        let boolean = || match equals {
            "true" => Ok(1),
            "false" => Ok(0),
            _ => Err(bad("true or false")),
        };
        match idl {
            Idl::Thrift(t) => {
                let f = t.function(service, method)?;
                let (steps, leaf) = t.field_path(f, path)?;
                let expected = match leaf {
                    Ty::String | Ty::Binary => Expected::Bytes(equals.as_bytes().to_vec()),
                    Ty::Bool => Expected::Int(boolean()?),
                    Ty::Byte | Ty::I16 | Ty::I32 | Ty::I64 => Expected::Int(int("an integer")?),
                    Ty::Double => {
                        Expected::Double(equals.trim().parse().map_err(|_| bad("a number"))?)
                    }
                    Ty::Enum(e) => {
                        Expected::Int(match t.enums[e].values.iter().find(|(n, _)| n == equals) {
                            Some((_, n)) => *n as i64,
                            None => int("a value of the enum")?,
                        })
                    }
                    Ty::List(_) | Ty::Set(_) | Ty::Map(..) | Ty::Struct(_) => {
                        return Err(bad("a scalar"))
                    }
                };
                Ok(Self {
                    path: Steps::Thrift(steps),
                    expected,
                    streaming: f.streaming,
                })
            }
            Idl::Proto(p) => {
                let m = p.method(service, method)?;
                let (steps, leaf) = m.field_path(path)?;
                let expected = match leaf {
                    PbLeaf::Bytes => Expected::Bytes(equals.as_bytes().to_vec()),
                    PbLeaf::Bool => Expected::Int(boolean()?),
                    PbLeaf::Varint => Expected::Int(match m.enum_value(path, equals) {
                        Some(n) => n as i64,
                        None => int("an integer or a value of the enum")?,
                    }),
                    PbLeaf::ZigZag => {
                        let n = int("an integer")?;
                        Expected::Int((n << 1) ^ (n >> 63))
                    }
                    PbLeaf::Fixed32 => {
                        let n = int("an integer")?;
                        Expected::Int(if n < 0 { n as i32 as u32 as i64 } else { n })
                    }
                    PbLeaf::Fixed64 => Expected::Int(int("an integer")?),
                };
                Ok(Self {
                    path: Steps::Pb(steps),
                    expected,
                    streaming: m.streaming(),
                })
            }
        }
    }

    /// True for a protobuf condition (it applies to Kitex protobuf and gRPC payloads), false
    /// for a thrift one.
    pub fn is_protobuf(&self) -> bool {
        matches!(self.path, Steps::Pb(_))
    }

    /// The streaming mode of the method the condition reads the arguments of.
    pub fn streaming(&self) -> StreamingMode {
        self.streaming
    }

    /// True when the field is present in `payload` (a thrift args struct, or a protobuf
    /// request message) and equals the expected value. Malformed bytes do not match.
    pub fn matches(&self, payload: &[u8]) -> bool {
        let found = match &self.path {
            Steps::Thrift(steps) => thrift_field(payload, steps, MAX_DEPTH),
            Steps::Pb(steps) => pb_field(payload, steps),
        };
        match (found, &self.expected) {
            (Ok(Some(Scalar::Bytes(b))), Expected::Bytes(e)) => b == e.as_slice(),
            (Ok(Some(Scalar::Int(n))), Expected::Int(e)) => n == *e,
            (Ok(Some(Scalar::Double(d))), Expected::Double(e)) => d == *e,
            _ => false,
        }
    }
}
