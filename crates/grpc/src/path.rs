//! The `:path` of a gRPC request: package, service and method.
//!
//! PROTOCOL-HTTP2: `Path → ":path" "/" Service-Name "/" {method name}`, where `Service-Name →
//! ?( {proto package name} "." ) {service name}`. Kitex sends `/echo.EchoService/Echo` for
//! protobuf and `/EchoService/Echo` for thrift, which has no package (kitex-wire.md 5.2), and its
//! server splits the path as described in kitex-wire.md 5.5: the method is what follows the last
//! `/`, and the package is what precedes the last `.` of the rest.

/// A `:path` split into its parts. All parts borrow from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodPath<'a> {
    /// Package, `""` when the service name has no `.` (`echo` in `/echo.EchoService/Echo`).
    pub package: &'a str,
    /// Service name without the package (`EchoService`). Kitex looks services up by this name.
    pub service: &'a str,
    /// Method name (`Echo`).
    pub method: &'a str,
    /// Package and service as written between the slashes.
    qualified: &'a str,
}

/// Why a `:path` is not a gRPC method path.
///
/// Kitex answers all of these with grpc-status 13 "malformed method name" (kitex-wire.md 5.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("gRPC path does not start with '/'")]
    NoLeadingSlash,
    /// There is no `/` between the service and the method.
    #[error("gRPC path has no '/' between service and method")]
    NoMethod,
    /// More than two segments: `/a/b/c`.
    #[error("gRPC path has more than two segments")]
    TooManySegments,
    /// The service name (after the package, if any) is empty: `//Echo`, `/echo./Echo`.
    #[error("gRPC path has an empty service name")]
    EmptyService,
    /// The method name is empty: `/echo.EchoService/`.
    #[error("gRPC path has an empty method name")]
    EmptyMethod,
}

impl<'a> MethodPath<'a> {
    /// Splits `/<package>.<Service>/<Method>` or `/<Service>/<Method>`.
    ///
    /// Stricter than Kitex, which also accepts a missing leading `/` and extra `/` inside the
    /// service part: neither can name a gRPC service, and a proxy should not route on them.
    pub fn parse(path: &'a str) -> Result<MethodPath<'a>, PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NoLeadingSlash)?;
        let (qualified, method) = rest.rsplit_once('/').ok_or(PathError::NoMethod)?;
        if qualified.contains('/') {
            return Err(PathError::TooManySegments);
        }
        let (package, service) = qualified.rsplit_once('.').unwrap_or(("", qualified));
        if service.is_empty() {
            return Err(PathError::EmptyService);
        }
        if method.is_empty() {
            return Err(PathError::EmptyMethod);
        }
        Ok(MethodPath {
            package,
            service,
            method,
            qualified,
        })
    }

    /// The service name with its package, as written in the path (`echo.EchoService`).
    pub fn qualified_service(&self) -> &'a str {
        self.qualified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> (&str, &str, &str) {
        let p = MethodPath::parse(path).unwrap();
        (p.package, p.service, p.method)
    }

    #[test]
    fn kitex_paths() {
        assert_eq!(
            ok("/echo.EchoService/Echo"),
            ("echo", "EchoService", "Echo")
        );
        assert_eq!(ok("/EchoService/EchoBidi"), ("", "EchoService", "EchoBidi"));
    }

    #[test]
    fn nested_packages() {
        let p = MethodPath::parse("/a.b.c.Svc/Do").unwrap();
        assert_eq!((p.package, p.service, p.method), ("a.b.c", "Svc", "Do"));
        assert_eq!(p.qualified_service(), "a.b.c.Svc");
        assert_eq!(
            MethodPath::parse("/Svc/Do").unwrap().qualified_service(),
            "Svc"
        );
    }

    #[test]
    fn leading_dot_is_an_empty_package() {
        assert_eq!(ok("/.Svc/Do"), ("", "Svc", "Do"));
        assert_eq!(
            MethodPath::parse("/.Svc/Do").unwrap().qualified_service(),
            ".Svc"
        );
    }

    #[test]
    fn malformed_paths() {
        let cases = [
            ("", PathError::NoLeadingSlash),
            ("echo.EchoService/Echo", PathError::NoLeadingSlash),
            ("/", PathError::NoMethod),
            ("/EchoService", PathError::NoMethod),
            ("/a/b/c", PathError::TooManySegments),
            ("//Svc/Do", PathError::TooManySegments),
            ("//Echo", PathError::EmptyService),
            ("/echo./Echo", PathError::EmptyService),
            ("/EchoService/", PathError::EmptyMethod),
        ];
        for (path, err) in cases {
            assert_eq!(MethodPath::parse(path), Err(err), "{path:?}");
        }
    }
}
