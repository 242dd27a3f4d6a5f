//! Wall-clock time as unix milliseconds, and its UTC rendering for humans.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `2026-11-25T22:04:53Z`.
pub(crate) fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-25T22:04:53.123Z`: for machine-read timestamps (`--json`).
pub(crate) fn format_utc_ms(ms: i64) -> String {
    let seconds = format_utc(ms);
    format!("{}.{:03}Z", seconds.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// Unix milliseconds of `2026-11-25T22:04:53Z` or `2026-11-25T22:04:53.123Z` (what
/// `format_utc` and `format_utc_ms` write); `None` for anything else.
pub(crate) fn parse_utc(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match &text[19..] {
        "Z" => 0,
        rest if rest.len() == 5 && rest.starts_with('.') && rest.ends_with('Z') => digits(20..23)?,
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// `1.2s`, `3m04s`, `1h02m`.
pub(crate) fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// `until 14:05:00 UTC (in 42m00s), then T4.5`: a durable wait's deadline for people. With
/// `now` (by the state's clock) it says how long is left, and the date only when the deadline
/// is not within a day; without, the full UTC time.
pub(crate) fn until(until_ms: i64, now_ms: Option<i64>, then: &[String]) -> String {
    let at = format_utc(until_ms);
    let mut text = match now_ms {
        Some(now) if until_ms > now && until_ms - now < 86_400_000 => {
            format!("until {} UTC (in {})", &at[11..19], format_duration(until_ms - now))
        }
        Some(now) if until_ms > now => format!("until {at} (in {})", format_duration(until_ms - now)),
        Some(_) => format!("until {at} (passed)"),
        None => format!("until {at}"),
    };
    if !then.is_empty() {
        text.push_str(&format!(", then {}", then.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_795_644_293_000), "2026-11-25T22:04:53Z");
        assert_eq!(format_utc_ms(1_795_644_293_042), "2026-11-25T22:04:53.042Z");
        assert_eq!(format_duration(1234), "1.2s");
        assert_eq!(format_duration(184_000), "3m04s");
    }

    #[test]
    fn a_deadline_says_how_long_is_left_by_the_clock_given() {
        let at = 1_795_644_293_000; // 2026-11-25T22:04:53Z
        let then = ["T4.5".to_string()];
        assert_eq!(until(at, Some(at - 2_520_000), &then), "until 22:04:53 UTC (in 42m00s), then T4.5");
        assert_eq!(until(at, Some(at), &[]), "until 2026-11-25T22:04:53Z (passed)");
        assert_eq!(until(at, Some(at + 1), &[]), "until 2026-11-25T22:04:53Z (passed)");
        assert_eq!(until(at, Some(at - 90_000_000), &[]), "until 2026-11-25T22:04:53Z (in 25h00m)");
        assert_eq!(until(at, None, &then), "until 2026-11-25T22:04:53Z, then T4.5");
    }

    #[test]
    fn parses_what_it_formats_and_nothing_else() {
        for ms in [0, 1_795_644_293_000, 1_795_644_293_042, 951_782_400_000 /* 2000-02-29 */] {
            assert_eq!(parse_utc(&format_utc_ms(ms)), Some(ms));
            assert_eq!(parse_utc(&format_utc(ms)), Some(ms - ms % 1000));
        }
        for bad in ["", "2026-11-25", "2026-13-01T00:00:00Z", "2026-11-25T22:04:53+01:00", "2026-11-25 22:04:53Z"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
