//! Load-balancing algorithms: which of a pool's available servers takes a request.
//!
//! Every algorithm sees the same view: the pool's servers in a fixed order and a predicate
//! saying which may take this request (healthy, not ejected, under its in-flight limit, not
//! already tried by this request). They differ only in whom they prefer.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;

/// Virtual nodes per server on the hash ring: enough that removing one of a handful of servers
/// moves only its share of keys, and keys spread within a few percent of evenly.
const VNODES: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    Path,
}

impl HashKey {
    /// `header:NAME`, `cookie:NAME` or `path`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some(("header", name)) => http::HeaderName::try_from(name.trim())
                .map(Self::Header)
                .map_err(|_| format!("hash_key: {name:?} is not a header name")),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(Self::Cookie(name.trim().to_owned()))
            }
            None if spec == "path" => Ok(Self::Path),
            _ => Err(format!(
                "hash_key: {spec:?}; use header:NAME, cookie:NAME or path"
            )),
        }
    }

    /// The request's key, if it has one.
    pub fn of<'a>(&self, path: &'a str, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            Self::Path => Some(path.as_bytes()),
            Self::Header(name) => headers.get(name).map(http::HeaderValue::as_bytes),
            Self::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                }),
        }
    }
}

#[derive(Debug)]
pub enum Algorithm {
    RoundRobin(AtomicUsize),
    /// Power of two choices: of two random available servers, the one with fewer requests in
    /// flight. Nearly as good as scanning for the least loaded, without every request
    /// stampeding to the same momentarily idle server.
    LeastOutstanding,
    /// Consistent hashing on a key; requests without the key fall back to round robin.
    Hash {
        key: HashKey,
        fallback: AtomicUsize,
    },
}

impl Algorithm {
    pub fn parse(name: &str, hash_key: Option<&str>) -> Result<Self, String> {
        match (name, hash_key) {
            ("round-robin", _) => Ok(Self::RoundRobin(AtomicUsize::new(0))),
            ("least-outstanding", _) => Ok(Self::LeastOutstanding),
            ("hash", Some(spec)) => Ok(Self::Hash {
                key: HashKey::parse(spec)?,
                fallback: AtomicUsize::new(0),
            }),
            ("hash", None) => Err("algorithm hash needs hash_key".to_owned()),
            (other, _) => Err(format!(
                "algorithm {other:?}; use round-robin, least-outstanding or hash"
            )),
        }
    }

    /// Index of the chosen server among `n`, or `None` when `available` accepts none.
    /// `load(i)` is server i's requests in flight; `ring` is the pool's hash ring.
    pub fn pick(
        &self,
        n: usize,
        ring: &Ring,
        key: Option<&[u8]>,
        available: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u32,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Self::RoundRobin(next) => round_robin(next, n, available),
            Self::LeastOutstanding => {
                let a = fastrand::usize(..n);
                let b = if n > 1 {
                    (a + 1 + fastrand::usize(..n - 1)) % n
                } else {
                    a
                };
                match (available(a), available(b)) {
                    (true, true) => Some(if load(b) < load(a) { b } else { a }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both out: the least loaded of the rest, by scanning (rare).
                    (false, false) => (0..n).filter(|&i| available(i)).min_by_key(|&i| load(i)),
                }
            }
            Self::Hash { fallback, .. } => match key {
                Some(key) => ring.lookup(hash(key), available),
                None => round_robin(fallback, n, available),
            },
        }
    }

    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Self::Hash { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn round_robin(next: &AtomicUsize, n: usize, available: impl Fn(usize) -> bool) -> Option<usize> {
    let start = next.fetch_add(1, Ordering::Relaxed);
    (0..n).map(|k| (start + k) % n).find(|&i| available(i))
}

/// The consistent-hash ring over a pool's servers, named by address so that a server keeps its
/// keys when others join or leave.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new<'a>(servers: impl Iterator<Item = &'a str>) -> Self {
        let mut points = Vec::new();
        for (index, name) in servers.enumerate() {
            for v in 0..VNODES {
                points.push((hash(format!("{name}#{v}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first available server clockwise from `point`.
    fn lookup(&self, point: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < point);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| available(i))
    }
}

/// FNV-1a then a splitmix64 finish: stable across processes and releases (every gateway
/// instance maps a key to the same server), and well spread even for short similar keys.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut z = keel_domain::messaging::queue::fnv1a(bytes).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_unavailable() {
        let rr = Algorithm::parse("round-robin", None).unwrap();
        let ring = Ring::default();
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(3, &ring, None, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for _ in 0..10 {
            assert_ne!(rr.pick(3, &ring, None, |i| i != 1, |_| 0), Some(1));
        }
        assert_eq!(rr.pick(3, &ring, None, |_| false, |_| 0), None);
    }

    #[test]
    fn least_outstanding_prefers_the_idle_server() {
        let p2c = Algorithm::parse("least-outstanding", None).unwrap();
        let ring = Ring::default();
        let loads = [100, 0, 100];
        let mut to_idle = 0;
        for _ in 0..1000 {
            if p2c.pick(3, &ring, None, |_| true, |i| loads[i]) == Some(1) {
                to_idle += 1;
            }
        }
        // Server 1 wins every draw it is in: 2 of 3 draws.
        assert!(to_idle > 600, "{to_idle}");
        assert_eq!(p2c.pick(3, &ring, None, |i| i == 2, |i| loads[i]), Some(2));
    }

    #[test]
    fn hashing_is_sticky_and_moves_few_keys_when_a_server_leaves() {
        let algo = Algorithm::parse("hash", Some("header:x-user")).unwrap();
        let servers = names(5);
        let ring = Ring::new(servers.iter().map(String::as_str));
        let pick = |key: &str, available: &dyn Fn(usize) -> bool| {
            algo.pick(5, &ring, Some(key.as_bytes()), available, |_| 0)
                .unwrap()
        };
        let mut counts = [0usize; 5];
        let mut moved = 0;
        for k in 0..10_000 {
            let key = format!("user-{k}");
            let first = pick(&key, &|_| true);
            assert_eq!(
                first,
                pick(&key, &|_| true),
                "the same key, the same server"
            );
            counts[first] += 1;
            let without_3 = pick(&key, &|i| i != 3);
            if first != 3 && without_3 != first {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "only server 3's keys move when it leaves");
        for c in counts {
            assert!((1400..2600).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn hash_keys_read_headers_cookies_and_paths() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        headers.insert("cookie", "a=1; sid=xyz; b=2".parse().unwrap());
        assert_eq!(
            HashKey::parse("header:x-user").unwrap().of("/p", &headers),
            Some(&b"ann"[..])
        );
        assert_eq!(
            HashKey::parse("cookie:sid").unwrap().of("/p", &headers),
            Some(&b"xyz"[..])
        );
        assert_eq!(
            HashKey::parse("path").unwrap().of("/p", &headers),
            Some(&b"/p"[..])
        );
        assert_eq!(
            HashKey::parse("cookie:none").unwrap().of("/p", &headers),
            None
        );
        assert!(HashKey::parse("body").is_err());
        assert!(Algorithm::parse("hash", None).is_err());
        assert!(Algorithm::parse("random", None).is_err());
    }
}
