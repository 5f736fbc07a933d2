//! The `sluice` binary: `run`, `check`, `demo`, `echo`, `bench`, `call` and `decode`. Everything else lives in the library crates.

mod bench;
mod call;
mod decode;
mod demo;
mod human;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_otlp::{Exporting, SpanExport};
use sluice_proxy::{Config, DefaultPhases, Phases, Proxy};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Kitex-compatible multi-protocol generic proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the proxy described by a TOML file until SIGINT/SIGTERM, then drains. SIGHUP
    /// reloads the file.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Also reload when the file changes (checked every second).
        #[arg(long)]
        watch: bool,
    },
    /// Checks a configuration file and prints the effective listeners, routes and downstreams.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Runs an echo service (every ping-pong protocol on one port), for tests and benchmarks.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8888")]
        listen: String,
    },
    /// Sends echo requests to a target and reports throughput, latency percentiles and errors.
    Bench {
        /// Address of the server or proxy.
        #[arg(long)]
        target: String,
        /// ttheader | ttheader-unframed | framed | buffered.
        #[arg(long, default_value = "ttheader")]
        transport: String,
        /// thrift | kitex-pb.
        #[arg(long, default_value = "thrift")]
        codec: String,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Concurrent callers (each with its own connection while its call is in flight).
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Seconds to run (ignored with --requests).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many requests (streams: messages) instead of after --duration.
        #[arg(long)]
        requests: Option<u64>,
        /// Open loop: total requests per second (default: closed loop).
        #[arg(long)]
        rate: Option<u64>,
        /// Seconds of traffic before measuring starts.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// pingpong | ttstream | grpc (bidi streams) | grpc-unary.
        #[arg(long, default_value = "pingpong")]
        protocol: String,
        /// Messages per stream in the streaming modes.
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// Streaming modes: clients the callers are spread over (gRPC: one HTTP/2 connection
        /// each; TTStream: two connections each, as Kitex's mux pool). Ping-pong callers each
        /// have a connection of their own.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Sends a W3C `traceparent` with every request and stream (TTHeader and TTStream:
        /// `RPC_TRANSIT_traceparent`; gRPC: `traceparent`), as a traced Kitex caller does.
        #[arg(long)]
        traceparent: bool,
    },
    /// Calls a method of a Kitex-speaking server (TTHeader, Framed, Buffered, TTStream, gRPC):
    /// JSON in, JSON out, the IDL read at run time.
    Call(call::CallArgs),
    /// Prints the frames of a TTHeader / Framed / Buffered / TTStream byte stream, or one
    /// thrift or Kitex protobuf message: headers, metainfo, envelope, payload as JSON.
    Decode(decode::DecodeArgs),
    /// Starts echo services and the proxy on loopback, sends traffic of every protocol through
    /// it, prints a table, then keeps serving (no configuration needed).
    Demo {
        /// Requests per protocol.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent callers per protocol.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Exit after printing the table instead of serving on.
        #[arg(long)]
        exit: bool,
    },
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    // `run` reads its configuration first: it says how many worker threads to start.
    let run_config = match &cli.command {
        Command::Run { config, .. } => match Config::load(config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("sluice: {}: {e}", config.display());
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let threads = run_config.as_ref().and_then(|c| c.worker_threads);
    let mut builder = if threads == Some(1) {
        // One thread: the runtime runs on the main thread itself, and a task woken by another
        // never has to be handed across threads.
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.describe());
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config, watch } => {
            // Loaded above, before the runtime.
            let Some(cfg) = run_config else {
                return ExitCode::FAILURE;
            };
            if cfg.listeners.is_empty() {
                eprintln!(
                    "sluice: {}: listeners: at least one listener is needed",
                    config.display()
                );
                return ExitCode::FAILURE;
            }
            rt.block_on(run(cfg, config, watch))
        }
        Command::Echo { listen } => rt.block_on(echo(listen)),
        Command::Call(args) => rt.block_on(call::run(args)),
        Command::Decode(args) => decode::run(args),
        Command::Bench {
            target,
            transport,
            codec,
            size,
            concurrency,
            duration,
            requests,
            rate,
            warmup,
            json,
            protocol,
            messages,
            connections,
            traceparent,
        } => {
            let stream = match protocol.as_str() {
                "pingpong" => None,
                "ttstream" => Some(bench::StreamProto::TTStream),
                "grpc" => Some(bench::StreamProto::Grpc),
                "grpc-unary" => Some(bench::StreamProto::GrpcUnary),
                other => {
                    eprintln!("sluice bench: --protocol: unknown protocol {other:?} (pingpong, ttstream, grpc or grpc-unary)");
                    return ExitCode::from(2);
                }
            };
            let target = match std::net::ToSocketAddrs::to_socket_addrs(&target)
                .ok()
                .and_then(|mut a| a.next())
            {
                Some(t) => t,
                None => {
                    eprintln!("sluice bench: --target: cannot resolve {target:?}");
                    return ExitCode::from(2);
                }
            };
            let transport = match transport.parse() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sluice bench: --transport: {e}");
                    return ExitCode::from(2);
                }
            };
            let codec = match codec.as_str() {
                "thrift" => sluice_sniff::Codec::Thrift,
                "kitex-pb" | "pb" => sluice_sniff::Codec::KitexProtobuf,
                other => {
                    eprintln!(
                        "sluice bench: --codec: unknown codec {other:?} (thrift or kitex-pb)"
                    );
                    return ExitCode::from(2);
                }
            };
            let args = bench::BenchArgs {
                target,
                transport,
                codec,
                size,
                concurrency: concurrency.max(1),
                duration: std::time::Duration::from_secs_f64(duration.max(0.1)),
                requests,
                rate,
                warmup: std::time::Duration::from_secs_f64(warmup.max(0.0)),
                json,
                stream,
                messages,
                connections: connections.max(1),
                traceparent,
            };
            let r = rt.block_on(bench::run(args.clone()));
            bench::print(&args, &r);
            if r.errors > 0 || r.ok == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Demo {
            requests,
            concurrency,
            exit,
        } => rt.block_on(demo::run(requests, concurrency.max(1), exit)),
    }
}

