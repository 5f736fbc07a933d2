//! The static table (RFC 7541 Appendix A) and the dynamic table (section 2.3.2, 4).

use std::collections::VecDeque;

use bytes::Bytes;

/// The static table: index 1 is `STATIC[0]`.
pub(crate) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Bytes an entry counts for: "the sum of its name's length in octets, its value's length in
/// octets, and 32" (section 4.1).
pub(crate) fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// The decoder's dynamic table: newest entry first, evicted from the oldest end.
#[derive(Debug)]
pub(crate) struct DynamicTable {
    entries: VecDeque<(Bytes, Bytes)>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    pub(crate) fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The entry at HPACK index `index` (static first, then dynamic).
    pub(crate) fn get(&self, index: usize) -> Option<(Bytes, Bytes)> {
        match index {
            0 => None,
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Some((Bytes::from_static(n), Bytes::from_static(v)))
            }
            _ => self.entries.get(index - 62).cloned(),
        }
    }

    /// The name at HPACK index `index`.
    pub(crate) fn name(&self, index: usize) -> Option<Bytes> {
        match index {
            0 => None,
            1..=61 => Some(Bytes::from_static(STATIC[index - 1].0)),
            _ => self.entries.get(index - 62).map(|(n, _)| n.clone()),
        }
    }

    /// Adds an entry, evicting old ones to make room; an entry larger than the whole table
    /// empties it and is not added (section 4.4).
    pub(crate) fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = entry_size(&name, &value);
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.entries.push_front((name, value));
        }
    }

    /// A dynamic table size update (section 6.3).
    pub(crate) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let (n, v) = self.entries.pop_back().expect("size counts entries");
            self.size -= entry_size(&n, &v);
        }
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// For a pseudo-header, the static index of `(name, value)` if the static table has that exact
/// pair; and the first static index with that name, if any (`(None, None)` for a name the table
/// lacks, such as most of gRPC's).
pub(crate) fn static_lookup(name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
    let first = match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        // Every other static name has a single entry. A `match` is compiled into a dispatch
        // on the length, then a comparison or two: a scan of the table cost every header the
        // encoder wrote (most of gRPC's are not in it) 61 comparisons.
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return (None, None),
    };
    if first > 14 {
        // As before: a regular name's value is always written as a literal.
        return (None, Some(first));
    }
    let exact = STATIC[first - 1..]
        .iter()
        .take_while(|(n, _)| *n == name)
        .position(|(_, v)| *v == value)
        .map(|i| first + i);
    (exact, Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_static_entry_is_found_at_its_index() {
        for (i, (n, v)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(m, _)| m == n).unwrap() + 1;
            // Exact pairs are looked up for the pseudo-headers only.
            let exact =
                (n[0] == b':').then(|| STATIC.iter().position(|e| e == &(*n, *v)).unwrap() + 1);
            assert_eq!(static_lookup(n, v), (exact, Some(first)), "entry {}", i + 1);
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(static_lookup(b":method", b"POST"), (Some(3), Some(2)));
        assert_eq!(static_lookup(b":status", b"200"), (Some(8), Some(8)));
        assert_eq!(static_lookup(b":status", b"503"), (None, Some(8)));
        assert_eq!(static_lookup(b":path", b"/echo"), (None, Some(4)));
        assert_eq!(
            static_lookup(b"content-type", b"application/grpc"),
            (None, Some(31))
        );
        assert_eq!(static_lookup(b"user-agent", b"x"), (None, Some(58)));
        assert_eq!(static_lookup(b"www-authenticate", b""), (None, Some(61)));
        assert_eq!(static_lookup(b"grpc-status", b"0"), (None, None));
    }

    #[test]
    fn eviction_follows_the_size_rules() {
        let mut t = DynamicTable::new(100);
        t.insert(Bytes::from_static(b"a"), Bytes::from_static(b"1")); // 34
        t.insert(Bytes::from_static(b"b"), Bytes::from_static(b"2")); // 68
        t.insert(Bytes::from_static(b"c"), Bytes::from_static(b"3")); // 102 > 100: evict "a"
        assert_eq!((t.len(), t.size()), (2, 68));
        assert_eq!(t.get(62).unwrap().0, Bytes::from_static(b"c"));
        assert_eq!(t.get(63).unwrap().0, Bytes::from_static(b"b"));
        assert!(t.get(64).is_none());
        t.insert(Bytes::from(vec![b'x'; 80]), Bytes::new()); // 112: larger than the table
        assert_eq!((t.len(), t.size()), (0, 0));
        t.insert(Bytes::from_static(b"d"), Bytes::from_static(b"4"));
        t.set_max_size(0);
        assert_eq!(t.len(), 0);
    }
}
