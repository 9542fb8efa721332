//! How long to wait before a retry: exponential backoff with full jitter, or the upstream's
//! `Retry-After` when it fits under the cap.
//!
//! Position: used by [`super::Retry`] once a retry is decided. Config: `retry.backoff_base`,
//! `retry.backoff_cap`. Metrics: none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use rand::Rng;

use crate::http::Response;

/// Full-jitter exponential backoff (`rand(0, min(cap, base · 2^n))` for retry `n`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay before retry `n` (0 for the first retry).
    ///
    /// With `retry_after` (what the upstream asked for): that delay exactly when it is within
    /// the cap; `None` (do not retry) beyond it, since the upstream asked for more patience
    /// than this retry policy has. Without it: a uniformly random delay in
    /// `[0, min(cap, base · 2^n)]`.
    pub(crate) fn delay(&self, n: u32, retry_after: Option<Duration>) -> Option<Duration> {
        match retry_after {
            Some(after) => (after <= self.cap).then_some(after),
            None => Some(jitter(self.ceiling(n))),
        }
    }

    /// `min(cap, base · 2^n)`.
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }
}

/// The response's `Retry-After` as a delay: delta-seconds, or an IMF-fixdate (the HTTP-date
/// every current server sends; the obsolete RFC 850 and asctime forms are ignored). A date in
/// the past is no delay. `None` when absent or unreadable.
pub fn retry_after(resp: &Response) -> Option<Duration> {
    let value = resp.headers().get(RETRY_AFTER)?.as_bytes().trim_ascii();
    if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
        let secs = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn jitter(ceiling: Duration) -> Duration {
    let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=max))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
fn parse_imf_fixdate(s: &[u8]) -> Option<SystemTime> {
    if s.len() != 29 || s.get(3..5)? != b", " || s.get(25..)? != b" GMT" {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = s.get(range)?;
        digits.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let sep = |at: usize, c: u8| s.get(at) == Some(&c);
    if !(sep(7, b' ') && sep(11, b' ') && sep(16, b' ') && sep(19, b':') && sep(22, b':')) {
        return None;
    }
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let month = MONTHS.iter().position(|m| Some(*m) == s.get(8..11))?;
    let month = u64::try_from(month).ok()? + 1;
    let (day, year) = (num(5..7)?, num(12..16)?);
    let (hour, min, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || year < 1970 || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + hour * 3_600 + min * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian; H. Hinnant's algorithm), for
/// years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::http::Body;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let b = Backoff::new(ms(25), ms(1000));
        let ceilings = [25, 50, 100, 200, 400, 800, 1000, 1000, 1000];
        for (n, &ceiling) in (0u32..).zip(ceilings.iter()) {
            assert_eq!(b.ceiling(n), ms(ceiling), "n = {n}");
            let samples: Vec<Duration> = (0..400).map(|_| b.delay(n, None).unwrap()).collect();
            assert!(samples.iter().all(|d| *d <= ms(ceiling)), "n = {n}");
            // Spread over the whole range, not pinned to an end (fails with odds 2^-400).
            assert!(samples.iter().any(|d| *d > ms(ceiling) / 2), "n = {n}");
            assert!(samples.iter().any(|d| *d < ms(ceiling) / 2), "n = {n}");
        }
        assert_eq!(b.ceiling(200), ms(1000));
        assert_eq!(
            Backoff::new(Duration::ZERO, ms(1000)).delay(3, None),
            Some(ms(0))
        );
    }

    #[test]
    fn retry_after_is_exact_within_the_cap_and_refuses_beyond() {
        let b = Backoff::new(ms(25), ms(1000));
        assert_eq!(b.delay(0, Some(ms(1000))), Some(ms(1000)));
        assert_eq!(b.delay(4, Some(ms(0))), Some(ms(0)));
        assert_eq!(b.delay(0, Some(ms(1001))), None);
    }

    #[test]
    fn retry_after_header_forms() {
        let with = |v: &'static str| {
            let mut r = Response::new(Body::empty());
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&r)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(with("-1"), None);
        assert_eq!(with("soon"), None);
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after(&Response::new(Body::empty())), None);
        let future = with("Fri, 01 Jan 2300 00:00:00 GMT").unwrap();
        assert!(
            future > Duration::from_secs(200 * 365 * 86_400),
            "{future:?}"
        );
    }

    #[test]
    fn imf_fixdate_parses_to_the_unix_time() {
        let at = |s: &str| {
            parse_imf_fixdate(s.as_bytes()).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(at("Sat, 01 Mar 2025 00:00:01 GMT"), Some(1_740_787_201));
        assert_eq!(at("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(at("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }
}
