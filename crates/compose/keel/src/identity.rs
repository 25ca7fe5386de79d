//! Building the identity provider from the settings: its secrets (configured, or made once and
//! kept in the data directory for a single instance), its hasher and policy, and its signing
//! keys, loaded in the background until the database answers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keel_cache::SharedTier;
use keel_cache::tier::Event;
use keel_cache_redis::RedisTier;
use keel_config::Settings;
use keel_credentials::envelope::Keyring;
use keel_credentials::password::{Argon2Params, PasswordHasher, PasswordPolicy};
use keel_domain::{Accounts, EventStore, IdentityStore};
use keel_identity::lockout::LockoutPolicy;
use keel_identity::revocation::RevocationFeed;
use keel_identity::service::{Idp, IdpSettings};

/// The IdP of these settings, or `None` when `identity.enabled` is off.
pub async fn build(
    settings: &Settings,
    users: Arc<dyn Accounts>,
    store: Arc<dyn IdentityStore>,
    outbox: Arc<dyn EventStore>,
    listen: std::net::SocketAddr,
    redis: Option<Arc<RedisTier>>,
) -> anyhow::Result<Option<Arc<Idp>>> {
    let config = &settings.identity;
    if !config.enabled {
        return Ok(None);
    }
    let secret = match &config.secret {
        Some(secret) => STANDARD
            .decode(secret.expose().trim())
            .context("identity.secret: not base64")?,
        None => {
            let text = kept_in(&settings.data_dir.join("identity.secret"), || {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).expect("the operating system's random source");
                STANDARD.encode(bytes)
            })?;
            STANDARD
                .decode(text.trim())
                .context("identity.secret in the data directory: not base64")?
        }
    };
    if secret.len() < 32 {
        anyhow::bail!(
            "identity.secret: at least 32 bytes needed, got {}",
            secret.len()
        );
    }
    let keyring = keyring(settings)?;
    let params = Argon2Params::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
    )
    .map_err(|e| anyhow::anyhow!("identity.argon2_*: {e}"))?;
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let days = |d: u32| (d > 0).then(|| i64::from(d) * 86_400);
    let idp = Idp::new(
        users,
        store,
        PasswordHasher::new(params),
        keyring,
        &secret,
        IdpSettings {
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| format!("http://{listen}")),
            audience: config.audience.clone(),
            access_ttl_secs: secs(config.access_ttl_secs),
            session_ttl_secs: secs(config.session_ttl_secs),
            key_rotation_secs: secs(config.key_rotation_secs),
            revocation_check_secs: secs(config.revocation_check_secs),
            lockout: LockoutPolicy::default(),
            policy: PasswordPolicy {
                min_chars: config.password_min_chars,
                ..PasswordPolicy::default()
            },
            totp_issuer: "keel".into(),
            signup: config.signup,
            password_max_age_secs: days(config.password_max_age_days),
            dormant_after_secs: days(config.dormant_after_days),
            mfa_required_roles: config.mfa_required_roles.clone(),
            providers: config
                .providers
                .iter()
                .map(|p| keel_identity::federation::Provider {
                    name: p.name.clone(),
                    issuer: p.issuer.clone(),
                    client_id: p.client_id.clone(),
                    client_secret: p.client_secret.as_ref().map(|s| s.expose().to_owned()),
                    scopes: p.scopes.clone(),
                    link_by_verified_email: p.link_by_verified_email,
                })
                .collect(),
        },
    )
    .with_outbox(outbox);
    let idp = match redis {
        Some(redis) => {
            let idp = Arc::new(idp.with_revocation_feed(Arc::new(RedisRevocations(redis.clone()))));
            subscribe_revocations(&redis, Arc::downgrade(&idp));
            idp
        }
        None => Arc::new(idp),
    };
    let loaded = match idp.tokens().ensure_keys(now()).await {
        Ok(()) => true,
        Err(e) => {
            // The database may still be coming up (PostgreSQL and MariaDB pools connect
            // lazily): the IdP answers 503 until its keys are loaded.
            tracing::warn!(error = %e, "identity keys not loaded yet; retrying in the background");
            false
        }
    };
    tokio::spawn(keep_keys(Arc::downgrade(&idp), loaded));
    Ok(Some(idp))
}

/// The Redis channel (`keel:inval:<this>`) revocations travel on between instances.
const REVOCATIONS: &str = "token-generations";

/// Tells the other instances through Redis, on the invalidation channel the users cache uses,
/// that an account's tokens were revoked.
struct RedisRevocations(Arc<RedisTier>);

#[async_trait::async_trait]
impl RevocationFeed for RedisRevocations {
    async fn publish(&self, user: keel_domain::UserId) {
        // Waits until Redis has handed the message to every subscribed instance; when Redis
        // fails, the other instances refuse within `identity.revocation_check_secs` anyway.
        if let Err(e) = self
            .0
            .publish_and_wait(REVOCATIONS, &user.to_string(), 0)
            .await
        {
            tracing::warn!(error = %e, "revocation not published; other instances refuse within identity.revocation_check_secs");
        }
    }
}

/// Drops the floors other instances revoke; all of them when the subscription was lost
/// (messages may have been missed).
fn subscribe_revocations(redis: &Arc<RedisTier>, idp: std::sync::Weak<Idp>) {
    redis.clone().subscribe(
        REVOCATIONS,
        Box::new(move |event| {
            let Some(idp) = idp.upgrade() else {
                return false;
            };
            match event {
                Event::Resubscribed => idp.tokens().forget_floors(),
                Event::Invalidated { key, .. } => {
                    if let Ok(user) = key.parse() {
                        idp.tokens().forget_floor(user);
                    }
                }
            }
            true
        }),
    );
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

const KEYS_CHECK: Duration = Duration::from_secs(60);
const KEYS_RETRY: Duration = Duration::from_secs(2);

/// Loads the keys until they are, then rotates them when due (checked every minute).
async fn keep_keys(idp: std::sync::Weak<Idp>, loaded: bool) {
    let mut wait = if loaded { KEYS_CHECK } else { KEYS_RETRY };
    loop {
        tokio::time::sleep(wait).await;
        let Some(idp) = idp.upgrade() else { return };
        match idp.tokens().ensure_keys(now()).await {
            Ok(()) => wait = KEYS_CHECK,
            Err(e) => {
                tracing::warn!(error = %e, "identity keys not loaded");
                wait = KEYS_RETRY;
            }
        }
    }
}

/// The master keys that seal stored secrets and personal fields (`identity.data_keys`, or
/// the key made once for this data directory).
pub fn keyring(settings: &Settings) -> anyhow::Result<Keyring> {
    let keys = match &settings.identity.data_keys {
        Some(keys) => keys.expose().to_owned(),
        None => kept_in(&settings.data_dir.join("identity.keys"), || {
            Keyring::generate_entry("k1")
        })?,
    };
    Keyring::parse(keys.split(',').map(str::trim).filter(|k| !k.is_empty()))
        .map_err(|e| anyhow::anyhow!("identity.data_keys: {e}"))
}

/// The text kept in `path`, made by `make` and written (owner-only) if the file is missing.
fn kept_in(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let text = make();
            match write_private(path, &text) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "identity secret made for this data directory");
                    Ok(text)
                }
                // Another process on this data directory made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))
                }
                Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // create_new: two processes starting together on one data directory cannot both write.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
