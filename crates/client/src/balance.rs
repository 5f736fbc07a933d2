//! Endpoint choice: round-robin or weighted-random, skipping endpoints in their failure backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::pool::EndpointState;
use crate::Endpoint;

/// How a client picks an endpoint for each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// At random, in proportion to the endpoints' weights.
    WeightedRandom,
}

impl Balance {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::WeightedRandom => "weighted-random",
        }
    }
}

impl std::str::FromStr for Balance {
    type Err = crate::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(Balance::RoundRobin),
            "weighted-random" => Ok(Balance::WeightedRandom),
            other => Err(crate::UnknownName {
                what: "balance",
                name: other.to_owned(),
                expected: "round-robin or weighted-random",
            }),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Balancer {
    kind: Balance,
    next: AtomicUsize,
    weights: Vec<u32>,
    total: u64,
}

impl Balancer {
    pub(crate) fn new(kind: Balance, endpoints: &[Endpoint]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight.max(1)).collect();
        let total = weights.iter().map(|w| u64::from(*w)).sum();
        Self {
            kind,
            next: AtomicUsize::new(0),
            weights,
            total,
        }
    }

    /// Index of the endpoint for this attempt. Endpoints in backoff are skipped while any other
    /// is up; when all are down the first choice is tried anyway (failing fast helps nobody).
    pub(crate) fn pick(&self, endpoints: &[Arc<EndpointState>], attempt: usize) -> usize {
        let n = endpoints.len();
        let first = match self.kind {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::WeightedRandom => {
                let mut x = rand::rng().random_range(0..self.total.max(1));
                let mut i = 0;
                while i + 1 < n && x >= u64::from(self.weights[i]) {
                    x -= u64::from(self.weights[i]);
                    i += 1;
                }
                i
            }
        };
        let first = (first + attempt) % n;
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&i| endpoints[i].is_up())
            .unwrap_or(first)
    }
}
