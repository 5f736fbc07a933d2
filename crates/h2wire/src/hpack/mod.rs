//! HPACK header compression (RFC 7541).
//!
//! [`Decoder`] reads any valid header block: indexed fields, literals with and without
//! indexing, never-indexed literals, Huffman strings and dynamic table size updates. Its limits:
//! the dynamic table is at most the size this side advertised (SETTINGS_HEADER_TABLE_SIZE), and
//! a header list larger than the caller's limit is reported instead of delivered, while the
//! block is still decoded to the end so the table stays in step with the peer's encoder.
//!
//! [`Encoder`] never adds to the dynamic table, so blocks can be encoded in any order and by
//! any task: it uses the static table (an indexed field for an exact match, the static name
//! otherwise) and plain literals, and tells the peer's decoder at the start of each connection
//! that its table holds nothing. Huffman coding of literals is optional (off by default: it
//! costs CPU on every field to save bytes on the wire).

pub mod huffman;
mod table;

use bytes::{BufMut, Bytes};

pub use huffman::HuffmanError;
use table::{entry_size, static_lookup, DynamicTable};

/// Default SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded: always a connection error of type
/// COMPRESSION_ERROR ("A decoding error in a field block MUST be treated as a connection
/// error", RFC 9113 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The block ended in the middle of a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit in 32 bits.
    #[error("integer overflow in header block")]
    IntegerOverflow,
    /// Index 0, or an index past the end of both tables.
    #[error("header index {0} out of range")]
    BadIndex(usize),
    /// A dynamic table size update larger than the advertised limit, or after a field.
    #[error("invalid dynamic table size update")]
    BadSizeUpdate,
    /// A Huffman string could not be decoded.
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

/// Reads a prefixed integer (section 5.1) whose first byte is `block[*pos]`.
fn read_int(block: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<usize, DecodeError> {
    let mask = (1u16 << prefix_bits) as usize - 1;
    let first = *block.get(*pos).ok_or(DecodeError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first) & mask as u64;
    if value < mask as u64 {
        return Ok(value as usize);
    }
    let mut shift = 0u32;
    loop {
        let b = *block.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        // Values here are lengths, indexes and table sizes: 32 bits is plenty, and bounding
        // the shift keeps the arithmetic from overflowing on hostile input.
        if shift > 28 {
            return Err(DecodeError::IntegerOverflow);
        }
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(DecodeError::IntegerOverflow);
        }
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value as usize);
        }
    }
}

/// Writes a prefixed integer; `first` holds the representation's high bits.
fn write_int(value: usize, prefix_bits: u8, first: u8, out: &mut impl BufMut) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.put_u8((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// Decodes header blocks of one connection direction.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE this side advertised: the most a size update may ask.
    max_table_size: usize,
    scratch: Vec<u8>,
}

/// What [`Decoder::decode`] found out about a block that decoded without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The header list size (RFC 9113 section 6.5.2: names, values and 32 per field), counted
    /// up to the limit.
    pub list_size: usize,
    /// The list exceeded the limit: fields past it were not delivered.
    pub too_large: bool,
}

