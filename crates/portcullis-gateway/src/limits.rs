//! Rate limits and quotas per route (`[[routes.rate_limits]]`, `[[routes.quotas]]`).
//!
//! A rate limit is governor's GCRA, keyed by the caller's `sub`, client id, group, or network
//! (an IPv4 address, an IPv6 /64): a burst of `burst`, refilled evenly at `rate` per `per`. Limits
//! keyed by network are checked before authentication (a flood of bad tokens costs no
//! verification past the limit); the others after authorization. Memory is bounded: past
//! `max_keys` tracked keys a sweep forgets the idle ones, and while it cannot, requests are counted
//! in one shared bucket — a flood of distinct addresses throttles itself instead of growing the
//! map. State is per node.
//!
//! A quota counts a client's requests per day or month (UTC) in the store, so it holds across
//! nodes and restarts; the hot path counts in memory and the gateway's refresh task adds the
//! counts to the store twice a second and reads back the total (so with N nodes a quota can be
//! overshot by what N nodes serve in half a second).

use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue};
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use smallvec::{SmallVec, smallvec};

use crate::authn::Identity;
use crate::reject::Reject;

/// What a rate limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// The caller (`sub`).
    Sub,
    /// The application (`client_id`).
    Client,
    /// Each of the caller's groups (one budget per group, shared by its members).
    Group,
    /// The client's network: its IPv4 address or IPv6 /64.
    Address,
}

impl LimitKey {
    fn name(self) -> &'static str {
        match self {
            LimitKey::Sub => "sub",
            LimitKey::Client => "client",
            LimitKey::Group => "group",
            LimitKey::Address => "address",
        }
    }
}

/// `[[routes.rate_limits]]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub key: LimitKey,
    /// Requests per `per`.
    pub rate: u32,
    /// The window `rate` refills over: `"1s"`, `"1m"`, `"1h"`.
    pub per: String,
    /// Requests allowed at once (default: `rate`).
    pub burst: Option<u32>,
    /// Only callers in one of these groups are limited (default: everyone).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Keys remembered before idle ones are forgotten (default 100 000).
    pub max_keys: Option<usize>,
}

/// A quota's period, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// `[[routes.quotas]]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per period per client.
    pub limit: u64,
    pub period: QuotaPeriod,
    /// The clients it applies to (default: every client, each with its own count).
    #[serde(default)]
    pub clients: Vec<String>,
}

/// What a bucket is keyed by.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Bucket {
    Network(IpAddr),
    Name(Box<str>),
    /// Every key, while the map is full.
    Shared,
}

type Limiter =
    RateLimiter<Bucket, DashMapStateStore<Bucket>, DefaultClock, StateInformationMiddleware>;

/// One rate limit, ready.
pub struct RateLimit {
    key: LimitKey,
    groups: Vec<String>,
    limiter: Limiter,
    clock: DefaultClock,
    burst: u32,
    /// Seconds for an empty bucket to fill.
    window: u64,
    /// `RateLimit-Policy` item.
    policy: HeaderValue,
    name: String,
    max_keys: usize,
    last_sweep: Mutex<Option<Instant>>,
    /// This limit's slot in each thread's [`LOOKS`] counters.
    id: usize,
    /// Whether the tracked keys were within `margin` of `max_keys` at the last look.
    near: AtomicBool,
    margin: usize,
}

/// How often a thread counts a limit's keys while they are far from `max_keys`: counting visits
/// every shard of the map (a lock on each, shared by every core), too much for every request.
const LOOK_EVERY: u32 = 64;

static NEXT_LIMIT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Checks per limit on this thread since it last counted the limit's keys.
    static LOOKS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this thread should count limit `id`'s keys now (its first check, then every
