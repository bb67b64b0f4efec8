//! Small pure helpers for the dialer and the listener: exponential backoff
//! with jitter, a per-peer dial schedule and a per-IP token bucket. Time and
//! the jitter draws are passed in, so they are deterministic under test.
//! Times are `std::time::Instant`s, as in the protocol's session and in the
//! service (the node's decisions without I/O); a caller on tokio's clock
//! converts with `tokio::time::Instant::into_std`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Exponential backoff: `base`, doubling on every failure up to `cap`, each
/// delay multiplied by a random factor in `[1 - jitter, 1 + jitter]` (and
/// never above `cap`).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: f64,
    /// The un-jittered delay of the next failure.
    current: Duration,
    failures: u32,
}

impl Backoff {
    /// Jitter of ±20 %.
    pub const DEFAULT_JITTER: f64 = 0.2;

    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let cap = cap.max(base);
        Backoff {
            base,
            cap,
            jitter: Self::DEFAULT_JITTER,
            current: base,
            failures: 0,
        }
    }

    /// Sets the jitter fraction (clamped to `0.0..=0.9`).
    pub fn with_jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 0.9)
        } else {
            0.0
        };
        self
    }

    /// The un-jittered delay the next failure will wait.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next
    /// attempt, jittered by the random number `unit` in `[0, 1)`
    /// (0 → `-jitter`, 0.5 → none, 1 → `+jitter`).
    pub fn fail_with(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let delay = self.current.mul_f64(factor).min(self.cap);
        self.current = self.current.saturating_mul(2).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Back to `base` (after a healthy session).
    pub fn reset(&mut self) {
        self.current = self.base;
        self.failures = 0;
    }
}

/// When to dial one peer next.
///
/// Rule: a failed attempt waits the backoff delay (1 s, 2 s, 4 s, … up to
/// the cap, ±jitter). A session that ends after lasting at least `healthy`
/// resets the backoff, so the next attempt comes after `base`; a session that
/// ends sooner counts as a failure.
#[derive(Debug, Clone)]
pub struct DialSchedule {
    backoff: Backoff,
    healthy: Duration,
    next_attempt: Option<Instant>,
    connected_at: Option<Instant>,
}

impl DialSchedule {
    pub fn new(backoff: Backoff, healthy: Duration) -> DialSchedule {
        DialSchedule {
            backoff,
            healthy,
            next_attempt: None,
            connected_at: None,
        }
    }

    /// True when an attempt may start now (never while connected).
    pub fn due(&self, now: Instant) -> bool {
        self.connected_at.is_none()
            && match self.next_attempt {
                Some(t) => now >= t,
                None => true,
            }
    }

    /// The next attempt, if one is scheduled.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// The un-jittered delay the next failure will wait.
    pub fn current_backoff(&self) -> Duration {
        self.backoff.current()
    }

    /// Consecutive failures.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// An attempt failed at `now`; returns the delay until the next one,
    /// jittered by `unit` (see [`Backoff::fail_with`]).
    pub fn failed_with(&mut self, now: Instant, unit: f64) -> Duration {
        self.connected_at = None;
        let d = self.backoff.fail_with(unit);
        self.next_attempt = Some(now + d);
        d
    }

    /// A session (either direction) was established at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
        self.next_attempt = None;
    }

    /// The session ended at `now`; returns the delay until the next attempt,
    /// jittered by `unit` (see [`Backoff::fail_with`]).
    pub fn disconnected_with(&mut self, now: Instant, unit: f64) -> Duration {
        let lasted = self
            .connected_at
            .take()
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if lasted >= self.healthy {
            self.backoff.reset();
        }
        self.failed_with(now, unit)
    }

    /// The session was closed by the duplicate-session rule (another one
    /// with the peer is kept): not a failure; look again after `base`.
    pub fn superseded(&mut self, now: Instant) {
        self.connected_at = None;
        self.next_attempt = Some(now + self.backoff.base());
    }

    /// Attempt as soon as possible (e.g. the peer's address changed).
    pub fn wake(&mut self) {
        self.next_attempt = None;
    }
}

