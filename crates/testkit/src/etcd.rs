//! A real, throw-away etcd for integration tests.
//!
//! [`EtcdServer::start`] runs the `etcd` binary found on `PATH` (Debian's `etcd-server` package)
//! on free loopback ports with a fresh data directory, and waits until it answers. The helpers
//! ([`EtcdServer::put`], [`EtcdServer::del`], [`EtcdServer::get_prefix`], ...) run `etcdctl`
//! (Debian's `etcd-client` package, API v3), so tests check Sluice's etcd code against an
//! independent client rather than against itself.
//!
//! When `etcd` or `etcdctl` is missing, [`EtcdServer::start`] prints why and returns `None`, so the
//! test can skip; with `SLUICE_REQUIRE_ETCD=1` in the environment it panics instead (for CI, where
//! a silent skip would hide a missing install step).
//!
//! [`EtcdServer::stop`] and [`EtcdServer::restart`] simulate an outage: the process is killed and
//! later started again on the same ports with the same data.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that turns "etcd not installed" from a skip into a panic.
pub const REQUIRE_ENV: &str = "SLUICE_REQUIRE_ETCD";

/// How long [`EtcdServer::start`] and [`EtcdServer::restart`] wait for etcd to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Timeouts passed to every `etcdctl` run, so a helper never hangs on a stopped server.
const ETCDCTL_TIMEOUTS: [&str; 2] = ["--dial-timeout=2s", "--command-timeout=5s"];

/// PEM material for an etcd that serves its clients over TLS ([`EtcdServer::start_tls`]).
#[derive(Debug, Clone)]
pub struct EtcdTlsPem {
    /// The CA that signed the server (and client) certificates.
    pub ca_cert: String,
    /// The server certificate; it must name `127.0.0.1` (IP SAN).
    pub server_cert: String,
    /// The server certificate's private key.
    pub server_key: String,
    /// A client certificate and key signed by the CA. When set, etcd requires client
    /// certificates (`--client-cert-auth`) and `etcdctl` presents this one.
    pub client: Option<(String, String)>,
}

