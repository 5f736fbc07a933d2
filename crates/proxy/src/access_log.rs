//! The access log: one JSON line per call or stream, written by a thread of its own so the
//! data path never waits on a disk. Lines wait in a bounded queue; when it is full a line is
//! dropped and counted (`sluice_access_log_dropped_total`) rather than slowing the proxy.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AccessLog;

/// One finished call or stream, as the access log writes it.
#[derive(Debug, Serialize)]
pub(crate) struct Line<'a> {
    /// When it arrived, RFC 3339 with milliseconds, UTC.
    pub(crate) time: String,
    pub(crate) listener: &'a str,
    pub(crate) peer: SocketAddr,
    /// `ttheader`, `ttheader-unframed`, `framed`, `buffered`, `mesh`, `ttstream` or `grpc`.
    pub(crate) protocol: &'a str,
    pub(crate) service: &'a str,
    pub(crate) method: &'a str,
    pub(crate) caller: &'a str,
    pub(crate) downstream: Option<&'a str>,
    pub(crate) endpoint: Option<SocketAddr>,
    /// `succeed` or `error`, as Kitex's metrics say it.
    pub(crate) status: &'a str,
    /// The kind of Sluice's own error, when it answered with one.
    pub(crate) error_kind: Option<&'a str>,
    pub(crate) error: Option<String>,
    pub(crate) duration_us: u64,
    /// Payload bytes from the caller and to the caller.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// The writer's end: the queue, the sampling ratio and the drop count.
#[derive(Debug)]
pub(crate) struct AccessLogger {
    tx: Option<SyncSender<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
    sample_ratio: f64,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl AccessLogger {
    /// Opens the log (a file is created or appended to) and starts its writer thread.
    pub(crate) fn start(config: &AccessLog) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match config.path.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("access log {path}: {e}"))
                    })?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue);
        let writer = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            sample_ratio: config.sample_ratio,
            dropped: Arc::default(),
        })
    }

    /// True for the share of calls the sampling ratio keeps.
    pub(crate) fn sampled(&self) -> bool {
        self.sample_ratio >= 1.0 || rand::random::<f64>() < self.sample_ratio
    }

    /// Queues `line`; drops (and counts) it when the queue is full.
    pub(crate) fn log(&self, line: &Line<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        match tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for AccessLogger {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what is queued.
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            if result.is_ok() {
                result = out.write_all(more.as_bytes());
            }
        }
        if result.is_ok() {
            result = out.flush();
        }
        match result {
            Err(e) if !failed => {
                // Said once: a full disk would otherwise log a line per call.
                tracing::error!(error = %e, "access log: write failed; lines are lost until it works again");
                failed = true;
            }
            Ok(()) => failed = false,
            Err(_) => {}
        }
    }
    let _ = out.flush();
}

/// `t` as RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A duration in whole microseconds.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
