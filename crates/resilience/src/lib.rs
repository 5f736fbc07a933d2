//! Sluice's failure policies, without I/O, shared by its clients and its proxy:
//!
//! * [`Balance`] and [`Picker`]: which endpoint a call goes to (round-robin, smooth weighted
//!   round-robin, weighted-random, power of two choices on in-flight requests, consistent hash
//!   on a ring), skipping endpoints that are ejected, in their connect backoff, or already
//!   tried by this call;
//! * [`Health`] and [`Outlier`]: per-endpoint in-flight count, consecutive failures and
//!   ejection (passive health), never ejecting more than a share of the endpoints;
//! * [`InFlightLimit`]: calls and streams in flight to a downstream, at most;
//! * [`RetryBudget`]: retries as a share of requests, so that retries cannot multiply load
//!   during an outage;
//! * [`TokenBucket`] and [`KeyedBuckets`]: rate limits, optionally one bucket per caller.
//!
//! Time is passed in as a [`Nanos`] reading of a monotonic clock ([`now`]), so every policy
//! can be tested without sleeping.
#![forbid(unsafe_code)]

mod balance;
mod budget;
mod counters;
mod health;
mod limit;
mod rate;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use balance::{hash_key, Balance, Picker, UnknownBalance};
pub use budget::RetryBudget;
pub use counters::{Counters, RetryReason, Shared};
pub use health::{Ejected, Health, InFlight, LazyNow, Outlier};
pub use limit::{Admitted, AdmittedRef, InFlightLimit, StreamLoad};
pub use rate::{KeyedBuckets, RateLimit, TokenBucket};

/// A monotonic time: nanoseconds since the first call to [`now`] in this process. Stored in
/// atomics where an `Instant` could not be.
pub type Nanos = u64;

/// Now, as [`Nanos`]. Never 0 (0 means "never" in the policies' atomics).
pub fn now() -> Nanos {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    duration_nanos(epoch.elapsed()).max(1)
}

/// A duration as [`Nanos`], saturating.
pub fn duration_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
