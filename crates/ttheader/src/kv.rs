//! Key/value lists for the two info blocks.
//!
//! Small ordered vectors rather than hash maps: a Kitex header has around ten entries, lookups
//! by linear scan beat hashing at that size, and the order received is kept for re-encoding.
//! Inserting an existing key replaces its value in place (Kitex: later values overwrite).

use bytes::Bytes;

/// String key/values (info block 0x01). Keys and values are bytes: Go strings need not be UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrKvs(Vec<(Bytes, Bytes)>);

impl StrKvs {
    /// An empty list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// An empty list with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Reserves room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }

    /// Value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Value of `key` as UTF-8 text, if present and valid.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `key`, replacing an earlier value in place.
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Bytes> {
        let i = self
            .0
            .iter()
            .position(|(k, _)| k.as_ref() == key.as_bytes())?;
        Some(self.0.remove(i).1)
    }

    /// Keeps only the entries for which `f` returns true.
    pub fn retain(&mut self, mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.0.retain(|(k, v)| f(k, v));
    }

    /// Entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + Clone {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// The pairs, in order (no copy: the `Bytes` are moved out).
    pub fn into_vec(self) -> Vec<(Bytes, Bytes)> {
        self.0
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Integer key/values (info block 0x10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntKvs(Vec<(u16, Bytes)>);

impl IntKvs {
    /// An empty list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// An empty list with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Reserves room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }

    /// Value of `key`, if present.
    pub fn get(&self, key: u16) -> Option<&Bytes> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Value of `key` as UTF-8 text, if present and valid.
    pub fn get_str(&self, key: u16) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `key`, replacing an earlier value in place.
    pub fn insert(&mut self, key: u16, value: impl Into<Bytes>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: u16) -> Option<Bytes> {
        let i = self.0.iter().position(|(k, _)| *k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Keeps only the entries for which `f` returns true.
    pub fn retain(&mut self, mut f: impl FnMut(u16, &[u8]) -> bool) {
        self.0.retain(|(k, v)| f(*k, v));
    }

    /// Entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u16, &[u8])> + Clone {
        self.0.iter().map(|(k, v)| (*k, v.as_ref()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