/// [`LOOK_EVERY`]th).
fn look_due(id: usize) -> bool {
    LOOKS.with(|looks| {
        let mut looks = looks.borrow_mut();
        if looks.len() <= id {
            looks.resize(id + 1, 0);
        }
        let n = &mut looks[id];
        let due = *n == 0;
        *n = (*n + 1) % LOOK_EVERY;
        due
    })
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("key", &self.key)
            .field("burst", &self.burst)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// The IETF rate-limit headers (draft-ietf-httpapi-ratelimit-headers), parsed once: a header
/// map keyed by a `&str` parses and checks the name on every call.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// What the answer says about the limits: `RateLimit-Policy` and `RateLimit`.
#[derive(Clone, Debug)]
pub struct LimitHeaders {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

/// The network an address counts for: itself for IPv4, its /64 for IPv6.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimit {
    /// Checks a `[[routes.rate_limits]]` entry; `index` names it in headers.
    pub fn new(c: &RateLimitConfig, index: usize) -> Result<RateLimit, String> {
        let per = humantime::parse_duration(&c.per)
            .ok()
            .filter(|d| *d >= Duration::from_millis(1) && *d <= Duration::from_secs(86400))
            .ok_or_else(|| {
                format!(
                    "rate_limits.per: {:?} must be a duration between 1ms and 24h, such as \"1m\"",
                    c.per
                )
            })?;
        let rate = NonZeroU32::new(c.rate)
            .ok_or_else(|| "rate_limits.rate: at least 1 request".to_owned())?;
        let burst = NonZeroU32::new(c.burst.unwrap_or(c.rate))
            .ok_or_else(|| "rate_limits.burst: at least 1 request".to_owned())?;
        let interval = per / rate.get();
        let quota = Quota::with_period(interval)
            .ok_or_else(|| "rate_limits: the rate is too high for its window".to_owned())?
            .allow_burst(burst);
        if c.key == LimitKey::Address && !c.groups.is_empty() {
            return Err(
                "rate_limits.groups: a limit by address applies before sign-in is known; drop groups or key by sub, client or group".into(),
            );
        }
        let window = quota.burst_size_replenished_in().as_secs().max(1);
        let max_keys = c.max_keys.unwrap_or(100_000).max(1);
        let name = if index == 0 {
            c.key.name().to_owned()
        } else {
            format!("{}-{index}", c.key.name())
        };
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={burst};w={window}"))
            .map_err(|e| e.to_string())?;
        Ok(RateLimit {
            key: c.key,
            groups: c.groups.iter().map(|g| g.to_ascii_lowercase()).collect(),
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            burst: burst.get(),
            window,
            policy,
            name,
            max_keys,
            last_sweep: Mutex::new(None),
            id: NEXT_LIMIT_ID.fetch_add(1, Ordering::Relaxed),
            near: AtomicBool::new(true),
            // Between two looks every thread adds at most LOOK_EVERY keys unseen: past this
            // margin (twice the threads that may check, with room to spare) the limit counts
            // on every check, so the bound stays exact.
            margin: (max_keys / 8).max(
                LOOK_EVERY as usize
                    * 2
                    * std::thread::available_parallelism().map_or(8, usize::from),
            ),
        })
    }

    /// Whether this limit is counted before authentication.
    pub fn by_address(&self) -> bool {
        self.key == LimitKey::Address
    }

    /// How many keys it remembers now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// The buckets a request counts in (none: the limit does not apply to this caller); one,
    /// unless the limit is by group, held without a heap allocation.
    fn buckets(&self, client: IpAddr, id: Option<&Identity>) -> SmallVec<[Bucket; 1]> {
        let in_scope = |id: &Identity| {
            self.groups.is_empty()
                || id
                    .groups
                    .iter()
                    .any(|g| self.groups.iter().any(|w| w.eq_ignore_ascii_case(g)))
        };
        match (self.key, id) {
            (LimitKey::Address, _) => smallvec![Bucket::Network(network_of(client))],
            (_, None) => SmallVec::new(),
            (_, Some(id)) if !in_scope(id) => SmallVec::new(),
            (LimitKey::Sub, Some(id)) => smallvec![Bucket::Name(id.sub.as_str().into())],
            // A token without a client id counts with the others that have none.
            (LimitKey::Client, Some(id)) => {
                smallvec![Bucket::Name(id.client_id.as_deref().unwrap_or("").into())]
            }
            (LimitKey::Group, Some(id)) => id
                .groups
                .iter()
                .filter(|g| {
                    self.groups.is_empty() || self.groups.iter().any(|w| w.eq_ignore_ascii_case(g))
                })
                .map(|g| Bucket::Name(g.to_ascii_lowercase().into()))
                .collect(),
        }
    }

    /// Counts a request; `Err` when a bucket it counts in is empty. `Ok(Some(headers))` with
    /// what is left.
    pub fn check(
        &self,
        client: IpAddr,
        id: Option<&Identity>,
    ) -> Result<Option<LimitHeaders>, Reject> {
        let buckets = self.buckets(client, id);
        if buckets.is_empty() {
            return Ok(None);
        }
        let full = (self.near.load(Ordering::Relaxed) || look_due(self.id)) && {
            let tracked = self.limiter.len();
            let near = tracked + self.margin >= self.max_keys;
            if near != self.near.load(Ordering::Relaxed) {
                self.near.store(near, Ordering::Relaxed);
            }
            tracked >= self.max_keys && !self.sweep()
        };
        let mut remaining = u32::MAX;
        for bucket in buckets {
            let bucket = if full { Bucket::Shared } else { bucket };
            match self.limiter.check_key(&bucket) {
                Ok(snapshot) => remaining = remaining.min(snapshot.remaining_burst_capacity()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    return Err(Reject::RateLimited {
                        retry_after: retry_after.max(1),
                        headers: self.headers(0, retry_after.max(1)),
                        limit: self.name.clone(),
                    });
                }
            }
        }
        let refill = u64::from(self.burst.saturating_sub(remaining)) * self.window
            / u64::from(self.burst.max(1));
        Ok(Some(self.headers(remaining, refill)))
    }

    /// `RateLimit-Policy` (made once) and `RateLimit`: `"name";r=<remaining>;t=<seconds>`,
    /// written straight into the buffer the header keeps (one allocation per answer).
    fn headers(&self, remaining: u32, reset: u64) -> LimitHeaders {
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(remaining), t.format(reset));
        let mut state = Vec::with_capacity(self.name.len() + r.len() + t.len() + 8);
        for part in [
            b"\"",
            self.name.as_bytes(),
            b"\";r=",
            r.as_bytes(),
            b";t=",
            t.as_bytes(),
        ] {
            state.extend_from_slice(part);
        }
        LimitHeaders {
            policy: self.policy.clone(),
            state: HeaderValue::from_maybe_shared(Bytes::from(state))
                .unwrap_or(HeaderValue::from_static("\"limit\";r=0;t=1")),
        }
    }

    /// Forgets idle keys (at most once a second); whether there is room for more now.
    fn sweep(&self) -> bool {
        if let Ok(mut last) = self.last_sweep.try_lock()
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            *last = Some(Instant::now());
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            if self.limiter.len() >= self.max_keys {
                tracing::warn!(
                    limit = %self.name,
                    tracked = self.limiter.len(),
                    "rate limit keys exceed max_keys; counting new requests in one shared bucket until idle keys can be forgotten"
                );
                metrics::counter!("portcullis_gateway_rate_limit_saturated_total").increment(1);
            }
        }
        self.limiter.len() < self.max_keys
    }
}

