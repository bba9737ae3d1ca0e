//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`) as the integers the
//! scheduler compares: CPU in millicores, everything else in whole units (bytes for memory).

/// Why a quantity string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// Largest value accepted (in the unit asked for); bigger quantities are refused, not wrapped.
const MAX: u128 = 9_000_000_000_000_000_000;

/// What a suffix multiplies by.
#[derive(Clone, Copy)]
enum Multiplier {
    /// 10^k: `m`, `k`, `G`, `e3`, ...
    Decimal(i32),
    /// 2^b: `Ki`, `Mi`, ...
    Binary(u32),
}

/// The parts of a quantity: negative, its digits without the point, how many of them follow the
/// point, and the suffix's multiplier.
fn split(s: &str) -> Option<(bool, &str, String, Multiplier)> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let (negative, unsigned) = match num.as_bytes().first() {
        Some(b'-') => (true, &num[1..]),
        Some(b'+') => (false, &num[1..]),
        _ => (false, num),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
        return None;
    }
    let multiplier = match suffix {
        "" => Multiplier::Decimal(0),
        "n" => Multiplier::Decimal(-9),
        "u" => Multiplier::Decimal(-6),
        "m" => Multiplier::Decimal(-3),
        "k" => Multiplier::Decimal(3),
        "M" => Multiplier::Decimal(6),
        "G" => Multiplier::Decimal(9),
        "T" => Multiplier::Decimal(12),
        "P" => Multiplier::Decimal(15),
        "E" => Multiplier::Decimal(18),
        "Ki" => Multiplier::Binary(10),
        "Mi" => Multiplier::Binary(20),
        "Gi" => Multiplier::Binary(30),
        "Ti" => Multiplier::Binary(40),
        "Pi" => Multiplier::Binary(50),
        "Ei" => Multiplier::Binary(60),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if !(-30..=30).contains(&e) {
                return None;
            }
            Multiplier::Decimal(e)
        }
        _ => return None,
    };
    Some((negative, int, frac.to_string(), multiplier))
}

/// `s` × 10^`scale`, rounded up, computed in integers (no binary floating point: `2.007` CPU is
/// exactly 2007 millicores).
fn parse_scaled(s: &str, scale: i32) -> Result<u64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let (negative, int, frac, multiplier) = split(s).ok_or_else(err)?;
    let (pow10, pow2) = match multiplier {
        Multiplier::Decimal(k) => (k + scale, 0),
        Multiplier::Binary(b) => (scale, b),
    };
    // All digits, and where the point goes once the power of ten is applied.
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(err());
    }
    let point = digits.len() as i64 - frac.len() as i64 + i64::from(pow10);
    if point > 20 {
        return Err(err()); // at least 10^20
    }
    let (whole, rest) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        (
            digits[..point as usize].to_string(),
            digits[point as usize..].to_string(),
        )
    };
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| err())?
    };
    let rest = rest.trim_end_matches('0');
    let fraction_up: u128 = if rest.is_empty() {
        0
    } else if pow2 == 0 {
        1
    } else {
        // ceil(0.rest × 2^pow2); bounded so that rest × 2^60 fits in 128 bits.
        if rest.len() > 20 {
            return Err(err());
        }
        let numerator = rest.parse::<u128>().map_err(|_| err())? << pow2;
        numerator.div_ceil(10u128.pow(rest.len() as u32))
    };
    let value = whole
        .checked_mul(1u128 << pow2)
        .and_then(|w| w.checked_add(fraction_up))
        .filter(|v| *v <= MAX)
        .ok_or_else(err)?;
    Ok(value as u64)
}

/// `s` in thousandths of a unit, rounded up (CPU: `500m` → 500, `2` → 2000, `0.1` → 100).
pub fn parse_milli(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 3)
}

/// `s` in whole units, rounded up (memory: `128Mi` → 134217728, `1G` → 10^9).
pub fn parse_units(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(parse_milli("500m"), Ok(500));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("0.1"), Ok(100));
        assert_eq!(parse_milli("1e3"), Ok(1_000_000));
        assert_eq!(parse_units("128Mi"), Ok(128 << 20));
        assert_eq!(parse_units("1G"), Ok(1_000_000_000));
        assert_eq!(parse_units("1.5Ki"), Ok(1536));
        assert_eq!(parse_units("64"), Ok(64));
    }

    #[test]
    fn parsed_in_integers_not_floats() {
        // Through f64, 2.007 × 1000 is 2007.0000000000002 and rounds up to 2008.
        assert_eq!(parse_milli("2.007"), Ok(2007));
        assert_eq!(
            parse_milli("0.0011"),
            Ok(2),
            "a fraction of a millicore rounds up"
        );
        assert_eq!(parse_milli("1n"), Ok(1));
        assert_eq!(parse_milli("+1.5"), Ok(1500));
        assert_eq!(parse_milli(".5"), Ok(500));
        assert_eq!(parse_milli("5."), Ok(5000));
        assert_eq!(parse_units("0.1Ki"), Ok(103), "102.4 rounds up");
        assert_eq!(parse_units("1.000Gi"), Ok(1 << 30));
        assert_eq!(parse_units("7Ei"), Ok(7 << 60));
        assert_eq!(
            parse_units("8Ei"),
            Err(QuantityError("8Ei".into())),
            "above the limit"
        );
        assert_eq!(parse_units("9E"), Ok(9_000_000_000_000_000_000));
        assert_eq!(parse_units("1e-30"), Ok(1));
        assert_eq!(parse_units("-0"), Ok(0));
        assert_eq!(parse_units("0.000"), Ok(0));
        assert_eq!(
            parse_units("12345678901234567890123"),
            Err(QuantityError("12345678901234567890123".into()))
        );
    }

    #[test]
    fn garbage_and_negative_values_are_refused() {
        for bad in [
            "", "abc", "1Qi", "-1", "5e400", "1e31", "NaN", "inf", "1..2", ".", "+-1", "1-2",
        ] {
            assert!(parse_units(bad).is_err(), "{bad}");
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }
}
