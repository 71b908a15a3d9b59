//! Exact decimal arithmetic on the contract's decimal strings, small enough for a guest:
//! a value is an unsigned mantissa and a scale (`value = mantissa / 10^scale`). Money
//! never goes through floats.

use core::fmt;

/// A non-negative exact decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    mantissa: u128,
    scale: u32,
}

/// The most fractional digits kept; beyond it the contract's 28 significant digits are at risk.
const MAX_SCALE: u32 = 28;

impl Dec {
    /// Zero.
    pub const ZERO: Dec = Dec {
        mantissa: 0,
        scale: 0,
    };

    /// `mantissa / 10^scale`.
    pub fn new(mantissa: u128, scale: u32) -> Dec {
        Dec { mantissa, scale }.normalized()
    }

    /// Parses the contract's strict format: ASCII digits with at most one `.`, no sign.
    pub fn parse(s: &str) -> Option<Dec> {
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || frac.len() > MAX_SCALE as usize
        {
            return None;
        }
        let mut mantissa: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(u128::from(b - b'0'))?;
        }
        Some(Dec::new(mantissa, frac.len() as u32))
    }

    fn normalized(mut self) -> Dec {
        while self.scale > 0 && self.mantissa.is_multiple_of(10) {
            self.mantissa /= 10;
            self.scale -= 1;
        }
        self
    }

    fn rescaled(self, scale: u32) -> Option<u128> {
        self.mantissa
            .checked_mul(10u128.checked_pow(scale - self.scale)?)
    }

    /// Exact sum; `None` on overflow.
    pub fn checked_add(self, other: Dec) -> Option<Dec> {
        let scale = self.scale.max(other.scale);
        Some(Dec::new(
            self.rescaled(scale)?.checked_add(other.rescaled(scale)?)?,
            scale,
        ))
    }

    /// Exact product; `None` on overflow or beyond the representable scale.
    pub fn checked_mul(self, other: Dec) -> Option<Dec> {
        let scale = self.scale + other.scale;
        let d = Dec::new(self.mantissa.checked_mul(other.mantissa)?, scale);
        (d.scale <= MAX_SCALE).then_some(d)
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let pow = 10u128.pow(self.scale);
        write!(
            f,
            "{}.{:0width$}",
            self.mantissa / pow,
            self.mantissa % pow,
            width = self.scale as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Dec;

    #[test]
    fn parses_formats_and_multiplies_exactly() {
        let p = Dec::parse("0.000014").unwrap();
        let q = Dec::parse("7200").unwrap();
        assert_eq!(p.checked_mul(q).unwrap().to_string(), "0.1008");
        assert_eq!(Dec::parse("3.50").unwrap().to_string(), "3.5");
        assert_eq!(
            Dec::parse("0.1")
                .unwrap()
                .checked_add(Dec::parse("0.2").unwrap())
                .unwrap()
                .to_string(),
            "0.3"
        );
        assert!(Dec::parse("-1").is_none());
        assert!(Dec::parse("1e-5").is_none());
        assert!(Dec::parse(".").is_none());
        assert_eq!(Dec::new(512 * 1500 * 9_765_625, 13).to_string(), "0.75");
    }
}