/// Paths of the PEM files written for a TLS server.
#[derive(Debug)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// One running (or stopped) etcd member. Killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct EtcdServer {
    etcd: PathBuf,
    etcdctl: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    root: PathBuf,
    tls: Option<TlsFiles>,
    /// `user:password` for etcdctl once authentication is enabled.
    auth: Option<String>,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits (at most 20 s) until a write and a read
    /// through `etcdctl` succeed.
    ///
    /// Returns `None`, after printing why to stderr, when `etcd` or `etcdctl` is not on `PATH`,
    /// unless `SLUICE_REQUIRE_ETCD=1`, in which case it panics. Panics when etcd is installed
    /// but does not come up.
    pub fn start() -> Option<EtcdServer> {
        EtcdServer::start_with(None)
    }

    /// Like [`start`](Self::start), with TLS on the client port (`https://127.0.0.1:<port>`);
    /// peers stay plain. `etcdctl` is given the CA (and the client certificate, if any).
    pub fn start_tls(pem: EtcdTlsPem) -> Option<EtcdServer> {
        EtcdServer::start_with(Some(pem))
    }

    fn start_with(pem: Option<EtcdTlsPem>) -> Option<EtcdServer> {
        let (etcd, etcdctl) = match (find_in_path("etcd"), find_in_path("etcdctl")) {
            (Some(etcd), Some(etcdctl)) => (etcd, etcdctl),
            (etcd, _) => {
                let missing = if etcd.is_none() { "etcd" } else { "etcdctl" };
                let install = "install Debian's etcd-server and etcd-client packages \
                               (apt-get install etcd-server etcd-client)";
                if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                    panic!("{missing} not found on PATH and {REQUIRE_ENV}=1: {install}");
                }
                eprintln!(
                    "{missing} not found on PATH: skipping this etcd test; {install} to run it"
                );
                return None;
            }
        };
        let root = unique_dir();
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        let tls = pem.map(|pem| {
            let write = |name: &str, text: &str| {
                let path = root.join(name);
                std::fs::write(&path, text)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                path
            };
            TlsFiles {
                ca: write("ca.pem", &pem.ca_cert),
                cert: write("server.pem", &pem.server_cert),
                key: write("server-key.pem", &pem.server_key),
                client: pem
                    .client
                    .as_ref()
                    .map(|(cert, key)| (write("client.pem", cert), write("client-key.pem", key))),
            }
        });
        let mut server = EtcdServer {
            etcd,
            etcdctl,
            child: None,
            client_port: 0,
            peer_port: 0,
            root,
            tls,
            auth: None,
        };
        // Free ports are picked by binding port 0 and letting go, so another process can take
        // one before etcd binds it: try a few pairs.
        let mut last_error = String::new();
        for _ in 0..3 {
            server.client_port = free_port();
            server.peer_port = free_port();
            if server.client_port == server.peer_port {
                continue;
            }
            // A failed attempt may have left a half-initialised member behind.
            let _ = std::fs::remove_dir_all(server.data_dir());
            match server.spawn_and_wait() {
                Ok(()) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!(
            "etcd did not start: {last_error}\n--- etcd log ---\n{}",
            server.log()
        );
    }

    /// The client endpoint, `127.0.0.1:<port>` (no scheme), as given to an etcd client.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client endpoint with its scheme, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// Turns on etcd authentication: creates user `root` with `password` (which also has the
    /// root role) and enables auth. Later `etcdctl` helpers run as `root`. Panics on failure.
    pub fn enable_auth(&mut self, password: &str) {
        self.etcdctl_ok(&[
            "user",
            "add",
            "root",
            &format!("--new-user-password={password}"),
        ]);
        self.etcdctl_ok(&["auth", "enable"]);
        self.auth = Some(format!("root:{password}"));
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Whether the process is running (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills etcd (SIGKILL, an abrupt outage) and waits for it to exit. Keeps the data
    /// directory and the ports for [`restart`](Self::restart). Does nothing when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The kernel closes the listener when the process dies; wait (bounded) until the port no
        // longer accepts, so a test that stops etcd sees it gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.client_port_accepts() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing is answered, like a hung or
    /// partitioned server. Undo with [`resume`](Self::resume). Does nothing when stopped.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d etcd run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap_or_else(|e| panic!("running kill {sig}: {e}"));
            assert!(status.success(), "kill {sig} failed: {status}");
        }
    }

    /// Starts etcd again on the same ports with the same data directory, and waits (at most
    /// 20 s) until it answers. Panics if it does not come up. Stops it first if it is running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!(
                "etcd did not restart: {e}\n--- etcd log ---\n{}",
                self.log()
            );
        }
    }

    /// `etcdctl put key value`. Panics on failure.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// `etcdctl del key`; returns how many keys were deleted (0 or 1). Panics on failure.
    pub fn del(&self, key: &str) -> u64 {
        let out = self.etcdctl_ok(&["del", "--", key]);
        out.trim().parse().unwrap_or(0)
    }

    /// `etcdctl get --prefix prefix`: the keys and values under `prefix`, in key order.
    ///
    /// Parses etcdctl's simple output (a key line, then a value line), so values must not contain
    /// newlines. Panics on failure.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl_ok(&["get", "--prefix", "--", prefix]);
        let mut lines = out.lines();
        let mut pairs = Vec::new();
        while let Some(key) = lines.next() {
            let value = lines.next().unwrap_or_default();
            pairs.push((key.to_string(), value.to_string()));
        }
        pairs
    }

    /// `etcdctl get key`: the value, if the key exists. Panics on failure.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_prefix(key)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The lease id attached to `key` (`etcdctl get -w fields`): `Some(0)` when the key has no
    /// lease, `None` when the key does not exist. Panics on failure.
    pub fn lease_of(&self, key: &str) -> Option<i64> {
        let out = self.etcdctl_ok(&["get", "-w", "fields", "--", key]);
        let mut lease = None;
        let mut found_key = false;
        for line in out.lines() {
            let Some((name, value)) = line.split_once(" : ") else {
                continue;
            };
            match name.trim() {
                "\"Key\"" => found_key = true,
                "\"Lease\"" => lease = value.trim().parse().ok(),
                _ => {}
            }
        }
        if found_key {
            Some(lease.unwrap_or(0))
        } else {
            None
        }
    }

    /// The remaining TTL in seconds of a lease (`etcdctl lease timetolive`, hex id), or `None`
    /// when the lease has expired or does not exist. Panics on failure.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let id = format!("{lease:x}");
        let out = self.etcdctl_ok(&["lease", "timetolive", &id]);
        // "lease 694d7b1a0e2b6d04 granted with TTL(60s), remaining(57s)" or "... already expired".
        let start = out.find("remaining(")? + "remaining(".len();
        let rest = &out[start..];
        let end = rest.find("s)")?;
        rest[..end].parse::<i64>().ok().filter(|ttl| *ttl >= 0)
    }

    /// Runs `etcdctl` against this server with the given arguments (API v3, short timeouts).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .args(ETCDCTL_TIMEOUTS);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca);
            if let Some((cert, key)) = &tls.client {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        if let Some(user) = &self.auth {
            cmd.arg(format!("--user={user}"));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.etcdctl.display()))
    }

    /// Runs `etcdctl` and returns its stdout; panics with its stderr when it fails.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What etcd has logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("etcd.log")
    }

    fn client_port_accepts(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }

    /// Spawns the process and waits until it serves a put and a get. On failure the process is
    /// killed and the reason returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.etcd);
        if let Some(tls) = &self.tls {
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--cert-file").arg(&tls.cert);
            cmd.arg("--key-file").arg(&tls.key);
            if tls.client.is_some() {
                cmd.arg("--client-cert-auth");
            }
        }
        let child = cmd
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            // One member: a short election timeout makes it leader sooner after each start.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.etcd.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("etcd exited during start-up: {status}"));
                }
            }
            if self.client_port_accepts() && self.ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "etcd on {} not ready within {READY_TIMEOUT:?}",
                    self.endpoint()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A put and a get of a probe key succeed.
    fn ready(&self) -> bool {
        const PROBE: &str = "__sluice_testkit_probe";
        self.etcdctl(&["put", PROBE, "1"]).status.success()
            && {
                let got = self.etcdctl(&["get", PROBE]);
                got.status.success() && String::from_utf8_lossy(&got.stdout).contains(PROBE)
            }
            && self.etcdctl(&["del", PROBE]).status.success()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The first executable file called `name` in `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a free port");
    listener.local_addr().expect("local_addr").port()
}

/// A directory name under the system temp dir that no other server (of this or another test
/// process) uses.
fn unique_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "sluice-etcd-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
