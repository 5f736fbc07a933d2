//! Numbers for people: durations as `276 µs`, `3.2 ms`, `1.4 s`.

use std::time::Duration;

/// A duration in the largest unit that keeps it at 1 or more: integers from 100 up, one
/// decimal below (`850 ns`, `27.6 µs`, `276 µs`, `3.2 ms`, `12.0 s`).
pub(crate) fn duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    // A unit ends where its value would print as 1000: 999.7 µs is `1.0 ms`, not `1000 µs`.
    let (v, unit) = if ns < 999.5 {
        (ns, "ns")
    } else if ns < 999.5e3 {
        (ns / 1e3, "µs")
    } else if ns < 999.5e6 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if unit == "ns" || v >= 99.95 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        let cases = [
            (Duration::from_nanos(850), "850 ns"),
            (Duration::from_nanos(27_640), "27.6 µs"),
            (Duration::from_micros(276), "276 µs"),
            (Duration::from_micros(3_210), "3.2 ms"),
            (Duration::from_micros(99_960), "100 ms"),
            (Duration::from_nanos(999_700), "1.0 ms"),
            (Duration::from_nanos(999_400), "999 µs"),
            (Duration::from_millis(1_400), "1.4 s"),
            (Duration::from_secs(125), "125 s"),
            (Duration::ZERO, "0 ns"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }
}
