//! Broken and hostile clients against the gateway, in process on 127.0.0.1:0 in front of a
//! recording upstream: raw bytes over TCP (malformed heads, oversized heads, slowloris, slow
//! bodies, absurd or conflicting framing, smuggling attempts, abandoned connections) must get a
//! clean 4xx or a closed connection, never reach the upstream ambiguous, and leave the gateway
//! serving the next client. Then TLS termination: HTTP/1.1 and HTTP/2 by ALPN, and a rewritten
//! certificate served to new handshakes while open connections keep working.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_gateway::Gateway;
use keel_gateway::settings::{GatewaySettings, PoolSettings, RouteSettings, TlsSettings};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records every request and answers 200 `ok`.
async fn upstream() -> (SocketAddr, Log) {
    async fn record(State(log): State<Log>, req: Request) -> &'static str {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        log.lock().unwrap().push(Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        });
        "ok"
    }
    let log = Log::default();
    let app = Router::new().fallback(record).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, log)
}

/// The gateway on a loopback port in front of its own recording upstream, with short client
/// timeouts and a small body limit. Stops when dropped.
struct Front {
    addr: SocketAddr,
    log: Log,
    _stop: oneshot::Sender<()>,
}

impl Front {
    async fn start(tls: Option<TlsAcceptor>) -> Self {
        let (upstream, log) = upstream().await;
        let settings = GatewaySettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            header_read_timeout_ms: 500,
            body_read_timeout_ms: 500,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024,
            pools: vec![PoolSettings {
                name: "up".to_owned(),
                servers: vec![upstream.to_string()],
                // No health checks: every request the upstream records came from a client.
                health_path: String::new(),
                ..PoolSettings::default()
            }],
            routes: vec![RouteSettings {
                pool: "up".to_owned(),
                retries: 0,
                timeout_ms: 5_000,
                ..RouteSettings::default()
            }],
            ..GatewaySettings::default()
        };
        let gateway = Gateway::new(&settings, None, vec![]).unwrap();
        let listener = keel_gateway::server::bind(settings.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(keel_gateway::server::serve(
            gateway,
            listener,
            tls,
            async {
                let _ = stopped.await;
            },
            Duration::from_millis(100),
        ));
        Self {
            addr,
            log,
            _stop: stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Requests the upstream got, as `METHOD /path` lines, for assertion messages.
    fn seen_lines(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    /// A well-formed request still gets through, and reaches the upstream once.
    async fn still_serves(&self, path: &str) {
        let before = self.seen().len();
        let reply = exchange(
            self.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(reply.status, Some(200), "a normal request after: {reply:?}");
        let seen = self.seen();
        assert_eq!(seen.len(), before + 1, "{:?}", self.seen_lines());
        assert_eq!(seen.last().unwrap().path, path);
    }
}

/// What came back on a raw connection.
#[derive(Debug)]
struct Reply {
    status: Option<u16>,
    /// The gateway closed the connection (EOF or reset) within the wait.
    closed: bool,
    raw: String,
}

impl Reply {
    /// Refused cleanly: one of `allowed`, or no answer at all, and the connection closed.
    fn assert_refused(&self, allowed: &[u16], what: &str) {
        assert!(
            self.status.is_none_or(|s| allowed.contains(&s)),
            "{what}: expected one of {allowed:?} or a closed connection, got {self:?}"
        );
        assert!(
            self.closed,
            "{what}: the connection must be closed: {self:?}"
        );
    }
}

/// Sends `bytes` on a new connection and reads until the gateway closes it (or 3 s pass).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The gateway may close while we still write (a head too large): that is an answer too.
    let _ = stream.write_all(bytes).await;
    read_reply(&mut stream, Duration::from_secs(3)).await
}

async fn read_reply(stream: &mut TcpStream, within: Duration) -> Reply {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Reply {
        status,
        closed,
        raw,
    }
}

/// Responses in `raw`, counted by their status lines.
fn responses(raw: &str) -> usize {
    raw.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn malformed_request_lines_and_header_bytes_get_400_or_a_closed_connection() {
    let front = Front::start(None).await;
    let cases: [(&str, &[u8]); 11] = [
        ("garbage", b"GARBAGE\r\n\r\n"),
        ("unknown version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        (
            "HTTP/2.0 on an HTTP/1 line",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        ),
        (
            "space in the target",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "NUL in the target",
            b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "control byte in a name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        ),
        (
            "header without a colon",
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A : y\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
        ),
        ("empty method", b" / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let reply = exchange(front.addr, bytes).await;
        reply.assert_refused(&[400], what);
        assert!(front.seen().is_empty(), "{what}: {:?}", front.seen_lines());
    }
    front.still_serves("/after-malformed").await;
}

#[tokio::test]
async fn a_head_larger_than_max_header_bytes_gets_431_and_a_close() {
    let front = Front::start(None).await;
    // One huge header, and many headers adding up past the limit.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..400)
            .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(100)))
            .collect::<String>()
    );
    for (what, request) in [("one huge header", big), ("too many headers", many)] {
        let reply = exchange(front.addr, request.as_bytes()).await;
        reply.assert_refused(&[431, 400], what);
    }
    assert!(front.seen().is_empty(), "{:?}", front.seen_lines());
    front.still_serves("/after-large-head").await;
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let front = Front::start(None).await;
    let started = Instant::now();
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One byte of a header every 200 ms, for as long as the gateway listens (10 s at most).
    let dribble = tokio::spawn(async move {
        for byte in b"X-Slow: ".iter().chain([b'a'; 42].iter()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });

    // When the gateway closes the slow connection, and what it said first.
    let closed = tokio::spawn(async move {
        let mut rest = Vec::new();
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut rest)).await;
        (outcome.is_ok(), Instant::now(), rest)
    });

    // Meanwhile another client is served, while the slow one still holds its connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    front.still_serves("/parallel").await;
    let parallel_done = Instant::now();

    let (was_closed, closed_at, rest) = closed.await.unwrap();
    let elapsed = closed_at - started;
    assert!(
        was_closed,
        "the slow client must be disconnected; still open after {elapsed:?}"
    );
    assert!(
        parallel_done < closed_at,
        "the other client was served only after the slow one was gone"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_millis(2_000),
        "closed after {elapsed:?}, expected about the 500 ms header timeout"
    );
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    dribble.abort();
    let paths: Vec<String> = front.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        ["/parallel"],
        "the slow request never reaches the upstream"
    );
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_gets_408_and_never_reaches_the_upstream() {
    let front = Front::start(None).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(reply.status, Some(408), "{reply:?}");
    assert!(reply.closed, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
    assert!(front.seen().is_empty(), "{:?}", front.seen_lines());
    front.still_serves("/after-slow-body").await;
}

#[tokio::test]
async fn absurd_or_oversized_content_lengths_are_refused_before_the_upstream() {
    let front = Front::start(None).await;
    for (length, allowed) in [
        ("99999999999999999999999", &[400, 413][..]),
        // u64::MAX: hyper's own limit on lengths answers it 431 (its "too large" for a head).
        ("18446744073709551615", &[400, 413, 431][..]),
        ("-1", &[400][..]),
        ("+5", &[400][..]),
        ("5, 5", &[400][..]),
        ("0x10", &[400][..]),
    ] {
        let reply = exchange(
            front.addr,
            format!("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nhello")
                .as_bytes(),
        )
        .await;
        reply.assert_refused(allowed, &format!("Content-Length: {length}"));
    }
    assert!(front.seen().is_empty(), "{:?}", front.seen_lines());

    // Over max_body_bytes (1 KiB) as announced: 413 at once, without waiting for the body
    // (which never comes: had the gateway waited, the answer would be the body timeout's 408).
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(reply.status, Some(413), "{reply:?}");
    assert!(reply.closed, "{reply:?}");
    // Sent without announcing (chunked), the limit holds as well.
    let chunk = "x".repeat(1500);
    let reply = exchange(
        front.addr,
        format!(
            "POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(reply.status, Some(413), "{reply:?}");
    assert!(front.seen().is_empty(), "{:?}", front.seen_lines());
    front.still_serves("/after-lengths").await;
}

#[tokio::test]
async fn conflicting_or_odd_framing_is_refused_or_reframed_never_forwarded_ambiguous() {
    let front = Front::start(None).await;

    // Two different lengths.
    let reply = exchange(
        front.addr,
        b"POST /two-lengths HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    reply.assert_refused(&[400], "two Content-Length values");

    // Transfer codings other than `chunked` alone: the gateway would pass what is left of the
    // coding on as if it were the content, so they are refused.
    for (what, version, te) in [
        ("gzip, chunked", "1.1", "Transfer-Encoding: gzip, chunked"),
        (
            "chunked, identity",
            "1.1",
            "Transfer-Encoding: chunked, identity",
        ),
        ("identity", "1.1", "Transfer-Encoding: identity"),
        ("xchunked", "1.1", "Transfer-Encoding: xchunked"),
        (
            "chunked twice",
            "1.1",
            "Transfer-Encoding: chunked, chunked",
        ),
        (
            "two lines",
            "1.1",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        ),
        ("HTTP/1.0 with chunked", "1.0", "Transfer-Encoding: chunked"),
    ] {
        let reply = exchange(
            front.addr,
            format!("POST /te HTTP/{version}\r\nHost: x\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        reply.assert_refused(&[400, 501], what);
    }

    // An invalid chunk size.
    let reply = exchange(
        front.addr,
        b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    reply.assert_refused(&[400], "chunk size zz");
    assert!(front.seen().is_empty(), "{:?}", front.seen_lines());

    // Both Content-Length and chunked. hyper (1.12) drops the length and reads the body as
    // chunked (RFC 9112 §6.1 allows that instead of a 400), closing the connection after the
    // answer; the gateway then forwards one request framed by its own Content-Length.
    for (what, headers) in [
        (
            "Content-Length then chunked",
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
        ),
        (
            "chunked then Content-Length",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
        ),
    ] {
        let before = front.seen().len();
        let reply = exchange(
            front.addr,
            format!("POST /both HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(
            reply.closed,
            "{what}: the connection must be closed: {reply:?}"
        );
        match reply.status {
            Some(400) | None => assert_eq!(front.seen().len(), before, "{what}"),
            Some(200) => {
                let seen = front.seen();
                assert_eq!(seen.len(), before + 1, "{what}: {:?}", front.seen_lines());
                assert_reframed(seen.last().unwrap(), b"abc", what);
            }
            _ => panic!("{what}: {reply:?}"),
        }
    }
    front.still_serves("/after-framing").await;
}

/// The upstream got one unambiguous framing: its own Content-Length, no Transfer-Encoding.
fn assert_reframed(seen: &Seen, body: &[u8], what: &str) {
    assert_eq!(seen.body.as_ref(), body, "{what}");
    assert!(
        seen.headers.get("transfer-encoding").is_none(),
        "{what}: {:?}",
        seen.headers
    );
    let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths.len(), 1, "{what}: {:?}", seen.headers);
    assert_eq!(
        lengths[0].to_str().unwrap(),
        body.len().to_string(),
        "{what}"
    );
}

#[tokio::test]
async fn a_smuggled_second_request_never_reaches_the_upstream() {
    let front = Front::start(None).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // CL.TE: a front that believed Content-Length would pass the hidden request on as body.
    let cl_te = format!(
        "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    // TE.CL: a back end that believed Content-Length would read the chunk as a request.
    let te_cl = format!(
        "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    // TE obfuscated with a space before the colon: a lenient parser would take it as chunked.
    let obfuscated = format!(
        "POST /obfuscated HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    for (what, request) in [
        ("CL.TE", cl_te),
        ("TE.CL", te_cl),
        ("TE with a space", obfuscated),
    ] {
        let reply = exchange(front.addr, request.as_bytes()).await;
        assert!(reply.closed, "{what}: {reply:?}");
        assert!(
            responses(&reply.raw) <= 1,
            "{what}: one request, at most one response: {}",
            reply.raw
        );
        assert!(
            front.seen().iter().all(|s| s.path != "/smuggled"),
            "{what}: {:?}",
            front.seen_lines()
        );
        // If it went through at all, it went as one request whose body is exactly the chunks.
        if let Some(seen) = front.seen().iter().find(|s| s.path == "/te-cl") {
            assert_reframed(seen, smuggled.as_bytes(), what);
        }
    }
    assert!(
        front.seen().len() <= 2,
        "one upstream request per attempt at most: {:?}",
        front.seen_lines()
    );
    front.still_serves("/after-smuggling").await;
}

#[tokio::test]
async fn two_hundred_abandoned_connections_leave_the_gateway_serving() {
    let front = Front::start(None).await;
    let partial: [&[u8]; 4] = [
        b"",
        b"GET /abandoned HTTP/1.1\r\nHo",
        b"GET /abandoned HTTP/1.1\r\nHost: x\r\n",
        b"POST /abandoned HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf a bo",
    ];
    let mut open = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(front.addr).await.unwrap();
        stream.write_all(partial[i % partial.len()]).await.unwrap();
        open.push(stream);
    }
    // Some dropped at once, the rest after the gateway has started on them.
    let late = open.split_off(100);
    drop(open);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(late);
    front.still_serves("/after-abandoned").await;
    let paths: Vec<String> = front.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/after-abandoned"]);
}

// TLS termination.

struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn make_cert(common_name: &str) -> TestCert {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = name;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes the pair the way a renewal should: each file whole, then renamed into place.
fn install(settings: &TlsSettings, cert: &TestCert) {
    for (path, text) in [
        (&settings.key_file, &cert.key_pem),
        (&settings.cert_file, &cert.cert_pem),
    ] {
        let staged = path.with_extension("new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }
}

/// A TLS connection trusting only `trusted` and offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn presented(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn status_of(res: http::Response<hyper::body::Incoming>) -> u16 {
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status == 200,
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    status
}

#[tokio::test]
async fn tls_serves_http1_and_h2_and_new_handshakes_get_a_rewritten_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let settings = TlsSettings {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
        reload_interval_ms: 100,
    };
    let first = make_cert("first");
    install(&settings, &first);
    let terminator = keel_gateway::tls::Terminator::start(&settings).unwrap();
    let front = Front::start(Some(terminator.acceptor())).await;

    // HTTP/1.1 over TLS.
    let stream = tls_connect(front.addr, &first.der, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&stream), first.der);
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        status_of(h1.send_request(get("/h1")).await.unwrap()).await,
        200
    );
    let seen = front.seen();
    let h1_seen = seen.iter().find(|s| s.path == "/h1").unwrap();
    assert_eq!(
        h1_seen.headers.get("x-forwarded-proto").unwrap(),
        "https",
        "{:?}",
        h1_seen.headers
    );

    // HTTP/2, chosen by ALPN.
    let stream = tls_connect(front.addr, &first.der, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let h2_get = |path: &str| {
        http::Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        status_of(h2.send_request(h2_get("/h2")).await.unwrap()).await,
        200
    );
    let seen = front.seen();
    let h2_seen = seen.iter().find(|s| s.path == "/h2").unwrap();
    assert_eq!(h2_seen.headers.get("x-forwarded-proto").unwrap(), "https");

    // A renewed certificate: new handshakes get it once the watcher has looked (100 ms).
    let second = make_cert("second");
    install(&settings, &second);
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        if let Ok(stream) = tls_connect(front.addr, &second.der, &[b"http/1.1"]).await {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the rewritten certificate was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(presented(&fresh), second.der);
    assert!(
        tls_connect(front.addr, &first.der, &[b"http/1.1"])
            .await
            .is_err(),
        "new handshakes no longer get the old certificate"
    );
    let (mut renewed, conn) = hyper::client::conn::http1::handshake(TokioIo::new(fresh))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        status_of(renewed.send_request(get("/renewed")).await.unwrap()).await,
        200
    );

    // The connections opened before the renewal still work.
    assert_eq!(
        status_of(h1.send_request(get("/h1-again")).await.unwrap()).await,
        200
    );
    assert_eq!(
        status_of(h2.send_request(h2_get("/h2-again")).await.unwrap()).await,
        200
    );
    let paths: Vec<String> = front.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/h1", "/h2", "/renewed", "/h1-again", "/h2-again"]);
}
