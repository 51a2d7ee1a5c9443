//! How numbers are written in the report: three significant digits in the
//! unit that keeps them readable.

/// `812 ns`, `12.3 µs`, `1.25 ms`, `2.00 s`.
pub fn ns(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x} ns");
    }
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, "s")
    } else if x >= 1e6 {
        (x / 1e6, "ms")
    } else if x >= 1e3 {
        (x / 1e3, "µs")
    } else {
        (x, "ns")
    };
    format!("{} {unit}", sig3(v))
}

/// `812 /s`, `12.3 k/s`, `1.25 M/s`, `2.00 G/s`.
pub fn rate(x: f64) -> String {
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, "G/s")
    } else if x >= 1e6 {
        (x / 1e6, "M/s")
    } else if x >= 1e3 {
        (x / 1e3, "k/s")
    } else {
        (x, "/s")
    };
    format!("{} {unit}", sig3(v))
}

/// A value in `unit` (`ns`, `ops/s` or anything else, written as a plain
/// number followed by the unit).
pub fn value(x: f64, unit: &str) -> String {
    match unit {
        "ns" => ns(x),
        "ops/s" => rate(x),
        _ => format!("{} {unit}", sig3(x)),
    }
}

/// `1.23×`.
pub fn ratio(x: f64) -> String {
    format!("{}×", sig3(x))
}

/// `50.7%` of a fraction.
pub fn percent(x: f64) -> String {
    format!("{}%", sig3(100.0 * x))
}

/// Three significant digits (no exponent below 10⁶).
pub fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".to_string()
    } else {
        format!("{v:.3}")
    }
}

/// Median of `xs` (0 when empty).
pub fn median(xs: &[f64]) -> f64 {
    let m = benchutil::median(xs);
    if m.is_nan() { 0.0 } else { m }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_three_significant_digits_in_a_readable_unit() {
        assert_eq!(ns(75.4), "75.4 ns");
        assert_eq!(ns(1234.0), "1.23 µs");
        assert_eq!(ns(73_000.0), "73.0 µs");
        assert_eq!(rate(2_220_000.0), "2.22 M/s");
        assert_eq!(rate(305_016.5), "305 k/s");
        assert_eq!(ratio(1.0449), "1.04×");
        assert_eq!(value(3900.4, "instructions/op"), "3900 instructions/op");
    }
}
