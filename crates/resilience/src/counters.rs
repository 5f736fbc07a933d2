//! What a downstream's failure policies did, counted for the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a call was tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection was refused or timed out before any byte of the request was written
    /// (always retried on another endpoint).
    Refused,
    /// The connection closed or was reset after the request and before any byte of the reply.
    Reset,
    /// The request could not be written whole.
    Unavailable,
    /// The per-try timeout passed before any byte of the reply.
    Timeout,
}

impl RetryReason {
    /// Every reason, in label order.
    pub const ALL: [RetryReason; 4] = [
        RetryReason::Refused,
        RetryReason::Reset,
        RetryReason::Unavailable,
        RetryReason::Timeout,
    ];

    /// The metric label and configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Refused => "refused",
            RetryReason::Reset => "reset",
            RetryReason::Unavailable => "unavailable",
            RetryReason::Timeout => "timeout",
        }
    }
}

/// A downstream's counts, shared by its clients (ping-pong, TTStream, gRPC).
#[derive(Debug, Default)]
pub struct Counters {
    retries: [AtomicU64; 4],
    /// Retries a route allowed that the retry budget refused.
    pub budget_exhausted: AtomicU64,
    /// Endpoints ejected.
    pub ejections: AtomicU64,
    /// Ejections not made because `max_ejection_percent` was reached.
    pub ejections_capped: AtomicU64,
    /// Calls refused at once because `max_in_flight` calls were in flight.
    pub over_max_in_flight: AtomicU64,
    /// Calls refused at once because `max_pending` calls were waiting for a connection.
    pub over_max_pending: AtomicU64,
}

impl Counters {
    /// Counts a retry.
    pub fn retried(&self, why: RetryReason) {
        self.retries[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a failure did to its endpoint ([`crate::Outlier::failed`]'s answer).
    pub fn ejection(&self, what: crate::Ejected) {
        match what {
            crate::Ejected::For(_) => self.ejections.fetch_add(1, Ordering::Relaxed),
            crate::Ejected::CapReached => self.ejections_capped.fetch_add(1, Ordering::Relaxed),
            crate::Ejected::No => 0,
        };
    }

    /// Retries so far for `why`.
    pub fn retries(&self, why: RetryReason) -> u64 {
        self.retries[why as usize].load(Ordering::Relaxed)
    }
}

/// What a downstream's clients share: their counts and their in-flight limit.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// Retries, ejections and refusals.
    pub counters: std::sync::Arc<Counters>,
    /// Calls and streams in flight over all the clients, at most `max_in_flight`.
    pub in_flight: crate::InFlightLimit,
}

impl Shared {
    /// New counts and a limit of `max_in_flight` (0: none).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            counters: std::sync::Arc::default(),
            in_flight: crate::InFlightLimit::new(max_in_flight),
        }
    }
}
