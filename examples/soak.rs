//! Soak driver behind `scripts/soak.sh`: runs `sluice echo` and `sluice run` as child processes
//! and sends mixed traffic through the proxy at a fixed rate for a number of minutes:
//!
//! * TTHeader ping-pong, 200 calls/s, 1 in 10 to `EchoFail` (an exception is expected);
//! * TTStream bidi streams, 40/s, 1 in 10 reset by the caller and 1 in 10 to `EchoBidiFail`
//!   (an error end is expected);
//! * gRPC unary calls, 100/s, 1 in 10 to `EchoBidiFail` and 1 in 10 reset by the caller.
//!
//! Every 10 s it samples the proxy's resident memory and open file descriptors. It fails when
//! either has grown by more than 10% over its value at the end of the first minute, judged on
//! the mean of the last minute's samples (a pool that grows for a burst and shrinks again when
//! its idle connections expire is not growth; fds are also allowed 4 more, as a pool's size
//! moves by a connection or two), or when any call errs in a way it did not ask for. The peak
//! of each is reported too.
//!
//! ```text
//! cargo run --release --example soak -- MINUTES [PATH-TO-SLUICE]
//! ```

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice::client::{Call, ClientConfig, Endpoint, GenericClient, OpenStream, TTStreamClient};
use sluice::http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice::stream::{ClientStream, Incoming, Metadata, Reset};

/// Counts of what the traffic saw.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    expected_errors: AtomicU64,
    resets: AtomicU64,
    unexpected: AtomicU64,
}

