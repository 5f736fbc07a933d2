//! Thrift IDL at run time: files parsed with `pilota-thrift-parser`, includes and typedefs
//! resolved into a small schema, JSON encoded to thrift binary and thrift binary decoded to
//! JSON by it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use pilota_thrift_parser as ast;
use serde_json::{Map, Value};
use sluice_thrift::ttype;

use crate::names::{here, join};
use crate::untyped::{self, Reader};
use crate::{Error, StreamingMode, MAX_DEPTH};

/// A resolved thrift type.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// bool
    Bool,
    /// byte / i8
    Byte,
    /// i16
    I16,
    /// i32
    I32,
    /// i64
    I64,
    /// double
    Double,
    /// string (UTF-8)
    String,
    /// binary
    Binary,
    /// `list<T>`
    List(Box<Ty>),
    /// `set<T>`
    Set(Box<Ty>),
    /// `map<K, V>`
    Map(Box<Ty>, Box<Ty>),
    /// A struct, union or exception: an index into [`ThriftIdl::structs`].
    Struct(usize),
    /// An enum: an index into [`ThriftIdl::enums`].
    Enum(usize),
}

impl Ty {
    /// The binary protocol's type code.
    pub fn code(&self) -> u8 {
        match self {
            Ty::Bool => ttype::BOOL,
            Ty::Byte => ttype::BYTE,
            Ty::I16 => ttype::I16,
            Ty::I32 | Ty::Enum(_) => ttype::I32,
            Ty::I64 => ttype::I64,
            Ty::Double => ttype::DOUBLE,
            Ty::String | Ty::Binary => ttype::STRING,
            Ty::List(_) => ttype::LIST,
            Ty::Set(_) => ttype::SET,
            Ty::Map(..) => ttype::MAP,
            Ty::Struct(_) => ttype::STRUCT,
        }
    }
}

/// A field of a struct (or an argument, or a declared exception).
#[derive(Debug, Clone)]
pub struct FieldDef {
    /// Field id.
    pub id: i16,
    /// Name.
    pub name: String,
    /// Type.
    pub ty: Ty,
    /// Declared `required`.
    pub required: bool,
}

/// A struct, union or exception, or a method's synthetic args / result struct.
#[derive(Debug, Clone)]
pub struct StructDef {
    /// Name, qualified by its file's scope when it comes from an include (`base.Base`).
    pub name: String,
    /// Fields in declaration order.
    pub fields: Vec<FieldDef>,
}

impl StructDef {
    fn by_name(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn by_id(&self, id: i16) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.id == id)
    }

    fn known(&self) -> String {
        join(self.fields.iter().map(|f| f.name.as_str()))
    }
}

/// An enum.
#[derive(Debug, Clone)]
pub struct EnumDef {
    /// Name.
    pub name: String,
    /// Values by name.
    pub values: Vec<(String, i32)>,
}

/// A service method.
#[derive(Debug, Clone)]
pub struct Function {
    /// Name.
    pub name: String,
    /// Declared `oneway`.
    pub oneway: bool,
    /// The args struct (an index into [`ThriftIdl::structs`]).
    pub args: usize,
    /// The result struct: field 0 `success` (absent for `void`), then the declared exceptions.
    pub result: usize,
    /// The `streaming.mode` annotation.
    pub streaming: StreamingMode,
}

/// A service and its methods (those of the service it extends first).
#[derive(Debug, Clone)]
pub struct Service {
    /// Name (qualified when it comes from an include).
    pub name: String,
    /// Methods.
    pub functions: Vec<Function>,
}

/// A thrift IDL, its includes resolved.
#[derive(Debug, Clone, Default)]
pub struct ThriftIdl {
    /// Every struct, union and exception, and the methods' args and result structs.
    pub structs: Vec<StructDef>,
    /// Every enum.
    pub enums: Vec<EnumDef>,
    /// Every service, the main file's first.
    pub services: Vec<Service>,
}

/// What a decoded result struct held.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The `success` field (`Value::Null` for a `void` method).
    Success(Value),
    /// A declared exception: its field name and value.
    Exception {
        /// The `throws` field's name.
        field: String,
        /// The exception type's name.
        type_name: String,
        /// The exception as JSON.
        value: Value,
    },
}

struct File {
    path: PathBuf,
    ast: ast::File,
    /// Include scope name (file stem) to file index.
    includes: HashMap<String, usize>,
}

