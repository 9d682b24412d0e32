//! Exact decimal numbers from JSON literals: canonical text and SUM amounts.
//!
//! A literal becomes sign, significant digits and a power of ten, with no
//! context and no rounding, whatever its length. Two bounds keep arithmetic
//! and keys finite (README, "Bounds on numbers"):
//!
//! - a SUM amount is below 10^31 in magnitude with at most 30 decimals,
//!   trailing zeros not counted; any zero is plain 0;
//! - a group value, UNIQUE member or filter comparand whose canonical text
//!   would exceed 512 bytes does not count (`value_too_long`).

use num_bigint::BigInt;
use num_traits::{Signed, ToPrimitive, Zero};

pub const MAX_ADJUSTED_EXPONENT: i64 = 30;
pub const MAX_FRACTION_DIGITS: i64 = 30;
pub const MAX_KEY_BYTES: usize = 512;
/// Longest decimal string a SUM takes ("12.50"), as in the Python contract.
pub const MAX_DECIMAL_STRING: usize = 100;
/// Decimals of an AVG value (the exact sum and count are stored too).
pub const AVG_DECIMALS: u32 = 12;

/// ±digits × 10^exponent; `digits` has no leading or trailing zeros (empty for zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub digits: Vec<u8>, // ASCII digits
    pub exponent: i64,
}

impl Decimal {
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The exponent of the leading digit (Python's Decimal.adjusted()).
    pub fn adjusted(&self) -> i64 {
        self.exponent.saturating_add(self.digits.len() as i64 - 1)
    }

    /// Parse a JSON number literal (grammar already checked), or a decimal
    /// string's text (`parse_decimal_string` checks its grammar).
    pub fn parse(text: &str) -> Decimal {
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if let Some(&s) = bytes.first() {
            if s == b'-' || s == b'+' {
                negative = s == b'-';
                i = 1;
            }
        }
        let mut mantissa: Vec<u8> = Vec::with_capacity(bytes.len());
        let mut fraction_digits: i64 = 0;
        let mut seen_point = false;
        while i < bytes.len() {
            match bytes[i] {
                d @ b'0'..=b'9' => {
                    mantissa.push(d);
                    if seen_point {
                        fraction_digits += 1;
                    }
                }
                b'.' => seen_point = true,
                _ => break,
            }
            i += 1;
        }
        let mut exponent: i64 = 0;
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            i += 1;
            let mut exp_negative = false;
            if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
                exp_negative = bytes[i] == b'-';
                i += 1;
            }
            for &d in &bytes[i..] {
                // Saturates far beyond any bound: such a value is refused anyway.
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(d - b'0'));
                if exponent > i64::MAX / 4 {
                    exponent = i64::MAX / 4;
                }
            }
            if exp_negative {
                exponent = -exponent;
            }
        }
        let first = mantissa.iter().position(|&d| d != b'0');
        let Some(first) = first else {
            return Decimal {
                negative: false,
                digits: Vec::new(),
                exponent: 0,
            };
        };
        let last = mantissa.iter().rposition(|&d| d != b'0').unwrap_or(first);
        let trailing = (mantissa.len() - 1 - last) as i64;
        let digits = mantissa[first..=last].to_vec();
        Decimal {
            negative,
            digits,
            exponent: exponent - fraction_digits + trailing,
        }
    }

    /// Canonical text (`1.0` is `1`, `-0` is `0`, no exponent), or None when
    /// it would be longer than `max_bytes`.
    pub fn canonical(&self, max_bytes: usize) -> Option<String> {
        if self.is_zero() {
            return Some("0".to_string());
        }
        let adjusted = self.adjusted();
        if adjusted.unsigned_abs() as usize >= max_bytes {
            return None; // its text has more characters than the limit
        }
        let n = self.digits.len() as i64;
        let mut out = String::with_capacity((n + self.exponent.unsigned_abs() as i64 + 3) as usize);
        if self.negative {
            out.push('-');
        }
        let digits = std::str::from_utf8(&self.digits).expect("ASCII digits");
        if self.exponent >= 0 {
            out.push_str(digits);
            out.extend(std::iter::repeat_n('0', self.exponent as usize));
        } else {
            let point = n + self.exponent; // digits before the point
            if point > 0 {
                out.push_str(&digits[..point as usize]);
                out.push('.');
                out.push_str(&digits[point as usize..]);
            } else {
                out.push_str("0.");
                out.extend(std::iter::repeat_n('0', (-point) as usize));
                out.push_str(digits);
            }
        }
        if out.len() > max_bytes {
            return None;
        }
        Some(out)
    }
}

