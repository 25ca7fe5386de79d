//! TLS termination from PEM certificate and key files that are read again when they change, so
//! a renewed certificate (ACME, cert-manager, an operator's `cp`) is served without a restart.
//!
//! Reloading never makes things worse: a new pair is swapped in only once both files parse and
//! the key matches the certificate; a broken or half-written file leaves the working pair in
//! place and logs a warning. Handshakes already done keep their keys, so open connections are
//! untouched by a reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::settings::TlsSettings;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Shortest polling interval: checking files more often than this buys nothing.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// Why a certificate and key could not be loaded; every message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error(
        "the private key in {path} is not usable (RSA, ECDSA P-256/P-384 or Ed25519 expected): {source}"
    )]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate in {path} cannot be parsed: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// What identifies one version of a file without reading it. `None` when the file cannot be
/// looked at (missing, say), so that its reappearance counts as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// A file replaced by rename (the atomic way to write it) has a new inode even when its
    /// time and length happen to equal the old one's.
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

type Stamps = (Option<FileStamp>, Option<FileStamp>);

/// The certificate resolver of the TLS listener: hands every handshake the current pair and
/// swaps in a new one when the files change.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The pair new handshakes get. Replaced whole, so a handshake sees the old pair or the new
    /// one, never a certificate with the other's key.
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps at the last load attempt, successful or not: a broken file is reported
    /// once, not at every poll, and tried again when it changes. Held across a whole reload so
    /// that the watcher and a SIGHUP never load at the same time.
    seen: Mutex<Stamps>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair named by `settings`; any problem is an error here, at startup, rather
    /// than a listener that fails every handshake.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = (
            FileStamp::of(&settings.cert_file),
            FileStamp::of(&settings.key_file),
        );
        let pair = read_pair(&settings.cert_file, &settings.key_file, &provider)?;
        Ok(Self {
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
            provider,
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(stamps),
        })
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads the files again if either changed (time, length or inode) since the last attempt;
    /// `Ok(true)` when a new pair is now served. On error the previous pair stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let stamps = self.stamps();
        if stamps == *seen {
            return Ok(false);
        }
        *seen = stamps;
        self.reload_locked().map(|()| true)
    }

    /// Loads the files again whether or not they look changed (SIGHUP). On error the previous
    /// pair stays.
    pub fn reload_now(&self) -> Result<(), TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        *seen = self.stamps();
        self.reload_locked()
    }

    /// The stamps are taken before the files are read: a write that lands during the read
    /// changes them again, so the next poll reads the finished files.
    fn stamps(&self) -> Stamps {
        (
            FileStamp::of(&self.cert_file),
            FileStamp::of(&self.key_file),
        )
    }

    /// Reads and swaps in the pair; the caller holds `seen`.
    fn reload_locked(&self) -> Result<(), TlsError> {
        match read_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    key_file = %self.key_file.display(),
                    "tls certificate reloaded"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    cert_file = %self.cert_file.display(),
                    "tls certificate reload failed; still serving the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// Polls the files every `interval` (at least 100 ms) until the task is aborted. Failures
    /// are logged by the reload itself.
    pub fn spawn_watcher(self: Arc<Self>, interval: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(MIN_RELOAD_INTERVAL));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate, and the files were just loaded.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                // Two stats, and a read of two small files when they changed: cheap enough to
                // run on the runtime rather than on the blocking pool.
                let _ = self.reload_if_changed();
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Parses the chain and the key and checks that they belong together. Both files are read
/// whole first, so the PEM parsed is one snapshot of each.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_file.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_file.to_owned(),
        },
        source => TlsError::Pem {
            path: key_file.to_owned(),
            source,
        },
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_file.to_owned(),
            source,
        })?;

    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        // `Unknown`: the key cannot show its public half, so there is nothing to compare (ring's
        // keys always can; rustls's own `CertifiedKey::from_der` accepts this case too).
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            })
        }
        Err(source) => Err(TlsError::BadCertificate {
            path: cert_file.to_owned(),
            source,
        }),
    }
}

/// A server configuration that takes its certificate from `resolver`. ALPN offers `h2` (only
/// when `http2`) before `http/1.1`: a client that speaks both gets HTTP/2.
pub fn server_config(resolver: Arc<ReloadingCert>, http2: bool) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(resolver.provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(config)
}