impl Decoder {
    /// A decoder for a peer whose table may be at most `max_table_size` bytes (what this side
    /// advertises as SETTINGS_HEADER_TABLE_SIZE; 4096 unless it says otherwise).
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes a complete header block (HEADERS and CONTINUATION fragments joined), handing
    /// each field to `emit` in order until the header list reaches `max_list_size`.
    ///
    /// Literal strings without Huffman coding are slices of `block` (no copy); the caller
    /// decides how long `block` may live. An error leaves the table out of step with the
    /// peer's: the connection must end.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list_size: usize,
        mut emit: impl FnMut(Bytes, Bytes),
    ) -> Result<Decoded, DecodeError> {
        let mut pos = 0;
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut fields = 0usize;
        while pos < block.len() {
            let b = block[pos];
            let (name, value) = if b & 0x80 != 0 {
                // Indexed field (section 6.1).
                let index = read_int(block, &mut pos, 7)?;
                self.table.get(index).ok_or(DecodeError::BadIndex(index))?
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (section 6.3): "MUST occur at the beginning of
                // the first field block following the change", and never above the limit.
                let size = read_int(block, &mut pos, 5)?;
                if fields > 0 || size > self.max_table_size {
                    return Err(DecodeError::BadSizeUpdate);
                }
                self.table.set_max_size(size);
                continue;
            } else {
                // Literals: with incremental indexing (01), without indexing (0000), never
                // indexed (0001).
                let indexing = b & 0x40 != 0;
                let prefix = if indexing { 6 } else { 4 };
                let index = read_int(block, &mut pos, prefix)?;
                let name = if index == 0 {
                    self.string(block, &mut pos)?
                } else {
                    self.table.name(index).ok_or(DecodeError::BadIndex(index))?
                };
                let value = self.string(block, &mut pos)?;
                if indexing {
                    // Copies, so a table entry never keeps a whole block alive.
                    self.table.insert(
                        Bytes::copy_from_slice(&name),
                        Bytes::copy_from_slice(&value),
                    );
                }
                (name, value)
            };
            fields += 1;
            if too_large {
                continue;
            }
            list_size += entry_size(&name, &value);
            if list_size > max_list_size {
                too_large = true;
                continue;
            }
            emit(name, value);
        }
        Ok(Decoded {
            list_size,
            too_large,
        })
    }

    /// A string literal (section 5.2).
    fn string(&mut self, block: &Bytes, pos: &mut usize) -> Result<Bytes, DecodeError> {
        let huffman = block.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = read_int(block, pos, 7)?;
        let end = pos.checked_add(len).ok_or(DecodeError::Truncated)?;
        if end > block.len() {
            return Err(DecodeError::Truncated);
        }
        let raw = block.slice(*pos..end);
        *pos = end;
        if !huffman {
            return Ok(raw);
        }
        self.scratch.clear();
        huffman::decode(&raw, &mut self.scratch)?;
        Ok(Bytes::copy_from_slice(&self.scratch))
    }
}

/// Encodes header blocks without using the dynamic table (see the module docs).
#[derive(Debug, Clone)]
pub struct Encoder {
    /// A dynamic table size update of 0 goes at the start of the next block.
    announce_empty_table: bool,
    huffman: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Names whose values should never be indexed by an intermediary (section 7.1.3).
fn sensitive(name: &[u8]) -> bool {
    matches!(
        name,
        b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie"
    )
}

impl Encoder {
    /// An encoder for a new connection.
    pub fn new() -> Encoder {
        Encoder {
            announce_empty_table: true,
            huffman: false,
        }
    }

    /// Huffman-codes literal strings where that makes them shorter.
    pub fn with_huffman(mut self, on: bool) -> Encoder {
        self.huffman = on;
        self
    }

    /// The peer changed SETTINGS_HEADER_TABLE_SIZE: say again, at the start of the next block,
    /// that this encoder's table is empty (a decoder may expect a size update after a change).
    pub fn peer_table_size_changed(&mut self) {
        self.announce_empty_table = true;
    }

    /// Starts a header block: call before the block's first field.
    pub fn begin(&mut self, out: &mut impl BufMut) {
        if std::mem::take(&mut self.announce_empty_table) {
            write_int(0, 5, 0x20, out);
        }
    }

    /// Appends one field. Names must be lower case (HTTP/2 requires it; callers check).
    pub fn field(&self, name: &[u8], value: &[u8], out: &mut impl BufMut) {
        let (exact, name_index) = static_lookup(name, value);
        if let Some(i) = exact {
            write_int(i, 7, 0x80, out);
            return;
        }
        // Literal without indexing (0000), or never indexed (0001) for credentials.
        let first = if sensitive(name) { 0x10 } else { 0x00 };
        match name_index {
            Some(i) => write_int(i, 4, first, out),
            None => {
                out.put_u8(first);
                self.string(name, out);
            }
        }
        self.string(value, out);
    }

