//! Passive health: what each endpoint's calls have been telling us.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::{duration_nanos, Nanos};

/// The outlier-ejection policy of a downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row (connect errors, resets, timeouts) that eject an endpoint; 0 turns
    /// ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one lasts one base longer, up to
    /// [`max_ejection`](Self::max_ejection).
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// At most this share (percent) of a downstream's endpoints are ejected at once; at least
    /// one endpoint is always left in use.
    pub max_ejection_percent: u8,
}

impl Default for Outlier {
    /// 5 failures in a row, 30 s base, 300 s at most, at most 50% of the endpoints.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// What a failure did to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejected {
    /// Not (or not yet) ejected.
    No,
    /// Ejected now, for this long.
    For(Duration),
    /// It reached the failure count, but ejecting it would pass `max_ejection_percent`.
    CapReached,
}

/// One endpoint's health, shared by the calls on it (and kept when its downstream's endpoint
/// set is replaced and it stays).
#[derive(Debug, Default)]
pub struct Health {
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far (the next lasts this many bases more); forgotten after a quiet spell.
    ejections: AtomicU32,
    last_ejected: AtomicU64,
    /// 0: not in backoff. Set by a refused or timed-out connect.
    backoff_until: AtomicU64,
}

/// The clock, read at most once and only when asked.
#[derive(Debug, Default)]
pub struct LazyNow(std::cell::Cell<Nanos>);

impl LazyNow {
    /// A clock not read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock already read: it says `t` (a caller that has the time, or a test).
    pub fn at(t: Nanos) -> Self {
        Self(std::cell::Cell::new(t.max(1)))
    }

    /// Now: read on the first call, the same afterwards.
    pub fn get(&self) -> Nanos {
        let t = self.0.get();
        if t != 0 {
            return t;
        }
        let t = crate::now();
        self.0.set(t);
        t
    }
}