struct Loader<'a> {
    include_dirs: &'a [PathBuf],
    files: Vec<File>,
    by_path: HashMap<PathBuf, usize>,
}

impl Loader<'_> {
    fn load(&mut self, path: &Path, depth: usize) -> Result<usize, Error> {
        let canon = std::fs::canonicalize(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        if let Some(&i) = self.by_path.get(&canon) {
            return Ok(i);
        }
        if depth > 32 {
            return Err(Error::ThriftSyntax {
                message: format!("{}: includes nest deeper than 32 files", path.display()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let source = ast::FileSource::new_with_path(path.to_owned(), &text).map_err(|e| {
            Error::ThriftSyntax {
                message: format!("{e:?}"),
            }
        })?;
        let parsed = ast::FileParser::new(source)
            .parse()
            .map_err(|e| Error::ThriftSyntax {
                message: format!("{e:?}"),
            })?;
        let idx = self.files.len();
        self.by_path.insert(canon, idx);
        self.files.push(File {
            path: path.to_owned(),
            ast: ast::File::default(),
            includes: HashMap::new(),
        });
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut includes = HashMap::new();
        for item in &parsed.items {
            if let ast::Item::Include(inc) = item {
                let name: &str = &inc.path;
                let found = std::iter::once(dir.join(name))
                    .chain(self.include_dirs.iter().map(|d| d.join(name)))
                    .find(|p| p.is_file())
                    .ok_or_else(|| Error::IncludeNotFound {
                        file: path.to_owned(),
                        include: name.to_owned(),
                    })?;
                let i = self.load(&found, depth + 1)?;
                let scope = Path::new(name)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                includes.insert(scope, i);
            }
        }
        self.files[idx].ast = parsed;
        self.files[idx].includes = includes;
        Ok(idx)
    }
}

/// Where a named type lives.
#[derive(Clone, Copy)]
enum Named {
    Struct(usize),
    Enum(usize),
    Typedef(usize, usize),
}

/// A path as written (`base.Base`).
fn written(p: &ast::Path) -> String {
    let segs: Vec<&str> = p.segments.iter().map(|s| s.as_str()).collect();
    segs.join(".")
}

/// Where the name a path in `file` refers to lives: `Name` in `file` itself, `scope.Name` in
/// the file `file` includes as `scope`. The parser may keep a dotted name as one segment, so
/// it is split here.
fn scoped<'p>(files: &[File], file: usize, p: &'p ast::Path) -> Result<(usize, &'p str), Error> {
    let parts: Vec<&str> = p
        .segments
        .iter()
        .flat_map(|s| s.as_str().split('.'))
        .collect();
    let found = match parts.as_slice() {
        [name] => Some((file, *name)),
        [scope, name] => files[file].includes.get(*scope).map(|&f| (f, *name)),
        _ => None,
    };
    found.ok_or_else(|| Error::UnknownType {
        file: files[file].path.clone(),
        name: written(p),
    })
}

struct Resolver<'a> {
    files: &'a [File],
    /// (file, name) -> what it is.
    names: HashMap<(usize, String), Named>,
}

impl Resolver<'_> {
    fn ty(&self, file: usize, t: &ast::Ty, depth: usize) -> Result<Ty, Error> {
        Ok(match t {
            ast::Ty::String => Ty::String,
            ast::Ty::Binary => Ty::Binary,
            ast::Ty::Bool => Ty::Bool,
            ast::Ty::Byte | ast::Ty::I8 => Ty::Byte,
            ast::Ty::I16 => Ty::I16,
            ast::Ty::I32 => Ty::I32,
            ast::Ty::I64 => Ty::I64,
            ast::Ty::Double => Ty::Double,
            ast::Ty::Void => {
                return Err(Error::UnknownType {
                    file: self.files[file].path.clone(),
                    name: "void (only a method's result may be void)".into(),
                })
            }
            ast::Ty::Uuid => {
                return Err(Error::UnknownType {
                    file: self.files[file].path.clone(),
                    name: "uuid (not supported by Kitex's binary protocol)".into(),
                })
            }
            ast::Ty::List { value, .. } => Ty::List(Box::new(self.ty(file, &value.0, depth)?)),
            ast::Ty::Set { value, .. } => Ty::Set(Box::new(self.ty(file, &value.0, depth)?)),
            ast::Ty::Map { key, value, .. } => Ty::Map(
                Box::new(self.ty(file, &key.0, depth)?),
                Box::new(self.ty(file, &value.0, depth)?),
            ),
            ast::Ty::Path(p) => self.path(file, p, depth)?,
        })
    }

    fn path(&self, file: usize, p: &ast::Path, depth: usize) -> Result<Ty, Error> {
        let (in_file, name) = scoped(self.files, file, p)?;
        let unknown = || Error::UnknownType {
            file: self.files[file].path.clone(),
            name: written(p),
        };
        match self.names.get(&(in_file, name.to_owned())) {
            Some(Named::Struct(i)) => Ok(Ty::Struct(*i)),
            Some(Named::Enum(i)) => Ok(Ty::Enum(*i)),
            Some(Named::Typedef(f, item)) => {
                if depth > 32 {
                    return Err(Error::Loop {
                        file: self.files[file].path.clone(),
                        kind: "typedef",
                        name: written(p),
                    });
                }
                match &self.files[*f].ast.items[*item] {
                    ast::Item::Typedef(t) => self.ty(*f, &t.r#type.0, depth + 1),
                    _ => Err(unknown()),
                }
            }
            None => Err(unknown()),
        }
    }

    fn fields(&self, file: usize, fields: &[ast::Field]) -> Result<Vec<FieldDef>, Error> {
        fields
            .iter()
            .map(|f| {
                Ok(FieldDef {
                    id: f.id as i16,
                    name: f.name.as_str().to_owned(),
                    ty: self.ty(file, &f.ty.0, 0)?,
                    required: f.attribute == ast::Attribute::Required,
                })
            })
            .collect()
    }
}

impl ThriftIdl {
    /// Loads `path` and every file it includes (looked up beside the including file, then in
    /// `include_dirs`).
    pub fn load(path: &Path, include_dirs: &[PathBuf]) -> Result<Self, Error> {
        let mut loader = Loader {
            include_dirs,
            files: Vec::new(),
            by_path: HashMap::new(),
        };
        let main = loader.load(path, 0)?;
        let files = loader.files;
        let scope = |f: usize| {
            files[f]
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let qualified = |f: usize, name: &str| {
            if f == main {
                name.to_owned()
            } else {
                format!("{}.{name}", scope(f))
            }
        };
        // First pass: every named type gets its index.
        let mut idl = ThriftIdl::default();
        let mut names = HashMap::new();
        for (f, file) in files.iter().enumerate() {
            for (i, item) in file.ast.items.iter().enumerate() {
                let (name, named) = match item {
                    ast::Item::Struct(s) => (s.name.as_str(), None),
                    ast::Item::Union(s) => (s.name.as_str(), None),
                    ast::Item::Exception(s) => (s.name.as_str(), None),
                    ast::Item::Enum(e) => (e.name.as_str(), Some(Named::Enum(idl.enums.len()))),
                    ast::Item::Typedef(t) => (t.alias.as_str(), Some(Named::Typedef(f, i))),
                    _ => continue,
                };
                let named = match named {
                    Some(n) => n,
                    None => {
                        idl.structs.push(StructDef {
                            name: qualified(f, name),
                            fields: Vec::new(),
                        });
                        Named::Struct(idl.structs.len() - 1)
                    }
                };
                if let (ast::Item::Enum(e), Named::Enum(_)) = (item, named) {
                    let mut next = 0i64;
                    let values = e
                        .values
                        .iter()
                        .map(|v| {
                            let n = v.value.map(|c| c.0).unwrap_or(next);
                            next = n + 1;
                            (v.name.as_str().to_owned(), n as i32)
                        })
                        .collect();
                    idl.enums.push(EnumDef {
                        name: qualified(f, name),
                        values,
                    });
                }
                names.insert((f, name.to_owned()), named);
            }
        }
        let r = Resolver {
            files: &files,
            names,
        };
        // Second pass: fields, now that every name resolves.
        for (f, file) in files.iter().enumerate() {
            for item in &file.ast.items {
                let s = match item {
                    ast::Item::Struct(s) => &s.struct_like,
                    ast::Item::Union(s) => &s.struct_like,
                    ast::Item::Exception(s) => &s.struct_like,
                    _ => continue,
                };
                if let Some(Named::Struct(i)) = r.names.get(&(f, s.name.as_str().to_owned())) {
                    idl.structs[*i].fields = r.fields(f, &s.fields)?;
                }
            }
        }
        // Services, the main file's first; `extends` brings the parent's methods first.
        let order = std::iter::once(main).chain((0..files.len()).filter(|&f| f != main));
        let mut raw: Vec<(usize, &ast::Service)> = Vec::new();
        for f in order {
            for item in &files[f].ast.items {
                if let ast::Item::Service(s) = item {
                    raw.push((f, s));
                }
            }
        }
        for &(f, s) in &raw {
            let mut chain = vec![(f, s)];
            let (mut cf, mut cs) = (f, s);
            while let Some(parent) = &cs.extends {
                let (pf, pname) = scoped(&files, cf, parent)?;
                let Some(&(_, ps)) = raw
                    .iter()
                    .find(|(rf, rs)| *rf == pf && rs.name.as_str() == pname)
                else {
                    return Err(Error::UnknownType {
                        file: files[cf].path.clone(),
                        name: written(parent),
                    });
                };
                if chain.len() > 32 {
                    return Err(Error::Loop {
                        file: files[cf].path.clone(),
                        kind: "service",
                        name: pname.to_owned(),
                    });
                }
                chain.push((pf, ps));
                (cf, cs) = (pf, ps);
            }
            let mut functions = Vec::new();
            for &(cf, cs) in chain.iter().rev() {
                for func in &cs.functions {
                    functions.push(idl.add_function(&r, cf, cs, func)?);
                }
            }
            idl.services.push(Service {
                name: qualified(f, s.name.as_str()),
                functions,
            });
        }
        Ok(idl)
    }

    fn add_function(
        &mut self,
        r: &Resolver<'_>,
        file: usize,
        service: &ast::Service,
        func: &ast::Function,
    ) -> Result<Function, Error> {
        let name = func.name.as_str().to_owned();
        // Arguments are never required on the wire (the parser marks them so; Kitex does not
        // check), so a call may leave one out.
        let mut arg_fields = r.fields(file, &func.arguments)?;
        for f in &mut arg_fields {
            f.required = false;
        }
        let args = StructDef {
            name: format!("{}.{name} arguments", service.name.as_str()),
            fields: arg_fields,
        };
        let mut result = StructDef {
            name: format!("{}.{name} result", service.name.as_str()),
            fields: Vec::new(),
        };
        if !matches!(func.result_type.0, ast::Ty::Void) {
            result.fields.push(FieldDef {
                id: 0,
                name: "success".into(),
                ty: r.ty(file, &func.result_type.0, 0)?,
                required: false,
            });
        }
        result.fields.extend(r.fields(file, &func.throws)?);
        let streaming = func
            .annotations
            .iter()
            .find(|a| a.key == "streaming.mode")
            .map(|a| match &*a.value {
                "bidirectional" => StreamingMode::Bidi,
                "client" => StreamingMode::Client,
                "server" => StreamingMode::Server,
                _ => StreamingMode::Unary,
            })
            .unwrap_or(StreamingMode::Unary);
        self.structs.push(args);
        self.structs.push(result);
        Ok(Function {
            name,
            oneway: func.oneway,
            args: self.structs.len() - 2,
            result: self.structs.len() - 1,
            streaming,
        })
    }

    /// The service named `name` (short or scope-qualified), or the only one when `name` is
    /// `None`.
    pub fn service(&self, name: Option<&str>) -> Result<&Service, Error> {
        let known = || join(self.services.iter().map(|s| s.name.as_str()));
        match name {
            // Exact, then by the last segment on either side: `base.Svc` (an included file's
            // service) answers to `Svc`, and `Svc` to a namespaced `echo.Svc`.
            Some(n) => self
                .services
                .iter()
                .find(|s| s.name == n)
                .or_else(|| {
                    let short = n.rsplit('.').next();
                    self.services
                        .iter()
                        .find(|s| s.name.rsplit('.').next() == short)
                })
                .ok_or_else(|| Error::UnknownService {
                    name: n.to_owned(),
                    known: known(),
                }),
            None => match self.services.as_slice() {
                [one] => Ok(one),
                [] => Err(Error::UnknownService {
                    name: String::new(),
                    known: "none".into(),
                }),
                _ => Err(Error::AmbiguousService { known: known() }),
            },
        }
    }

    /// The method `method` of `service`.
    pub fn function(&self, service: Option<&str>, method: &str) -> Result<&Function, Error> {
        let s = self.service(service)?;
        s.functions
            .iter()
            .find(|f| f.name == method)
            .ok_or_else(|| Error::UnknownMethod {
                service: s.name.clone(),
                method: method.to_owned(),
                known: join(s.functions.iter().map(|f| f.name.as_str())),
            })
    }

    /// The method `method` of whichever service has it (the main file's first): for bytes
    /// that name a method but not its service, such as a thrift envelope.
    pub fn find_function(&self, method: &str) -> Option<&Function> {
        self.services
            .iter()
            .find_map(|s| s.functions.iter().find(|f| f.name == method))
    }

    /// Encodes `json` (an object of the method's arguments by name) as its args struct.
    pub fn encode_args(&self, f: &Function, json: &Value) -> Result<BytesMut, Error> {
        self.encode_struct(f.args, json)
    }

    /// Encodes `json` as the struct `idx` (a value of one of the IDL's structs).
    pub fn encode_struct(&self, idx: usize, json: &Value) -> Result<BytesMut, Error> {
        let mut out = BytesMut::new();
        self.write_struct(idx, json, "", &mut out, 0)?;
        Ok(out)
    }

    /// Decodes an args struct as JSON by the method's argument names.
    pub fn decode_args(&self, f: &Function, body: &[u8]) -> Result<Value, Error> {
        self.decode_struct(f.args, body)
    }

    /// Decodes the struct `idx` from `body`.
    pub fn decode_struct(&self, idx: usize, body: &[u8]) -> Result<Value, Error> {
        let mut r = Reader::new(body);
        self.read_struct(idx, &mut r, "", 0)
    }

    /// Decodes a REPLY's result struct: the success value or the declared exception it holds.
    pub fn decode_result(&self, f: &Function, body: &[u8]) -> Result<Outcome, Error> {
        let v = self.decode_struct(f.result, body)?;
        let def = &self.structs[f.result];
        let Value::Object(mut map) = v else {
            return Ok(Outcome::Success(Value::Null));
        };
        let void = def.by_id(0).is_none();
        if map.is_empty() && void {
            return Ok(Outcome::Success(Value::Null));
        }
        if let Some(v) = map.remove("success") {
            return Ok(Outcome::Success(v));
        }
        // Fields the IDL does not declare are keyed by id and type, so they match no name.
        let declared = map.iter().find_map(|(k, _)| def.by_name(k));
        let Some(fd) = declared else {
            // Kitex's MISSING_RESULT: neither the success field nor a declared exception.
            return Err(Error::Malformed {
                at: def.name.clone(),
                reason: format!(
                    "no success field and no declared exception in the result: {}",
                    Value::Object(map)
                ),
            });
        };
        let type_name = match &fd.ty {
            Ty::Struct(i) => self.structs[*i].name.clone(),
            _ => fd.name.clone(),
        };
        Ok(Outcome::Exception {
            value: map.remove(&fd.name).unwrap_or(Value::Null),
            field: fd.name.clone(),
            type_name,
        })
    }

    /// The ids and types of `path` (`req.tenant`: argument names, then field names) in the
    /// args of `f`, for payload routing, with the leaf's type.
    pub fn field_path(&self, f: &Function, path: &str) -> Result<(Vec<(i16, u8)>, Ty), Error> {
        let err = |reason: String| Error::FieldPath {
            path: path.to_owned(),
            reason,
        };
        let mut owner = f.args;
        let mut steps = Vec::new();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, name) in parts.iter().enumerate() {
            let def = &self.structs[owner];
            let fd = def.by_name(name).ok_or_else(|| {
                err(format!(
                    "{} has no field {name:?} (it has: {})",
                    def.name,
                    def.known()
                ))
            })?;
            steps.push((fd.id, fd.ty.code()));
            let last = i + 1 == parts.len();
            match (&fd.ty, last) {
                (Ty::Struct(s), false) => owner = *s,
                (_, false) => return Err(err(format!("{name:?} is not a struct"))),
                (Ty::Struct(_) | Ty::List(_) | Ty::Set(_) | Ty::Map(..), true) => {
                    return Err(err(format!("{name:?} is not a scalar field")))
                }
                (t, true) => return Ok((steps, t.clone())),
            }
        }
        Err(err("empty path".into()))
    }

    fn write_struct(
        &self,
        idx: usize,
        json: &Value,
        at: &str,
        out: &mut BytesMut,
        depth: usize,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(wrong(at, "a shallower value", "nesting past 64 levels"));
        }
        let def = &self.structs[idx];
        let Value::Object(obj) = json else {
            return Err(wrong(at, &format!("an object ({})", def.name), kind(json)));
        };
        for name in obj.keys() {
            if def.by_name(name).is_none() {
                return Err(Error::UnknownField {
                    at: here(at),
                    owner: def.name.clone(),
                    name: name.clone(),
                    known: def.known(),
                });
            }
        }
        for fd in &def.fields {
            let v = match obj.get(&fd.name) {
                Some(Value::Null) | None => {
                    if fd.required {
                        return Err(Error::MissingField {
                            at: here(at),
                            name: fd.name.clone(),
                        });
                    }
                    continue;
                }
                Some(v) => v,
            };
            out.put_u8(fd.ty.code());
            out.put_i16(fd.id);
            self.write_value(&fd.ty, v, &join_path(at, &fd.name), out, depth + 1)?;
        }
        out.put_u8(ttype::STOP);
        Ok(())
    }

    fn write_value(
        &self,
        ty: &Ty,
        v: &Value,
        at: &str,
        out: &mut BytesMut,
        depth: usize,
    ) -> Result<(), Error> {
        match ty {
            Ty::Bool => out.put_u8(v.as_bool().ok_or_else(|| wrong(at, "a bool", kind(v)))? as u8),
            Ty::Byte => out.put_i8(int(v, at, "a byte")?),
            Ty::I16 => out.put_i16(int(v, at, "an i16")?),
            Ty::I32 => out.put_i32(int(v, at, "an i32")?),
            Ty::I64 => out.put_i64(int(v, at, "an i64")?),
            Ty::Double => out.put_f64(v.as_f64().ok_or_else(|| wrong(at, "a number", kind(v)))?),
            Ty::String | Ty::Binary => {
                let b = bytes_of(v, at)?;
                out.put_i32(len_i32(b.len(), at)?);
                out.put_slice(&b);
            }
            Ty::Enum(e) => {
                let def = &self.enums[*e];
                let n = match v {
                    Value::String(s) => def
                        .values
                        .iter()
                        .find(|(n, _)| n == s)
                        .map(|(_, n)| *n)
                        .ok_or_else(|| {
                            wrong(
                                at,
                                &format!(
                                    "a value of {} ({})",
                                    def.name,
                                    join(def.values.iter().map(|(n, _)| n.as_str()))
                                ),
                                &format!("{s:?}"),
                            )
                        })?,
                    _ => int(v, at, "an enum name or number")?,
                };
                out.put_i32(n);
            }
            Ty::List(t) | Ty::Set(t) => {
                let a = v.as_array().ok_or_else(|| wrong(at, "an array", kind(v)))?;
                out.put_u8(t.code());
                out.put_i32(len_i32(a.len(), at)?);
                for (i, e) in a.iter().enumerate() {
                    self.write_value(t, e, &format!("{at}[{i}]"), out, depth + 1)?;
                }
            }
            Ty::Map(k, val) => {
                out.put_u8(k.code());
                out.put_u8(val.code());
                match v {
                    Value::Object(o) => {
                        out.put_i32(len_i32(o.len(), at)?);
                        for (key, e) in o {
                            let at = format!("{at}[{key:?}]");
                            let key = map_key(k, key);
                            self.write_value(k, &key, &at, out, depth + 1)?;
                            self.write_value(val, e, &at, out, depth + 1)?;
                        }
                    }
                    Value::Array(pairs) => {
                        out.put_i32(len_i32(pairs.len(), at)?);
                        for (i, p) in pairs.iter().enumerate() {
                            let at = format!("{at}[{i}]");
                            let (Some(key), Some(e)) = (p.get(0), p.get(1)) else {
                                return Err(wrong(&at, "a [key, value] pair", kind(p)));
                            };
                            self.write_value(k, key, &at, out, depth + 1)?;
                            self.write_value(val, e, &at, out, depth + 1)?;
                        }
                    }
                    _ => return Err(wrong(at, "an object or [[key, value], ...]", kind(v))),
                }
            }
            Ty::Struct(s) => self.write_struct(*s, v, at, out, depth)?,
        }
        Ok(())
    }

    fn read_struct(
        &self,
        idx: usize,
        r: &mut Reader<'_>,
        at: &str,
        depth: usize,
    ) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(r.malformed(at, "nesting past 64 levels"));
        }
        let def = &self.structs[idx];
        let mut map = Map::new();
        loop {
            let t = r.u8(at)?;
            if t == ttype::STOP {
                return Ok(Value::Object(map));
            }
            let id = r.i16(at)?;
            match def.by_id(id).filter(|f| f.ty.code() == t) {
                Some(fd) => {
                    let v = self.read_value(&fd.ty, r, &join_path(at, &fd.name), depth + 1)?;
                    map.insert(fd.name.clone(), v);
                }
                // A field the IDL does not know (or with another type): shown by id and type.
                None => {
                    let v = untyped::thrift_value(r, t, &format!("{at}.{id}"), depth + 1)?;
                    map.insert(untyped::thrift_key(id, t), v);
                }
            }
        }
    }

    fn read_value(
        &self,
        ty: &Ty,
        r: &mut Reader<'_>,
        at: &str,
        depth: usize,
    ) -> Result<Value, Error> {
        Ok(match ty {
            Ty::String => untyped::string_value(r.string(at)?),
            Ty::Binary => untyped::binary_value(r.string(at)?),
            Ty::Enum(e) => {
                let n = r.i32(at)?;
                match self.enums[*e].values.iter().find(|(_, v)| *v == n) {
                    Some((name, _)) => Value::String(name.clone()),
                    None => Value::from(n),
                }
            }
            Ty::List(t) | Ty::Set(t) => {
                let (et, n) = r.list_head(at)?;
                let mut a = Vec::new();
                for i in 0..n {
                    let at = format!("{at}[{i}]");
                    a.push(if et == t.code() {
                        self.read_value(t, r, &at, depth + 1)?
                    } else {
                        untyped::thrift_value(r, et, &at, depth + 1)?
                    });
                }
                Value::Array(a)
            }
            Ty::Map(k, v) => {
                let (kt, vt, n) = r.map_head(at)?;
                let typed = kt == k.code() && vt == v.code();
                let mut pairs = Vec::new();
                for i in 0..n {
                    let at = format!("{at}[{i}]");
                    let (key, val) = if typed {
                        (
                            self.read_value(k, r, &at, depth + 1)?,
                            self.read_value(v, r, &at, depth + 1)?,
                        )
                    } else {
                        (
                            untyped::thrift_value(r, kt, &at, depth + 1)?,
                            untyped::thrift_value(r, vt, &at, depth + 1)?,
                        )
                    };
                    pairs.push((key, val));
                }
                untyped::map_value(pairs)
            }
            Ty::Struct(s) => self.read_struct(*s, r, at, depth)?,
            scalar => untyped::thrift_value(r, scalar.code(), at, depth)?,
        })
    }
}

