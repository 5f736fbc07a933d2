//! Retry budgets: retries as a share of requests.

use std::sync::atomic::{AtomicI64, Ordering};

/// Thousandths of a retry.
const ONE: i64 = 1000;

/// Retries allowed as a share of the requests seen, plus a small reserve so that a quiet
/// downstream can still retry: each request adds `percent`/100 of a retry to the budget, each
/// retry takes one whole retry out, and the budget never holds more than
/// [`RESERVE`](Self::RESERVE) retries. During an outage every request fails and wants a retry,
/// and retries stay at `percent` of the requests (plus the reserve) instead of multiplying
/// the load.
#[derive(Debug)]
pub struct RetryBudget {
    per_request: i64,
    balance: AtomicI64,
}

impl RetryBudget {
    /// Retries the budget holds at most (and starts with).
    pub const RESERVE: u32 = 10;

    /// A budget of `percent` retries per 100 requests, starting with the reserve.
    pub fn new(percent: u32) -> Self {
        Self {
            per_request: i64::from(percent) * ONE / 100,
            balance: AtomicI64::new(i64::from(Self::RESERVE) * ONE),
        }
    }

    /// A request was made (not a retry).
    pub fn deposit(&self) {
        let cap = i64::from(Self::RESERVE) * ONE;
        // Without failures the budget sits at its cap: a load, no write, on the hot path.
        if self.per_request == 0 || self.balance.load(Ordering::Relaxed) >= cap {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.per_request).min(cap))
            });
    }

    /// Takes one retry out; false when the budget cannot pay for it.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= ONE).then_some(b - ONE)
            })
            .is_ok()
    }

    /// Whole retries it could pay for now.
    pub fn available(&self) -> u32 {
        u32::try_from(self.balance.load(Ordering::Relaxed) / ONE).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_at_the_share_of_requests_plus_the_reserve() {
        let b = RetryBudget::new(20);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        // The first request's deposit finds the budget full, so it is one share short.
        assert_eq!(retries, 199 + RetryBudget::RESERVE);
    }

    #[test]
    fn a_quiet_spell_refills_only_up_to_the_reserve() {
        let b = RetryBudget::new(50);
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!(b.available(), RetryBudget::RESERVE);
        let zero = RetryBudget::new(0);
        let mut n = 0;
        while zero.withdraw() {
            n += 1;
        }
        assert_eq!(n, RetryBudget::RESERVE);
        zero.deposit();
        assert!(!zero.withdraw());
    }
}
