//! A bounded skipper for thrift binary values: it finds where a struct ends without IDL.
//!
//! Buffered (unframed) thrift has no length prefix, so the only way to find the end of a message
//! is to walk its struct (kitex-wire.md 2.2). Kitex does the same with its skip decoder and a
//! nesting limit of 64 (`gopkg: protocol/thrift/skipdecoder_tpl.go`): every value, the message
//! body included, uses one level, and a value at level 65 is an error.
//!
//! Every length is checked against the end of the buffer and against a caller-given limit before
//! it is used, so a claimed 2 GiB string is refused at once instead of being waited for.

use crate::envelope::{decode_header, read_i32};
use crate::{ttype, Error};

/// Kitex's nesting limit for skipping (`defaultRecursionDepth`).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Walks one struct starting at `buf[0]` and returns its length in bytes, the final STOP included.
///
/// * [`Error::Incomplete`] if `buf` ends first (more bytes may fix it);
/// * [`Error::TooLarge`] as soon as a length shows the struct would pass `max_len` bytes;
/// * [`Error::DepthLimit`] past `max_depth` levels, [`Error::UnknownType`] and
///   [`Error::NegativeLength`] for bytes that are not thrift.
pub fn skip_struct(buf: &[u8], max_depth: usize, max_len: usize) -> Result<usize, Error> {
    let mut s = Skipper {
        buf,
        pos: 0,
        max_len,
    };
    s.value(ttype::STRUCT, max_depth)?;
    Ok(s.pos)
}

/// Length of one value of type `t` at the start of `buf` (a field value, list element, ...).
pub fn skip_value(buf: &[u8], t: u8, max_depth: usize, max_len: usize) -> Result<usize, Error> {
    let mut s = Skipper {
        buf,
        pos: 0,
        max_len,
    };
    s.value(t, max_depth)?;
    Ok(s.pos)
}

/// Length of the Buffered thrift message (envelope and body) at the start of `buf`.
///
/// This is how a Buffered message is delimited on the wire. `max_len` bounds the whole message.
pub fn message_len(buf: &[u8], max_depth: usize, max_len: usize) -> Result<usize, Error> {
    let hdr = decode_header(buf)?;
    if hdr.body_offset > max_len {
        return Err(Error::TooLarge {
            len: hdr.body_offset as u64,
            max: max_len as u64,
        });
    }
    let body = skip_struct(
        &buf[hdr.body_offset..],
        max_depth,
        max_len - hdr.body_offset,
    )
    .map_err(|e| shift(e, hdr.body_offset))?;
    Ok(hdr.body_offset + body)
}

fn shift(e: Error, by: usize) -> Error {
    match e {
        Error::Incomplete { needed } => Error::Incomplete {
            needed: needed + by,
        },
        Error::TooLarge { len, max } => Error::TooLarge {
            len: len + by as u64,
            max: max + by as u64,
        },
        other => other,
    }
}

struct Skipper<'a> {
    buf: &'a [u8],
    pos: usize,
    max_len: usize,
}

impl Skipper<'_> {
    /// Moves past `n` bytes, checking the limit first and then the buffer.
    fn advance(&mut self, n: u64) -> Result<(), Error> {
        let end = self.pos as u64 + n;
        if end > self.max_len as u64 {
            return Err(Error::TooLarge {
                len: end,
                max: self.max_len as u64,
            });
        }
        if end > self.buf.len() as u64 {
            return Err(Error::Incomplete {
                needed: end as usize,
            });
        }
        self.pos = end as usize;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, Error> {
        let at = self.pos;
        self.advance(1)?;
        Ok(self.buf[at])
    }

    fn len(&mut self) -> Result<u64, Error> {
        let at = self.pos;
        self.advance(4)?;
        let n = read_i32(self.buf, at)?;
        if n < 0 {
            return Err(Error::NegativeLength(n));
        }
        Ok(n as u64)
    }

    /// Skips `count` values of type `t`, each at nesting level `depth`.
    fn values(&mut self, t: u8, count: u64, depth: usize) -> Result<(), Error> {
        if let Some(size) = fixed_size(t) {
            // Fixed-size elements are skipped in one step so that a huge count costs nothing.
            if depth == 0 {
                return Err(Error::DepthLimit(DEFAULT_MAX_DEPTH));
            }
            return self.advance(count * size);
        }
        for _ in 0..count {
            self.value(t, depth)?;
        }
        Ok(())
    }

    fn value(&mut self, t: u8, depth: usize) -> Result<(), Error> {
        if depth == 0 {
            return Err(Error::DepthLimit(DEFAULT_MAX_DEPTH));
        }
        if let Some(size) = fixed_size(t) {
            return self.advance(size);
        }
        match t {
            ttype::STRING => {
                let n = self.len()?;
                self.advance(n)
            }
            ttype::STRUCT => loop {
                let ft = self.u8()?;
                if ft == ttype::STOP {
                    return Ok(());
                }
                check_type(ft)?;
                self.advance(2)?; // field id
                self.value(ft, depth - 1)?;
            },
            ttype::MAP => {
                let kt = self.u8()?;
                let vt = self.u8()?;
                let n = self.len()?;
                if n == 0 {
                    return Ok(());
                }
                check_type(kt)?;
                check_type(vt)?;
                for _ in 0..n {
                    self.value(kt, depth - 1)?;
                    self.value(vt, depth - 1)?;
                }
                Ok(())
            }
            ttype::SET | ttype::LIST => {
                let et = self.u8()?;
                let n = self.len()?;
                if n == 0 {
                    return Ok(());
                }
                check_type(et)?;
                self.values(et, n, depth - 1)
            }
            other => Err(Error::UnknownType(other)),
        }
    }
}