/// How long the span export may take to send what is queued when the proxy stops.
const EXPORT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn run(cfg: Config, path: PathBuf, watch: bool) -> ExitCode {
    let export = match SpanExport::start(&cfg.tracing) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sluice: tracing.otlp_endpoint: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(export) = export else {
        return serve(Proxy::bind(cfg).await, path, watch).await;
    };
    tracing::info!(
        endpoint = cfg.tracing.otlp_endpoint.as_deref().unwrap_or(""),
        sample_ratio = cfg.tracing.sample_ratio,
        "exporting spans over OTLP"
    );
    let phases = Exporting::new(DefaultPhases, Some(export.clone()));
    let code = serve(Proxy::bind_with(cfg, phases).await, path, watch).await;
    // What the last calls queued goes out before the process ends.
    let _ = tokio::task::spawn_blocking(move || export.shutdown(EXPORT_FLUSH_TIMEOUT)).await;
    code
}

async fn serve<P: Phases>(
    proxy: std::io::Result<Proxy<P>>,
    path: PathBuf,
    watch: bool,
) -> ExitCode {
    let proxy = match proxy {
        Ok(p) => p.with_config_path(path),
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in proxy.local_addrs() {
        tracing::info!(listener = %name, %addr, "serving");
    }
    if let Some(addr) = proxy.admin_addr() {
        tracing::info!(%addr, "admin listener: /metrics /healthz /readyz /config");
    }
    let (handle, drain) = sluice_server::drain::channel();
    let reloads = reload_triggers(proxy.reload_handle(), watch);
    let serving = tokio::spawn(proxy.serve(drain));
    shutdown_signal().await;
    reloads.abort();
    tracing::info!("draining");
    handle.drain();
    let _ = serving.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn echo(listen: String) -> ExitCode {
    let bound = match tokio::net::lookup_host(&listen).await {
        Ok(mut addrs) => addrs.next().map_or_else(
            || Err(std::io::Error::other("no address")),
            sluice_server::bind_listener,
        ),
        Err(e) => Err(e),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice echo: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (handle, drain) = sluice_server::drain::channel();
    let handler = std::sync::Arc::new(sluice_server::echo::EchoHandler::new());
    let server = sluice_server::Server::new(
        sluice_server::ServerConfig::default().with_name("echo"),
        handler.clone(),
    )
    .with_streaming(handler);
    let serving = tokio::spawn(server.serve(listener, drain));
    shutdown_signal().await;
    handle.drain();
    let _ = serving.await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
/// Reloads on SIGHUP, and with `--watch` when the file's modification time or size changes
/// (checked every second). The outcome is logged by the proxy.
fn reload_triggers(handle: sluice_proxy::ReloadHandle, watch: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; reload with POST /reload");
                None
            }
        };
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let path = handle.path().map(|p| p.to_path_buf());
        let mut last = path.as_deref().and_then(stamp);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let hup_recv = async {
                match &mut hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = hup_recv => {
                    if got.is_none() {
                        hup = None;
                        continue;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                }
                _ = tick.tick(), if watch => {
                    let now = path.as_deref().and_then(stamp);
                    if now == last {
                        continue;
                    }
                    last = now;
                    tracing::info!("the configuration file changed: reloading");
                }
            }
            // The proxy logs and counts the outcome.
            let _ = handle.reload().await;
        }
    })
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
