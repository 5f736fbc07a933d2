//! `sluice bench`: a load generator for Sluice and for what it proxies.
//!
//! Closed loop (N callers, each sending its next request when the previous reply is in) or open
//! loop (a fixed request rate; latency is counted from when each request was due, so a stalled
//! server shows up in the percentiles instead of slowing the load). Every echoed payload is
//! checked. Reports throughput, p50/p90/p99/p999 from an HDR histogram, errors, and this
//! process's own CPU time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::human::duration as human;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use sluice_client::{Call, ClientConfig, Endpoint, GenericClient, Transport};
use sluice_server::echo::echo_result;
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::{str_key, Header};

/// What to send and how.
#[derive(Debug, Clone)]
pub(crate) struct BenchArgs {
    pub(crate) target: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) codec: Codec,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
    pub(crate) duration: Duration,
    pub(crate) requests: Option<u64>,
    pub(crate) rate: Option<u64>,
    pub(crate) warmup: Duration,
    pub(crate) json: bool,
    /// `None` for ping-pong; otherwise bidi streams of this family.
    pub(crate) stream: Option<StreamProto>,
    /// Messages per stream (streaming modes).
    pub(crate) messages: usize,
    /// Streaming modes: clients the callers are spread over.
    pub(crate) connections: usize,
    /// Send a W3C `traceparent` with every request and stream.
    pub(crate) traceparent: bool,
}

/// A sampled W3C trace context, as a traced caller sends it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The stream headers a caller of `proto` sends: none, or its trace context.
fn stream_headers(proto: StreamProto, traced: bool) -> sluice_stream::Metadata {
    let mut md = sluice_stream::Metadata::new();
    if traced {
        let key = match proto {
            StreamProto::TTStream => "RPC_TRANSIT_traceparent",
            StreamProto::Grpc | StreamProto::GrpcUnary => "traceparent",
        };
        md.push(key, TRACEPARENT);
    }
    md
}

/// Streaming families the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamProto {
    TTStream,
    Grpc,
    /// One protobuf message and a half-close per call, as a Kitex unary call sends it.
    GrpcUnary,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct BenchResult {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) p50: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) cpu: Duration,
}

/// CPU time (user + system) of this process, from /proc.
pub(crate) fn self_cpu() -> Duration {
    proc_cpu("self").unwrap_or_default()
}

/// CPU time (user + system) of process `pid` (`"self"` for this one), from /proc/PID/stat.
pub(crate) fn proc_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, which is 100 on every mainstream configuration.
    Some(Duration::from_millis(ticks * 10))
}

