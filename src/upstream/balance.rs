//! Balancing: which of a cluster's endpoints a request (HTTP) or a new
//! connection (L4) goes to. One `Balance` implementation per algorithm,
//! made for each endpoint set (what it precomputes, a round or a table,
//! lives with it) and pure but for the endpoints' counters it reads:
//! - `SmoothRoundRobin`: nginx's smooth weighted round robin, from a
//!   precomputed round (an index, no lock);
//! - `LeastRequest`: two candidates (the next of the weighted round, and
//!   one drawn by weight), the one with fewer requests in flight per
//!   weight wins, the round's on a tie (Envoy's least request);
//! - `PeakEwma`: the same two candidates, the lower peak-EWMA latency ×
//!   (requests in flight + 1) wins (linkerd's);
//! - `Maglev`: consistent hashing on a key (client address, a header, a
//!   cookie, the path) through a Maglev table (65,537 slots, filled by
//!   weight): adding or removing an endpoint moves about 1/N of the keys;
//!   with bounded load, a key whose endpoint has more than 1.25 × its
//!   weight's share of the requests in flight goes to the next one in the
//!   table.
//!
//! Every pick skips what `usable` refuses (unhealthy, ejected, draining,
//! already tried by this request); `None` when nothing is left.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::cluster::Endpoint;
use super::endpoint::EndpointState;
use crate::config::BalanceConfig;

/// What a pick sees.
#[derive(Clone, Copy)]
pub struct Pick<'a> {
    pub endpoints: &'a [Endpoint],
    pub states: &'a [Arc<EndpointState>],
    /// The request's hash key (`Maglev`), when it has the configured one.
    pub key: Option<u64>,
    /// Whether the endpoint at a position may be picked.
    pub usable: &'a dyn Fn(usize) -> bool,
}