/// The acceptor for a listener served by `resolver`.
pub fn acceptor(resolver: Arc<ReloadingCert>, http2: bool) -> TlsAcceptor {
    TlsAcceptor::from(server_config(resolver, http2))
}

/// Reloads at every SIGHUP, the usual "read your files again" signal of servers.
#[cfg(unix)]
fn spawn_sighup_reload(resolver: Arc<ReloadingCert>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let _ = resolver.reload_now();
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; tls reloads by polling only");
        }
    }
}

/// TLS termination for a listener: loads the pair, polls the files every
/// `reload_interval_ms` and (on Unix) reloads at SIGHUP; offers HTTP/2 by ALPN. Needs a running
/// tokio runtime; the background tasks live as long as the process.
#[derive(Clone)]
pub struct Terminator {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminator")
    }
}

impl Terminator {
    pub fn start(settings: &TlsSettings) -> Result<Self, String> {
        let certificate = Arc::new(ReloadingCert::load(settings).map_err(|e| e.to_string())?);
        certificate
            .clone()
            .spawn_watcher(Duration::from_millis(settings.reload_interval_ms));
        #[cfg(unix)]
        spawn_sighup_reload(certificate.clone());
        Ok(Self {
            acceptor: acceptor(certificate, true),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SerialNumber};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::*;

    struct TestCert {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn make_cert(common_name: &str, serial: u64) -> TestCert {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    struct Files {
        _dir: tempfile::TempDir,
        settings: TlsSettings,
        /// Each write gets a later modification time than the last: file systems stamp with a
        /// coarse clock, and two writes in one tick with equal lengths would look unchanged.
        writes: std::cell::Cell<u64>,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let settings = TlsSettings {
                cert_file: dir.path().join("cert.pem"),
                key_file: dir.path().join("key.pem"),
                reload_interval_ms: 1_000,
            };
            Self {
                _dir: dir,
                settings,
                writes: std::cell::Cell::new(0),
            }
        }

        fn write(&self, path: &Path, contents: &str) {
            std::fs::write(path, contents).unwrap();
            self.writes.set(self.writes.get() + 1);
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + self.writes.get()),
            )
            .unwrap();
        }

        fn write_cert(&self, contents: &str) {
            self.write(&self.settings.cert_file, contents);
        }

        fn write_key(&self, contents: &str) {
            self.write(&self.settings.key_file, contents);
        }

        fn write_pair(&self, cert: &TestCert) {
            self.write_cert(&cert.cert_pem);
            self.write_key(&cert.key_pem);
        }
    }

    /// A TLS echo server on a loopback port.
    async fn echo_server(acceptor: TlsAcceptor) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 256];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// A client that trusts only `trusted` and offers `alpn`.
    async fn connect(
        addr: SocketAddr,
        trusted: &CertificateDer<'static>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
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

    fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    async fn echo(stream: &mut TlsStream<TcpStream>, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.unwrap();
        let mut buf = vec![0u8; message.len()];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn a_matching_pair_loads() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_pair(&a);
        let resolver = ReloadingCert::load(&files.settings).unwrap();
        assert_eq!(resolver.current().cert[0], a.der);
        assert!(!resolver.reload_if_changed().unwrap());
    }

    #[tokio::test]
    async fn a_missing_file_is_a_read_error_naming_it() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_key(&a.key_pem);
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(&err, TlsError::Read { path, .. } if *path == files.settings.cert_file));
        assert!(err.to_string().contains("cert.pem"), "{err}");

