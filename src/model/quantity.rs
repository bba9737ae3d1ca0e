//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`) as the integers the
//! scheduler compares: CPU in millicores, everything else in whole units (bytes for memory).

/// Why a quantity string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// Largest value accepted (in the unit asked for); bigger quantities are refused, not wrapped.
const MAX: f64 = 9.0e18;

fn split(s: &str) -> Option<(f64, f64)> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let number: f64 = num.parse().ok()?;
    if !number.is_finite() {
        return None;
    }
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if !(-30..=30).contains(&e) {
                return None;
            }
            10f64.powi(e)
        }
        _ => return None,
    };
    Some((number, multiplier))
}

/// `s` in thousandths of a unit, rounded up (CPU: `500m` → 500, `2` → 2000, `0.1` → 100).
pub fn parse_milli(s: &str) -> Result<u64, QuantityError> {
    let (n, m) = split(s).ok_or_else(|| QuantityError(s.to_string()))?;
    let v = (n * m * 1000.0).ceil();
    if !(0.0..=MAX).contains(&v) {
        return Err(QuantityError(s.to_string()));
    }
    Ok(v as u64)
}

/// `s` in whole units, rounded up (memory: `128Mi` → 134217728, `1G` → 10^9).
pub fn parse_units(s: &str) -> Result<u64, QuantityError> {
    let (n, m) = split(s).ok_or_else(|| QuantityError(s.to_string()))?;
    let v = (n * m).ceil();
    if !(0.0..=MAX).contains(&v) {
        return Err(QuantityError(s.to_string()));
    }
    Ok(v as u64)
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
    fn garbage_and_negative_values_are_refused() {
        for bad in [
            "", "abc", "1Qi", "-1", "5e400", "1e31", "NaN", "inf", "1..2",
        ] {
            assert!(parse_units(bad).is_err(), "{bad}");
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }
}
