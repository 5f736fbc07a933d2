//! Endpoint choice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::{Health, LazyNow};

/// How a downstream's endpoint is chosen for each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each endpoint in turn.
    RoundRobin,
    /// Each endpoint in turn, as often as its weight says, interleaved (nginx's smooth
    /// weighted round-robin: weights 5,1,1 give a a b a c a a, not a a a a a b c).
    WeightedRoundRobin,
    /// At random, in proportion to the weights.
    WeightedRandom,
    /// Power of two choices: of two endpoints drawn at random, the one with fewer calls in
    /// flight per unit of weight. Slow endpoints get less traffic on their own.
    #[default]
    P2c,
    /// A ring of points per endpoint (as many as its weight says): a key goes to the first
    /// point at or after its hash, so it moves only when its endpoint leaves. Calls without a
    /// key are balanced by [`P2c`](Self::P2c).
    ConsistentHash,
}

impl Balance {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::WeightedRoundRobin => "weighted-round-robin",
            Balance::WeightedRandom => "weighted-random",
            Balance::P2c => "p2c",
            Balance::ConsistentHash => "consistent-hash",
        }
    }
}

/// A balance name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balance {0:?} (expected round-robin, weighted-round-robin, weighted-random, p2c or consistent-hash)")]
pub struct UnknownBalance(pub String);

impl std::str::FromStr for Balance {
    type Err = UnknownBalance;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "round-robin" => Balance::RoundRobin,
            "weighted-round-robin" => Balance::WeightedRoundRobin,
            "weighted-random" => Balance::WeightedRandom,
            "p2c" => Balance::P2c,
            "consistent-hash" => Balance::ConsistentHash,
            other => return Err(UnknownBalance(other.to_owned())),
        })
    }
}

