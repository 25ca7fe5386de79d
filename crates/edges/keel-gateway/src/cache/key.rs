//! Keys and variants: the primary key (host + path-and-query; HEAD shares GET's), and the
//! responses stored under one key, selected by their `Vary` fields (RFC 9111 §4.1).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::VARY;
use http::{HeaderMap, HeaderName};

use super::Uncacheable;
use super::freshness::Stored;

/// The primary cache key. The method is not part of it: only GET responses are stored and HEAD
/// reads them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    pub(super) host: Box<str>,
    pub(super) path_and_query: Box<str>,
}

impl CacheKey {
    pub(super) fn new(host: &str, path_and_query: &str) -> Self {
        CacheKey {
            host: host.to_ascii_lowercase().into(),
            path_and_query: path_and_query.into(),
        }
    }

    /// `example.com` matches a key stored for `example.com:8443`, so purges need not know ports.
    pub(super) fn host_matches(&self, host: &str) -> bool {
        *self.host == *host || host_without_port(&self.host) == host
    }
}

pub(super) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split_once(':').map_or(host, |(name, _)| name)
}

/// The field names in `Vary`, lowercased by `HeaderName`.
pub(super) fn vary_fields(headers: &HeaderMap) -> Result<Vec<HeaderName>, Uncacheable> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        for field in value.as_bytes().split(|&b| b == b',') {
            let field = field.trim_ascii();
            if field.is_empty() {
                continue;
            }
            if field == b"*" {
                return Err(Uncacheable::Vary);
            }
            let name = HeaderName::from_bytes(field).map_err(|_| Uncacheable::Vary)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// A request's value of a `Vary` field, normalised so `gzip, br` and `gzip,br` select the same
/// variant. `None` when absent, which only matches an absent field.
pub(super) fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for piece in values.flat_map(|value| value.as_bytes().split(|&b| b == b',')) {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(piece.trim_ascii());
    }
    Some(out)
}

/// The stored responses of one primary key, newest first.
#[derive(Debug)]
pub(super) struct Variants {
    pub(super) list: Vec<Arc<Stored>>,
    pub(super) weight: usize,
    pub(super) keep_for: Duration,
}

impl Variants {
    pub(super) fn new(list: Vec<Arc<Stored>>) -> Self {
        let weight = list.iter().map(|stored| stored.weight()).sum();
        let newest = list
            .first()
            .map_or(UNIX_EPOCH, |stored| stored.response_time);
        // Older variants' windows are measured from the newest's store time, the moment moka
        // sees this value.
        let keep_for = list
            .iter()
            .map(|stored| {
                let until = stored.response_time + stored.keep_for;
                until.duration_since(newest).unwrap_or_default()
            })
            .max()
            .unwrap_or_default();
        Variants {
            list,
            weight,
            keep_for,
        }
    }

    /// RFC 9111 §4.1: the newest stored response whose `Vary` values match the request.
    pub(super) fn select(&self, request_headers: &HeaderMap) -> Option<Arc<Stored>> {
        self.list
            .iter()
            .find(|stored| stored.matches(request_headers))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_optional_when_matching() {
        assert_eq!(host_without_port("a.example:8443"), "a.example");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        let key = CacheKey::new("a.example:8443", "/");
        assert!(key.host_matches("a.example"));
        assert!(key.host_matches("a.example:8443"));
        assert!(!key.host_matches("a.example:80"));
    }
}
