//! `sluice decode` against every ping-pong and TTStream Kitex capture: the frames it prints
//! carry the offsets, lengths, seq ids, methods, metainfo and payload strings DECODED.md lists.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;
use sluice_testkit::{captures_dir, Capture, Dir};

use crate::sluice;

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn decode(path: &std::path::Path, extra: &[&str]) -> (Vec<Value>, std::process::Output) {
    let out = Command::new(sluice())
        .arg("decode")
        .arg("--json")
        .args(extra)
        .arg(path)
        .output()
        .expect("run sluice decode");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (frames, out)
}

#[test]
fn decode_lists_what_decoded_md_lists_for_every_pingpong_and_ttstream_capture() {
    let mut names: Vec<String> = std::fs::read_dir(captures_dir())
        .expect("captures")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("DECODED.md").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("grpc-"))
        .collect();
    names.sort();
    assert!(names.len() >= 18, "captures found: {names:?}");
    let mut checked = 0;
    for name in &names {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let mut want = cap.frames_of(conn.index, dir);
                if want.is_empty() {
                    continue;
                }
                want.sort_by_key(|e| e.offset);
                let path = captures_dir().join(name).join(format!(
                    "conn{}.{}.bin",
                    conn.index,
                    dir.as_str()
                ));
                let (got, out) = decode(&path, &[]);
                let what = format!("{name} conn{} {}", conn.index, dir.as_str());
                assert!(
                    out.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(got.len(), want.len(), "{what}: frame count");
                for (g, e) in got.iter().zip(&want) {
                    let at = format!("{what} frame at {}", e.offset);
                    assert_eq!(g["offset"], e.offset, "{at}");
                    assert_eq!(g["length"], e.len, "{at}");
                    if let Some(seq) = e.seq_id {
                        assert_eq!(g["seq_id"], seq, "{at}: TTHeader seq / stream id");
                    }
                    let msg = &g["message"];
                    if let Some(m) = &e.method {
                        // The envelope's method, or a TTStream frame's (integer key 9).
                        let got = if msg["method"].is_null() {
                            &g["stream"]["method"]
                        } else {
                            &msg["method"]
                        };
                        assert_eq!(got, m.as_str(), "{at}: method");
                    }
                    if let Some(s) = e.msg_seq_id {
                        assert_eq!(msg["seq_id"], s, "{at}: message seq id");
                    }
                    let str_kvs: BTreeMap<String, String> = g["str_kvs"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    assert_eq!(str_kvs, e.str_kvs, "{at}: metainfo");
                    let int_kvs: BTreeMap<u16, String> = g["int_kvs"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    let n = k.split(' ').next().unwrap().parse().unwrap();
                                    (n, v.as_str().unwrap_or("").to_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    assert_eq!(int_kvs, e.int_kvs, "{at}: integer keys");
                    let mut found = Vec::new();
                    strings(g, &mut found);
                    for s in &e.payload_strings {
                        assert!(found.contains(s), "{at}: payload string {s:?} not in {g}");
                    }
                    if let Some(m) = &e.exception_message {
                        assert!(found.contains(m), "{at}: exception {m:?} not in {g}");
                    }
                    if let Some(t) = e.exception_type {
                        let ty = msg["exception"]["type"]
                            .as_i64()
                            .or(g["stream"]["exception"]["type"].as_i64());
                        assert_eq!(ty, Some(t as i64), "{at}: exception type");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 80, "only {checked} frames checked");
}

#[test]
fn decode_names_fields_with_an_idl_and_reads_hex_on_stdin() {
    let path = captures_dir().join("ttheader-unary").join("conn0.c2s.bin");
    let idl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("idl/echo.thrift");
    let (frames, out) = decode(&path, &["--idl", idl.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        frames[0]["message"]["payload"]["req"]["message"],
        "kx00000000.0000|"
    );
    // Kitex protobuf by field number without an IDL, by name with the .proto.
    let pb = captures_dir().join("pb-unary").join("conn0.c2s.bin");
    let (frames, out) = decode(&pb, &[]);
    assert!(out.status.success());
    let first = &frames[0]["message"];
    assert_eq!(first["codec"], "kitex-protobuf");
    assert_eq!(first["payload"]["1"], "kx00000000.0000|");
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("idl/echo.proto");
    let (frames, out) = decode(&pb, &["--idl", proto.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        frames[0]["message"]["payload"],
        serde_json::json!({"message": "kx00000000.0000|"})
    );
    // The same frame as hex text on stdin, in the text form.
    let bytes = std::fs::read(&path).unwrap();
    let hex: String = bytes[..178].iter().map(|b| format!("{b:02x} ")).collect();
    let mut child = Command::new(sluice())
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("frame 0 at byte 0 (178 bytes): ttheader, seq 1"),
        "{text}"
    );
    assert!(text.contains("thrift CALL \"Echo\" seq 1"), "{text}");
    assert!(
        text.contains(r#"{"1:struct":{"1:string":"kx00000000.0000|"}}"#),
        "{text}"
    );
    assert!(text.contains("str isn = \"EchoService\""), "{text}");
}

#[test]
fn decode_stops_at_bytes_that_are_not_a_frame_and_says_where() {
    let dir = std::env::temp_dir().join(format!("sluice-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.bin");
    // One valid Framed message, then junk.
    let mut b = std::fs::read(captures_dir().join("framed-unary").join("conn0.c2s.bin")).unwrap();
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize + 4;
    b.truncate(first);
    b.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    std::fs::write(&f, &b).unwrap();
    let (frames, out) = decode(&f, &["--raw"]);
    assert_eq!(frames.len(), 1);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("at byte {first}")), "{err}");
    assert!(err.contains("HTTP/1"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