/// A per-IP token bucket over new inbound connections: each IP may open
/// `burst` connections at once and `per_sec` more per second after that.
///
/// Memory is bounded: at most `max_ips` buckets are kept; full (idle)
/// buckets are pruned first and, if every bucket is in use (connections from
/// that many addresses within one refill period), the table is cleared, so
/// the other limits (`max_inbound`, `max_per_ip`) remain the bound.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    max_ips: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Default table size.
    pub const DEFAULT_MAX_IPS: usize = 4096;

    pub fn new(per_sec: f64, burst: u32) -> RateLimiter {
        let per_sec = if per_sec.is_finite() && per_sec > 0.0 {
            per_sec
        } else {
            0.0
        };
        RateLimiter {
            per_sec,
            burst: f64::from(burst.max(1)),
            max_ips: Self::DEFAULT_MAX_IPS,
            buckets: HashMap::new(),
        }
    }

    /// Sets the most IPs tracked (at least 1).
    pub fn with_max_ips(mut self, n: usize) -> RateLimiter {
        self.max_ips = n.max(1);
        self
    }

    /// IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Takes a token for `ip` at `now`; false when it has none left.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_ips {
            self.prune(now);
            if self.buckets.len() >= self.max_ips {
                self.buckets.clear();
            }
        }
        let (per_sec, burst) = (self.per_sec, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely.
    fn prune(&mut self, now: Instant) {
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * per_sec < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(S, Duration::from_secs(300)).with_jitter(0.0);
        let got: Vec<u64> = (0..12).map(|_| b.fail_with(0.3).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.failures(), 12);
        b.reset();
        assert_eq!(b.fail_with(0.9), S);
        assert_eq!(b.fail_with(0.1), 2 * S);
    }

    #[test]
    fn backoff_jitter_stays_within_twenty_percent_and_below_cap() {
        let mut b = Backoff::new(S, Duration::from_secs(300));
        assert_eq!(b.clone().fail_with(0.0), Duration::from_millis(800));
        assert_eq!(b.clone().fail_with(1.0), Duration::from_millis(1200));
        assert_eq!(b.clone().fail_with(f64::NAN), S);
        let mut expected = 1.0f64;
        for i in 0..20 {
            let d = b.fail_with(f64::from(i % 7) / 6.0).as_secs_f64();
            assert!(d >= expected * 0.8 - 1e-9 && d <= (expected * 1.2).min(300.0) + 1e-9);
            expected = (expected * 2.0).min(300.0);
        }
    }

    #[test]
    fn schedule_on_a_virtual_clock() {
        // A dial loop that fails every time: attempts at 0, 1, 3, 7, 15 s ...
        let start = Instant::now();
        let mut now = start;
        let mut s = DialSchedule::new(
            Backoff::new(S, Duration::from_secs(300)).with_jitter(0.0),
            Duration::from_secs(10),
        );
        let mut attempts = vec![];
        for _ in 0..11 {
            if let Some(t) = s.next_attempt() {
                assert!(!s.due(t - Duration::from_millis(1)));
                now = t;
            }
            assert!(s.due(now));
            attempts.push(now.duration_since(start).as_secs());
            s.failed_with(now, 0.5);
        }
        assert_eq!(attempts, [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 811]);
        // A healthy session (≥ 10 s) resets: the next attempt is 1 s after it ends.
        now = s.next_attempt().unwrap();
        s.connected(now);
        assert!(!s.due(now + Duration::from_secs(3600)));
        now += Duration::from_secs(10);
        assert_eq!(s.disconnected_with(now, 0.5), S);
        // A session that dies at once counts as a failure: 2 s, then 4 s.
        now = s.next_attempt().unwrap();
        s.connected(now);
        assert_eq!(s.disconnected_with(now, 0.5), 2 * S);
        assert_eq!(s.failed_with(now, 0.5), 4 * S);
        assert!(!s.due(now));
        assert!(s.due(now + 4 * S));
    }

    #[test]
    fn rate_limiter_burst_then_refill() {
        let mut r = RateLimiter::new(10.0, 20);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        let mut now = Instant::now();
        let allowed = (0..100).filter(|_| r.allow(ip, now)).count();
        assert_eq!(allowed, 20);
        assert!(r.allow(other, now), "other IPs are not affected");
        now += Duration::from_millis(500);
        let allowed = (0..100).filter(|_| r.allow(ip, now)).count();
        assert_eq!(allowed, 5, "10/s refill");
        now += Duration::from_secs(60);
        let allowed = (0..100).filter(|_| r.allow(ip, now)).count();
        assert_eq!(allowed, 20, "refills to the burst, not beyond");
    }

    #[test]
    fn rate_limiter_table_is_bounded() {
        let mut r = RateLimiter::new(10.0, 2).with_max_ips(64);
        let mut now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(r.allow(ip, now));
            assert!(r.tracked() <= 64);
        }
        // Idle buckets are pruned before anything else.
        now += Duration::from_secs(1);
        let busy: IpAddr = "192.168.0.1".parse().unwrap();
        assert!(r.allow(busy, now));
        assert!(r.allow(busy, now));
        assert!(!r.allow(busy, now));
        assert!(r.tracked() <= 64);
    }
}