fn map_key(k: &Ty, key: &str) -> Value {
    match k {
        Ty::Bool => match key {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(key.to_owned()),
        },
        Ty::Byte | Ty::I16 | Ty::I32 | Ty::I64 => key
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(key.to_owned())),
        Ty::Double => key
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(key.to_owned())),
        _ => Value::String(key.to_owned()),
    }
}

fn int<T: TryFrom<i64>>(v: &Value, at: &str, what: &str) -> Result<T, Error> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        // Large i64 values are often written as strings, since JSON numbers lose precision.
        Value::String(s) => s.parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| wrong(at, what, kind(v)))?;
    T::try_from(n).map_err(|_| wrong(at, what, &n.to_string()))
}

fn bytes_of(v: &Value, at: &str) -> Result<Vec<u8>, Error> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(o) if o.len() == 1 && o.contains_key("hex") => o["hex"]
            .as_str()
            .and_then(untyped::from_hex)
            .ok_or_else(|| wrong(at, "{\"hex\": \"<even number of hex digits>\"}", kind(v))),
        _ => Err(wrong(at, "a string (or {\"hex\": \"...\"})", kind(v))),
    }
}

fn len_i32(n: usize, at: &str) -> Result<i32, Error> {
    i32::try_from(n).map_err(|_| wrong(at, "at most 2^31-1 bytes or elements", &n.to_string()))
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(at: &str, expected: &str, found: &str) -> Error {
    Error::WrongType {
        at: here(at),
        expected: expected.to_owned(),
        found: found.to_owned(),
    }
}

fn join_path(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}
