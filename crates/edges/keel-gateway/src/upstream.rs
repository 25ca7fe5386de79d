//! How a request reaches an upstream server: over pooled HTTP/1.1 connections, or handed to the
//! in-process API (`keel up`) as a tower service call, with no socket and no serialisation.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

/// The in-process API: the axum router itself (a clone is an `Arc` increment, and its future
/// is not boxed again, as a type-erased service's would be).
pub type InProcess = axum::Router;

/// The address the in-process upstream is known by in metrics and logs.
pub const IN_PROCESS: &str = "in-process";

#[derive(Clone)]
pub enum Transport {
    /// A pooled client per gateway worker thread, and one (the first) for everything else
    /// (health checks, `keel up`): a request, its pooled connection and that connection's task
    /// stay on one thread, with no cross-thread wake-up per request.
    Http(Arc<[Client<HttpConnector, Body>]>),
    InProcess(InProcess),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http(_) => "Transport::Http",
            Self::InProcess(_) => "Transport::InProcess",
        })
    }
}

/// Why an upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: the request never left the gateway, so any method may go elsewhere.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no response within the route's timeout")]
    Timeout,
    /// The connection failed after the request may have been sent.
    #[error("upstream failed: {0}")]
    Broken(String),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the upstream.
    pub fn unsent(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Broken(_) => "broken",
        }
    }
}

thread_local! {
    /// This thread's gateway worker number (1…); 0 on every other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as gateway worker `n` (from 1): its requests use their own
/// upstream connections.
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

impl Transport {
    /// Pooled HTTP/1.1 to upstreams for `workers` worker threads: keep-alive connections,
    /// `TCP_NODELAY`, a connect timeout.
    pub fn http(connect_timeout: Duration, max_idle_per_server: usize, workers: usize) -> Self {
        let clients: Vec<_> = (0..=workers)
            .map(|_| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                connector.enforce_http(true);
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(max_idle_per_server)
                    // A request on a pooled connection the server closed before it was written
                    // is sent again on a new connection: it never reached the server.
                    .retry_canceled_requests(true)
                    .build(connector)
            })
            .collect();
        Self::Http(clients.into())
    }

    pub async fn send(
        &self,
        server: &SocketOrName,
        mut req: Request<Body>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, UpstreamError> {
        match self {
            Self::Http(clients) => {
                let SocketOrName::Name(authority) = server else {
                    return Err(UpstreamError::Connect("not an HTTP server".to_owned()));
                };
                let client = &clients[WORKER.with(Cell::get) % clients.len()];
                // The client's path and query as they are (no second parse), on the server.
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority.clone());
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                }
                *req.uri_mut() = http::Uri::from_parts(parts)
                    .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                // Upstreams are spoken to in HTTP/1.1 whatever the client spoke: a request that
                // came in over HTTP/2 and moved here whole would be refused by the client.
                *req.version_mut() = http::Version::HTTP_11;
                match client.request(req).await {
                    Ok(res) => Ok(res.map(Body::new)),
                    Err(e) if e.is_connect() => {
                        Err(UpstreamError::Connect(keel_domain::error_chain(&e)))
                    }
                    Err(e) => Err(UpstreamError::Broken(keel_domain::error_chain(&e))),
                }
            }
            Self::InProcess(service) => {
                // What axum's `ConnectInfo` would have held had the API accepted the connection.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let Ok(res) = service.clone().oneshot(req).await;
                Ok(res)
            }
        }
    }
}

/// An upstream's address: `host:port` for HTTP, or the in-process API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketOrName {
    Name(http::uri::Authority),
    InProcess,
}

impl SocketOrName {
    pub fn parse(addr: &str) -> Result<Self, String> {
        if addr == IN_PROCESS {
            return Ok(Self::InProcess);
        }
        let authority: http::uri::Authority = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not host:port"))?;
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(format!("{addr:?} is not host:port"));
        }
        Ok(Self::Name(authority))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Name(a) => a.as_str(),
            Self::InProcess => IN_PROCESS,
        }
    }
}