/// A literal that is already canonical as it stands: a plain integer with no
/// sign of zero (`12`, `-3`, `0`), the common case of group values and ids.
pub fn plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.len() < MAX_KEY_BYTES
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && !text.starts_with('-') || !digits.starts_with('0'))
}

/// A short plain literal (`-?int(.frac)?`, at most 18 digits) as an amount,
/// without building a Decimal: always within the SUM bounds.
pub fn short_amount(text: &str) -> Option<Amount> {
    let bytes = text.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut coefficient: i64 = 0;
    let mut scale: u8 = 0;
    let mut seen_point = false;
    let mut count = 0;
    for &d in digits {
        match d {
            b'0'..=b'9' => {
                coefficient = coefficient * 10 + i64::from(d - b'0');
                count += 1;
                if seen_point {
                    scale += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return None, // an exponent: the general path
        }
    }
    if count == 0 || count > 18 {
        return None;
    }
    let coefficient = i128::from(if negative { -coefficient } else { coefficient });
    Some(Amount { coefficient, scale })
}

/// Why a matching event did not count for a metric (a Prometheus label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    MissingValue,
    NotANumber,
    OutOfRange,
    ValueTooLong,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::MissingValue => "missing_value",
            Skip::NotANumber => "not_a_number",
            Skip::OutOfRange => "out_of_range",
            Skip::ValueTooLong => "value_too_long",
        }
    }
}

/// An exact amount as a scaled integer: value = coefficient / 10^scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub coefficient: i128,
    pub scale: u8,
}

/// A number as a SUM amount within the bounds, or why it does not count.
pub fn bounded(value: &Decimal) -> Result<Amount, Skip> {
    if value.is_zero() {
        return Ok(Amount {
            coefficient: 0,
            scale: 0,
        });
    }
    if value.adjusted() > MAX_ADJUSTED_EXPONENT || -value.exponent > MAX_FRACTION_DIGITS {
        return Err(Skip::OutOfRange);
    }
    // At most 31 integer digits and 30 decimals: 61 digits, which may not fit
    // an i128 (38); such amounts are rare and take the big path of the sum.
    let scale = (-value.exponent).max(0) as u8;
    let mut coefficient: i128 = 0;
    for &d in &value.digits {
        coefficient = coefficient
            .checked_mul(10)
            .and_then(|c| c.checked_add(i128::from(d - b'0')))
            .ok_or(Skip::OutOfRange)?;
    }
    for _ in 0..value.exponent.max(0) {
        coefficient = coefficient.checked_mul(10).ok_or(Skip::OutOfRange)?;
    }
    Ok(Amount {
        coefficient: if value.negative {
            -coefficient
        } else {
            coefficient
        },
        scale,
    })
}

/// `bounded`, but for amounts of more than 38 digits too (as a big integer).
pub fn bounded_big(value: &Decimal) -> Result<(BigInt, u8), Skip> {
    if value.is_zero() {
        return Ok((BigInt::zero(), 0));
    }
    if value.adjusted() > MAX_ADJUSTED_EXPONENT || -value.exponent > MAX_FRACTION_DIGITS {
        return Err(Skip::OutOfRange);
    }
    let scale = (-value.exponent).max(0) as u8;
    let mut digits = value.digits.clone();
    digits.extend(std::iter::repeat_n(b'0', value.exponent.max(0) as usize));
    let mut n = BigInt::parse_bytes(&digits, 10).expect("digits");
    if value.negative {
        n = -n;
    }
    Ok((n, scale))
}

/// A SUM amount from a decimal string such as "12.50": a plain decimal
/// literal only (no NaN, Infinity, blanks, hex, non-ASCII digits).
pub fn parse_decimal_string(text: &str) -> Result<Decimal, Skip> {
    if text.len() > MAX_DECIMAL_STRING || !decimal_string_shape(text.as_bytes()) {
        return Err(Skip::NotANumber);
    }
    Ok(Decimal::parse(text))
}

/// `[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?`
fn decimal_string_shape(b: &[u8]) -> bool {
    let mut i = 0;
    if matches!(b.first(), Some(b'+') | Some(b'-')) {
        i = 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if !(1..=4).contains(&(i - start)) {
            return false;
        }
    }
    i == b.len()
}

