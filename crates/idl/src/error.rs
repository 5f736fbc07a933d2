//! Why an IDL could not be loaded, or JSON or bytes did not fit it.

use std::path::PathBuf;

/// An IDL that could not be loaded, a name it does not have, or a value that does not fit it.
///
/// `at` fields name where in the value the problem is, as a path of field names from the
/// message's top (`req.items[2].name`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An IDL file (or one it includes) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A thrift file does not parse; `message` names the file, line and column.
    #[error("{message}")]
    ThriftSyntax {
        /// The parser's summary.
        message: String,
    },
    /// A .proto file does not compile.
    #[error("{file}{line}: {message}", line = line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Proto {
        /// The file the error is in.
        file: String,
        /// Line and column (1-based), when known.
        line: Option<(usize, usize)>,
        /// The compiler's message.
        message: String,
    },
    /// A file's extension is neither `.thrift` nor `.proto`.
    #[error("{0}: an IDL file must end in .thrift or .proto")]
    UnknownKind(PathBuf),
    /// A thrift `include` names a file that is not there.
    #[error("{file}: include {include:?} not found (looked beside the file and in the include directories)")]
    IncludeNotFound {
        /// The including file.
        file: PathBuf,
        /// The include as written.
        include: String,
    },
    /// A thrift type name that no file defines.
    #[error("{file}: unknown type {name:?}")]
    UnknownType {
        /// The file the name is used in.
        file: PathBuf,
        /// The name as written.
        name: String,
    },
    /// Typedefs, or services through `extends`, that refer to each other in a loop.
    #[error("{file}: {kind} {name:?} refers to itself")]
    Loop {
        /// The file.
        file: PathBuf,
        /// `typedef` or `service`.
        kind: &'static str,
        /// The typedef or service.
        name: String,
    },
    /// No service of that name.
    #[error("no service {name:?} in the IDL (it has: {known})")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The services the IDL has, comma-separated.
        known: String,
    },
    /// The IDL has several services and none was named.
    #[error("the IDL has several services ({known}): name one as Service/Method")]
    AmbiguousService {
        /// The services, comma-separated.
        known: String,
    },
    /// No method of that name in the service.
    #[error("service {service:?} has no method {method:?} (it has: {known})")]
    UnknownMethod {
        /// The service.
        service: String,
        /// The method asked for.
        method: String,
        /// The methods it has, comma-separated.
        known: String,
    },
    /// JSON that is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON object names a field the struct or message does not have.
    #[error("{at}: {owner} has no field {name:?} (it has: {known})")]
    UnknownField {
        /// Where.
        at: String,
        /// The struct, message or arguments.
        owner: String,
        /// The name given.
        name: String,
        /// The fields it has, comma-separated.
        known: String,
    },
    /// A required field is missing from the JSON.
    #[error("{at}: required field {name:?} is missing")]
    MissingField {
        /// Where.
        at: String,
        /// The field.
        name: String,
    },
    /// A JSON value of the wrong kind for the field's type.
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        /// Where.
        at: String,
        /// What the IDL declares.
        expected: String,
        /// What the JSON has.
        found: String,
    },
    /// A protobuf JSON value the message does not accept (the message names the field).
    #[error("{message}: {reason}")]
    ProtoJson {
        /// The message type.
        message: String,
        /// What prost-reflect said, which names the field.
        reason: String,
    },
    /// Payload bytes that are not what the IDL says (or not thrift / protobuf at all).
    #[error("{at}: {reason}")]
    Malformed {
        /// Where the reading stopped.
        at: String,
        /// Why.
        reason: String,
    },
    /// A field path (`req.tenant`) that does not lead to a scalar field.
    #[error("field path {path:?}: {reason}")]
    FieldPath {
        /// The path as written.
        path: String,
        /// Why it does not work.
        reason: String,
    },
}
