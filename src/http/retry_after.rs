//! `Retry-After` (RFC 9110 §10.2.3) as a delay: delay-seconds or an HTTP-date in any of the
//! three formats of §5.6.7 (IMF-fixdate, and the obsolete RFC 850 and asctime forms).
//!
//! Position: read from upstream responses, by `retry` (the upstream's ask for a backoff) and
//! by `forward` (the pushback of a 429/503 for outlier detection). Config: none. Metrics: none.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The delay the `Retry-After` of `headers` asks for; `None` when it is absent or unreadable.
///
/// A date is measured from the wall clock now: dates are wall-clock facts, so this is the one
/// place on the request path that reads `SystemTime` rather than `tokio::time`. A date in the
/// past is no delay.
pub fn delay(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get(RETRY_AFTER)?.as_bytes(), SystemTime::now())
}

/// `value` as a delay from `now`: delay-seconds exactly (surrounding whitespace ignored), or
/// the time from `now` until an HTTP-date read by `httpdate` (years 1970 to 9999; a two-digit
/// RFC 850 year means 1970..=2069; the day name must match the date), zero if the date is not
/// after `now`.
pub fn parse(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = std::str::from_utf8(value.trim_ascii()).ok()?;
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http::HeaderValue;

    use super::*;

    /// 1994-11-06 08:49:37 UTC, the example date of RFC 9110 §5.6.7.
    const EXAMPLE: u64 = 784_111_777;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// `value` as a delay from `now` (seconds since the epoch), in whole seconds.
    fn secs(value: &str, now: u64) -> Option<u64> {
        parse(value.as_bytes(), at(now)).map(|d| d.as_secs())
    }

    /// The Unix time an HTTP-date names, measured as a delay from the epoch.
    fn unix(value: &str) -> Option<u64> {
        secs(value, 0)
    }

    #[test]
    fn delay_seconds_are_taken_exactly() {
        assert_eq!(secs("3", EXAMPLE), Some(3));
        assert_eq!(secs(" 0 ", EXAMPLE), Some(0));
        assert_eq!(secs("120", 0), Some(120));
        assert_eq!(secs("18446744073709551615", 0), Some(u64::MAX));
        assert_eq!(secs("18446744073709551616", 0), None, "beyond u64");
        assert_eq!(secs("-1", 0), None);
        assert_eq!(secs("+1", 0), None);
        assert_eq!(secs("1.5", 0), None);
        assert_eq!(secs("1 2", 0), None);
    }

    #[test]
    fn imf_fixdate() {
        assert_eq!(unix("Sun, 06 Nov 1994 08:49:37 GMT"), Some(EXAMPLE));
        assert_eq!(unix("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(unix("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(unix("Sat, 01 Mar 2025 00:00:01 GMT"), Some(1_740_787_201));
        assert_eq!(unix("Fri, 31 Dec 9999 23:59:59 GMT"), Some(253_402_300_799));
        assert_eq!(unix("  Sun, 06 Nov 1994 08:49:37 GMT "), Some(EXAMPLE));
        assert_eq!(unix("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(unix("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(unix("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(unix("Sun, 6 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(unix("Thu, 31 Dec 1969 23:59:59 GMT"), None, "before 1970");
    }

    #[test]
    fn rfc850_date() {
        assert_eq!(unix("Sunday, 06-Nov-94 08:49:37 GMT"), Some(EXAMPLE));
        assert_eq!(unix("Thursday, 01-Jan-70 00:00:00 GMT"), Some(0));
        // Two-digit years below 70 are this century's.
        assert_eq!(
            unix("Saturday, 01-Mar-25 00:00:01 GMT"),
            Some(1_740_787_201)
        );
        assert_eq!(unix("Sunday, 06-Nov-1994 08:49:37 GMT"), None);
        assert_eq!(unix("Sunday, 06-Nov-94 08:49:37 UTC"), None);
        assert_eq!(unix("Sun, 06-Nov-94 08:49:37 GMT"), None);
    }

    #[test]
    fn asctime_date() {
        assert_eq!(unix("Sun Nov  6 08:49:37 1994"), Some(EXAMPLE));
        assert_eq!(unix("Thu Jan  1 00:00:00 1970"), Some(0));
        assert_eq!(unix("Sat Mar  1 00:00:01 2025"), Some(1_740_787_201));
        assert_eq!(unix("Tue Feb 29 12:00:00 2000"), Some(951_825_600));
        assert_eq!(unix("Sun Nov 6 08:49:37 1994"), None);
        assert_eq!(unix("Sun Nov  6 08:49:37 94"), None);
    }

    #[test]
    fn a_date_must_exist_and_its_day_name_match() {
        assert_eq!(unix("Sun, 30 Feb 2025 00:00:00 GMT"), None);
        assert_eq!(unix("Fri, 06 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(unix("Sun, 06 Nov 1994 08:49:61 GMT"), None);
    }

    #[test]
    fn a_date_is_measured_from_now_and_the_past_is_no_delay() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(secs(date, EXAMPLE - 90), Some(90));
        assert_eq!(secs(date, EXAMPLE), Some(0));
        assert_eq!(secs(date, EXAMPLE + 3_600), Some(0));
        assert_eq!(secs("Sunday, 06-Nov-94 08:49:37 GMT", EXAMPLE - 5), Some(5));
        assert_eq!(secs("Sun Nov  6 08:49:37 1994", EXAMPLE - 5), Some(5));
    }

    #[test]
    fn garbage_is_no_delay_at_all() {
        for v in [
            "",
            " ",
            "soon",
            "GMT",
            "Sun,",
            "Sun, ",
            "Sunday",
            "Sun Nov",
            ":60 ",
            "12:34:60 ",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 GMT GMT",
            "06 Nov 1994",
            "1994-11-06T08:49:37Z",
            "Sun, 06 Nov 1994 08:49:37 GMT, 5",
        ] {
            assert_eq!(parse(v.as_bytes(), at(0)), None, "{v:?}");
        }
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT\xff", at(0)), None);
        assert_eq!(
            parse("Sün, 06 Nov 1994 08:49:37 GMT".as_bytes(), at(0)),
            None
        );
    }

    #[test]
    fn the_header_is_read_against_the_wall_clock() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(v));
            delay(&h)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(with("-1"), None);
        assert_eq!(with("soon"), None);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(with("Sunday, 06-Nov-94 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(with("Sun Nov  6 08:49:37 1994"), Some(Duration::ZERO));
        assert_eq!(delay(&HeaderMap::new()), None);
        let future = with("Mon, 01 Jan 2300 00:00:00 GMT").unwrap();
        assert!(
            future > Duration::from_secs(200 * 365 * 86_400),
            "{future:?}"
        );
    }
}
