//! Retries: which failures are worth another attempt, how long to wait before it, and the
//! retry budget shared by every call of one [`crate::HttpConnections`].
//!
//! There is exactly one retry loop per call (in `lib.rs`); this module only holds its rules.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use concerto_vm::host::{Backoff, RetryPolicy};
use rand::Rng;

/// Upper bound of a provider's `Retry-After` that is honoured (a larger value is cut to this).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Upper bound of `max_attempts` (a policy asking for more is cut to this).
pub(crate) const MAX_ATTEMPTS: u32 = 20;

/// Whether an HTTP status is worth retrying: 408 (request timeout), 409 (conflict, e.g. a
/// provider-side lock), 429 (rate limited) and every 5xx (529 = Anthropic "overloaded"
/// included). 400, 401, 403, 404, 422 and the other 4xx are permanent.
pub(crate) fn status_is_transient(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..=599).contains(&status)
}

/// The delay before retry number `retry` (1 = the first retry) under `policy`, before any
/// `Retry-After` is applied. Exponential delays get jitter (a uniform factor between 0.5
/// and 1); every delay is capped at `policy.max_delay`.
pub(crate) fn backoff_delay(policy: &RetryPolicy, retry: u32) -> Duration {
    let retry = retry.max(1);
    let base = match policy.backoff {
        Backoff::None => Duration::ZERO,
        Backoff::Linear => policy.initial_delay.saturating_mul(retry),
        Backoff::Exponential => {
            let factor = 1u32.checked_shl(retry - 1).unwrap_or(u32::MAX);
            policy.initial_delay.saturating_mul(factor)
        }
    };
    let capped = base.min(policy.max_delay);
    match policy.backoff {
        Backoff::Exponential => capped.mul_f64(rand::rng().random_range(0.5..=1.0)),
        Backoff::None | Backoff::Linear => capped,
    }
}

/// The wait before the next attempt: the policy's backoff, but never less than what the
/// provider asked for in `Retry-After` (itself capped at [`MAX_RETRY_AFTER`]).
pub(crate) fn next_delay(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let backoff = backoff_delay(policy, retry);
    match retry_after {
        Some(asked) => backoff.max(asked.min(MAX_RETRY_AFTER)),
        None => backoff,
    }
}

/// Reads the provider's wish for a pause: `retry-after-ms` (OpenAI, milliseconds) or
/// `Retry-After` (seconds, possibly fractional, or an HTTP date). `None` when absent or
/// unreadable; the result is capped at [`MAX_RETRY_AFTER`].
pub(crate) fn parse_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        let secs = (ms / 1000.0).min(MAX_RETRY_AFTER.as_secs_f64());
        return Some(Duration::from_secs_f64(secs));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after_value(value, now)
}

/// Parses one `Retry-After` value (see [`parse_retry_after`]).
pub(crate) fn parse_retry_after_value(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(
                secs.min(MAX_RETRY_AFTER.as_secs_f64()),
            ));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The provider's explicit verdict (`x-should-retry: true|false`, sent by OpenAI and
/// Anthropic), when present.
pub(crate) fn should_retry_header(headers: &http::HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The number of retries left to all calls of one connection layer. Every retry (never a
/// first attempt) takes one; when none is left the call fails instead of retrying, so a
/// systematic failure cannot multiply the traffic without bound.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    total: u32,
    left: AtomicU32,
}

impl RetryBudget {
    /// A budget of `total` retries.
    pub(crate) fn new(total: u32) -> RetryBudget {
        RetryBudget {
            total,
            left: AtomicU32::new(total),
        }
    }

    /// The configured total.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// Refills the budget (a new run begins).
    pub(crate) fn refill(&self) {
        self.left.store(self.total, Ordering::Release);
    }

    /// Takes one retry; `false` when the budget is used up.
    pub(crate) fn try_take(&self) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff,
            initial_delay: Duration::from_millis(initial_ms),
            max_delay: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(status_is_transient(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 422] {
            assert!(!status_is_transient(s), "{s}");
        }
    }

    #[test]
    fn backoff_shapes() {
        let none = policy(Backoff::None, 100, 1000);
        assert_eq!(backoff_delay(&none, 3), Duration::ZERO);
        let linear = policy(Backoff::Linear, 100, 250);
        assert_eq!(backoff_delay(&linear, 1), Duration::from_millis(100));
        assert_eq!(backoff_delay(&linear, 2), Duration::from_millis(200));
        assert_eq!(backoff_delay(&linear, 3), Duration::from_millis(250));
        let exp = policy(Backoff::Exponential, 100, 10_000);
        for retry in 1..=4u32 {
            let full = Duration::from_millis(100 * (1 << (retry - 1)));
            for _ in 0..50 {
                let d = backoff_delay(&exp, retry);
                assert!(d <= full && d >= full / 2, "retry {retry}: {d:?}");
            }
        }
        // Huge retry numbers saturate instead of overflowing, then hit the cap.
        let d = backoff_delay(&exp, 200);
        assert!(d <= Duration::from_secs(10) && d >= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_a_lower_bound_and_capped() {
        let none = policy(Backoff::None, 0, 0);
        assert_eq!(
            next_delay(&none, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            next_delay(&none, 1, Some(Duration::from_secs(10_000))),
            MAX_RETRY_AFTER
        );
        let linear = policy(Backoff::Linear, 5000, 5000);
        assert_eq!(
            next_delay(&linear, 1, Some(Duration::from_secs(1))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after_value("3", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after_value("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after_value("-1", now), None);
        assert_eq!(parse_retry_after_value("soon", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after_value(&later, now),
            Some(Duration::from_secs(7))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after_value(&earlier, now), Some(Duration::ZERO));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "retry-after-ms",
            http::header::HeaderValue::from_static("1500"),
        );
        headers.insert("retry-after", http::header::HeaderValue::from_static("9"));
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_millis(1500))
        );
        // Absurd values are capped, never a panic.
        headers.insert(
            "retry-after-ms",
            http::header::HeaderValue::from_static("1e300"),
        );
        assert_eq!(parse_retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after_value("1e300", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after_value("NaN", now), None);
    }

    #[test]
    fn budget_counts_down_and_stops() {
        let budget = RetryBudget::new(2);
        assert!(budget.try_take());
        assert!(budget.try_take());
        assert!(!budget.try_take());
        assert_eq!(budget.total(), 2);
    }
}