/// An exact running sum: a scaled i128 while it fits, a big integer after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sum {
    Small { coefficient: i128, scale: u8 },
    Big { coefficient: BigInt, scale: u8 },
}

impl Sum {
    pub fn of_amount(amount: &Amount) -> Sum {
        Sum::Small {
            coefficient: amount.coefficient,
            scale: amount.scale,
        }
    }

    pub fn of_big(coefficient: &BigInt, scale: u8) -> Sum {
        Sum::Big {
            coefficient: coefficient.clone(),
            scale,
        }
    }
}

impl Default for Sum {
    fn default() -> Self {
        Sum::Small {
            coefficient: 0,
            scale: 0,
        }
    }
}

fn pow10(n: u8) -> Option<i128> {
    10i128.checked_pow(u32::from(n))
}

impl Sum {
    pub fn add_amount(&mut self, amount: &Amount) {
        if let Sum::Small { coefficient, scale } = self {
            let target = (*scale).max(amount.scale);
            let mine = pow10(target - *scale).and_then(|p| coefficient.checked_mul(p));
            let theirs =
                pow10(target - amount.scale).and_then(|p| amount.coefficient.checked_mul(p));
            if let (Some(a), Some(b)) = (mine, theirs) {
                if let Some(total) = a.checked_add(b) {
                    *coefficient = total;
                    *scale = target;
                    return;
                }
            }
        }
        self.add_big(&BigInt::from(amount.coefficient), amount.scale);
    }

    pub fn add_big(&mut self, amount: &BigInt, amount_scale: u8) {
        let (mut mine, scale) = match self {
            Sum::Small { coefficient, scale } => (BigInt::from(*coefficient), *scale),
            Sum::Big { coefficient, scale } => (coefficient.clone(), *scale),
        };
        let target = scale.max(amount_scale);
        mine *= BigInt::from(10u8).pow(u32::from(target - scale));
        let theirs = amount * BigInt::from(10u8).pow(u32::from(target - amount_scale));
        *self = Sum::Big {
            coefficient: mine + theirs,
            scale: target,
        };
    }

    pub fn merge(&mut self, other: &Sum) {
        match other {
            Sum::Small { coefficient, scale } => self.add_amount(&Amount {
                coefficient: *coefficient,
                scale: *scale,
            }),
            Sum::Big { coefficient, scale } => self.add_big(coefficient, *scale),
        }
    }

