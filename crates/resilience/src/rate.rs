//! Rate limits: token buckets, one per route or one per caller.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::Nanos;

/// A rate: `rps` requests per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub rps: f64,
    /// Tokens held at most (and at the start).
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct State {
    tokens: f64,
    last: Nanos,
}

impl State {
    fn take(&mut self, limit: RateLimit, now: Nanos) -> bool {
        let elapsed = now.saturating_sub(self.last) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * limit.rps).min(limit.burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when the bucket is full again, so forgetting it changes nothing.
    fn is_full(&self, limit: RateLimit, now: Nanos) -> bool {
        let elapsed = now.saturating_sub(self.last) as f64 / 1e9;
        self.tokens + elapsed * limit.rps >= limit.burst
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    state: Mutex<State>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Nanos) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                tokens: limit.burst,
                last: now,
            }),
        }
    }

    /// Takes a token; false when none is left.
    pub fn try_take(&self, now: Nanos) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(self.limit, now)
    }
}

/// A token bucket per key (a caller's name, a metainfo value), at most `max_keys` of them:
/// full buckets are forgotten when room is needed (a full bucket is the same as a new one),
/// and while every bucket is in use, keys without one share a single overflow bucket.
#[derive(Debug)]
pub struct KeyedBuckets {
    limit: RateLimit,
    max_keys: usize,
    buckets: Mutex<HashMap<Box<[u8]>, State>>,
    overflow: TokenBucket,
}

impl KeyedBuckets {
    /// Buckets of `limit` per key, for at most `max_keys` keys.
    pub fn new(limit: RateLimit, max_keys: usize, now: Nanos) -> Self {
        Self {
            limit,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
            overflow: TokenBucket::new(limit, now),
        }
    }

    /// Takes a token from `key`'s bucket; false when none is left.
    pub fn try_take(&self, key: &[u8], now: Nanos) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = buckets.get_mut(key) {
            return s.take(self.limit, now);
        }
        if buckets.len() >= self.max_keys {
            let limit = self.limit;
            buckets.retain(|_, s| !s.is_full(limit, now));
            if buckets.len() >= self.max_keys {
                drop(buckets);
                return self.overflow.try_take(now);
            }
        }
        let mut s = State {
            tokens: self.limit.burst,
            last: now,
        };
        let ok = s.take(self.limit, now);
        buckets.insert(key.into(), s);
        ok
    }

    /// Keys with a bucket now.
    pub fn keys(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn accepts_rate_times_duration_plus_burst() {
        let limit = RateLimit {
            rps: 100.0,
            burst: 20.0,
        };
        let b = TokenBucket::new(limit, 1);
        // 1000 requests over 1 s: 10x the rate.
        let ok = (0..1000u64).filter(|i| b.try_take(1 + i * MS)).count();
        assert!((115..=121).contains(&ok), "{ok}");
    }

    #[test]
    fn keys_have_their_own_buckets_and_stay_bounded() {
        let limit = RateLimit {
            rps: 1.0,
            burst: 2.0,
        };
        let k = KeyedBuckets::new(limit, 3, 1);
        assert!(k.try_take(b"a", 1));
        assert!(k.try_take(b"a", 1));
        assert!(!k.try_take(b"a", 1));
        assert!(k.try_take(b"b", 1), "b has a bucket of its own");
        for i in 0..1000u32 {
            k.try_take(&i.to_le_bytes(), 2);
        }
        assert!(k.keys() <= 3);
        // Two seconds later a's bucket is full again; it may be forgotten, and a is served.
        assert!(k.try_take(b"a", 1 + 2_000 * MS));
    }
}