/// One call in flight on an endpoint; the count drops with it.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Health {
    /// Counts a call in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Counts a call in flight that is not tied to a borrow (a stream whose handle outlives
    /// the call that opened it); [`finish`](Self::finish) must follow exactly once.
    pub fn start_owned(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a call counted by [`start_owned`](Self::start_owned).
    pub fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True when neither ejected nor in connect backoff at `now`.
    pub fn is_available(&self, now: Nanos) -> bool {
        now >= self.ejected_until.load(Ordering::Relaxed)
            && now >= self.backoff_until.load(Ordering::Relaxed)
    }

    /// Like [`is_available`](Self::is_available), reading the clock only when the endpoint
    /// was ejected or backed off at all (on the hot path it almost never was).
    pub fn is_available_lazy(&self, clock: &LazyNow) -> bool {
        let ejected = self.ejected_until.load(Ordering::Relaxed);
        let backoff = self.backoff_until.load(Ordering::Relaxed);
        if ejected == 0 && backoff == 0 {
            return true;
        }
        let now = clock.get();
        now >= ejected && now >= backoff
    }

    /// True while ejected at `now`.
    pub fn is_ejected(&self, now: Nanos) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Skips the endpoint for `backoff` after a refused or timed-out connect.
    pub fn back_off(&self, now: Nanos, backoff: Duration) {
        self.backoff_until.store(
            now.saturating_add(duration_nanos(backoff)),
            Ordering::Relaxed,
        );
    }

    /// A call succeeded (it got an answer, whatever the answer said): the failure run ends,
    /// and the connect backoff with it.
    pub fn succeeded(&self) {
        // Loads first: on the hot path both are almost always 0 already, and a store would
        // take the cache line from the other cores.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.backoff_until.load(Ordering::Relaxed) != 0 {
            self.backoff_until.store(0, Ordering::Relaxed);
        }
        // An ejection that is over is forgotten, so availability needs no clock again.
        let ejected = self.ejected_until.load(Ordering::Relaxed);
        if ejected != 0 && crate::now() >= ejected {
            let _ = self.ejected_until.compare_exchange(
                ejected,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Consecutive failures now.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl Outlier {
    /// Records a failure of `members[index]` at `now`; ejects it when its failure run reaches
    /// the threshold and `max_ejection_percent` allows. `health` reads a member's health.
    pub fn failed<M>(
        &self,
        members: &[M],
        health: impl Fn(&M) -> &Health,
        index: usize,
        now: Nanos,
    ) -> Ejected {
        let h = health(&members[index]);
        let run = h.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if self.consecutive_failures == 0 || run < self.consecutive_failures || h.is_ejected(now) {
            return Ejected::No;
        }
        let ejected = members.iter().filter(|m| health(m).is_ejected(now)).count();
        // At least one endpoint always stays in use, whatever the percentage says.
        let cap = (members.len() * usize::from(self.max_ejection_percent.min(100)) / 100)
            .min(members.len().saturating_sub(1));
        if ejected + 1 > cap {
            return Ejected::CapReached;
        }
        // A long quiet spell since the last ejection starts the growth over.
        let last = h.last_ejected.load(Ordering::Relaxed);
        let quiet = duration_nanos(self.max_ejection).saturating_mul(2);
        if last != 0 && now.saturating_sub(last) > quiet {
            h.ejections.store(0, Ordering::Relaxed);
        }
        let n = h
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let length = self.base_ejection.saturating_mul(n).min(self.max_ejection);
        h.ejected_until.store(
            now.saturating_add(duration_nanos(length)),
            Ordering::Relaxed,
        );
        h.last_ejected.store(now, Ordering::Relaxed);
        // The run starts over: after its ejection the endpoint gets a full run of chances.
        h.failures.store(0, Ordering::Relaxed);
        Ejected::For(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy(n: u32, pct: u8) -> Outlier {
        Outlier {
            consecutive_failures: n,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: pct,
        }
    }

    #[test]
    fn ejects_after_the_run_and_returns_after_the_time() {
        let members: Vec<Health> = (0..3).map(|_| Health::default()).collect();
        let o = policy(3, 50);
        assert_eq!(o.failed(&members, |h| h, 0, S), Ejected::No);
        assert_eq!(o.failed(&members, |h| h, 0, S), Ejected::No);
        assert_eq!(
            o.failed(&members, |h| h, 0, S),
            Ejected::For(Duration::from_secs(10))
        );
        assert!(!members[0].is_available(S + 9 * S));
        assert!(members[0].is_available(S + 10 * S));
    }

    #[test]
    fn a_success_ends_the_run() {
        let members: Vec<Health> = (0..3).map(|_| Health::default()).collect();
        let o = policy(2, 50);
        assert_eq!(o.failed(&members, |h| h, 1, S), Ejected::No);
        members[1].succeeded();
        assert_eq!(o.failed(&members, |h| h, 1, S), Ejected::No);
        assert!(members[1].is_available(S));
    }

    #[test]
    fn ejections_grow_up_to_the_max() {
        let members: Vec<Health> = (0..2).map(|_| Health::default()).collect();
        let o = policy(1, 50);
        let mut t = S;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            match o.failed(&members, |h| h, 0, t) {
                Ejected::For(d) => {
                    lengths.push(d.as_secs());
                    t += duration_nanos(d);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lengths, [10, 20, 25, 25]);
        // Quiet for longer than twice the max: back to the base.
        t += 60 * S;
        assert_eq!(
            o.failed(&members, |h| h, 0, t),
            Ejected::For(Duration::from_secs(10))
        );
    }

    #[test]
    fn never_more_than_the_share_and_never_all() {
        let members: Vec<Health> = (0..4).map(|_| Health::default()).collect();
        let o = policy(1, 50);
        assert!(matches!(o.failed(&members, |h| h, 0, S), Ejected::For(_)));
        assert!(matches!(o.failed(&members, |h| h, 1, S), Ejected::For(_)));
        assert_eq!(o.failed(&members, |h| h, 2, S), Ejected::CapReached);
        assert_eq!(o.failed(&members, |h| h, 3, S), Ejected::CapReached);
        let all = policy(1, 100);
        let members: Vec<Health> = (0..2).map(|_| Health::default()).collect();
        assert!(matches!(all.failed(&members, |h| h, 0, S), Ejected::For(_)));
        assert_eq!(all.failed(&members, |h| h, 1, S), Ejected::CapReached);
    }

    #[test]
    fn zero_turns_ejection_off_and_backoff_is_separate() {
        let members: Vec<Health> = (0..3).map(|_| Health::default()).collect();
        let o = policy(0, 100);
        for _ in 0..100 {
            assert_eq!(o.failed(&members, |h| h, 0, S), Ejected::No);
        }
        members[0].back_off(S, Duration::from_secs(1));
        assert!(!members[0].is_available(S));
        assert!(members[0].is_available(2 * S));
        members[0].back_off(S, Duration::from_secs(1));
        members[0].succeeded();
        assert!(members[0].is_available(S));
    }

    #[test]
    fn in_flight_counts_follow_the_guards() {
        let h = Health::default();
        let a = h.start();
        let b = h.start();
        h.start_owned();
        assert_eq!(h.in_flight(), 3);
        drop(a);
        h.finish();
        assert_eq!(h.in_flight(), 1);
        drop(b);
        assert_eq!(h.in_flight(), 0);
    }
}
