//! The runtime IDL against the test IDLs in `tests/idl`: includes, typedefs, enums, exceptions,
//! streaming modes, JSON both ways, clear errors, and payload field matches.

use std::path::{Path, PathBuf};

use serde_json::json;
use sluice_idl::{Error, FieldMatch, Idl, Outcome, StreamingMode, ThriftIdl};

fn idl_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/idl")
}

fn tools() -> ThriftIdl {
    ThriftIdl::load(&idl_dir().join("tools.thrift"), &[]).unwrap()
}

#[test]
fn thrift_includes_typedefs_enums_and_exceptions_resolve() {
    let idl = tools();
    let echo = idl.function(Some("EchoService"), "Echo").unwrap();
    assert_eq!(echo.streaming, StreamingMode::Unary);
    assert_eq!(
        idl.function(None, "EchoBidi").unwrap().streaming,
        StreamingMode::Bidi
    );
    assert_eq!(
        idl.function(None, "EchoClient").unwrap().streaming,
        StreamingMode::Client
    );
    assert_eq!(
        idl.function(None, "EchoServer").unwrap().streaming,
        StreamingMode::Server
    );
    assert!(idl.function(None, "EchoOneway").unwrap().oneway);
    let result = &idl.structs[echo.result];
    let names: Vec<&str> = result.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["success", "err"]);
}

#[test]
fn json_round_trips_through_thrift_binary() {
    let idl = tools();
    let echo = idl.function(None, "Echo").unwrap();
    let args = json!({"req": {
        "message": "hi",
        "tenant": "gold",
        "numbers": [1, -2, 3],
        "tiers": {"a": "GOLD", "b": "SILVER"},
        "caller": {"name": "cli", "tier": "BRONZE"},
        "blob": {"hex": "00ff"},
        "loud": true,
        "ratio": 0.5
    }});
    let bytes = idl.encode_args(echo, &args).unwrap();
    // The first field is the request struct, its first field the message.
    assert_eq!(
        &bytes[..12],
        &[0x0c, 0, 1, 0x0b, 0, 1, 0, 0, 0, 2, b'h', b'i']
    );
    assert_eq!(idl.decode_args(echo, &bytes).unwrap(), args);
    // Without the IDL the same bytes show by id and type.
    let (untyped, n) = sluice_idl::untyped::thrift_struct(&bytes).unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(untyped["1:struct"]["2:string"], "gold");
    assert_eq!(untyped["1:struct"]["4:map"]["a"], 10);
}

#[test]
fn unknown_and_missing_fields_and_wrong_types_are_named() {
    let idl = tools();
    let echo = idl.function(None, "Echo").unwrap();
    let e = idl
        .encode_args(echo, &json!({"req": {"mesage": "hi"}}))
        .unwrap_err();
    assert!(matches!(e, Error::UnknownField { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "req: EchoRequest has no field \"mesage\" (it has: message, tenant, numbers, tiers, caller, blob, loud, ratio)"
    );
    let e = idl
        .encode_args(echo, &json!({"req": {"caller": {"tier": 1}}}))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "req.caller: required field \"name\" is missing"
    );
    let e = idl
        .encode_args(echo, &json!({"req": {"numbers": [1, "x"]}}))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "req.numbers[1]: expected an i32, found a string"
    );
    let e = idl
        .encode_args(
            echo,
            &json!({"req": {"caller": {"name": "a", "tier": "PLATINUM"}}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("BRONZE, SILVER, GOLD"), "{e}");
    let e = idl.function(None, "Nope").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("service \"EchoService\" has no method \"Nope\""),
        "{e}"
    );
}

#[test]
fn a_declared_exception_is_told_from_success() {
    let idl = tools();
    let raise = idl.function(None, "Raise").unwrap();
    // The echo server sends a non-field-1 args struct back as it is: result field 2.
    let args = idl
        .encode_args(raise, &json!({"err": {"code": 7, "message": "no"}}))
        .unwrap();
    match idl.decode_result(raise, &args).unwrap() {
        Outcome::Exception {
            field,
            type_name,
            value,
        } => {
            assert_eq!(field, "err");
            assert_eq!(type_name, "base.EchoError");
            assert_eq!(value, json!({"code": 7, "message": "no"}));
        }
        other => panic!("{other:?}"),
    }
    let echo = idl.function(None, "Echo").unwrap();
    let mut result = idl
        .encode_args(echo, &json!({"req": {"message": "x"}}))
        .unwrap();
    result[2] = 0; // field 1 -> field 0, as the echo server does
    assert_eq!(
        idl.decode_result(echo, &result).unwrap(),
        Outcome::Success(json!({"message": "x"}))
    );
}

#[test]
fn a_bad_thrift_file_names_its_line() {
    let e = Idl::load(&idl_dir().join("bad.thrift"), &[]).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("bad.thrift"), "{s}");
    assert!(s.contains("line 7"), "{s}");
}

