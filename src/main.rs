//! The `sluice` binary: `run`, `check` and `demo`. Everything else lives in the library crates.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_proxy::{Config, Proxy};
use sluice_server::DrainHandle;

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
    /// Runs the proxy described by a TOML file until SIGINT/SIGTERM, then drains.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Checks a configuration file and prints the effective listeners, routes and downstreams.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: {}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            if cfg.listeners.is_empty() {
                eprintln!(
                    "sluice: {}: listeners: at least one listener is needed",
                    config.display()
                );
                return ExitCode::FAILURE;
            }
            rt.block_on(run(cfg))
        }
        Command::Demo {
            requests,
            concurrency,
            exit,
        } => rt.block_on(demo::run(requests, concurrency.max(1), exit)),
    }
}

async fn run(cfg: Config) -> ExitCode {
    let proxy = match Proxy::bind(cfg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in proxy.local_addrs() {
        tracing::info!(listener = %name, %addr, "serving");
    }
    let (handle, drain) = DrainHandle::new();
    let serving = tokio::spawn(proxy.serve(drain));
    shutdown_signal().await;
    tracing::info!("draining");
    handle.drain();
    let _ = serving.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
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
