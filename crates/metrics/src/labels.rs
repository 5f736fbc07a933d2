//! Caps on the distinct values of wire-derived labels.

use std::collections::HashSet;

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec};

use crate::{MetricsConfig, OTHER};

/// A label whose values come from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    Caller,
    Callee,
    Method,
}

impl Label {
    fn name(self) -> &'static str {
        match self {
            Label::Caller => "caller",
            Label::Callee => "callee",
            Label::Method => "method",
        }
    }
}

/// The values seen per capped label, shared by the server and client series (the same names
/// appear on both).
#[derive(Debug)]
pub(crate) struct Caps {
    pub(crate) config: MetricsConfig,
    seen: [Mutex<HashSet<Box<str>>>; 3],
    folds: [IntCounter; 3],
}

impl Caps {
    pub(crate) fn new(config: MetricsConfig, folds: IntCounterVec) -> Self {
        let fold = |l: Label| folds.with_label_values(&[l.name()]);
        Self {
            config,
            seen: Default::default(),
            folds: [
                fold(Label::Caller),
                fold(Label::Callee),
                fold(Label::Method),
            ],
        }
    }

    /// `value` itself while its label is under the cap (or already knows it), else `other`
    /// (counted).
    pub(crate) fn admit<'v>(&self, label: Label, value: &'v str) -> &'v str {
        let i = label as usize;
        let mut seen = self.seen[i].lock();
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.config.max_label_values {
            seen.insert(value.into());
            return value;
        }
        drop(seen);
        if self.folds[i].get() == 0 {
            // Said once per label: past this, every new value folds silently (and is counted).
            tracing::warn!(
                label = label.name(),
                cap = self.config.max_label_values,
                "metrics: label reached its cap of distinct values; new values are reported as \"other\""
            );
        }
        self.folds[i].inc();
        OTHER
    }

    /// Counts a value folded because its series family is full.
    pub(crate) fn fold(&self, label: Label) {
        self.folds[label as usize].inc();
    }
}
