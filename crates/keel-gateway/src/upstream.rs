//! How a request reaches an upstream server: over pooled HTTP/1.1 connections, or handed to the
//! in-process API (`keel up`) as a tower service call, with no socket and no serialisation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The in-process API: the axum router as a service.
pub type InProcess = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The address the in-process upstream is known by in metrics and logs.
pub const IN_PROCESS: &str = "in-process";

#[derive(Clone)]
pub enum Transport {
    /// Boxed: the client is large and a pool holds one transport for its whole life.
    Http(Box<Client<HttpConnector, Body>>),
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

impl Transport {
    /// Pooled HTTP/1.1 to upstreams: keep-alive connections, `TCP_NODELAY`, a connect timeout.
    pub fn http(connect_timeout: Duration, max_idle_per_server: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_idle_per_server)
            // A request on a pooled connection the server closed before it was written is sent
            // again on a new connection: it never reached the server.
            .retry_canceled_requests(true)
            .build(connector);
        Self::Http(Box::new(client))
    }

    pub async fn send(
        &self,
        server: &SocketOrName,
        mut req: Request<Body>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, UpstreamError> {
        match self {
            Self::Http(client) => {
                let SocketOrName::Name(authority) = server else {
                    return Err(UpstreamError::Connect("not an HTTP server".to_owned()));
                };
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned();
                *req.uri_mut() = http::Uri::builder()
                    .scheme("http")
                    .authority(authority.as_str())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| UpstreamError::Connect(e.to_string()))?;
                // Upstreams are spoken to in HTTP/1.1 whatever the client spoke: a request that
                // came in over HTTP/2 and moved here whole would be refused by the client.
                *req.version_mut() = http::Version::HTTP_11;
                match client.request(req).await {
                    Ok(res) => Ok(res.map(Body::new)),
                    Err(e) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
                    Err(e) => Err(UpstreamError::Broken(error_chain(&e))),
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
