//! A downstream's in-flight limit, and the guards that hold a stream's place in it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Health;

/// At most `max` calls or streams in flight (0: no limit, nothing counted). Clones share the
/// count: a downstream's clients (ping-pong, TTStream, gRPC) hold one limit together.
#[derive(Debug, Default, Clone)]
pub struct InFlightLimit {
    max: usize,
    count: Arc<AtomicUsize>,
}

/// A place under an [`InFlightLimit`], given back when dropped.
#[derive(Debug)]
pub struct Admitted(Option<Arc<AtomicUsize>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A place under an [`InFlightLimit`] held by a borrow, given back when dropped.
#[derive(Debug)]
pub struct AdmittedRef<'a>(Option<&'a AtomicUsize>);

impl Drop for AdmittedRef<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl InFlightLimit {
    /// A limit of `max` (0: none).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            count: Arc::default(),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// In flight now (0 when there is no limit: nothing is counted then).
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// A place held by a borrow (no reference count to touch: the hot path's form), or
    /// `None` when `max` are in flight.
    pub fn admit_ref(&self) -> Option<AdmittedRef<'_>> {
        if self.max == 0 {
            return Some(AdmittedRef(None));
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(AdmittedRef(Some(&self.count)))
    }

    /// A place, or `None` when `max` are in flight.
    pub fn admit(&self) -> Option<Admitted> {
        if self.max == 0 {
            return Some(Admitted(None));
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(Some(self.count.clone())))
    }
}

/// A stream's load: its place under the downstream's limit and on its endpoint's in-flight
/// count (which p2c reads), both given back when the stream's handle is dropped.
#[derive(Debug)]
pub struct StreamLoad {
    _admitted: Admitted,
    health: Arc<Health>,
}

impl StreamLoad {
    /// Counts a stream on `health`, holding `admitted`.
    pub fn new(admitted: Admitted, health: Arc<Health>) -> Self {
        health.start_owned();
        Self {
            _admitted: admitted,
            health,
        }
    }
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.health.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_gives_places_back() {
        let l = InFlightLimit::new(2);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert!(l.admit().is_none());
        drop(a);
        let h = Arc::new(Health::default());
        let s = StreamLoad::new(l.admit().unwrap(), h.clone());
        assert_eq!((l.current(), h.in_flight()), (2, 1));
        drop(s);
        assert_eq!((l.current(), h.in_flight()), (1, 0));
        let none = InFlightLimit::new(0);
        let _all: Vec<_> = (0..100).map(|_| none.admit().unwrap()).collect();
        assert_eq!(none.current(), 0);
    }
}
