//! When to reconcile again: Go-style durations (`spec.interval`, `spec.timeout`), ±5% jitter
//! after success (Flux's default) and per-object exponential backoff after a retryable failure
//! (750 ms doubling up to 15 min, reset on success).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::api::PackageSourceSpec;

/// First retry after a failure.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(750);
/// Longest wait between retries.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// Fraction of the interval a requeue may move either way.
pub(super) const JITTER: f64 = 0.05;
/// Upper bound of the default timeout (the interval otherwise).
pub(super) const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A duration string the CRD's pattern let through but that is still unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is not a duration: {reason} (write e.g. 30s, 10m, 1h30m)")]
pub struct DurationError {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Parses a Go duration as the CRD allows it: one or more `<number><unit>` with units
/// `ms`, `s`, `m`, `h` and an optional decimal fraction (`1.5h`). Zero is rejected: an
/// interval of zero would spin.
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut total = 0f64;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number: f64 = value[start..i]
            .parse()
            .map_err(|_| err("expected a number before each unit"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let seconds = match &value[unit_start..i] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("a number lacks its unit (ms, s, m or h)")),
            _ => return Err(err("units are ms, s, m and h")),
        };
        total += number * seconds;
    }
    // A year is far beyond any sensible interval; it also keeps from_secs_f64 from panicking.
    if !total.is_finite() || total > 366.0 * 24.0 * 3600.0 {
        return Err(err("it is longer than a year"));
    }
    if total <= 0.0 {
        return Err(err("it must be greater than zero"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `spec.interval`.
pub(super) fn interval(spec: &PackageSourceSpec) -> Result<Duration, DurationError> {
    parse_duration("interval", &spec.interval)
}

/// `spec.timeout`, else the interval capped at ten minutes.
pub(super) fn timeout(spec: &PackageSourceSpec) -> Result<Duration, DurationError> {
    match &spec.timeout {
        Some(t) => parse_duration("timeout", t),
        None => Ok(interval(spec)?.min(MAX_DEFAULT_TIMEOUT)),
    }
}

/// `d` moved by up to ±5%; `unit` is a uniform sample of [0, 1).
pub(super) fn jitter_with(d: Duration, unit: f64) -> Duration {
    let factor = 1.0 + (unit.clamp(0.0, 1.0) * 2.0 - 1.0) * JITTER;
    d.mul_f64(factor)
}

/// `d` moved by a random amount of up to ±5%, so objects created together spread out.
pub(super) fn jitter(d: Duration) -> Duration {
    jitter_with(d, fastrand::f64())
}

/// The wait before retry number `failures` (1 = first failure): 750 ms, 1.5 s, 3 s, … 15 min.
pub(super) fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX)
}

/// Consecutive failures per object, for [`backoff_delay`].
#[derive(Debug, Default)]
pub(super) struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Records one more failure of `key` and returns how long to wait before retrying.
    pub(super) fn next(&self, key: &str) -> Duration {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets `key`'s failures (after a success, or when the object is gone).
    pub(super) fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    #[cfg(test)]
    /// Consecutive failures recorded for `key`.
    pub(super) fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ok = |s: &str| parse_duration("interval", s).unwrap();
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1m500ms"), Duration::from_millis(60_500));
        for bad in ["", "10", "m", "5d", "1h-2m", "0s", "1..2s", "9999999h"] {
            let err = parse_duration("interval", bad).unwrap_err();
            assert!(
                err.to_string().contains("interval") && err.to_string().contains("10m"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn timeout_defaults_to_the_interval_at_most_ten_minutes() {
        let mut spec: PackageSourceSpec = crate::carvel::yaml::from_str(
            "spec",
            "package: {refName: a.b.c, version: 1.0.0}\ncontents: []\nbundle: {repository: r.io/a}\n",
        )
        .unwrap();
        assert_eq!(timeout(&spec).unwrap(), MAX_DEFAULT_TIMEOUT); // interval 1h
        spec.interval = "2m".into();
        assert_eq!(timeout(&spec).unwrap(), Duration::from_secs(120));
        spec.timeout = Some("45s".into());
        assert_eq!(timeout(&spec).unwrap(), Duration::from_secs(45));
    }

    #[test]
    fn jitter_stays_within_five_percent() {
        let d = Duration::from_secs(100);
        assert_eq!(jitter_with(d, 0.0), Duration::from_secs(95));
        assert_eq!(jitter_with(d, 0.5), d);
        assert!(jitter_with(d, 0.999_999) <= Duration::from_secs(105));
        for _ in 0..1000 {
            let j = jitter(d);
            assert!(j >= Duration::from_secs(95) && j <= Duration::from_secs(105));
        }
    }

    #[test]
    fn backoff_doubles_from_750ms_to_15min_and_resets() {
        assert_eq!(backoff_delay(1), Duration::from_millis(750));
        assert_eq!(backoff_delay(2), Duration::from_millis(1500));
        assert_eq!(backoff_delay(5), Duration::from_secs(12));
        assert_eq!(backoff_delay(11), Duration::from_millis(768_000));
        assert_eq!(backoff_delay(12), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);

        let b = Backoffs::default();
        assert_eq!(b.next("ns/a"), Duration::from_millis(750));
        assert_eq!(b.next("ns/a"), Duration::from_millis(1500));
        assert_eq!(b.next("ns/b"), Duration::from_millis(750));
        assert_eq!(b.failures("ns/a"), 2);
        b.reset("ns/a");
        assert_eq!(b.failures("ns/a"), 0);
        assert_eq!(b.next("ns/a"), Duration::from_millis(750));
    }
}