        files.write_cert(&a.cert_pem);
        std::fs::remove_file(&files.settings.key_file).unwrap();
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(&err, TlsError::Read { path, .. } if *path == files.settings.key_file));
    }

    #[tokio::test]
    async fn a_file_without_a_certificate_is_refused() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        // The key where the certificate belongs: PEM, but no CERTIFICATE section.
        files.write_cert(&a.key_pem);
        files.write_key(&a.key_pem);
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        files.write_cert("not pem at all\n");
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_file_without_a_key_is_refused() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_cert(&a.cert_pem);
        files.write_key(&a.cert_pem);
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_unusable_key_is_refused() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_cert(&a.cert_pem);
        files.write_key(
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        );
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::UnsupportedKey { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_key_of_another_certificate_is_refused() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        let b = make_cert("cert b", 2);
        files.write_cert(&a.cert_pem);
        files.write_key(&b.key_pem);
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[tokio::test]
    async fn a_truncated_certificate_is_a_pem_error() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_cert(&a.cert_pem[..a.cert_pem.len() / 2]);
        files.write_key(&a.key_pem);
        let err = ReloadingCert::load(&files.settings).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }

    #[tokio::test]
    async fn new_handshakes_get_the_rewritten_certificate_while_open_connections_keep_working() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        let b = make_cert("cert b", 2);
        files.write_pair(&a);
        let resolver = Arc::new(ReloadingCert::load(&files.settings).unwrap());
        let addr = echo_server(acceptor(resolver.clone(), true)).await;

        let mut open = connect(addr, &a.der, &[]).await.unwrap();
        assert_eq!(presented(&open), a.der);
        assert_eq!(echo(&mut open, b"before").await, b"before");

        files.write_pair(&b);
        assert!(resolver.reload_if_changed().unwrap());
        assert!(!resolver.reload_if_changed().unwrap());

        let fresh = connect(addr, &b.der, &[]).await.unwrap();
        assert_eq!(presented(&fresh), b.der);
        // A client that trusts only A now fails: B is what is served.
        assert!(connect(addr, &a.der, &[]).await.is_err());
        assert_eq!(echo(&mut open, b"after").await, b"after");
    }

    #[tokio::test]
    async fn a_broken_rewrite_keeps_the_working_certificate() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        let b = make_cert("cert b", 2);
        files.write_pair(&b);
        let resolver = Arc::new(ReloadingCert::load(&files.settings).unwrap());
        let addr = echo_server(acceptor(resolver.clone(), true)).await;

        // Half of A's certificate, as a non-atomic copy leaves it mid-way.
        files.write_cert(&a.cert_pem[..a.cert_pem.len() / 2]);
        assert!(matches!(
            resolver.reload_if_changed(),
            Err(TlsError::Pem { .. })
        ));
        // Reported once, not at every poll.
        assert!(!resolver.reload_if_changed().unwrap());
        let stream = connect(addr, &b.der, &[]).await.unwrap();
        assert_eq!(presented(&stream), b.der);

        // A's certificate complete, B's key still in place.
        files.write_cert(&a.cert_pem);
        assert!(matches!(
            resolver.reload_if_changed(),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert_eq!(resolver.current().cert[0], b.der);
        assert!(matches!(
            resolver.reload_now(),
            Err(TlsError::KeyMismatch { .. })
        ));
        let stream = connect(addr, &b.der, &[]).await.unwrap();
        assert_eq!(presented(&stream), b.der);

        // The key arrives: A is served.
        files.write_key(&a.key_pem);
        assert!(resolver.reload_if_changed().unwrap());
        let stream = connect(addr, &a.der, &[]).await.unwrap();
        assert_eq!(presented(&stream), a.der);
    }

    #[tokio::test]
    async fn a_vanished_file_keeps_the_certificate_until_it_returns() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        let b = make_cert("cert b", 2);
        files.write_pair(&a);
        let resolver = ReloadingCert::load(&files.settings).unwrap();
        std::fs::remove_file(&files.settings.cert_file).unwrap();
        assert!(matches!(
            resolver.reload_if_changed(),
            Err(TlsError::Read { .. })
        ));
        assert_eq!(resolver.current().cert[0], a.der);
        files.write_pair(&b);
        assert!(resolver.reload_if_changed().unwrap());
        assert_eq!(resolver.current().cert[0], b.der);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_picks_up_a_rewrite() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        let b = make_cert("cert b", 2);
        files.write_pair(&a);
        let resolver = Arc::new(ReloadingCert::load(&files.settings).unwrap());
        let watcher = resolver.clone().spawn_watcher(Duration::from_secs(1));

        files.write_pair(&b);
        assert_eq!(resolver.current().cert[0], a.der);
        // The paused clock jumps to the watcher's next tick; the watcher runs before the sleep
        // returns.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(resolver.current().cert[0], b.der);
        watcher.abort();
    }

    #[tokio::test]
    async fn alpn_prefers_h2_when_enabled() {
        let files = Files::new();
        let a = make_cert("cert a", 1);
        files.write_pair(&a);
        let resolver = Arc::new(ReloadingCert::load(&files.settings).unwrap());
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];

        let h2 = echo_server(acceptor(resolver.clone(), true)).await;
        let stream = connect(h2, &a.der, both).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let stream = connect(h2, &a.der, &[b"http/1.1"]).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        let h1_only = echo_server(acceptor(resolver, false)).await;
        let stream = connect(h1_only, &a.der, both).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}
