//! The public listener: accepts connections, terminates TLS, speaks HTTP/1.1 and HTTP/2 (ALPN
//! on TLS, prior knowledge on plain TCP), and hands each request to [`crate::proxy::handle`].
//!
//! Slow clients are bounded here: the TLS handshake and the request head must arrive within
//! `header_read_timeout_ms` (hyper's own parser enforces the head's size and framing, answering
//! 400 or 431 and closing), and the body within `body_read_timeout_ms` (in the proxy).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::Gateway;

/// How long connections accepted just before a shutdown get to send their first request.
const FRESH_CONNECTION_GRACE: Duration = Duration::from_millis(250);

/// A listener with `SO_REUSEPORT`, so that a new gateway process can bind the same port while
/// the old one drains (graceful restart): the kernel spreads new connections over both until
/// the old one closes its listener. (With `net.ipv4.tcp_migrate_req=1`, connections waiting in
/// the closing listener's queue move to the new one instead of being reset.)
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives open connections
/// until `drain` to finish their requests (idle keep-alive connections are closed at once).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let settings = gateway.edge().settings.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            settings.header_read_timeout_ms.max(1),
        ))
        // hyper's minimum; larger heads get 431.
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let handshake_timeout = Duration::from_millis(settings.header_read_timeout_ms.max(1));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let builder = builder.clone();
        let is_tls = tls.is_some();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let gateway = gateway.clone();
            async move {
                let http1 = req.version() <= http::Version::HTTP_11;
                let mut res =
                    crate::proxy::handle(gateway.edge(), req.map(Body::new), peer, is_tls).await;
                // A draining gateway asks HTTP/1.1 clients to reconnect (to its successor, or
                // elsewhere behind the balancer) instead of sending more on this connection.
                if http1 && gateway.is_draining() {
                    res.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(res)
            }
        });
        match &tls {
            None => {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, client = %peer, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, client = %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, client = %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    gateway.start_draining();
    // A connection accepted just before the listener closed has not sent its request yet, and
    // a graceful shutdown closes such "idle" connections at once: the client would see a reset.
    // It gets a moment to send it (and is then served, answered with `Connection: close`).
    let settle = FRESH_CONNECTION_GRACE.min(drain);
    let deadline = tokio::time::Instant::now() + drain;
    tokio::time::sleep(settle).await;
    match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
        Ok(()) => tracing::info!("gateway connections drained"),
        Err(_) => tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "drain deadline passed; remaining connections closed"
        ),
    }
    Ok(())
}

/// `n` listeners on one address (`SO_REUSEPORT`: the kernel spreads connections over them), as
/// standard listeners, to be served each on its own thread. Port 0 picks one free port for all.
pub fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first.into_std()?];
    for _ in 1..n.max(1) {
        listeners.push(bind(addr)?.into_std()?);
    }
    Ok(listeners)
}

/// Serves each listener on a thread of its own with a single-threaded runtime (thread per
/// core, as nginx's workers): a connection, its requests and their upstream connections stay
/// on one thread, so no request pays a cross-thread wake-up. Must be called from a runtime
/// (`shutdown` is awaited there); returns when every worker has drained.
pub async fn serve_workers(
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let gateway = gateway.clone();
        let tls = tls.clone();
        let mut stopped = stopped.clone();
        let worker = std::thread::Builder::new()
            .name(format!("keel-gateway-{}", i + 1))
            .spawn(move || -> std::io::Result<()> {
                crate::upstream::set_worker(i + 1);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let shutdown = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    serve(gateway, listener, tls, shutdown, drain).await
                })
            })?;
        workers.push(worker);
    }
    shutdown.await;
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || {
        for worker in workers {
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "gateway worker failed"),
                Err(_) => tracing::error!("gateway worker panicked"),
            }
        }
    })
    .await
    .map_err(std::io::Error::other)
}
