//! The `grpc-timeout` request header.
//!
//! kitex-wire.md 5.2: "`grpc-timeout <value><unit>` (if ctx has a deadline; units n,u,m,S,M,H, at
//! most 8 digits)". PROTOCOL-HTTP2 spells it `TimeoutValue TimeoutUnit` with
//! `TimeoutValue → {positive integer as ASCII string of at most 8 digits}` and the units
//! `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.
//! Kitex sends what is left of its deadline in microseconds, e.g. `4999583u` for a 5 s timeout
//! (captures `grpc-*`).

use std::time::Duration;

/// Largest value field: 8 decimal digits.
const MAX_VALUE: u64 = 99_999_999;

/// The longest timeout the header can express: 99,999,999 hours (about 11,400 years).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(MAX_VALUE * 3600);

/// Units from finest to coarsest, with their length in nanoseconds.
const UNITS: [(u8, u128); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// Why a `grpc-timeout` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutError {
    /// The value is empty.
    #[error("empty grpc-timeout")]
    Empty,
    /// The last byte is not one of the units `n u m S M H`.
    #[error("grpc-timeout unit {0:#04x} is not one of n, u, m, S, M, H")]
    BadUnit(u8),
    /// A unit with no number in front of it.
    #[error("grpc-timeout has no digits before its unit")]
    NoDigits,
    /// More than 8 digits (the count is given).
    #[error("grpc-timeout has {0} digits, at most 8 are allowed")]
    TooManyDigits(usize),
    /// A byte before the unit is not an ASCII digit.
    #[error("grpc-timeout value is not digits: byte {0:#04x}")]
    NotDigits(u8),
}

/// Parses a `grpc-timeout` value into the time left until the deadline.
///
/// Strict: 1 to 8 ASCII digits and one unit byte, nothing else (no sign, no spaces). Zero is
/// accepted and means the deadline has already passed.
pub fn parse_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(TimeoutError::Empty);
    };
    // Checked first so that a bare number such as "100" reads as a missing unit, not as a number
    // with odd digits.
    let unit_nanos = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|&(_, nanos)| nanos)
        .ok_or(TimeoutError::BadUnit(unit))?;
    if digits.is_empty() {
        return Err(TimeoutError::NoDigits);
    }
    if let Some(&bad) = digits.iter().find(|b| !b.is_ascii_digit()) {
        return Err(TimeoutError::NotDigits(bad));
    }
    if digits.len() > 8 {
        return Err(TimeoutError::TooManyDigits(digits.len()));
    }
    // At most 8 digits, so this cannot overflow.
    let n = digits
        .iter()
        .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
    Ok(match unit {
        b'n' => Duration::from_nanos(n),
        b'u' => Duration::from_micros(n),
        b'm' => Duration::from_millis(n),
        // Seconds and coarser: 99,999,999 hours in nanoseconds would overflow u64, so these
        // are built from whole seconds.
        _ => Duration::from_secs(n * (unit_nanos / 1_000_000_000) as u64),
    })
}

/// Formats a timeout for `grpc-timeout`, never shorter than `timeout`.
///
/// Picks the finest unit whose value fits in 8 digits, the same choice grpc-go makes, so that a
/// forwarded deadline loses as little precision as the header allows: a coarser unit is only
/// chosen when the value in it still has at least 6 digits, so the error is below one part in a
/// hundred thousand. Within that unit the value is rounded **up**: the header is the caller's budget,
/// and a proxy that rounded down would make the server give up before the caller does, or turn a
/// budget of a few nanoseconds into an already-expired `0`. Overshooting by less than one unit
/// only means the caller's own deadline fires first, which it does anyway.
///
/// Timeouts above [`MAX_TIMEOUT`] are clamped to it, the one case where the result is shorter;
/// a deadline thousands of years away is no deadline in practice.
pub fn format_timeout(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    for (unit, unit_nanos) in UNITS {
        let value = nanos.div_ceil(unit_nanos);
        if value <= u128::from(MAX_VALUE) {
            return format!("{value}{}", char::from(unit));
        }
    }
    format!("{MAX_VALUE}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_units() {
        assert_eq!(parse_timeout(b"1n"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_timeout(b"1000000u"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_timeout(b"4999583u"),
            Ok(Duration::from_micros(4_999_583))
        );
        assert_eq!(parse_timeout(b"250m"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"5S"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3H"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_timeout(b"0n"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout(b"00000001S"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"99999999H"), Ok(MAX_TIMEOUT));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_timeout(b""), Err(TimeoutError::Empty));
        assert_eq!(parse_timeout(b"S"), Err(TimeoutError::NoDigits));
        assert_eq!(parse_timeout(b"100"), Err(TimeoutError::BadUnit(b'0')));
        assert_eq!(parse_timeout(b"10s"), Err(TimeoutError::BadUnit(b's')));
        assert_eq!(parse_timeout(b"10h"), Err(TimeoutError::BadUnit(b'h')));
        assert_eq!(parse_timeout(b"10 "), Err(TimeoutError::BadUnit(b' ')));
        assert_eq!(
            parse_timeout(b"123456789u"),
            Err(TimeoutError::TooManyDigits(9))
        );
        assert_eq!(parse_timeout(b"-5S"), Err(TimeoutError::NotDigits(b'-')));
        assert_eq!(parse_timeout(b"+5S"), Err(TimeoutError::NotDigits(b'+')));
        assert_eq!(parse_timeout(b" 5S"), Err(TimeoutError::NotDigits(b' ')));
        assert_eq!(parse_timeout(b"1.5S"), Err(TimeoutError::NotDigits(b'.')));
        assert_eq!(
            parse_timeout("5\u{e9}".as_bytes()),
            Err(TimeoutError::BadUnit(0xa9))
        );
    }

    #[test]
    fn format_picks_the_finest_unit_that_fits() {
        assert_eq!(format_timeout(Duration::ZERO), "0n");
        assert_eq!(format_timeout(Duration::from_nanos(1)), "1n");
        assert_eq!(
            format_timeout(Duration::from_nanos(99_999_999)),
            "99999999n"
        );
        assert_eq!(format_timeout(Duration::from_nanos(100_000_000)), "100000u");
        // What Kitex sends for its 1 s and 5 s deadlines.
        assert_eq!(format_timeout(Duration::from_secs(1)), "1000000u");
        assert_eq!(format_timeout(Duration::from_micros(4_999_583)), "4999583u");
        assert_eq!(format_timeout(Duration::from_secs(100)), "100000m");
        assert_eq!(format_timeout(Duration::from_secs(100_000)), "100000S");
        assert_eq!(format_timeout(Duration::from_secs(100_000_000)), "1666667M");
        assert_eq!(
            format_timeout(Duration::from_secs(6_000_000_000)),
            "1666667H"
        );
        assert_eq!(format_timeout(MAX_TIMEOUT), "99999999H");
        assert_eq!(format_timeout(Duration::MAX), "99999999H");
    }

    #[test]
    fn format_rounds_up() {
        // 100,000,001 ns does not fit in 8 digits of nanoseconds; 100,000.001 µs rounds up.
        assert_eq!(format_timeout(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(
            format_timeout(Duration::from_secs(99_999_999) + Duration::from_nanos(1)),
            "1666667M"
        );
    }

    #[test]
    fn spec_vector_round_trip() {
        // kitex-wire.md 8.8 request header `grpc-timeout 1000000u`.
        let d = parse_timeout(b"1000000u").unwrap();
        assert_eq!(format_timeout(d), "1000000u");
    }
}
