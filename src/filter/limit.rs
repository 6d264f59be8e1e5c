//! Rate limits: GCRA (the generic cell rate algorithm, a token bucket
//! kept as one time per key) per key of one filter definition.
//!
//! What one limit means: a `rate_limit` definition allows `burst` requests
//! at once and `count` per `window` in the long run, for each value of its
//! key (client address, a header, a claim, the API key, the user, or the
//! route), over every request that passes through that definition: on
//! every route that names it, in this process. Two definitions are two
//! limits even with the same settings. (A limit shared by several
//! processes will count the same thing over all of them.)
//!
//! Memory is bounded: at most `max_keys` keys are tracked (about 32 bytes
//! each, keys kept as 64-bit keyed hashes). A key whose bucket is full
//! again is worth nothing and goes first when room is needed; if every
//! tracked key is still limited, the oldest-looking ones are dropped
//! (a dropped key starts again with a full bucket).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

use super::{Answer, EndReason, Filter, Request, RequestEnd};
use crate::config::{LimitKey, RateLimit};

const SHARDS: usize = 16;

/// The tables' keys are already keyed hashes: they are used as they are.
#[derive(Default, Clone, Copy)]
struct KeyHash;

struct KeyHasher(u64);

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct Limiter {
    key: LimitKey,
    /// Nanoseconds between two requests in the long run.
    interval: u64,
    /// How far ahead of now a key's time may be: `interval * burst`.
    tolerance: u64,
    per_shard: usize,
    started: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<u64, u64, KeyHash>>>,
    policy: HeaderValue,
    name: String,
}

/// What one request's check says.
enum Verdict {
    Allowed { remaining: u64, reset: u64 },
    Limited { retry_after: u64 },
}

impl Limiter {
    pub fn new(name: &str, c: &RateLimit) -> Limiter {
        let interval = (c.window.as_nanos() / u128::from(c.count)).max(1) as u64;
        let tolerance = interval.saturating_mul(u64::from(c.burst));
        // The policy: `burst` requests, refilled over this many seconds.
        let window = Duration::from_nanos(tolerance).as_secs().max(1);
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={};w={window}", c.burst))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
        Limiter {
            key: c.key.clone(),
            interval,
            tolerance,
            per_shard: c.max_keys.div_ceil(SHARDS),
            started: Instant::now(),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            policy,
            name: name.to_owned(),
        }
    }

    /// The request's key, hashed; `None` when it has none (the header or
    /// claim is absent): then it is not limited by this filter.
    fn key_of(&self, req: &Request<'_>) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        match &self.key {
            LimitKey::ClientIp => req.state.client.hash(&mut h),
            LimitKey::Header(name) => req.headers.get(name)?.as_bytes().hash(&mut h),
            LimitKey::Claim(c) => req.state.claim(c)?.hash(&mut h),
            LimitKey::ApiKey => req.state.api_key.as_deref()?.hash(&mut h),
            LimitKey::User => req.state.user.as_deref()?.hash(&mut h),
            LimitKey::Route => req.state.route.hash(&mut h),
        }
        Some(h.finish())
    }

    fn check(&self, key: u64, now: Instant) -> Verdict {
        let now = now.saturating_duration_since(self.started).as_nanos() as u64;
        let shard = &self.shards[(key >> 60) as usize % SHARDS]; // (high bits: the table uses the low ones)
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            make_room(&mut map, now, self.per_shard);
        }
        let tat = map.get(&key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead + self.interval > self.tolerance {
            let wait = ahead + self.interval - self.tolerance;
            return Verdict::Limited {
                retry_after: Duration::from_nanos(wait).as_secs_f64().ceil().max(1.0) as u64,
            };
        }
        let tat = tat + self.interval;
        map.insert(key, tat);
        let ahead = tat - now;
        Verdict::Allowed {
            remaining: (self.tolerance - ahead) / self.interval,
            reset: Duration::from_nanos(ahead).as_secs_f64().ceil() as u64,
        }
    }
}

