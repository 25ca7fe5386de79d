//! The route table: host, then longest path prefix, to a pool and the route's policies.

use std::sync::Arc;
use std::time::Duration;

use crate::settings::RouteSettings;

use crate::edge_jwt::EdgeJwt;
use crate::limit::RateLimiter;
use crate::metrics::RouteMetrics;
use crate::pool::Pool;

#[derive(Debug)]
pub struct Route {
    /// `host/prefix`, or `*/prefix`: the route's name in metrics and logs.
    pub name: String,
    pub host: Option<String>,
    pub prefix: String,
    pub pool: Arc<Pool>,
    pub timeout: Duration,
    pub retries: u32,
    pub limit: Option<(Arc<RateLimiter>, LimitKey)>,
    pub jwt: Option<Arc<EdgeJwt>>,
    pub cache: bool,
    pub metrics: RouteMetrics,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    Ip,
    Subject,
}

impl Route {
    pub fn new(
        settings: &RouteSettings,
        pool: Arc<Pool>,
        limit: Option<(Arc<RateLimiter>, LimitKey)>,
        jwt: Option<Arc<EdgeJwt>>,
    ) -> Result<Self, String> {
        if !settings.prefix.starts_with('/') {
            return Err(format!(
                "route prefix {:?} must start with /",
                settings.prefix
            ));
        }
        let host = settings.host.as_ref().map(|h| h.to_ascii_lowercase());
        let name = format!("{}{}", host.as_deref().unwrap_or("*"), settings.prefix);
        Ok(Self {
            metrics: RouteMetrics::new(&name),
            name,
            host,
            prefix: settings.prefix.clone(),
            pool,
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            retries: settings.retries,
            limit,
            jwt,
            cache: settings.cache,
        })
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host
            && host != Some(want.as_str())
        {
            return false;
        }
        // `/api` matches `/api` and `/api/…`, not `/apix`.
        path.starts_with(&self.prefix)
            && (self.prefix.ends_with('/')
                || path.len() == self.prefix.len()
                || path.as_bytes()[self.prefix.len()] == b'/')
    }
}

/// Routes in match order: routes for a host before host-less ones, longer prefixes first.
#[derive(Debug, Default)]
pub struct Routes(Vec<Arc<Route>>, bool);

impl Routes {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        let by_host = routes.iter().any(|r| r.host.is_some());
        Self(routes, by_host)
    }

    /// Whether any route names a host (else the host need not be read).
    pub fn by_host(&self) -> bool {
        self.1
    }

    /// The route for a request: `host` without its port, lower-cased.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.0.iter().find(|r| r.matches(host, path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter().map(|r| &**r)
    }
}

/// The request's host: the URI's authority (HTTP/2) or the Host header, without port,
/// lower-cased; `None` when absent or unreadable.
pub fn host_of(uri: &http::Uri, headers: &http::HeaderMap) -> Option<String> {
    let raw = match uri.host() {
        Some(h) => h,
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let without_port = if raw.starts_with('[') {
        raw.split(']').next().map(|h| &h[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    Some(without_port.to_ascii_lowercase())
}
