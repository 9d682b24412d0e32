//! RFC 3339 date-times with an offset, to POSIX microseconds.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±hh:mm)`, a `T`, `t` or space
//! between date and time, `z` for `Z`, 20 to 40 ASCII characters, a real
//! calendar date, hours 0-23, minutes and offset minutes 0-59, seconds 0-59.
//! Fractions past microseconds are cut, not rounded. A leap second (second 60
//! of a minute that ends a UTC minute 59: `23:59:60Z`, `05:29:60+05:30`) is
//! read as the last microsecond of its minute. docs/decisions.md says why.

pub const MICROS: i64 = 1_000_000;

fn digits(b: &[u8], from: usize, n: usize) -> Option<i64> {
    let mut value = 0i64;
    for &d in b.get(from..from + n)? {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(d - b'0');
    }
    Some(value)
}

fn leap_year(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if leap_year(y) => 29,
        _ => 28,
    }
}

/// Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// POSIX microseconds of an RFC 3339 date-time with an offset, else None.
pub fn parse(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let n = b.len();
    if !(20..=40).contains(&n) || !text.is_ascii() {
        return None;
    }
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let last = b[n - 1];
    let zulu = last == b'Z' || last == b'z';
    let offset = matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':';
    if !zulu && !offset {
        return None;
    }
    let offset_at = if zulu { n - 1 } else { n - 6 };
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let mut second = digits(b, 17, 2)?;
    // After the seconds: a fraction of at least one digit, then the offset.
    let mut micros = 0i64;
    if b[19] == b'.' {
        let fraction = b.get(20..offset_at)?;
        if fraction.is_empty() || !fraction.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for k in 0..6 {
            micros = micros * 10 + fraction.get(k).map_or(0, |d| i64::from(d - b'0'));
        }
    } else if offset_at != 19 {
        return None;
    }
    let zone_minutes = if zulu {
        0
    } else {
        let hours = digits(b, n - 5, 2)?;
        let minutes = digits(b, n - 2, 2)?;
        if hours > 23 || minutes > 59 {
            return None;
        }
        let total = hours * 60 + minutes;
        if b[n - 6] == b'-' {
            -total
        } else {
            total
        }
    };
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 {
        return None;
    }
    if second == 60 {
        // A leap second ends a UTC minute: 23:59:60Z is 05:29:60+05:30.
        if (minute - zone_minutes).rem_euclid(60) != 59 {
            return None;
        }
        second = 59;
        micros = 999_999;
    } else if second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let local = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Some((local - zone_minutes * 60) * MICROS + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Option<f64> {
        parse(text).map(|us| us as f64 / 1e6)
    }

    #[test]
    fn the_shapes_python_accepted_and_refused() {
        assert_eq!(secs("2024-01-01T00:00:00.5Z"), Some(1704067200.5));
        assert_eq!(
            parse("2024-01-01T00:00:00.1234567890123456789Z"),
            Some(1_704_067_200_123_456)
        );
        assert_eq!(secs("2024-01-01T00:00:00+23:59"), Some(1703980860.0));
        assert_eq!(secs("2024-01-01T00:00:00-00:00"), Some(1704067200.0));
        assert_eq!(secs("2024-02-29T00:00:00Z"), Some(1709164800.0));
        assert_eq!(secs("2024-01-01 00:00:00Z"), Some(1704067200.0));
        assert_eq!(secs("2024-01-01t00:00:00z"), Some(1704067200.0));
        assert_eq!(secs("2024-01-01T00:00:00.5+01:00"), Some(1704063600.5));
        for bad in [
            "2024-01-01T24:00:00Z",
            "2024-01-01T23:60:00Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+01:60", // Python's fromisoformat takes it; RFC 3339 does not
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2024-01-01T00:00:00.5x+01:00",
            "2024-01-01T00:00:00+01:00:00",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T1a:00:00Z",
            "2024-01-01T00:00:00.+1:00Z",
            "+024-01-01T00:00:00Z",
            "2024-01-01T00:00:00,5Z",
            "2024-01-01T00:-0::0.",
            "2026-11-25T10:00:00.Z",
            "２０２６-11-25T10:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn leap_seconds_end_a_utc_minute() {
        let last = parse("2024-06-30T23:59:59.999999Z");
        assert_eq!(parse("2024-06-30T23:59:60Z"), last);
        assert_eq!(parse("2024-06-30T23:59:60.5Z"), last);
        assert_eq!(parse("2024-07-01T05:29:60+05:30"), last);
        assert_eq!(parse("2024-07-01T01:59:60+02:00"), last);
        assert_eq!(parse("2024-06-30T23:58:60Z"), None);
        assert_eq!(parse("2024-07-01T05:59:60+05:30"), None);
    }

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(1900, 1, 1), -25567);
        assert_eq!(days_from_civil(1, 1, 1), -719162);
    }
}