pub trait Balance: Send + Sync + std::fmt::Debug {
    /// The position of the endpoint to use, `None` when none is usable.
    fn pick(&self, p: &Pick<'_>) -> Option<usize>;
}

/// The balancer for an endpoint set.
pub fn for_set(config: &BalanceConfig, endpoints: &[Endpoint]) -> Box<dyn Balance> {
    match config {
        BalanceConfig::RoundRobin => Box::new(SmoothRoundRobin::new(endpoints)),
        BalanceConfig::LeastRequest => Box::new(LeastRequest(SmoothRoundRobin::new(endpoints))),
        BalanceConfig::PeakEwma => Box::new(PeakEwma(SmoothRoundRobin::new(endpoints))),
        BalanceConfig::Hash(_) => Box::new(Maglev::new(endpoints)),
    }
}

/// A key's hash, the same in every process of a build.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The first usable position from `from` on, going round.
fn first_usable(p: &Pick<'_>, from: usize) -> Option<usize> {
    let n = p.endpoints.len();
    (0..n).map(|k| (from + k) % n).find(|&i| (p.usable)(i))
}

/// nginx's smooth weighted round robin.
#[derive(Debug)]
pub struct SmoothRoundRobin {
    round: Round,
    next: AtomicUsize,
}

/// How picks go round the endpoints, without a lock: a pick is the
/// position `n` of a shared counter in the round.
#[derive(Debug)]
enum Round {
    Empty,
    /// The endpoints' positions in the order nginx's smooth weighted
    /// round robin picks them (each as often as its weight, spread out).
    Smooth(Vec<u32>),
    /// Above `SCHEDULE_MAX` picks a round: the running sums of the
    /// weights (the same shares, in runs).
    Runs(Vec<u64>),
}

/// The longest round kept as a schedule (4 bytes a pick).
const SCHEDULE_MAX: u64 = 16_384;
/// The most steps spent making a smooth schedule (the round's length
/// times the endpoints): a set of thousands (a registered service's)
/// takes runs instead, so that each change of it stays cheap.
const SMOOTH_WORK_MAX: u64 = 1 << 20;

impl SmoothRoundRobin {
    pub fn new(endpoints: &[Endpoint]) -> SmoothRoundRobin {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let equal = endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
        let round = if endpoints.is_empty() {
            Round::Empty
        } else if equal {
            // (Equal weights: the smooth round is each in turn.)
            Round::Smooth((0..endpoints.len() as u32).collect())
        } else if total <= SCHEDULE_MAX && total * endpoints.len() as u64 <= SMOOTH_WORK_MAX {
            Round::Smooth(smooth_round(endpoints))
        } else {
            let mut sum = 0;
            Round::Runs(
                endpoints
                    .iter()
                    .map(|e| {
                        sum += u64::from(e.weight);
                        sum
                    })
                    .collect(),
            )
        };
        SmoothRoundRobin {
            round,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint at position `n` of the weighted cycle.
    fn at(&self, n: usize) -> Option<usize> {
        match &self.round {
            Round::Empty => None,
            Round::Smooth(order) => Some(order[n % order.len()] as usize),
            Round::Runs(sums) => {
                let n = n as u64 % sums.last()?;
                Some(sums.partition_point(|&c| c <= n))
            }
        }
    }
}

impl Balance for SmoothRoundRobin {
    fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = self.at(n)?;
        if (p.usable)(i) {
            return Some(i);
        }
        // Skipped: the next positions of the round, then any.
        (1..p.endpoints.len() * 2)
            .filter_map(|k| self.at(n.wrapping_add(k)))
            .find(|&i| (p.usable)(i))
            .or_else(|| first_usable(p, i))
    }
}

/// One round of smooth weighted round robin (nginx): at each pick every
/// endpoint's current weight grows by its weight, the largest is picked
/// and loses the total.
fn smooth_round(endpoints: &[Endpoint]) -> Vec<u32> {
    let total: i64 = endpoints.iter().map(|e| i64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut round = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, e) in endpoints.iter().enumerate() {
            current[i] += i64::from(e.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        round.push(best as u32);
    }
    round
}

/// A usable endpoint drawn at random with probability by weight.
fn draw_by_weight(p: &Pick<'_>) -> Option<usize> {
    let total: u64 = (0..p.endpoints.len())
        .filter(|&i| (p.usable)(i))
        .map(|i| u64::from(p.endpoints[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    for (i, e) in p.endpoints.iter().enumerate() {
        if !(p.usable)(i) {
            continue;
        }
        let w = u64::from(e.weight);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// Two candidates, the next of the weighted round and another drawn by
/// weight;
/// `cost` decides between them, the round's on a tie (so that idle
/// endpoints share exactly by weight).
fn two_choices(
    round: &SmoothRoundRobin,
    p: &Pick<'_>,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let a = round.pick(p)?;
    let others = |i: usize| i != a && (p.usable)(i);
    let rest = Pick {
        usable: &others,
        ..*p
    };
    let Some(b) = draw_by_weight(&rest) else {
        return Some(a);
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

/// Envoy's least request: power of two choices on requests in flight per
/// weight.
#[derive(Debug)]
pub struct LeastRequest(SmoothRoundRobin);

impl Balance for LeastRequest {
    fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        two_choices(&self.0, p, |i| {
            f64::from(p.states[i].in_flight()) / f64::from(p.endpoints[i].weight)
        })
    }
}

/// Power of two choices on peak-EWMA latency × load (linkerd's).
#[derive(Debug)]
pub struct PeakEwma(SmoothRoundRobin);

impl Balance for PeakEwma {
    fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        // (Weights are in the candidates already.)
        two_choices(&self.0, p, |i| {
            let s = &p.states[i];
            s.ewma_us() as f64 * f64::from(s.in_flight() + 1)
        })
    }
}

/// Slots of a Maglev table (a prime).
const MAGLEV_SIZE: usize = 65_537;
/// Bounded load: at most this × the average in flight per endpoint.
const LOAD_BOUND: f64 = 1.25;

/// Consistent hashing through a Maglev table, with bounded load.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(endpoints: &[Endpoint]) -> Maglev {
        if endpoints.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let m = MAGLEV_SIZE as u64;
        // Each endpoint's preference list: offset + j × skip (mod m), from
        // its identity, so that it does not depend on the others.
        let prefs: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let id = format!("{}/{}", e.target, e.addr);
                let offset = hash_key(id.as_bytes()) % m;
                let skip = hash_key(format!("{id}#skip").as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = endpoints
            .iter()
            .map(|e| u64::from(e.weight))
            .max()
            .unwrap_or(1);
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut next = vec![0u64; endpoints.len()];
        let mut target = vec![0u64; endpoints.len()];
        let mut filled = 0;
        let mut iteration = 1u64;
        // (Envoy's weighted fill: an endpoint of the largest weight takes a
        // slot every turn, one of a third of it every third turn.)
        while filled < MAGLEV_SIZE {
            for (i, e) in endpoints.iter().enumerate() {
                if filled == MAGLEV_SIZE {
                    break;
                }
                if iteration * u64::from(e.weight) < target[i] {
                    continue;
                }
                target[i] += max_weight;
                let (offset, skip) = prefs[i];
                let mut c = (offset + skip * next[i]) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + skip * next[i]) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }
}

impl Balance for Maglev {
    fn pick(&self, p: &Pick<'_>) -> Option<usize> {
        let Some(key) = p.key else {
            // No key (the header or cookie is absent): by weight.
            return draw_by_weight(p);
        };
        if self.table.is_empty() {
            return None;
        }
        let usable: Vec<usize> = (0..p.endpoints.len()).filter(|&i| (p.usable)(i)).collect();
        if usable.is_empty() {
            return None;
        }
        // Each endpoint's bound: its weight's share of the requests in
        // flight (this one too), × `LOAD_BOUND`.
        let total: u32 = usable.iter().map(|&i| p.states[i].in_flight()).sum();
        let weights: u64 = usable
            .iter()
            .map(|&i| u64::from(p.endpoints[i].weight))
            .sum();
        let per_weight = (f64::from(total) + 1.0) / weights as f64 * LOAD_BOUND;
        let start = (key % MAGLEV_SIZE as u64) as usize;
        let mut fallback = None;
        for k in 0..MAGLEV_SIZE {
            let i = self.table[(start + k) % MAGLEV_SIZE] as usize;
            if !(p.usable)(i) {
                continue;
            }
            let bound = (per_weight * f64::from(p.endpoints[i].weight)).ceil();
            if f64::from(p.states[i].in_flight() + 1) <= bound {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> (Vec<Endpoint>, Vec<Arc<EndpointState>>) {
        let e: Vec<Endpoint> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint {
                addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: w,
                target: format!("backend-{i}:80").into(),
                health_path: None,
                health_every: None,
            })
            .collect();
        let s = e
            .iter()
            .map(|e| EndpointState::new(e.target.clone(), e.addr))
            .collect();
        (e, s)
    }

    fn counts(b: &dyn Balance, e: &[Endpoint], s: &[Arc<EndpointState>], n: usize) -> Vec<usize> {
        let mut c = vec![0; e.len()];
        for k in 0..n {
            let p = Pick {
                endpoints: e,
                states: s,
                key: Some(hash_key(&k.to_le_bytes())),
                usable: &|_| true,
            };
            c[b.pick(&p).unwrap()] += 1;
        }
        c
    }

    fn within_5_percent(counts: &[usize], weights: &[u32]) {
        let n: usize = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = n as f64 * f64::from(*w) / f64::from(total);
            assert!(
                (*c as f64 - want).abs() <= want * 0.05,
                "{counts:?} for weights {weights:?}"
            );
        }
    }

    #[test]
    fn every_algorithm_shares_by_weight() {
        let weights = [5, 3, 2];
        let (e, s) = endpoints(&weights);
        for config in [
            BalanceConfig::RoundRobin,
            BalanceConfig::LeastRequest,
            BalanceConfig::PeakEwma,
            BalanceConfig::Hash(crate::config::HashKey::ClientIp),
        ] {
            let b = for_set(&config, &e);
            within_5_percent(&counts(&*b, &e, &s, 10_000), &weights);
        }
    }

    #[test]
    fn round_robin_spreads_weights_out_and_skips_what_is_unusable() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a.
        let (e, s) = endpoints(&[5, 1, 1]);
        let b = SmoothRoundRobin::new(&e);
        let pick = |usable: &dyn Fn(usize) -> bool| {
            b.pick(&Pick {
                endpoints: &e,
                states: &s,
                key: None,
                usable,
            })
        };
        let picks: Vec<usize> = (0..7).map(|_| pick(&|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        assert!((0..20).all(|_| pick(&|i| i != 0) != Some(0)));
        assert_eq!(pick(&|_| false), None);
    }

    #[test]
    fn a_round_too_long_to_keep_still_shares_by_weight() {
        let mut weights = [1000; 20];
        weights[19] = 2000;
        let (e, _) = endpoints(&weights);
        let b = SmoothRoundRobin::new(&e);
        assert!(matches!(b.round, Round::Runs(_)));
        let mut counts = [0usize; 20];
        for n in 0..21_000 {
            counts[b.at(n).unwrap()] += 1;
        }
        assert!(counts[..19].iter().all(|&n| n == 1000), "{counts:?}");
        assert_eq!(counts[19], 2000);
    }

    #[test]
    fn thousands_of_endpoints_make_their_round_at_once() {
        // Equal weights: each in turn; unequal: runs (no quadratic schedule).
        let (e, _) = endpoints(&[1; 10_000]);
        let b = SmoothRoundRobin::new(&e);
        assert_eq!(
            (0..10_000).filter_map(|n| b.at(n)).collect::<Vec<_>>(),
            (0..10_000).collect::<Vec<_>>()
        );
        let mut weights = [1; 10_000];
        weights[0] = 2;
        let (e, _) = endpoints(&weights);
        let b = SmoothRoundRobin::new(&e);
        assert!(matches!(b.round, Round::Runs(_)));
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let (e, s) = endpoints(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| s[0].start()).collect();
        let c = counts(&LeastRequest(SmoothRoundRobin::new(&e)), &e, &s, 1000);
        // Only a draw of the busy one twice picks it: about a quarter.
        assert!(c[1] > 700, "{c:?}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let (e, s) = endpoints(&[1, 1]);
        s[0].observe_latency(std::time::Duration::from_millis(80));
        s[1].observe_latency(std::time::Duration::from_millis(2));
        let c = counts(&PeakEwma(SmoothRoundRobin::new(&e)), &e, &s, 1000);
        assert!(c[1] > 700, "{c:?}");
    }

    #[test]
    fn maglev_moves_about_one_in_n_keys_when_an_endpoint_comes() {
        let (e4, s4) = endpoints(&[1, 1, 1, 1]);
        let (e5, s5) = endpoints(&[1, 1, 1, 1, 1]);
        let (b4, b5) = (Maglev::new(&e4), Maglev::new(&e5));
        let pick = |b: &Maglev, e: &[Endpoint], s: &[Arc<EndpointState>], k: u64| {
            b.pick(&Pick {
                endpoints: e,
                states: s,
                key: Some(hash_key(&k.to_le_bytes())),
                usable: &|_| true,
            })
            .unwrap()
        };
        let moved = (0..10_000u64)
            .filter(|&k| pick(&b4, &e4, &s4, k) != pick(&b5, &e5, &s5, k))
            .count();
        // 1/5 of the keys belong to the new endpoint; a few more move.
        assert!((1800..=2600).contains(&moved), "{moved} keys moved");
        // A key stays on its endpoint while nothing changes.
        assert!((0..100u64).all(|k| pick(&b4, &e4, &s4, k) == pick(&b4, &e4, &s4, k)));
    }

    #[test]
    fn maglev_bounds_the_load_of_a_hot_key() {
        let (e, s) = endpoints(&[1, 1, 1]);
        let b = Maglev::new(&e);
        let key = Some(hash_key(b"hot"));
        let first = b
            .pick(&Pick {
                endpoints: &e,
                states: &s,
                key,
                usable: &|_| true,
            })
            .unwrap();
        let _load: Vec<_> = (0..10).map(|_| s[first].start()).collect();
        let next = b
            .pick(&Pick {
                endpoints: &e,
                states: &s,
                key,
                usable: &|_| true,
            })
            .unwrap();
        assert_ne!(
            next, first,
            "an endpoint far above the average is passed over"
        );
    }
}
