//! Protobuf IDL at run time: `.proto` files compiled with `protox` (no `protoc`), messages
//! encoded from and decoded to JSON with `prost-reflect`, in protobuf's canonical JSON mapping.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use prost::Message;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions, ServiceDescriptor,
};
use serde_json::Value;

use crate::names::join;
use crate::{Error, StreamingMode};

/// A protobuf IDL: a file, its imports, and Google's well-known types.
#[derive(Debug, Clone)]
pub struct ProtoIdl {
    pool: DescriptorPool,
    /// Services of the file that was loaded (not of its imports), by full name.
    services: Vec<ServiceDescriptor>,
}

/// A protobuf method.
#[derive(Debug, Clone)]
pub struct ProtoMethod {
    desc: MethodDescriptor,
}

/// How a protobuf leaf compares on the wire: the value a route's `equals` must match, in the
/// raw form [`sluice_thrift::field::pb_field`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PbLeaf {
    /// string or bytes.
    Bytes,
    /// int32, int64, uint32, uint64, enum: the varint as is.
    Varint,
    /// sint32, sint64: zigzag.
    ZigZag,
    /// bool.
    Bool,
    /// fixed32, sfixed32.
    Fixed32,
    /// fixed64, sfixed64.
    Fixed64,
}

impl ProtoIdl {
    /// Compiles `path` with its imports, looked up beside it and in `include_dirs`.
    pub fn load(path: &Path, include_dirs: &[PathBuf]) -> Result<Self, Error> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let mut dirs = vec![dir];
        dirs.extend(include_dirs.iter().cloned());
        let mut compiler = protox::Compiler::new(&dirs).map_err(proto_error)?;
        compiler.include_imports(true);
        compiler.open_file(path).map_err(proto_error)?;
        let pool = compiler.descriptor_pool();
        let name = compiler
            .files()
            .last()
            .map(|f| f.name().to_owned())
            .unwrap_or_default();
        let services = pool
            .get_file_by_name(&name)
            .map(|f| f.services().collect())
            .unwrap_or_default();
        Ok(Self { pool, services })
    }

    /// The service `name` (full `echo.EchoService` or short `EchoService`), or the only one.
    pub fn service(&self, name: Option<&str>) -> Result<ServiceDescriptor, Error> {
        let all: Vec<ServiceDescriptor> = if self.services.is_empty() {
            self.pool.services().collect()
        } else {
            self.services.clone()
        };
        let known = || join(all.iter().map(|s| s.full_name()));
        match name {
            Some(n) => all
                .iter()
                .find(|s| s.full_name() == n)
                .or_else(|| all.iter().find(|s| s.name() == n))
                .cloned()
                .or_else(|| self.pool.get_service_by_name(n))
                .ok_or_else(|| Error::UnknownService {
                    name: n.to_owned(),
                    known: known(),
                }),
            None => match all.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Error::UnknownService {
                    name: String::new(),
                    known: "none".into(),
                }),
                _ => Err(Error::AmbiguousService { known: known() }),
            },
        }
    }

    /// The method `method` of `service`.
    pub fn method(&self, service: Option<&str>, method: &str) -> Result<ProtoMethod, Error> {
        let s = self.service(service)?;
        let found = s.methods().find(|m| m.name() == method);
        match found {
            Some(desc) => Ok(ProtoMethod { desc }),
            None => Err(Error::UnknownMethod {
                service: s.full_name().to_owned(),
                method: method.to_owned(),
                known: join(s.methods().map(|m| m.name().to_owned())),
            }),
        }
    }
}

impl ProtoMethod {
    /// The method's name.
    pub fn name(&self) -> &str {
        self.desc.name()
    }

    /// The service's full name (`echo.EchoService`), as gRPC paths spell it.
    pub fn service_full_name(&self) -> &str {
        self.desc.parent_service().full_name()
    }

    /// The service's short name (`EchoService`), as Kitex protobuf calls name it.
    pub fn service_name(&self) -> &str {
        self.desc.parent_service().name()
    }

    /// Unary, client, server or bidirectional streaming.
    pub fn streaming(&self) -> StreamingMode {
        match (
            self.desc.is_client_streaming(),
            self.desc.is_server_streaming(),
        ) {
            (false, false) => StreamingMode::Unary,
            (true, false) => StreamingMode::Client,
            (false, true) => StreamingMode::Server,
            (true, true) => StreamingMode::Bidi,
        }
    }