fn fixed_size(t: u8) -> Option<u64> {
    match t {
        ttype::BOOL | ttype::BYTE => Some(1),
        ttype::I16 => Some(2),
        ttype::I32 => Some(4),
        ttype::DOUBLE | ttype::I64 => Some(8),
        _ => None,
    }
}

fn check_type(t: u8) -> Result<(), Error> {
    match t {
        ttype::BOOL
        | ttype::BYTE
        | ttype::DOUBLE
        | ttype::I16
        | ttype::I32
        | ttype::I64
        | ttype::STRING
        | ttype::STRUCT
        | ttype::MAP
        | ttype::SET
        | ttype::LIST => Ok(()),
        other => Err(Error::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGS: &[u8] = &[
        0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
        0x00, 0x00,
    ];

    fn nested(levels: usize) -> Vec<u8> {
        // `levels` structs in total: the outer one plus levels-1 nested as field 1.
        let mut v = Vec::new();
        for _ in 1..levels {
            v.extend_from_slice(&[ttype::STRUCT, 0, 1]);
        }
        v.extend(std::iter::repeat_n(0u8, levels));
        v
    }

    #[test]
    fn skips_vector_8_1() {
        assert_eq!(skip_struct(ARGS, 64, 1 << 20), Ok(ARGS.len()));
        let mut trailing = ARGS.to_vec();
        trailing.extend_from_slice(b"next");
        assert_eq!(skip_struct(&trailing, 64, 1 << 20), Ok(ARGS.len()));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..ARGS.len() {
            assert!(
                matches!(
                    skip_struct(&ARGS[..n], 64, 1 << 20),
                    Err(Error::Incomplete { .. })
                ),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn depth_64_passes_and_65_fails() {
        let ok = nested(64);
        assert_eq!(skip_struct(&ok, 64, 1 << 20), Ok(ok.len()));
        let deep = nested(65);
        assert_eq!(
            skip_struct(&deep, 64, 1 << 20),
            Err(Error::DepthLimit(DEFAULT_MAX_DEPTH))
        );
    }

    #[test]
    fn containers_and_all_types() {
        let mut v = vec![];
        v.extend_from_slice(&[ttype::BOOL, 0, 1, 1]);
        v.extend_from_slice(&[ttype::BYTE, 0, 2, 7]);
        v.extend_from_slice(&[ttype::DOUBLE, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[ttype::I16, 0, 4, 0, 1]);
        v.extend_from_slice(&[ttype::I64, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1]);
        // map<string,i32>{"a":1}
        v.extend_from_slice(&[ttype::MAP, 0, 6, ttype::STRING, ttype::I32, 0, 0, 0, 1]);
        v.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 1]);
        // list<i32>[1,2]
        v.extend_from_slice(&[
            ttype::LIST,
            0,
            7,
            ttype::I32,
            0,
            0,
            0,
            2,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            2,
        ]);
        // set<struct>{ {} }
        v.extend_from_slice(&[ttype::SET, 0, 8, ttype::STRUCT, 0, 0, 0, 1, 0]);
        // empty map with garbage types is fine (count 0), as in Kitex
        v.extend_from_slice(&[ttype::MAP, 0, 9, 0, 0, 0, 0, 0, 0]);
        v.push(0);
        assert_eq!(skip_struct(&v, 64, 1 << 20), Ok(v.len()));
    }

    #[test]
    fn refuses_bad_input_by_name() {
        // negative string length
        let neg = [ttype::STRING, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            skip_struct(&neg, 64, 1 << 20),
            Err(Error::NegativeLength(-1))
        );
        // unknown field type 16 (UUID) is rejected like Kitex does
        assert_eq!(
            skip_struct(&[16, 0, 1], 64, 1 << 20),
            Err(Error::UnknownType(16))
        );
        // a claimed huge string is refused at once, not waited for
        let huge = [ttype::STRING, 0, 1, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            skip_struct(&huge, 64, 1 << 20),
            Err(Error::TooLarge { .. })
        ));
        // a claimed huge list of i64 is refused at once too
        let list = [ttype::LIST, 0, 1, ttype::I64, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            skip_struct(&list, 64, 1 << 20),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn message_len_of_buffered_vector() {
        let mut msg = vec![
            0x80, 0x01, 0x00, 0x01, 0, 0, 0, 4, b'E', b'c', b'h', b'o', 0, 0, 0, 1,
        ];
        msg.extend_from_slice(ARGS);
        assert_eq!(message_len(&msg, 64, 1 << 20), Ok(33));
        assert_eq!(
            message_len(&msg[..20], 64, 1 << 20),
            Err(Error::Incomplete { needed: 22 })
        );
        assert!(matches!(
            message_len(&msg, 64, 32),
            Err(Error::TooLarge { .. })
        ));
    }
}