fn payload(codec: Codec, size: usize, caller: usize) -> Bytes {
    let mut msg = vec![b'x'; size];
    let tag = format!("c{caller}|");
    let n = tag.len().min(size);
    msg[..n].copy_from_slice(&tag.as_bytes()[..n]);
    let mut b = BytesMut::with_capacity(size + 16);
    match codec {
        Codec::Thrift => {
            b.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
            b.put_i32(size as i32);
            b.put_slice(&msg);
            b.put_slice(&[0, 0]);
        }
        Codec::KitexProtobuf => {
            b.put_u8(0x0a);
            let mut n = size;
            while n >= 0x80 {
                b.put_u8((n as u8) | 0x80);
                n >>= 7;
            }
            b.put_u8(n as u8);
            b.put_slice(&msg);
        }
    }
    b.freeze()
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Bidi streams: each caller opens a stream, sends `messages` messages one at a time waiting for
/// each echo, half-closes, reads the end, and starts over. Latency is per message.
async fn run_streams(a: BenchArgs, proto: StreamProto) -> BenchResult {
    // Caller `i` uses client `i % connections`: each client has connections of its own.
    let tts: Vec<Arc<sluice_client::TTStreamClient>> = (0..a.connections)
        .map(|_| {
            Arc::new(sluice_client::TTStreamClient::new(ClientConfig::new(
                "bench",
                vec![Endpoint {
                    addr: a.target,
                    weight: 1,
                }],
            )))
        })
        .collect();
    let grpcs: Vec<Arc<sluice_http2::GrpcClient>> = (0..a.connections)
        .map(|_| {
            Arc::new(sluice_http2::GrpcClient::new(
                sluice_http2::GrpcClientConfig::new(vec![a.target]),
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(a.warmup.is_zero()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..a.concurrency {
        let (tt, grpc, stop, recording, sent) = (
            tts[caller % tts.len()].clone(),
            grpcs[caller % grpcs.len()].clone(),
            stop.clone(),
            recording.clone(),
            sent.clone(),
        );
        let msg = payload(Codec::Thrift, a.size, caller);
        let per_stream = a.messages.max(1);
        let limit = a.requests;
        let traced = a.traceparent;
        tasks.spawn(async move {
            let mut hist = new_hist();
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                // With --requests, count messages (a unary call is one), a stream at a time.
                if let Some(limit) = limit {
                    let take = if proto == StreamProto::GrpcUnary {
                        1
                    } else {
                        per_stream
                    };
                    if sent.fetch_add(take as u64, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                let opened = match proto {
                    StreamProto::TTStream => tt
                        .open(sluice_client::OpenStream {
                            hash: None,
                            method: "EchoBidi".into(),
                            service: "EchoService".into(),
                            headers: stream_headers(proto, traced),
                        })
                        .await
                        .ok(),
                    StreamProto::Grpc | StreamProto::GrpcUnary => grpc
                        .open(&sluice_http2::OpenRequest {
                            path: if proto == StreamProto::GrpcUnary {
                                "/echo.EchoService/Echo".into()
                            } else {
                                "/EchoService/EchoBidi".into()
                            },
                            content_type: if proto == StreamProto::GrpcUnary {
                                "application/grpc".into()
                            } else {
                                "application/grpc+thrift".into()
                            },
                            authority: "EchoService".into(),
                            headers: stream_headers(proto, traced),
                            deadline: None,
                        })
                        .await
                        .ok(),
                };
                let Some(stream) = opened else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (tx, mut rx) = stream.split();
                if proto == StreamProto::GrpcUnary {
                    // Unary: the message and the half-close go out together; the call ends with
                    // the reply and the status.
                    let start = Instant::now();
                    let sent = tx.send(msg.clone()).await.is_ok() && tx.close_send().await.is_ok();
                    let mut echoed = false;
                    let mut good = false;
                    while sent && !good {
                        match rx.recv().await {
                            sluice_stream::Incoming::Headers(_) => {}
                            sluice_stream::Incoming::Message(m) => echoed = m == msg,
                            sluice_stream::Incoming::End(e) => {
                                good = echoed && e.error.is_none();
                                break;
                            }
                            sluice_stream::Incoming::Reset(_) => break,
                        }
                    }
                    if recording.load(Ordering::Relaxed) {
                        if good {
                            ok += 1;
                            let _ = hist.record(start.elapsed().as_micros().max(1) as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    continue;
                }
                for _ in 0..per_stream {
                    let start = Instant::now();
                    if tx.send(msg.clone()).await.is_err() {
                        errors += 1;
                        break;
                    }
                    let good = loop {
                        match rx.recv().await {
                            sluice_stream::Incoming::Headers(_) => continue,
                            sluice_stream::Incoming::Message(m) => break m == msg,
                            _ => break false,
                        }
                    };
                    if recording.load(Ordering::Relaxed) {
                        if good {
                            ok += 1;
                            let _ = hist.record(start.elapsed().as_micros().max(1) as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    if !good {
                        break;
                    }
                }
                let _ = tx.close_send().await;
                loop {
                    match rx.recv().await {
                        sluice_stream::Incoming::End(_) | sluice_stream::Incoming::Reset(_) => {
                            break
                        }
                        _ => {}
                    }
                }
            }
            (hist, ok, errors)
        });
    }
    finish(a, tasks, stop, recording).await
}

async fn finish(
    a: BenchArgs,
    mut tasks: tokio::task::JoinSet<(Histogram<u64>, u64, u64)>,
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
) -> BenchResult {
    if !a.warmup.is_zero() {
        tokio::time::sleep(a.warmup).await;
        recording.store(true, Ordering::Relaxed);
    }
    let cpu0 = self_cpu();
    let start = Instant::now();
    if a.requests.is_none() {
        tokio::time::sleep(a.duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut hist = new_hist();
    let (mut ok, mut errors) = (0, 0);
    while let Some(Ok((h, o, e))) = tasks.join_next().await {
        let _ = hist.add(h);
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    let q = |p: f64| Duration::from_micros(hist.value_at_quantile(p));
    BenchResult {
        ok,
        errors,
        elapsed,
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        cpu: self_cpu().saturating_sub(cpu0),
    }
}

pub(crate) async fn run(a: BenchArgs) -> BenchResult {
    if let Some(proto) = a.stream {
        return run_streams(a, proto).await;
    }
    let mut cfg = ClientConfig::new(
        "bench",
        vec![Endpoint {
            addr: a.target,
            weight: 1,
        }],
    );
    cfg.transport = a.transport;
    cfg.request_timeout = Duration::from_secs(10);
    cfg.max_idle_per_endpoint = a.concurrency.max(64);
    let client = Arc::new(GenericClient::new(cfg));
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(a.warmup.is_zero()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let per_caller_interval = a
        .rate
        .map(|r| Duration::from_secs_f64(a.concurrency as f64 / r.max(1) as f64));
    for caller in 0..a.concurrency {
        let client = client.clone();
        let stop = stop.clone();
        let recording = recording.clone();
        let sent = sent.clone();
        let args = payload(a.codec, a.size, caller);
        let expect = match a.codec {
            Codec::Thrift => echo_result(&args),
            Codec::KitexProtobuf => args.clone(),
        };
        let codec = a.codec;
        let limit = a.requests;
        let traced = a.traceparent;
        tasks.spawn(async move {
            let mut hist = new_hist();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut header = Header::default();
            header.str_kvs.insert(str_key::IDL_SERVICE_NAME, "EchoService");
            if traced {
                header
                    .str_kvs
                    .insert("RPC_TRANSIT_traceparent", TRACEPARENT);
            }
            let mut next_due = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(limit) = limit {
                    if sent.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                let start = match per_caller_interval {
                    Some(iv) => {
                        // Open loop: wait for the slot, but time from when it was due.
                        let due = next_due;
                        next_due += iv;
                        if due > Instant::now() {
                            tokio::time::sleep_until(due.into()).await;
                        }
                        due
                    }
                    None => Instant::now(),
                };
                let call = Call {
                    method: "Echo".to_owned(),
                    msg_type: MessageType::Call,
                    codec,
                    args: args.clone(),
                    header: header.clone(),
                    deadline: None,
                };
                let res = client.call(call).await;
                let good = matches!(&res, Ok(Some(r)) if r.msg_type == MessageType::Reply && r.body == expect);
                if recording.load(Ordering::Relaxed) {
                    if good {
                        ok += 1;
                        let us = start.elapsed().as_micros().max(1) as u64;
                        let _ = hist.record(us.min(60_000_000));
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        });
    }
    finish(a, tasks, stop, recording).await
}

pub(crate) fn print(a: &BenchArgs, r: &BenchResult) {
    let rps = r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    if a.json {
        println!(
            "{{\"target\":\"{}\",\"protocol\":\"{}\",\"transport\":\"{}\",\"codec\":\"{:?}\",\"size\":{},\"concurrency\":{},\"connections\":{},\"ok\":{},\"errors\":{},\"seconds\":{:.3},\"rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"loadgen_cpu_s\":{:.3}}}",
            a.target,
            match a.stream {
                None => "pingpong",
                Some(StreamProto::TTStream) => "ttstream",
                Some(StreamProto::Grpc) => "grpc",
                Some(StreamProto::GrpcUnary) => "grpc-unary",
            },
            a.transport.as_str(),
            a.codec,
            a.size,
            a.concurrency,
            if a.stream.is_some() {
                a.connections
            } else {
                a.concurrency
            },
            r.ok,
            r.errors,
            r.elapsed.as_secs_f64(),
            rps,
            r.p50.as_micros(),
            r.p90.as_micros(),
            r.p99.as_micros(),
            r.p999.as_micros(),
            r.cpu.as_secs_f64()
        );
    } else {
        println!(
            "target {} transport {} codec {:?} size {} B, {} callers{}",
            a.target,
            a.transport.as_str(),
            a.codec,
            a.size,
            a.concurrency,
            a.rate
                .map(|r| format!(", open loop at {r}/s"))
                .unwrap_or_default()
        );
        println!(
            "{} ok, {} errors in {}: {:.0} req/s; p50 {} p90 {} p99 {} p999 {}; load generator CPU {}",
            r.ok,
            r.errors,
            human(r.elapsed),
            rps,
            human(r.p50),
            human(r.p90),
            human(r.p99),
            human(r.p999),
            human(r.cpu)
        );
    }
}