    /// Encodes a request message from its canonical JSON (`{"message": "hi"}`).
    pub fn encode_request(&self, json: &str) -> Result<Vec<u8>, Error> {
        encode(self.desc.input(), json)
    }

    /// Decodes a request message to JSON.
    pub fn decode_request(&self, body: &[u8]) -> Result<Value, Error> {
        decode(self.desc.input(), body)
    }

    /// Decodes a response message to JSON.
    pub fn decode_response(&self, body: &[u8]) -> Result<Value, Error> {
        decode(self.desc.output(), body)
    }

    /// The field numbers of `path` (`req.tenant` by field names, from the request message's
    /// top) and how its leaf compares, for payload routing.
    pub fn field_path(&self, path: &str) -> Result<(Vec<u32>, PbLeaf), Error> {
        let err = |reason: String| Error::FieldPath {
            path: path.to_owned(),
            reason,
        };
        let mut msg = self.desc.input();
        let mut steps = Vec::new();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, name) in parts.iter().enumerate() {
            let f = msg.get_field_by_name(name).ok_or_else(|| {
                err(format!(
                    "{} has no field {name:?} (it has: {})",
                    msg.full_name(),
                    join(msg.fields().map(|f| f.name().to_owned()))
                ))
            })?;
            steps.push(f.number());
            let last = i + 1 == parts.len();
            if f.cardinality() == Cardinality::Repeated || f.is_map() {
                return Err(err(format!("{name:?} is repeated")));
            }
            match (f.kind(), last) {
                (Kind::Message(m), false) => msg = m,
                (_, false) => return Err(err(format!("{name:?} is not a message"))),
                (kind, true) => {
                    let leaf = match kind {
                        Kind::String | Kind::Bytes => PbLeaf::Bytes,
                        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Enum(_) => {
                            PbLeaf::Varint
                        }
                        Kind::Sint32 | Kind::Sint64 => PbLeaf::ZigZag,
                        Kind::Bool => PbLeaf::Bool,
                        Kind::Fixed32 | Kind::Sfixed32 => PbLeaf::Fixed32,
                        Kind::Fixed64 | Kind::Sfixed64 => PbLeaf::Fixed64,
                        Kind::Float | Kind::Double => {
                            return Err(err(format!("{name:?} is a floating-point field")))
                        }
                        Kind::Message(_) => return Err(err(format!("{name:?} is a message"))),
                    };
                    return Ok((steps, leaf));
                }
            }
        }
        Err(err("empty path".into()))
    }

    /// The number an enum leaf's name stands for (for `equals` on an enum field).
    pub fn enum_value(&self, path: &str, name: &str) -> Option<i32> {
        let mut msg = self.desc.input();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            let f = msg.get_field_by_name(p)?;
            match f.kind() {
                Kind::Message(m) if i + 1 < parts.len() => msg = m,
                Kind::Enum(e) if i + 1 == parts.len() => {
                    return e.get_value_by_name(name).map(|v| v.number())
                }
                _ => return None,
            }
        }
        None
    }
}

fn encode(desc: MessageDescriptor, json: &str) -> Result<Vec<u8>, Error> {
    let name = desc.full_name().to_owned();
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc, &mut de).map_err(|e| Error::ProtoJson {
        message: name.clone(),
        reason: e.to_string(),
    })?;
    de.end().map_err(Error::Json)?;
    Ok(msg.encode_to_vec())
}

fn decode(desc: MessageDescriptor, body: &[u8]) -> Result<Value, Error> {
    let name = desc.full_name().to_owned();
    let msg = DynamicMessage::decode(desc, body).map_err(|e| Error::Malformed {
        at: name.clone(),
        reason: e.to_string(),
    })?;
    msg.serialize_with_options(
        serde_json::value::Serializer,
        &SerializeOptions::new().skip_default_fields(false),
    )
    .map_err(|e| Error::Malformed {
        at: name,
        reason: e.to_string(),
    })
}

fn proto_error(e: protox::Error) -> Error {
    let file = e.file().unwrap_or("").to_owned();
    let line = e
        .labels()
        .and_then(|mut l| l.next())
        .zip(e.source_code())
        .and_then(|(label, src)| src.read_span(label.inner(), 0, 0).ok())
        .map(|s| (s.line() + 1, s.column() + 1));
    Error::Proto {
        file,
        line,
        message: e.to_string(),
    }
}