    fn string(&self, s: &[u8], out: &mut impl BufMut) {
        if self.huffman {
            let len = huffman::encoded_len(s);
            if len < s.len() {
                write_int(len, 7, 0x80, out);
                huffman::encode(s, out);
                return;
            }
        }
        write_int(s.len(), 7, 0x00, out);
        out.put_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_at_every_prefix() {
        for prefix in 1..=8u8 {
            for v in [
                0usize,
                1,
                30,
                31,
                127,
                128,
                255,
                256,
                1337,
                65_535,
                1 << 20,
                u32::MAX as usize,
            ] {
                let mut out = Vec::new();
                write_int(v, prefix, 0, &mut out);
                let mut pos = 0;
                assert_eq!(read_int(&out, &mut pos, prefix), Ok(v), "{v} / {prefix}");
                assert_eq!(pos, out.len());
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        write_int(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn hostile_integers_are_refused() {
        let mut pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 7),
            Err(DecodeError::IntegerOverflow)
        );
        let mut pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0x80], &mut pos, 7),
            Err(DecodeError::Truncated)
        );
    }

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        Bytes::from(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>(),
        )
    }

    fn decode_list(d: &mut Decoder, block: &Bytes) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let r = d
            .decode(block, usize::MAX, |n, v| {
                out.push((
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        assert!(!r.too_large);
        out
    }

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 Appendix C.3 to C.6: three blocks each on one connection, with the dynamic
    /// table's size after each block as the RFC gives it.
    #[test]
    fn rfc_7541_appendix_c_sequences() {
        let requests = [
            list(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            list(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            list(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let responses = [
            list(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            list(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            list(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                ),
            ]),
        ];
        type Case<'a> = (
            &'a str,
            usize,
            [&'a str; 3],
            &'a [Vec<(String, String)>; 3],
            [usize; 3],
        );
        let cases: [Case<'_>; 4] = [
            ("C.3", 4096, ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865", "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"], &requests, [57, 110, 164]),
            ("C.4", 4096, ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf", "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"], &requests, [57, 110, 164]),
            ("C.5", 256, ["4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "4803 3330 37c1 c0bf", "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31"], &responses, [222, 222, 215]),
            ("C.6", 256, ["4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3", "4883 640e ffc1 c0bf", "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"], &responses, [222, 222, 215]),
        ];
        for (name, table, blocks, expected, sizes) in cases {
            let mut d = Decoder::new(table);
            for i in 0..3 {
                assert_eq!(
                    decode_list(&mut d, &hex(blocks[i])),
                    expected[i],
                    "{name}.{}",
                    i + 1
                );
                assert_eq!(d.table.size(), sizes[i], "{name}.{} table size", i + 1);
            }
        }
    }

    /// kitex-wire.md 8.8: the request HEADERS block of a Kitex unary call.
    #[test]
    fn kitex_request_vector() {
        let block = hex(
            "83 86 44 16 2f 65 63 68 6f 2e 45 63 68 6f 53 65 72 76 69 63 65 2f 45 63 68 6f 41 04 65 63 68 6f
             5f 10 61 70 70 6c 69 63 61 74 69 6f 6e 2f 67 72 70 63 7a 0d 6b 69 74 65 78 2f 76 30 2e 31 36 2e
             33 40 02 74 65 08 74 72 61 69 6c 65 72 73 40 0c 67 72 70 63 2d 74 69 6d 65 6f 75 74 08 31 30 30
             30 30 30 30 75 40 0e 72 70 63 2d 70 65 72 73 69 73 74 2d 6b 31 02 76 31 40 13 64 65 73 74 69 6e
             61 74 69 6f 6e 2d 73 65 72 76 69 63 65 04 65 63 68 6f 40 12 64 65 73 74 69 6e 61 74 69 6f 6e 2d
             6d 65 74 68 6f 64 04 45 63 68 6f 40 0e 73 6f 75 72 63 65 2d 73 65 72 76 69 63 65 06 63 6c 69 65
             6e 74 40 0d 73 6f 75 72 63 65 2d 6d 65 74 68 6f 64 00",
        );
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(
            decode_list(&mut d, &block),
            list(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/echo.EchoService/Echo"),
                (":authority", "echo"),
                ("content-type", "application/grpc"),
                ("user-agent", "kitex/v0.16.3"),
                ("te", "trailers"),
                ("grpc-timeout", "1000000u"),
                ("rpc-persist-k1", "v1"),
                ("destination-service", "echo"),
                ("destination-method", "Echo"),
                ("source-service", "client"),
                ("source-method", ""),
            ])
        );
    }

    #[test]
    fn the_list_limit_stops_delivery_but_not_decoding() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        // Two literals with incremental indexing ("aa: 1", "bb: 2", 35 bytes each), then a
        // reference to the first.
        let block = hex("40 02 61 61 01 31 40 02 62 62 01 32 bf");
        let mut got = Vec::new();
        let r = d.decode(&block, 40, |n, _| got.push(n)).unwrap();
        assert!(r.too_large);
        assert_eq!(got, vec![Bytes::from_static(b"aa")]);
        // Both entries went into the table all the same (newest first): the next block can
        // refer to them.
        assert_eq!(
            decode_list(&mut d, &hex("be bf")),
            list(&[("bb", "2"), ("aa", "1")])
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        for (block, err) in [
            ("80", DecodeError::BadIndex(0)),
            ("be", DecodeError::BadIndex(62)),
            ("40 05 61", DecodeError::Truncated),
            ("0f", DecodeError::Truncated),
            ("82 20", DecodeError::BadSizeUpdate),
            ("3f e2 1f", DecodeError::BadSizeUpdate),
            ("00 81 ff 00", DecodeError::Huffman(HuffmanError::Padding)),
        ] {
            let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
            assert_eq!(
                d.decode(&hex(block), usize::MAX, |_, _| {}),
                Err(err),
                "{block}"
            );
        }
        // A size update within the limit, at the start, is fine; it evicts.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        decode_list(&mut d, &hex("40 02 61 61 01 31"));
        assert_eq!(
            decode_list(&mut d, &hex("20 82")),
            list(&[(":method", "GET")])
        );
        assert_eq!(d.table.size(), 0);
    }

    #[test]
    fn encoder_output_decodes_to_the_same_list() {
        let fields = list(&[
            (":status", "200"),
            (":method", "POST"),
            (":path", "/pkg.Svc/Method"),
            ("content-type", "application/grpc+thrift"),
            ("grpc-status", "0"),
            ("grpc-message", ""),
            ("authorization", "secret"),
            ("x-long", &"v".repeat(300)),
        ]);
        for huffman in [false, true] {
            let mut enc = Encoder::new().with_huffman(huffman);
            let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
            for round in 0..2 {
                let mut block = Vec::new();
                enc.begin(&mut block);
                for (n, v) in &fields {
                    enc.field(n.as_bytes(), v.as_bytes(), &mut block);
                }
                // The first block of a connection starts with "table size 0".
                assert_eq!(block[0] == 0x20, round == 0);
                assert_eq!(decode_list(&mut d, &Bytes::from(block)), fields);
                assert_eq!(d.table.size(), 0, "the encoder never indexes");
            }
        }
        let mut enc = Encoder::new();
        let mut block = Vec::new();
        enc.begin(&mut block);
        enc.field(b":status", b"200", &mut block);
        enc.field(b"authorization", b"x", &mut block);
        assert_eq!(block, [0x20, 0x88, 0x1f, 0x08, 0x01, b'x']);
    }
}