/// One quota, ready; its counts live in [`QuotaCounts`].
#[derive(Debug)]
pub struct QuotaRule {
    pub limit: u64,
    pub period: QuotaPeriod,
    /// Empty: every client.
    pub clients: Vec<String>,
}

impl QuotaRule {
    pub fn new(c: &QuotaConfig) -> Result<QuotaRule, String> {
        if c.limit == 0 {
            return Err("quotas.limit: at least 1 request".into());
        }
        Ok(QuotaRule {
            limit: c.limit,
            period: c.period,
            clients: c.clients.clone(),
        })
    }

    fn applies_to(&self, client: &str) -> bool {
        self.clients.is_empty() || self.clients.iter().any(|c| c == client)
    }
}

/// The period a time falls in (`d:2026-12-06`, `m:2026-12`) and the seconds until it ends.
pub fn period_of(period: QuotaPeriod, now: i64) -> (String, i64) {
    let days = now.div_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    match period {
        QuotaPeriod::Day => (format!("d:{y:04}-{m:02}-{d:02}"), (days + 1) * 86400 - now),
        QuotaPeriod::Month => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                format!("m:{y:04}-{m:02}"),
                days_from_civil(ny, nm, 1) * 86400 - now,
            )
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One client's count in one period of one route's quota.
#[derive(Debug, Default)]
struct Count {
    /// The store's total when last synced.
    synced: AtomicU64,
    /// Counted here since.
    pending: AtomicU64,
}

/// The quota key: route label, quota index, client, period.
type CountKey = (Arc<str>, usize, Box<str>, String);

/// The in-memory side of every quota: counts per key, and the store's totals as last read
/// (a sharded map: requests of different clients do not wait for each other).
#[derive(Debug, Default)]
pub struct QuotaCounts {
    counts: dashmap::DashMap<CountKey, Arc<Count>>,
}

impl QuotaCounts {
    /// Counts a request against `rule`; `Err(429)` when the client has used its quota.
    pub fn check(
        &self,
        route: &Arc<str>,
        index: usize,
        rule: &QuotaRule,
        id: Option<&Identity>,
        now: i64,
    ) -> Result<(), Reject> {
        let client = id.and_then(|i| i.client_id.as_deref()).unwrap_or("");
        if !rule.applies_to(client) {
            return Ok(());
        }
        let (period, left) = period_of(rule.period, now);
        let count = self
            .counts
            .entry((route.clone(), index, client.into(), period))
            .or_default()
            .clone();
        let used = count.synced.load(Ordering::Relaxed) + count.pending.load(Ordering::Relaxed);
        if used >= rule.limit {
            return Err(Reject::QuotaExceeded {
                retry_after: u64::try_from(left.max(1)).unwrap_or(1),
                limit: rule.limit,
                period: rule.period,
            });
        }
        count.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Adds what was counted here to the store, then reads back every client's total for the
    /// current day and month (so a restarted node, or one that has not seen a client yet,
    /// knows what the others counted); forgets past periods.
    pub async fn sync(
        &self,
        store: &portcullis_store::Store,
        now: i64,
    ) -> Result<(), portcullis_store::StoreError> {
        let day = period_of(QuotaPeriod::Day, now).0;
        let month = period_of(QuotaPeriod::Month, now).0;
        self.counts.retain(|k, _| k.3 == day || k.3 == month);
        let pending: Vec<(CountKey, Arc<Count>)> = self
            .counts
            .iter()
            .filter(|e| e.value().pending.load(Ordering::Relaxed) > 0)
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for ((route, index, client, period), count) in pending {
            let add = count.pending.swap(0, Ordering::Relaxed);
            let key = format!("{route}#{index}");
            match store
                .add_quota_usage(&key, &client, &period, add, now)
                .await
            {
                Ok(total) => count
                    .synced
                    .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed),
                Err(e) => {
                    count.pending.fetch_add(add, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        for (quota, client, period, used) in store.quota_usage_in(&[&day, &month]).await? {
            let Some((route, index)) = quota
                .rsplit_once('#')
                .and_then(|(r, i)| Some((r, i.parse::<usize>().ok()?)))
            else {
                continue;
            };
            let key: CountKey = (Arc::from(route), index, client.into(), period);
            self.counts
                .entry(key)
                .or_default()
                .synced
                .store(u64::try_from(used).unwrap_or(0), Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: LimitKey, rate: u32, per: &str, max_keys: usize) -> RateLimit {
        RateLimit::new(
            &RateLimitConfig {
                key,
                rate,
                per: per.into(),
                burst: None,
                groups: vec![],
                max_keys: Some(max_keys),
            },
            0,
        )
        .expect("valid")
    }

    #[test]
    fn a_burst_then_refusals_with_retry_after_and_headers() {
        let l = limit(LimitKey::Address, 3, "1h", 10);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for left in [2, 1, 0] {
            let h = l.check(ip, None).expect("allowed").expect("headers");
            assert_eq!(h.policy, "\"address\";q=3;w=3600");
            assert!(
                h.state
                    .to_str()
                    .expect("ascii")
                    .starts_with(&format!("\"address\";r={left};")),
                "{:?}",
                h.state
            );
        }
        match l.check(ip, None) {
            Err(Reject::RateLimited {
                retry_after,
                headers,
                ..
            }) => {
                assert!((1..=1200).contains(&retry_after), "{retry_after}");
                assert!(headers.state.to_str().expect("ascii").contains("r=0"));
            }
            other => panic!("{other:?}"),
        }
        // Another network has its own budget; an IPv6 /64 is one network.
        assert!(l.check("192.0.2.2".parse().expect("ip"), None).is_ok());
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.check(a, None).is_ok());
        }
        assert!(l.check(b, None).is_err(), "the same /64");
    }

    #[test]
    fn a_million_addresses_stay_within_max_keys() {
        let l = limit(LimitKey::Address, 1000, "1s", 50_000);
        for i in 0..1_000_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(ip, None);
            assert!(l.tracked() <= 50_000 + 1, "at {i}: {}", l.tracked());
        }
    }

    #[test]
    fn keys_stay_within_max_keys_when_threads_add_them_at_once() {
        // A bound larger than the margin, so the limit starts out counting only now and then.
        let max = 40_000;
        let l = std::sync::Arc::new(limit(LimitKey::Address, 1000, "1s", max));
        assert!(l.margin < max);
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..25_000u32 {
                        let ip = IpAddr::V4(std::net::Ipv4Addr::from((t << 24) + i + 1));
                        let _ = l.check(ip, None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // Counting then adding is not one step: each thread may add one key past a count that
        // had room, and the shared bucket is one more.
        assert!(l.tracked() <= max + 4 + 1, "{}", l.tracked());
        assert!(l.tracked() >= max - l.margin, "{}", l.tracked());
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        // 2026-12-31T23:00:00Z
        let t = 1_798_758_000;
        assert_eq!(
            period_of(QuotaPeriod::Day, t),
            ("d:2026-12-31".into(), 3600)
        );
        assert_eq!(period_of(QuotaPeriod::Month, t), ("m:2026-12".into(), 3600));
        assert_eq!(
            period_of(QuotaPeriod::Day, 0),
            ("d:1970-01-01".into(), 86400)
        );
        // 2024-02-29T12:00:00Z, a leap day.
        assert_eq!(
            period_of(QuotaPeriod::Month, 1_709_208_000),
            ("m:2024-02".into(), 12 * 3600)
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let bad = |rate: u32, per: &str, burst: Option<u32>, key: LimitKey, groups: &[&str]| {
            RateLimit::new(
                &RateLimitConfig {
                    key,
                    rate,
                    per: per.into(),
                    burst,
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                    max_keys: None,
                },
                0,
            )
            .is_err()
        };
        assert!(bad(0, "1s", None, LimitKey::Sub, &[]));
        assert!(bad(10, "forever", None, LimitKey::Sub, &[]));
        assert!(bad(10, "2d", None, LimitKey::Sub, &[]));
        assert!(bad(10, "1s", Some(0), LimitKey::Sub, &[]));
        assert!(bad(10, "1s", None, LimitKey::Address, &["free"]));
        assert!(!bad(10, "1s", None, LimitKey::Group, &["free"]));
    }
}