    /// Canonical decimal text of the sum (no exponent, no trailing zeros).
    pub fn text(&self) -> String {
        let (negative, digits, scale) = match self {
            Sum::Small { coefficient, scale } => (
                *coefficient < 0,
                coefficient.unsigned_abs().to_string(),
                *scale,
            ),
            Sum::Big { coefficient, scale } => (
                coefficient.is_negative(),
                coefficient.abs().to_string(),
                *scale,
            ),
        };
        if digits == "0" {
            return "0".to_string();
        }
        let scale = scale as usize;
        let (whole, fraction) = if digits.len() > scale {
            (
                digits[..digits.len() - scale].to_string(),
                &digits[digits.len() - scale..],
            )
        } else {
            ("0".to_string(), &digits[..])
        };
        let mut fraction = "0".repeat(scale.saturating_sub(digits.len())) + fraction;
        while fraction.ends_with('0') {
            fraction.pop();
        }
        let mut out = String::new();
        if negative {
            out.push('-');
        }
        out.push_str(&whole);
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(&fraction);
        }
        out
    }

    /// As (coefficient, scale) with a big integer, whatever the variant.
    fn big(&self) -> (BigInt, u8) {
        match self {
            Sum::Small { coefficient, scale } => (BigInt::from(*coefficient), *scale),
            Sum::Big { coefficient, scale } => (coefficient.clone(), *scale),
        }
    }

    /// Exact order of two values (MAX, MIN, and nothing rounded on the way).
    pub fn compare(&self, other: &Sum) -> std::cmp::Ordering {
        if let (
            Sum::Small {
                coefficient: a,
                scale: sa,
            },
            Sum::Small {
                coefficient: b,
                scale: sb,
            },
        ) = (self, other)
        {
            let target = (*sa).max(*sb);
            let mine = pow10(target - sa).and_then(|p| a.checked_mul(p));
            let theirs = pow10(target - sb).and_then(|p| b.checked_mul(p));
            if let (Some(x), Some(y)) = (mine, theirs) {
                return x.cmp(&y);
            }
        }
        let ((a, sa), (b, sb)) = (self.big(), other.big());
        let target = sa.max(sb);
        let x = a * BigInt::from(10u8).pow(u32::from(target - sa));
        let y = b * BigInt::from(10u8).pow(u32::from(target - sb));
        x.cmp(&y)
    }

    /// This sum divided by `count`, to AVG_DECIMALS decimals, halves away
    /// from zero (Python's ROUND_HALF_UP), exactly: integer division of
    /// sum × 10^12 by count × 10^scale, and its remainder.
    pub fn average(&self, count: u64) -> Sum {
        if count == 0 {
            return Sum::default();
        }
        let (coefficient, scale) = self.big();
        let numerator = coefficient * BigInt::from(10u8).pow(AVG_DECIMALS);
        let denominator = BigInt::from(count) * BigInt::from(10u8).pow(u32::from(scale));
        let mut quotient = &numerator / &denominator; // toward zero
        let remainder = &numerator % &denominator; // the sign of the numerator
        if remainder.abs() * 2u8 >= denominator {
            if numerator.is_negative() {
                quotient -= 1u8;
            } else {
                quotient += 1u8;
            }
        }
        Sum::Big {
            coefficient: quotient,
            scale: AVG_DECIMALS as u8,
        }
    }

    pub fn as_f64(&self) -> f64 {
        self.text().parse::<f64>().unwrap_or(f64::NAN)
    }

    pub fn is_integer_i64(&self) -> Option<i64> {
        match self {
            Sum::Small {
                coefficient,
                scale: 0,
            } => i64::try_from(*coefficient).ok(),
            Sum::Big {
                coefficient,
                scale: 0,
            } => coefficient.to_i64(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(literal: &str) -> Option<String> {
        Decimal::parse(literal).canonical(MAX_KEY_BYTES)
    }

    #[test]
    fn canonical_text_is_exact_for_any_length() {
        assert_eq!(text("1.0").as_deref(), Some("1"));
        assert_eq!(text("-0.0").as_deref(), Some("0"));
        assert_eq!(text("0e-300").as_deref(), Some("0"));
        assert_eq!(text("1e2").as_deref(), Some("100"));
        assert_eq!(text("12.50").as_deref(), Some("12.5"));
        assert_eq!(text("-0.00100").as_deref(), Some("-0.001"));
        assert_eq!(
            text("123456789012345678901234567890").as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(text("1.5e-3").as_deref(), Some("0.0015"));
        assert_eq!(text(&format!("1.{}", "1".repeat(400))).unwrap().len(), 402);
        assert_eq!(text(&format!("1.{}", "1".repeat(600))), None);
        assert_eq!(text("1e600"), None);
        assert_eq!(text("1e-600"), None);
        assert_eq!(text("1e999999999999999999999"), None);
        assert_eq!(
            text(&format!("2.{}", "0".repeat(5000))).as_deref(),
            Some("2")
        );
        assert_eq!(text("1e510").map(|t| t.len()), Some(511));
        assert_eq!(text("1e511").map(|t| t.len()), Some(512)); // 512 bytes is the limit
        assert_eq!(text("1e512"), None);
        assert_eq!(text("1e-510").map(|t| t.len()), Some(512));
        assert_eq!(text("1e-511"), None);
    }

    #[test]
    fn sum_amounts_are_bounded() {
        let amount = |t: &str| bounded(&Decimal::parse(t));
        assert_eq!(
            amount("0e-300"),
            Ok(Amount {
                coefficient: 0,
                scale: 0
            })
        );
        assert_eq!(
            amount("12.50"),
            Ok(Amount {
                coefficient: 125,
                scale: 1
            })
        );
        assert_eq!(
            amount(&format!("2.{}", "0".repeat(60))),
            Ok(Amount {
                coefficient: 2,
                scale: 0
            })
        );
        assert_eq!(amount("1e31"), Err(Skip::OutOfRange));
        assert_eq!(
            amount("9.99e30"),
            Ok(Amount {
                coefficient: 999 * 10i128.pow(28),
                scale: 0
            })
        );
        assert_eq!(amount("1e-31"), Err(Skip::OutOfRange));
        assert!(amount("1e-30").is_ok());
        // 31 integer digits and 30 decimals: past i128, but within the bounds.
        let wide = format!("{}.{}", "9".repeat(31), "9".repeat(30));
        assert_eq!(amount(&wide), Err(Skip::OutOfRange));
        assert!(bounded_big(&Decimal::parse(&wide)).is_ok());
    }

    #[test]
    fn sums_are_exact_and_widen_when_needed() {
        let mut sum = Sum::default();
        for _ in 0..10 {
            sum.add_amount(&bounded(&Decimal::parse("0.1")).unwrap());
        }
        assert_eq!(sum.text(), "1");
        let mut big = Sum::default();
        let wide = format!("{}.{}", "9".repeat(31), "9".repeat(30));
        let (n, scale) = bounded_big(&Decimal::parse(&wide)).unwrap();
        big.add_big(&n, scale);
        big.add_big(&n, scale);
        assert_eq!(
            big.text(),
            format!("1{}.{}8", "9".repeat(31), "9".repeat(29))
        );
        let mut a = Sum::default();
        a.add_amount(&Amount {
            coefficient: i128::MAX / 2,
            scale: 0,
        });
        a.add_amount(&Amount {
            coefficient: i128::MAX / 2,
            scale: 3,
        });
        assert!(matches!(a, Sum::Big { .. }));
        let mut s = Sum::default();
        s.add_amount(&Amount {
            coefficient: -5,
            scale: 1,
        });
        assert_eq!(s.text(), "-0.5");
    }

    #[test]
    fn the_fast_paths_agree_with_the_general_ones() {
        for literal in [
            "0",
            "-0",
            "12",
            "-3",
            "007",
            "1.50",
            "-0.25",
            "0.000",
            "123456789012345678",
            "1234567890123456789",
            "1e2",
            "1.5e3",
            "99999999999999999.9",
            "-999999999999999999",
        ] {
            if plain_integer(literal) {
                assert_eq!(
                    Decimal::parse(literal).canonical(MAX_KEY_BYTES).as_deref(),
                    Some(literal)
                );
            }
            if let Some(fast) = short_amount(literal) {
                let mut a = Sum::default();
                a.add_amount(&fast);
                let mut b = Sum::default();
                b.add_amount(&bounded(&Decimal::parse(literal)).unwrap());
                assert_eq!(a.text(), b.text(), "{literal}");
            }
        }
        assert!(!plain_integer("-0") && !plain_integer("007") && plain_integer("0"));
        assert!(short_amount("1e2").is_none() && short_amount("1234567890123456789").is_none());
    }

    fn sum(text: &str) -> Sum {
        match bounded(&Decimal::parse(text)) {
            Ok(a) => Sum::of_amount(&a),
            Err(_) => {
                let (n, scale) = bounded_big(&Decimal::parse(text)).unwrap();
                Sum::of_big(&n, scale)
            }
        }
    }

    #[test]
    fn values_compare_exactly() {
        use std::cmp::Ordering::*;
        assert_eq!(sum("1.50").compare(&sum("1.5")), Equal);
        assert_eq!(sum("-0.001").compare(&sum("0")), Less);
        assert_eq!(sum("1e-30").compare(&sum("0")), Greater);
        let wide = format!("{}.{}", "9".repeat(31), "9".repeat(30));
        assert_eq!(sum(&wide).compare(&sum("1e30")), Greater);
        assert_eq!(sum(&format!("-{wide}")).compare(&sum("-1e30")), Less);
        assert_eq!(sum("1e30").compare(&sum("1e-30")), Greater);
    }

    #[test]
    fn averages_round_half_away_from_zero() {
        assert_eq!(sum("1").average(3).text(), "0.333333333333");
        assert_eq!(sum("2").average(3).text(), "0.666666666667");
        assert_eq!(sum("-2").average(3).text(), "-0.666666666667");
        assert_eq!(sum("0.0000000000005").average(1).text(), "0.000000000001");
        assert_eq!(sum("-0.0000000000005").average(1).text(), "-0.000000000001");
        assert_eq!(sum("0.00000000000049999").average(1).text(), "0");
        assert_eq!(sum("10").average(4).text(), "2.5");
        assert_eq!(sum("0").average(7).text(), "0");
    }

    #[test]
    fn decimal_strings_have_a_plain_shape() {
        for good in ["12.50", "-3", ".5", "1.", "1e2", "+1", "1E-9999"] {
            assert!(parse_decimal_string(good).is_ok(), "{good}");
        }
        for bad in [
            "NaN", "Infinity", " 1", "1,5", "0x10", "", ".", "1e", "1e12345", "٣", "1_0",
        ] {
            assert_eq!(parse_decimal_string(bad), Err(Skip::NotANumber), "{bad}");
        }
        assert_eq!(
            parse_decimal_string(&"1".repeat(101)),
            Err(Skip::NotANumber)
        );
    }
}