/// `n` in decimal, written into `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Drops keys whose bucket is full again; if that frees too little, some
/// others too, down to nine tenths of `cap`.
fn make_room(map: &mut HashMap<u64, u64, KeyHash>, now: u64, cap: usize) {
    map.retain(|_, tat| *tat > now);
    let target = cap - cap / 10;
    if map.len() >= target {
        let excess = map.len() + 1 - target;
        let drop: Vec<u64> = map.keys().take(excess).copied().collect();
        for k in drop {
            map.remove(&k);
        }
    }
}

impl Filter for Limiter {
    fn request(&self, req: &mut Request<'_>) -> Result<(), Answer> {
        let Some(key) = self.key_of(req) else {
            return Ok(());
        };
        let policy = HeaderName::from_static("ratelimit-policy");
        let state = HeaderName::from_static("ratelimit");
        let value = |r: u64, t: u64| {
            let mut v = bytes::BytesMut::with_capacity(self.name.len() + 48);
            v.extend_from_slice(b"\"");
            v.extend_from_slice(self.name.as_bytes());
            v.extend_from_slice(b"\";r=");
            v.extend_from_slice(itoa(r, &mut [0u8; 20]).as_bytes());
            v.extend_from_slice(b";t=");
            v.extend_from_slice(itoa(t, &mut [0u8; 20]).as_bytes());
            HeaderValue::from_maybe_shared(v.freeze())
                .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
        };
        match self.check(key, req.state.now) {
            Verdict::Allowed { remaining, reset } => {
                let h = &mut req.state.response_headers;
                h.push((policy, self.policy.clone()));
                h.push((state, value(remaining, reset)));
                Ok(())
            }
            Verdict::Limited { retry_after } => Err(Answer::reject(RequestEnd::RateLimited)
                .with(http::header::RETRY_AFTER, HeaderValue::from(retry_after))
                .with(policy, self.policy.clone())
                .with(state, value(0, retry_after))),
        }
    }

    /// A connection-rate limit (key `client_ip` or `route`; validation
    /// allows no other on L4 routes).
    fn connection(&self, client: std::net::IpAddr, now: Instant) -> Result<(), EndReason> {
        let mut h = self.hasher.build_hasher();
        match &self.key {
            LimitKey::ClientIp => client.hash(&mut h),
            LimitKey::Route => 0u8.hash(&mut h),
            _ => return Ok(()),
        }
        match self.check(h.finish(), now) {
            Verdict::Allowed { .. } => Ok(()),
            Verdict::Limited { .. } => Err(EndReason::RateLimited),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(count: u32, burst: u32, max_keys: usize) -> Limiter {
        Limiter::new(
            "t",
            &RateLimit {
                count,
                window: Duration::from_secs(1),
                burst,
                key: LimitKey::ClientIp,
                max_keys,
            },
        )
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = limiter(10, 5, 100);
        for i in 0..5 {
            match l.check(1, Instant::now()) {
                Verdict::Allowed { remaining, .. } => assert_eq!(remaining, 4 - i),
                Verdict::Limited { .. } => panic!("request {i} of the burst limited"),
            }
        }
        match l.check(1, Instant::now()) {
            Verdict::Limited { retry_after } => assert_eq!(retry_after, 1),
            Verdict::Allowed { .. } => panic!("past the burst allowed"),
        }
        // Another key has its own bucket.
        assert!(matches!(
            l.check(2, Instant::now()),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn the_keyspace_stays_under_its_cap() {
        let l = limiter(1, 1, 1000);
        // (Keys as the filter makes them: hashes, spread over the shards.)
        for k in 0..100_000u64 {
            l.check(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), Instant::now());
        }
        let tracked: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= 1000 + SHARDS, "{tracked} keys tracked");
        assert!(
            tracked >= 800,
            "only {tracked} keys tracked: the shards are not all used"
        );
    }
}