impl Counts {
    fn unexpected(&self, what: String) {
        if self.unexpected.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("soak: unexpected: {what}");
        }
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{addr} not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn thrift_args(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
    b.put_i32(msg.len() as i32);
    b.put_slice(msg);
    b.put_slice(&[0, 0]);
    b.freeze()
}

/// Runs `tick` `per_second` times a second until `end`, each on a task of its own, with at
/// most `max_in_flight` at once (a stalled proxy shows up as errors, not as unbounded tasks).
async fn at_rate<F, Fut>(per_second: u64, end: Instant, max_in_flight: usize, tick: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while Instant::now() < end {
        interval.tick().await;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= max_in_flight {
            continue;
        }
        tasks.spawn(tick(i));
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
}

/// Sends `msg`, half-closes, reads to the end; or resets after the first echo.
async fn stream_call(
    stream: ClientStream,
    msg: Bytes,
    reset: bool,
    expect_error: bool,
    counts: &Counts,
    what: &str,
) {
    let (tx, mut rx) = stream.split();
    if tx.send(msg.clone()).await.is_err() {
        counts.unexpected(format!("{what}: send failed"));
        return;
    }
    if reset {
        // Wait for the echo, then cancel.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Incoming::Message(_) => return,
                    Incoming::Headers(_) => {}
                    _ => return,
                }
            }
        })
        .await;
        tx.reset(Reset {
            // The caller's own cancel, as a Kitex TTStream client sends it.
            code: sluice::stream::ResetCode::TTStream(12007),
            message: "soak cancel".into(),
            cancel_path: None,
        })
        .await;
        counts.resets.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = tx.close_send().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Incoming::Headers(_) | Incoming::Message(_) => {}
                Incoming::End(e) => return Ok(e),
                Incoming::Reset(r) => return Err(r),
            }
        }
    })
    .await;
    match end {
        Ok(Ok(e)) if e.error.is_none() && !expect_error => {
            counts.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(e)) if e.error.is_some() && expect_error => {
            counts.expected_errors.fetch_add(1, Ordering::Relaxed);
        }
        other => counts.unexpected(format!("{what}: {other:?}")),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let minutes: f64 = args
        .next()
        .and_then(|m| m.parse().ok())
        .expect("usage: soak MINUTES [PATH-TO-SLUICE]");
    let bin = args
        .next()
        .unwrap_or_else(|| "target/release/sluice".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    std::process::exit(rt.block_on(soak(minutes, &bin)));
}

async fn soak(minutes: f64, bin: &str) -> i32 {
    let echo_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _echo = Proc(
        Command::new(bin)
            .args(["echo", "--listen", &echo_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sluice echo starts"),
    );
    wait_listening(echo_addr);
    let (port, grpc_port) = (free_port(), free_port());
    let config = format!(
        r#"
[[listeners]]
name = "streams"
address = "127.0.0.1:{port}"
cluster = "ttstream"
[[listeners]]
name = "grpc"
address = "127.0.0.1:{grpc_port}"
cluster = "grpc"
[[routes]]
service = "*"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo_addr}"]
[runtime]
worker_threads = 1
"#
    );
    let path = std::env::temp_dir().join(format!("sluice-soak-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let proxy = Proc(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sluice run starts"),
    );
    let pid = proxy.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let grpc_addr: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
    wait_listening(addr);
    wait_listening(grpc_addr);

    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let endpoint = vec![Endpoint { addr, weight: 1 }];
    let pingpong = Arc::new(GenericClient::new(ClientConfig::new(
        "soak",
        endpoint.clone(),
    )));
    let ttstream = Arc::new(TTStreamClient::new(ClientConfig::new("soak", endpoint)));
    let grpc = Arc::new(GrpcClient::new(GrpcClientConfig::new(vec![grpc_addr])));

    let pp = {
        let (c, counts) = (pingpong.clone(), counts.clone());
        at_rate(200, end, 400, move |i| {
            let (c, counts) = (c.clone(), counts.clone());
            async move {
                let fail = i % 10 == 0;
                let mut header = sluice::ttheader::Header::default();
                header
                    .str_kvs
                    .insert(sluice::ttheader::str_key::IDL_SERVICE_NAME, "EchoService");
                let call = Call {
                    method: if fail { "EchoFail" } else { "Echo" }.into(),
                    msg_type: sluice::thrift::MessageType::Call,
                    codec: sluice::sniff::Codec::Thrift,
                    args: thrift_args(format!("pp {i}").as_bytes()),
                    header,
                    deadline: Some(Instant::now() + Duration::from_secs(10)),
                };
                match c.call(call).await {
                    Ok(Some(r)) if r.msg_type == sluice::thrift::MessageType::Reply && !fail => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(r)) if r.msg_type == sluice::thrift::MessageType::Exception && fail => {
                        counts.expected_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    other => counts.unexpected(format!("ping-pong {i}: {other:?}")),
                }
            }
        })
    };
    let tt = {
        let (c, counts) = (ttstream.clone(), counts.clone());
        at_rate(40, end, 200, move |i| {
            let (c, counts) = (c.clone(), counts.clone());
            async move {
                let fail = i % 10 == 3;
                let open = OpenStream {
                    hash: None,
                    method: if fail { "EchoBidiFail" } else { "EchoBidi" }.into(),
                    service: "EchoService".into(),
                    headers: Metadata::new(),
                };
                match tokio::time::timeout(Duration::from_secs(10), c.open(open)).await {
                    Ok(Ok(s)) => {
                        let msg = thrift_args(format!("tt {i}").as_bytes());
                        stream_call(s, msg, i % 10 == 7, fail, &counts, "TTStream").await
                    }
                    other => counts.unexpected(format!("TTStream open: {other:?}")),
                }
            }
        })
    };
    let g = {
        let (c, counts) = (grpc.clone(), counts.clone());
        at_rate(100, end, 200, move |i| {
            let (c, counts) = (c.clone(), counts.clone());
            async move {
                let fail = i % 10 == 5;
                let req = OpenRequest {
                    path: format!(
                        "/echo.EchoService/{}",
                        if fail { "EchoBidiFail" } else { "Echo" }
                    ),
                    content_type: "application/grpc".into(),
                    authority: "soak".into(),
                    headers: Metadata::new(),
                    deadline: None,
                };
                match tokio::time::timeout(Duration::from_secs(10), c.open(&req)).await {
                    Ok(Ok(s)) => {
                        let msg = Bytes::from(format!("\x0a\x06g{:05}", i % 100_000).into_bytes());
                        stream_call(s, msg, i % 10 == 8, fail, &counts, "gRPC").await
                    }
                    other => counts.unexpected(format!("gRPC open: {other:?}")),
                }
            }
        })
    };
    let sampler = async {
        let mut samples: Vec<(u64, u64, u64)> = Vec::new();
        let mut next = start + Duration::from_secs(10);
        while next <= end {
            tokio::time::sleep_until(next.into()).await;
            let s = (start.elapsed().as_secs(), status_kib(pid), fds(pid));
            println!(
                "t={:>4}s rss={:>6} KiB fds={:>4} ok={} expected_errors={} resets={} unexpected={}",
                s.0,
                s.1,
                s.2,
                counts.ok.load(Ordering::Relaxed),
                counts.expected_errors.load(Ordering::Relaxed),
                counts.resets.load(Ordering::Relaxed),
                counts.unexpected.load(Ordering::Relaxed)
            );
            samples.push(s);
            next += Duration::from_secs(10);
        }
        samples
    };
    let (_, _, _, samples) = tokio::join!(pp, tt, g, sampler);
    let _ = std::fs::remove_file(&path);

    let mut failed = false;
    let unexpected = counts.unexpected.load(Ordering::Relaxed);
    if unexpected > 0 {
        println!("FAIL: {unexpected} calls erred unexpectedly");
        failed = true;
    }
    if counts.ok.load(Ordering::Relaxed) == 0 {
        println!("FAIL: no call succeeded");
        failed = true;
    }
    let last_t = samples.last().map_or(0, |s| s.0);
    match samples.iter().find(|s| s.0 >= 60) {
        Some(&(_, rss0, fds0)) if last_t >= 120 => {
            let later: Vec<_> = samples.iter().filter(|s| s.0 > 60).collect();
            let rss_peak = later.iter().map(|s| s.1).max().unwrap_or(rss0);
            let fds_peak = later.iter().map(|s| s.2).max().unwrap_or(fds0);
            let last_minute: Vec<_> = later.iter().filter(|s| s.0 + 60 > last_t).collect();
            let mean = |f: fn(&(u64, u64, u64)) -> u64| {
                last_minute.iter().map(|s| f(s) as f64).sum::<f64>() / last_minute.len() as f64
            };
            let (rss_end, fds_end) = (mean(|s| s.1), mean(|s| s.2));
            println!(
                "after the first minute: rss {rss0} KiB -> last-minute mean {rss_end:.0} KiB ({:+.1}%), peak {rss_peak} KiB; fds {fds0} -> last-minute mean {fds_end:.1}, peak {fds_peak}",
                (rss_end / rss0 as f64 - 1.0) * 100.0
            );
            if rss_end > rss0 as f64 * 1.10 {
                println!("FAIL: resident memory grew by more than 10%");
                failed = true;
            }
            if fds_end > (fds0 + (fds0 / 10).max(4)) as f64 {
                println!("FAIL: open file descriptors grew");
                failed = true;
            }
        }
        _ => println!("(shorter than two minutes: no growth check)"),
    }
    println!(
        "soak: {minutes} min, ok={} expected_errors={} resets={} unexpected={unexpected}: {}",
        counts.ok.load(Ordering::Relaxed),
        counts.expected_errors.load(Ordering::Relaxed),
        counts.resets.load(Ordering::Relaxed),
        if failed { "FAIL" } else { "PASS" }
    );
    i32::from(failed)
}
