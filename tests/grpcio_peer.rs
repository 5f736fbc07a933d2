//! Interop with grpcio (the Python gRPC implementation, from PyPI) as a second independent gRPC
//! peer: a grpcio client → the real `sluice` binary (a `cluster = "grpc"` listener) → a grpcio
//! server. The checks themselves live in `tests/peers/grpcio_peer.py`; this test runs it.
//!
//! A second run puts TLS with required client certificates on Sluice's listener: grpcio with a
//! client certificate (`grpc.ssl_channel_credentials`) passes the checks, without one it is
//! refused.
//!
//! Without a `python3` that can `import grpc` the tests print why and pass, unless
//! `SLUICE_REQUIRE_GRPCIO` is set, in which case they fail.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the whole script may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Set to make a missing grpcio a failure instead of a skip.
const REQUIRE_ENV: &str = "SLUICE_REQUIRE_GRPCIO";

/// The Python interpreter: `$PYTHON3` if set, else `python3` on the `PATH`.
fn python() -> PathBuf {
    std::env::var_os("PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `Ok(version)` when `python` can import grpcio, else why not.
fn grpcio_version(python: &Path) -> Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        Err(format!(
            "{} cannot import grpc: {}",
            python.display(),
            last.trim()
        ))
    }
}

/// Sends `signal` to the process group led by `child` (the script and the `sluice` it started).
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .status();
}

/// Waits for `child` up to `limit`; on expiry stops its whole process group and returns `None`.
fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll the grpcio script") {
            return Some(status);
        }
        if start.elapsed() >= limit {
            signal_group(child, "-TERM");
            std::thread::sleep(Duration::from_secs(2));
            signal_group(child, "-KILL");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads all of `r` on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs the peer script with `args` after `--sluice`, or skips (see the module's rule).
fn run_script(args: &[&std::ffi::OsStr]) {
    let python = python();
    let version = match grpcio_version(&python) {
        Ok(v) => v,
        Err(why) => {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{REQUIRE_ENV} is set but grpcio is not usable: {why} (pip install grpcio)");
            }
            println!("skipped: grpcio not installed (pip install grpcio): {why}");
            return;
        }
    };
    println!("grpcio {version} via {}", python.display());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpcio_peer.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("--sluice")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        // Its own process group, so a timeout can stop the script and `sluice` together.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the grpcio peer script");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_with_timeout(&mut child, SCRIPT_TIMEOUT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let output = format!("---- stdout ----\n{stdout}---- stderr ----\n{stderr}");

    match status {
        None => panic!(
            "the grpcio peer script did not finish within {SCRIPT_TIMEOUT:?} and was killed\n{output}"
        ),
        Some(s) if !s.success() => panic!("the grpcio peer script failed ({s})\n{output}"),
        Some(_) => print!("{stdout}"),
    }
}

#[test]
fn grpcio_client_through_sluice_to_grpcio_server() {
    run_script(&[]);
}

/// A CA and two certificates it signed (Sluice's listener, for `localhost` and 127.0.0.1, and
/// grpcio's client), written to `dir`: the script's mutual-TLS arguments.
fn mtls_files(dir: &Path) -> Vec<std::ffi::OsString> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "sluice grpcio test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |name: &str| {
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("sluice");
    let (client_cert, client_key) = leaf("grpcio client");
    let mut args = Vec::new();
    for (flag, file, contents) in [
        ("--listener-cert", "server.pem", &server_cert),
        ("--listener-key", "server-key.pem", &server_key),
        ("--client-ca", "ca.pem", &ca_pem),
        ("--root-ca", "ca.pem", &ca_pem),
        ("--client-cert", "client.pem", &client_cert),
        ("--client-key", "client-key.pem", &client_key),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, contents).unwrap();
        args.push(flag.into());
        args.push(path.into_os_string());
    }
    args
}

#[test]
fn grpcio_client_with_a_client_certificate_through_a_mutual_tls_listener() {
    let dir = std::env::temp_dir().join(format!("sluice-grpcio-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = mtls_files(&dir);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_script(&args);
    let _ = std::fs::remove_dir_all(&dir);
}