/// The hash of a consistent-hash key (FNV-1a, then a 64-bit finalizer for an even spread).
pub fn hash_key(key: &[u8]) -> u64 {
    mix(fnv(0xcbf2_9ce4_8422_2325, key))
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

std::thread_local! {
    /// This thread's random state (splitmix64): balancing needs spread, not secrecy, and a
    /// thread-local counter costs a few instructions where a cryptographic generator costs
    /// hundreds.
    static RANDOM: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A random number in `0..n` (`n` > 0).
fn random_below(n: u64) -> u64 {
    let x = RANDOM.with(|r| {
        let mut s = r.get();
        if s == 0 {
            // Seeded once per thread: from the clock and the state's own address.
            s = crate::now() ^ (r as *const _ as u64).rotate_left(32) | 1;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        r.set(s);
        mix(s)
    });
    // Lemire's multiply-shift: unbiased enough for balancing, no division.
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Ring points per unit of weight: 100, the virtual factor Kitex's consistent hash uses. With
/// 16, five weight-1 endpoints got shares from under 8% to 35% depending on where their
/// addresses hashed; with 100 each stays within 12%..28% (the spread test below).
const POINTS_PER_WEIGHT: u32 = 100;
/// Ring points per endpoint at most, whatever its weight.
const MAX_POINTS: u32 = 4096;

/// The choice over one endpoint set (built again when the set changes).
#[derive(Debug)]
pub struct Picker {
    kind: Balance,
    weights: Vec<u32>,
    total: u64,
    next: AtomicUsize,
    /// Smooth weighted round-robin's current weights.
    current: Mutex<Vec<i64>>,
    /// Consistent hash: (point, endpoint index), sorted by point.
    ring: Vec<(u64, u32)>,
}

impl Picker {
    /// A picker over endpoints given as (address, weight); a weight of 0 counts as 1.
    pub fn new(kind: Balance, endpoints: &[(SocketAddr, u32)]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| (*w).max(1)).collect();
        let total = weights.iter().map(|w| u64::from(*w)).sum();
        let mut ring = Vec::new();
        if kind == Balance::ConsistentHash {
            for (i, (addr, w)) in endpoints.iter().enumerate() {
                // Points come from the address alone, so an endpoint's points stay where they
                // are whatever else joins or leaves.
                let base = fnv(0xcbf2_9ce4_8422_2325, addr.to_string().as_bytes());
                let points = w.max(&1).saturating_mul(POINTS_PER_WEIGHT).min(MAX_POINTS);
                for p in 0..points {
                    ring.push((mix(fnv(base, &p.to_le_bytes())), i as u32));
                }
            }
            ring.sort_unstable();
        }
        Self {
            kind,
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            total,
            next: AtomicUsize::new(0),
            ring,
        }
    }

    /// The balance it applies.
    pub fn kind(&self) -> Balance {
        self.kind
    }

    /// The index of the member for this attempt: not in `tried`, and available (neither
    /// ejected nor in backoff) if any untried member is; `None` once every member was tried.
    /// `key` is the consistent-hash key's [`hash_key`], if the call has one.
    pub fn pick<M>(
        &self,
        members: &[M],
        health: impl Fn(&M) -> &Health,
        key: Option<u64>,
        tried: &[usize],
        now: &LazyNow,
    ) -> Option<usize> {
        let n = members.len().min(self.weights.len());
        if n <= 1 {
            // One endpoint: it is the choice, available or not, until this call tried it.
            return (n == 1 && !tried.contains(&0)).then_some(0);
        }
        let strict = |i: usize| !tried.contains(&i) && health(&members[i]).is_available_lazy(now);
        if let Some(i) = self.pick_with(n, &strict, &|i| health(&members[i]).in_flight(), key) {
            return Some(i);
        }
        // Everything untried is down: failing fast helps nobody, so try one anyway.
        let untried = |i: usize| !tried.contains(&i);
        self.pick_with(n, &untried, &|i| health(&members[i]).in_flight(), key)
    }

    fn pick_with(
        &self,
        n: usize,
        ok: &impl Fn(usize) -> bool,
        load: &impl Fn(usize) -> u32,
        key: Option<u64>,
    ) -> Option<usize> {
        match (self.kind, key) {
            (Balance::RoundRobin, _) => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                scan(n, start, ok)
            }
            (Balance::WeightedRandom, _) => {
                let mut x = random_below(self.total.max(1));
                let mut i = 0;
                while i + 1 < n && x >= u64::from(self.weights[i]) {
                    x -= u64::from(self.weights[i]);
                    i += 1;
                }
                scan(n, i, ok)
            }
            (Balance::WeightedRoundRobin, _) => {
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                let mut sum = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !ok(i) {
                        continue;
                    }
                    let w = i64::from(self.weights[i]);
                    current[i] += w;
                    sum += w;
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                if let Some(b) = best {
                    current[b] -= sum;
                }
                best
            }
            (Balance::ConsistentHash, Some(h)) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|p| p.0 < h);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1 as usize)
                    .find(|&i| i < n && ok(i))
            }
            (Balance::P2c | Balance::ConsistentHash, _) => {
                if n == 1 {
                    return ok(0).then_some(0);
                }
                let a = random_below(n as u64) as usize;
                let b = (a + 1 + random_below(n as u64 - 1) as usize) % n;
                match (ok(a), ok(b)) {
                    (true, true) => {
                        // Fewer in flight per unit of weight wins; cross-multiplied, no division.
                        let la = u64::from(load(a)) * u64::from(self.weights[b]);
                        let lb = u64::from(load(b)) * u64::from(self.weights[a]);
                        Some(if lb < la { b } else { a })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => scan(n, a, ok),
                }
            }
        }
    }
}