#[test]
fn a_missing_include_is_named() {
    let dir = std::env::temp_dir().join(format!("sluice-idl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.thrift");
    std::fs::write(
        &f,
        "include \"nowhere.thrift\"\nstruct A { 1: nowhere.B b }\n",
    )
    .unwrap();
    let e = Idl::load(&f, &[]).unwrap_err();
    assert!(matches!(e, Error::IncludeNotFound { .. }), "{e}");
    std::fs::write(&f, "struct A { 1: Missing b }\n").unwrap();
    let e = Idl::load(&f, &[]).unwrap_err();
    assert!(e.to_string().ends_with("unknown type \"Missing\""), "{e}");
    // Loops are refused, naming what loops.
    std::fs::write(&f, "typedef B A\ntypedef A B\nstruct S { 1: A a }\n").unwrap();
    let e = Idl::load(&f, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Loop {
                kind: "typedef",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("refers to itself"), "{e}");
    std::fs::write(&f, "service P extends Q {}\nservice Q extends P {}\n").unwrap();
    let e = Idl::load(&f, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Loop {
                kind: "service",
                ..
            }
        ),
        "{e}"
    );
    // A parent service that does not exist.
    std::fs::write(&f, "service P extends Nowhere {}\n").unwrap();
    let e = Idl::load(&f, &[]).unwrap_err();
    assert!(e.to_string().ends_with("unknown type \"Nowhere\""), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn proto_json_round_trips_and_errors_name_fields_and_lines() {
    let Idl::Proto(p) = Idl::load(&idl_dir().join("tools.proto"), &[]).unwrap() else {
        panic!("a proto IDL");
    };
    let m = p.method(Some("echo.EchoService"), "Echo").unwrap();
    assert_eq!(m.service_name(), "EchoService");
    assert_eq!(m.service_full_name(), "echo.EchoService");
    assert_eq!(
        p.method(None, "EchoBidi").unwrap().streaming(),
        StreamingMode::Bidi
    );
    let bytes = m
        .encode_request(r#"{"message": "hi", "tenant": "gold", "tier": "GOLD", "delta": -1}"#)
        .unwrap();
    assert_eq!(&bytes[..4], &[0x0a, 2, b'h', b'i']);
    assert_eq!(
        m.decode_response(&bytes).unwrap(),
        json!({"message": "hi", "tenant": "gold", "tier": "GOLD", "delta": -1})
    );
    let e = m.encode_request(r#"{"mesage": "hi"}"#).unwrap_err();
    assert!(e.to_string().contains("mesage"), "{e}");
    let e = Idl::load(&idl_dir().join("bad.proto"), &[]).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("bad.proto:7:"), "{s}");
}

#[test]
fn field_matches_read_one_thrift_field() {
    let idl = Idl::load(&idl_dir().join("tools.thrift"), &[]).unwrap();
    let Idl::Thrift(t) = &idl else { panic!() };
    let echo = t.function(None, "Echo").unwrap();
    let gold = FieldMatch::new(&idl, Some("EchoService"), "Echo", "req.tenant", "gold").unwrap();
    assert!(!gold.is_protobuf());
    let args = |v| t.encode_args(echo, &v).unwrap();
    assert!(gold.matches(&args(
        json!({"req": {"message": "m", "numbers": [1], "tenant": "gold"}})
    )));
    assert!(!gold.matches(&args(json!({"req": {"message": "m", "tenant": "silver"}}))));
    assert!(!gold.matches(&args(json!({"req": {"message": "m"}}))));
    assert!(!gold.matches(b"\x0c\x00\x01\x0b"));
    let tier = FieldMatch::new(&idl, None, "Echo", "req.caller.tier", "GOLD").unwrap();
    assert!(tier.matches(&args(
        json!({"req": {"caller": {"name": "a", "tier": "GOLD"}}})
    )));
    assert!(!tier.matches(&args(json!({"req": {"caller": {"name": "a", "tier": 2}}}))));
    let loud = FieldMatch::new(&idl, None, "Echo", "req.loud", "true").unwrap();
    assert!(loud.matches(&args(json!({"req": {"loud": true}}))));
    for (path, why) in [
        ("req.tenantx", "has no field \"tenantx\""),
        ("req.numbers", "not a scalar"),
        ("req.message.x", "not a struct"),
    ] {
        let e = FieldMatch::new(&idl, None, "Echo", path, "x").unwrap_err();
        assert!(e.to_string().contains(why), "{path}: {e}");
    }
    let e = FieldMatch::new(&idl, None, "Echo", "req.loud", "yes").unwrap_err();
    assert!(e.to_string().contains("true or false"), "{e}");
}

#[test]
fn field_matches_read_one_pb_field() {
    let idl = Idl::load(&idl_dir().join("tools.proto"), &[]).unwrap();
    let Idl::Proto(p) = &idl else { panic!() };
    let m = p.method(None, "Echo").unwrap();
    let gold = FieldMatch::new(&idl, None, "Echo", "tenant", "gold").unwrap();
    assert!(gold.is_protobuf());
    assert!(gold.matches(
        &m.encode_request(r#"{"message":"m","tenant":"gold"}"#)
            .unwrap()
    ));
    assert!(!gold.matches(
        &m.encode_request(r#"{"message":"m","tenant":"golden"}"#)
            .unwrap()
    ));
    assert!(!gold.matches(&m.encode_request(r#"{"message":"m"}"#).unwrap()));
    let tier = FieldMatch::new(&idl, None, "Echo", "tier", "GOLD").unwrap();
    assert!(tier.matches(&m.encode_request(r#"{"tier":"GOLD"}"#).unwrap()));
    let delta = FieldMatch::new(&idl, None, "Echo", "delta", "-3").unwrap();
    assert!(delta.matches(&m.encode_request(r#"{"delta":-3}"#).unwrap()));
    assert!(!delta.matches(&m.encode_request(r#"{"delta":3}"#).unwrap()));
}