/// The first index from `start` on (wrapping) that is `ok`.
fn scan(n: usize, start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addrs(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8888)), 10))
            .collect()
    }

    fn at(t: u64) -> LazyNow {
        LazyNow::at(t)
    }

    fn healths(n: usize) -> Vec<Health> {
        (0..n).map(|_| Health::default()).collect()
    }

    #[test]
    fn names_round_trip() {
        for b in [
            Balance::RoundRobin,
            Balance::WeightedRoundRobin,
            Balance::WeightedRandom,
            Balance::P2c,
            Balance::ConsistentHash,
        ] {
            assert_eq!(b.as_str().parse::<Balance>(), Ok(b));
        }
        assert!("random".parse::<Balance>().is_err());
    }

    #[test]
    fn round_robin_takes_turns_and_skips_the_unavailable() {
        let p = Picker::new(Balance::RoundRobin, &addrs(3));
        let h = healths(3);
        let got: Vec<_> = (0..6)
            .map(|_| p.pick(&h, |h| h, None, &[], &at(1)).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        h[1].back_off(1, Duration::from_secs(1));
        let got: Vec<_> = (0..4)
            .map(|_| p.pick(&h, |h| h, None, &[], &at(2)).unwrap())
            .collect();
        assert!(!got.contains(&1), "{got:?}");
    }

    #[test]
    fn tried_members_are_skipped_and_all_down_still_picks_one() {
        let p = Picker::new(Balance::P2c, &addrs(3));
        let h = healths(3);
        for x in &h {
            x.back_off(1, Duration::from_secs(1));
        }
        assert_eq!(p.pick(&h, |h| h, None, &[0, 2], &at(5)), Some(1));
        assert_eq!(p.pick(&h, |h| h, None, &[0, 1, 2], &at(5)), None);
        assert!(p.pick(&h, |h| h, None, &[], &at(5)).is_some());
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let mut a = addrs(3);
        a[0].1 = 5;
        a[1].1 = 1;
        a[2].1 = 1;
        let p = Picker::new(Balance::WeightedRoundRobin, &a);
        let h = healths(3);
        let got: Vec<_> = (0..7)
            .map(|_| p.pick(&h, |h| h, None, &[], &at(1)).unwrap())
            .collect();
        assert_eq!(got, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let p = Picker::new(Balance::P2c, &addrs(3));
        let h = healths(3);
        let _busy: Vec<_> = (0..50).map(|_| h[2].start()).collect();
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[p.pick(&h, |h| h, None, &[], &at(1)).unwrap()] += 1;
        }
        // Endpoint 2 is chosen only when drawn twice, which p2c never does.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
    }

    #[test]
    fn consistent_hash_gives_every_endpoint_a_fair_share_wherever_its_address_hashes() {
        // Five weight-1 endpoints (what a static downstream has) on 100 different port sets:
        // every endpoint keeps between 12% and 28% of 20 000 keys.
        let keys: Vec<u64> = (0..20_000)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        let h = healths(5);
        let mut worst = (20_000usize, 0usize);
        for set in 0..100u16 {
            let eps: Vec<(SocketAddr, u32)> = (0..5)
                .map(|i| {
                    (
                        SocketAddr::from(([127, 0, 0, 1], 30_000 + set * 7 + i * 911)),
                        1,
                    )
                })
                .collect();
            let p = Picker::new(Balance::ConsistentHash, &eps);
            let mut counts = [0usize; 5];
            for &k in &keys {
                counts[p.pick(&h, |h| h, Some(k), &[], &at(1)).unwrap()] += 1;
            }
            worst.0 = worst.0.min(*counts.iter().min().unwrap());
            worst.1 = worst.1.max(*counts.iter().max().unwrap());
        }
        assert!(
            worst.0 > 2_400 && worst.1 < 5_600,
            "min and max share: {worst:?}"
        );
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_a_removed_endpoint() {
        let all = addrs(5);
        let before = Picker::new(Balance::ConsistentHash, &all);
        let h5 = healths(5);
        let keys: Vec<u64> = (0..10_000)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        let owner: Vec<SocketAddr> = keys
            .iter()
            .map(|&k| all[before.pick(&h5, |h| h, Some(k), &[], &at(1)).unwrap()].0)
            .collect();
        let mut counts = std::collections::HashMap::new();
        for a in &owner {
            *counts.entry(*a).or_insert(0) += 1;
        }
        assert!(
            counts.values().all(|&c| (1200..2800).contains(&c)),
            "{counts:?}"
        );
        let removed = all[3].0;
        let rest: Vec<_> = all.iter().copied().filter(|(a, _)| *a != removed).collect();
        let after = Picker::new(Balance::ConsistentHash, &rest);
        let h4 = healths(4);
        let mut moved = 0;
        for (k, was) in keys.iter().zip(&owner) {
            let now = rest[after.pick(&h4, |h| h, Some(*k), &[], &at(1)).unwrap()].0;
            if now != *was {
                assert_eq!(*was, removed, "a key of a staying endpoint moved");
                moved += 1;
            }
        }
        assert_eq!(moved, counts[&removed]);
        // Unavailable: its keys go to the next point's endpoint, the others stay.
        h5[1].back_off(1, Duration::from_secs(1));
        for (k, was) in keys.iter().zip(&owner).take(1000) {
            let now = all[before.pick(&h5, |h| h, Some(*k), &[], &at(2)).unwrap()].0;
            assert_eq!(now == *was, *was != all[1].0);
        }
    }
}
