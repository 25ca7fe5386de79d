//! JWT verification at the edge: bearer tokens are checked against an identity provider's JWKS
//! before the upstream sees the request.
//!
//! The IdP is protected from us as much as we rely on it: its keys are fetched lazily and kept
//! for `jwks_ttl_secs`, one request at a time; a token naming an unknown `kid` (a rotation, or
//! garbage) fetches again at most once per 30 s; and while the IdP is down the keys already
//! fetched keep working. Verified tokens are remembered briefly, because the signature check is
//! the expensive part of the hot path.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::settings::EdgeJwtSettings;
use http::{HeaderValue, StatusCode};
use keel_credentials::token::{Claims, Expect, TokenError, Verifier};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Shortest time between two fetches caused by tokens naming an unknown `kid`.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Shortest time between two fetches of stale or missing keys: a down IdP is asked again this
/// often, not at every request.
const FETCH_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Longest wait for the JWKS, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS read; real ones are a few kilobytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;

/// How much verified tokens may take in memory (their text counted), and how long one is
/// remembered at most.
const TOKEN_CACHE_BYTES: u64 = 16 * 1024 * 1024;
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeJwtError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed authorization header")]
    MalformedHeader,
    #[error("invalid token: {0}")]
    Invalid(TokenError),
    /// No keys were ever fetched and the IdP does not answer: the token cannot be judged.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl EdgeJwtError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::MalformedHeader | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The text for the client: why a token failed stays in the logs.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Missing => "bearer token required",
            Self::MalformedHeader => "malformed authorization header",
            Self::Invalid(_) => "invalid token",
            Self::KeysUnavailable => "authentication temporarily unavailable",
        }
    }
}

/// Why a JWKS fetch failed (logged; callers keep the keys they had).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed key: {0}")]
    Key(#[from] TokenError),
    #[error("no keys")]
    Empty,
}

/// One fetched JWKS.
struct Keys {
    verifier: Verifier,
    fetched_at: Instant,
}

/// When fetches were last made, for the throttles.
#[derive(Default)]
struct FetchTimes {
    last_attempt: Option<Instant>,
    last_unknown_kid: Option<Instant>,
}

/// A verified token: the whole token is kept to be compared on a hit, since the signature part
/// alone does not bind the rest (a forged payload with a copied signature must not hit).
struct VerifiedToken {
    token: String,
    claims: Arc<Claims>,
}

/// One named JWT check (`[[gateway.jwt]]`), shared by the routes that use it.
pub struct EdgeJwt {
    name: String,
    jwks_url: String,
    expect: Expect,
    ttl: Duration,
    unknown_kid_interval: Duration,
    client: reqwest::Client,
    /// The keys requests verify with; replaced whole by a fetch, never emptied by a failed one.
    keys: RwLock<Option<Arc<Keys>>>,
    /// Held across a fetch, so that concurrent requests wait for one fetch instead of each
    /// making their own.
    fetches: Mutex<FetchTimes>,
    /// Keyed by the token's signature part; see [`VerifiedToken`].
    verified: moka::sync::Cache<String, Arc<VerifiedToken>>,
}

impl std::fmt::Debug for EdgeJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeJwt")
            .field("name", &self.name)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

impl EdgeJwt {
    /// A check with the standard 30 s throttle on unknown-`kid` refetches. Fetches nothing
    /// yet: the first request does.
    pub fn new(settings: &EdgeJwtSettings, client: reqwest::Client) -> Self {
        Self::with_refetch_interval(settings, client, UNKNOWN_KID_REFETCH_INTERVAL)
    }

    /// As [`EdgeJwt::new`], with another shortest time between unknown-`kid` refetches.
    pub fn with_refetch_interval(
        settings: &EdgeJwtSettings,
        client: reqwest::Client,
        unknown_kid_interval: Duration,
    ) -> Self {
        Self {
            name: settings.name.clone(),
            jwks_url: settings.jwks_url.clone(),
            expect: Expect {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                leeway_secs: LEEWAY_SECS,
            },
            ttl: Duration::from_secs(settings.jwks_ttl_secs),
            unknown_kid_interval,
            client,
            keys: RwLock::new(None),
            fetches: Mutex::new(FetchTimes::default()),
            verified: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_BYTES)
                .weigher(|signature: &String, verified: &Arc<VerifiedToken>| {
                    u32::try_from(signature.len() + verified.token.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(TOKEN_CACHE_TTL)
                .build(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The claims of the request's bearer token, if it verifies.
    pub async fn verify(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Arc<Claims>, EdgeJwtError> {
        let res = self.verify_inner(authorization).await;
        if let Err(e) = &res {
            tracing::debug!(jwt = %self.name, error = %e, "bearer token refused");
        }
        res
    }

    async fn verify_inner(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Arc<Claims>, EdgeJwtError> {
        let token = bearer_token(authorization)?;
        let (_, signature) = token
            .rsplit_once('.')
            .ok_or(EdgeJwtError::Invalid(TokenError::Malformed))?;
        let now = unix_now();
        if let Some(hit) = self.verified.get(signature)
            && hit.token == token
            && now < hit.claims.exp
        {
            return Ok(hit.claims.clone());
        }

        let keys = self.usable_keys().await?;
        let claims = match keys.verifier.verify(token, &self.expect, now) {
            Err(TokenError::UnknownKey) => match self.refetch_for_unknown_kid(&keys).await {
                Some(newer) => newer.verifier.verify(token, &self.expect, now),
                None => Err(TokenError::UnknownKey),
            },
            res => res,
        }
        .map_err(EdgeJwtError::Invalid)?;

        let claims = Arc::new(claims);
        self.verified.insert(
            signature.to_owned(),
            Arc::new(VerifiedToken {
                token: token.to_owned(),
                claims: claims.clone(),
            }),
        );
        Ok(claims)
    }

    fn current_keys(&self) -> Option<Arc<Keys>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keys to verify with: the cached ones, refreshed first when older than the TTL.
    async fn usable_keys(&self) -> Result<Arc<Keys>, EdgeJwtError> {
        match self.current_keys() {
            Some(keys) if keys.fetched_at.elapsed() < self.ttl => Ok(keys),
            Some(stale) => {
                // Stale keys still verify: one request refreshes (waiting at most the fetch
                // timeout), the others go on with the stale keys rather than queue behind it.
                let Ok(mut times) = self.fetches.try_lock() else {
                    return Ok(stale);
                };
                Ok(self
                    .refresh(&mut times, Some(&stale), Reason::Stale)
                    .await
                    .unwrap_or(stale))
            }
            None => {
                let mut times = self.fetches.lock().await;
                self.refresh(&mut times, None, Reason::Missing)
                    .await
                    .ok_or(EdgeJwtError::KeysUnavailable)
            }
        }
    }

    /// Newer keys than `seen`, fetched if the throttle allows.
    async fn refetch_for_unknown_kid(&self, seen: &Arc<Keys>) -> Option<Arc<Keys>> {
        let mut times = self.fetches.lock().await;
        self.refresh(&mut times, Some(seen), Reason::UnknownKid)
            .await
    }

    /// Keys newer than `seen`: those another request fetched while this one waited for the
    /// lock, or freshly fetched ones if `reason`'s throttle allows; `None` if there are none.
    async fn refresh(
        &self,
        times: &mut FetchTimes,
        seen: Option<&Arc<Keys>>,
        reason: Reason,
    ) -> Option<Arc<Keys>> {
        let current = self.current_keys();
        let changed = match (&current, seen) {
            (Some(current), Some(seen)) => !Arc::ptr_eq(current, seen),
            (current, None) => current.is_some(),
            (None, Some(_)) => false,
        };
        if changed {
            return current;
        }
        let recent = |at: Option<Instant>, gap: Duration| at.is_some_and(|at| at.elapsed() < gap);
        let throttled = match reason {
            Reason::Missing | Reason::Stale => recent(times.last_attempt, FETCH_RETRY_INTERVAL),
            Reason::UnknownKid => recent(times.last_unknown_kid, self.unknown_kid_interval),
        };
        if throttled {
            return None;
        }
        let now = Instant::now();
        times.last_attempt = Some(now);
        if reason == Reason::UnknownKid {
            times.last_unknown_kid = Some(now);
        }
        match self.fetch().await {
            Ok(verifier) => {
                let keys = Arc::new(Keys {
                    verifier,
                    fetched_at: Instant::now(),
                });
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(keys.clone());
                tracing::debug!(jwt = %self.name, reason = reason.as_str(), "jwks fetched");
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(
                    jwt = %self.name,
                    url = %self.jwks_url,
                    reason = reason.as_str(),
                    error = %e,
                    kept_previous_keys = current.is_some(),
                    "jwks fetch failed"
                );
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Verifier, FetchError> {
        let mut res = self
            .client
            .get(&self.jwks_url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await?
            .error_for_status()?;
        if res
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: serde_json::Value = serde_json::from_slice(&body)?;
        // An empty set would drop the working keys for nothing: treat it as a failed fetch.
        if jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            return Err(FetchError::Empty);
        }
        Ok(Verifier::from_jwks(&jwks)?)
    }
}

/// Why keys are being fetched; each has its own throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Missing,
    Stale,
    UnknownKid,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Stale => "stale",
            Self::UnknownKid => "unknown_kid",
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&str, EdgeJwtError> {
    let value = authorization.ok_or(EdgeJwtError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| EdgeJwtError::MalformedHeader)?
        .trim();
    if value.is_empty() {
        return Err(EdgeJwtError::Missing);
    }
    keel_domain::identity::auth_scheme::credentials(value, "Bearer")
        .filter(|token| !token.contains(' '))
        .ok_or(EdgeJwtError::MalformedHeader)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use keel_credentials::token::KeySet;
    use serde_json::Value;

    use super::*;

    const ISSUER: &str = "https://idp.example.com";
    const AUDIENCE: &str = "keel-api";

    /// A JWKS endpoint that counts its requests and can be made to fail.
    struct Idp {
        jwks: std::sync::Mutex<Value>,
        fetches: AtomicUsize,
        down: AtomicBool,
        oversized: AtomicBool,
    }

    impl Idp {
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn publish(&self, keys: &KeySet) {
            *self.jwks.lock().unwrap() = keys.jwks();
        }
    }

    async fn serve_jwks(State(idp): State<Arc<Idp>>) -> Response {
        idp.fetches.fetch_add(1, Ordering::SeqCst);
        if idp.down.load(Ordering::SeqCst) {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        if idp.oversized.load(Ordering::SeqCst) {
            return " ".repeat(MAX_JWKS_BYTES + 1).into_response();
        }
        axum::Json(idp.jwks.lock().unwrap().clone()).into_response()
    }

    async fn start_idp(keys: &KeySet) -> (Arc<Idp>, String) {
        let idp = Arc::new(Idp {
            jwks: std::sync::Mutex::new(keys.jwks()),
            fetches: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            oversized: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (idp, url)
    }

    fn settings(jwks_url: &str, jwks_ttl_secs: u64) -> EdgeJwtSettings {
        EdgeJwtSettings {
            name: "test".to_owned(),
            jwks_url: jwks_url.to_owned(),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            jwks_ttl_secs,
        }
    }

    fn edge(jwks_url: &str) -> EdgeJwt {
        EdgeJwt::new(&settings(jwks_url, 3_600), reqwest::Client::new())
    }

    fn claims(sub: &str) -> Claims {
        let now = unix_now();
        Claims {
            iss: ISSUER.to_owned(),
            sub: sub.to_owned(),
            aud: vec![AUDIENCE.to_owned()],
            exp: now + 600,
            nbf: 0,
            iat: now,
            jti: format!("jti-{sub}"),
            extra: serde_json::Map::new(),
        }
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    async fn verify(edge: &EdgeJwt, token: &str) -> Result<Arc<Claims>, EdgeJwtError> {
        edge.verify(Some(&bearer(token))).await
    }

    /// Moves the tokio clock (which the throttles and the TTL read) forward, then lets it run
    /// again for the network.
    async fn skip(duration: Duration) {
        tokio::time::pause();
        tokio::time::advance(duration).await;
        tokio::time::resume();
    }

    #[tokio::test]
    async fn a_valid_token_is_accepted_with_its_claims() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = edge(&url);
        let mut expected = claims("alice");
        expected
            .extra
            .insert("scope".to_owned(), Value::from("orders:read"));
        let token = keys.sign(&expected);

        let got = verify(&edge, &token).await.unwrap();
        assert_eq!(*got, expected);
        // The scheme is case-insensitive; the second check is served from the token cache.
        let lower = HeaderValue::from_str(&format!("bearer {token}")).unwrap();
        assert_eq!(*edge.verify(Some(&lower)).await.unwrap(), expected);
        assert_eq!(idp.fetches(), 1);
    }

    #[tokio::test]
    async fn wrong_issuer_audience_and_expired_tokens_are_refused() {
        let keys = KeySet::generate(3_600);
        let (_idp, url) = start_idp(&keys).await;
        let edge = edge(&url);

        let mut wrong_issuer = claims("alice");
        wrong_issuer.iss = "https://evil.example.com".to_owned();
        let mut wrong_audience = claims("alice");
        wrong_audience.aud = vec!["another-api".to_owned()];
        let mut expired = claims("alice");
        expired.exp = unix_now() - 3_600;
        for (claims, why) in [
            (wrong_issuer, TokenError::Issuer),
            (wrong_audience, TokenError::Audience),
            (expired, TokenError::Expired),
        ] {
            let err = verify(&edge, &keys.sign(&claims)).await.unwrap_err();
            assert_eq!(err, EdgeJwtError::Invalid(why));
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(err.message(), "invalid token");
        }
    }

    #[tokio::test]
    async fn a_forged_payload_under_a_valid_signature_is_refused_even_after_a_cache_hit() {
        let keys = KeySet::generate(3_600);
        let (_idp, url) = start_idp(&keys).await;
        let edge = edge(&url);
        let token = keys.sign(&claims("alice"));
        verify(&edge, &token).await.unwrap();

        let forged_payload = keys.sign(&claims("admin"));
        let forged_payload = forged_payload.split('.').nth(1).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = forged_payload;
        let forged = parts.join(".");
        assert_eq!(
            verify(&edge, &forged).await.unwrap_err(),
            EdgeJwtError::Invalid(TokenError::Signature)
        );
        assert_eq!(verify(&edge, &token).await.unwrap().sub, "alice");
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_refused_without_asking_the_idp() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = edge(&url);

        let err = edge.verify(None).await.unwrap_err();
        assert_eq!(err, EdgeJwtError::Missing);
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        for header in [
            "Basic YWxpY2U6c2VjcmV0",
            "Bearer",
            "Bearer  ",
            "Bearer a b",
            "Token",
        ] {
            let err = edge
                .verify(Some(&HeaderValue::from_static(header)))
                .await
                .unwrap_err();
            assert_eq!(err, EdgeJwtError::MalformedHeader, "{header:?}");
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        }
        let err = verify(&edge, "not-a-jwt").await.unwrap_err();
        assert_eq!(err, EdgeJwtError::Invalid(TokenError::Malformed));
        assert_eq!(idp.fetches(), 0);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_and_a_rotated_key_is_accepted() {
        let mut keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = edge(&url);
        verify(&edge, &keys.sign(&claims("alice"))).await.unwrap();
        assert_eq!(idp.fetches(), 1);

        // Twice: the first rotation activates the key already published as next, which needs
        // no fetch; the second activates one the gateway has never seen.
        keys.rotate(unix_now());
        verify(&edge, &keys.sign(&claims("bob"))).await.unwrap();
        assert_eq!(idp.fetches(), 1);
        keys.rotate(unix_now());
        idp.publish(&keys);
        let after = keys.sign(&claims("carol"));
        assert_eq!(verify(&edge, &after).await.unwrap().sub, "carol");
        assert_eq!(idp.fetches(), 2);
    }

    #[tokio::test]
    async fn tokens_with_unknown_kids_refetch_at_most_once_per_interval() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = edge(&url);
        verify(&edge, &keys.sign(&claims("alice"))).await.unwrap();

        for n in 0..20 {
            let stranger = KeySet::generate(3_600);
            let err = verify(&edge, &stranger.sign(&claims(&format!("mallory{n}"))))
                .await
                .unwrap_err();
            assert_eq!(err, EdgeJwtError::Invalid(TokenError::UnknownKey));
        }
        assert_eq!(idp.fetches(), 2);

        skip(UNKNOWN_KID_REFETCH_INTERVAL - Duration::from_secs(1)).await;
        let stranger = KeySet::generate(3_600);
        verify(&edge, &stranger.sign(&claims("mallory")))
            .await
            .unwrap_err();
        assert_eq!(idp.fetches(), 2);

        skip(Duration::from_secs(2)).await;
        verify(&edge, &stranger.sign(&claims("mallory")))
            .await
            .unwrap_err();
        assert_eq!(idp.fetches(), 3);
    }

    #[tokio::test]
    async fn the_refetch_interval_is_a_constructor_parameter() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = EdgeJwt::with_refetch_interval(
            &settings(&url, 3_600),
            reqwest::Client::new(),
            Duration::ZERO,
        );
        verify(&edge, &keys.sign(&claims("alice"))).await.unwrap();
        let stranger = KeySet::generate(3_600);
        for _ in 0..3 {
            verify(&edge, &stranger.sign(&claims("mallory")))
                .await
                .unwrap_err();
        }
        assert_eq!(idp.fetches(), 4);
    }

    #[tokio::test]
    async fn cached_keys_keep_verifying_while_the_idp_is_down() {
        let mut keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = EdgeJwt::new(&settings(&url, 60), reqwest::Client::new());
        verify(&edge, &keys.sign(&claims("alice"))).await.unwrap();
        idp.down.store(true, Ordering::SeqCst);

        // Past the TTL: the refresh fails and the stale keys are used.
        skip(Duration::from_secs(61)).await;
        assert_eq!(
            verify(&edge, &keys.sign(&claims("bob"))).await.unwrap().sub,
            "bob"
        );
        assert_eq!(idp.fetches(), 2);
        // The down IdP is not asked again at every request.
        verify(&edge, &keys.sign(&claims("carol"))).await.unwrap();
        assert_eq!(idp.fetches(), 2);
        // An unknown key is refused as such, not as an outage.
        keys.rotate(unix_now());
        keys.rotate(unix_now());
        assert_eq!(
            verify(&edge, &keys.sign(&claims("dave")))
                .await
                .unwrap_err(),
            EdgeJwtError::Invalid(TokenError::UnknownKey)
        );
        assert_eq!(idp.fetches(), 3);

        // Back up: the next refresh after the retry interval brings the new keys.
        idp.down.store(false, Ordering::SeqCst);
        idp.publish(&keys);
        skip(FETCH_RETRY_INTERVAL).await;
        assert_eq!(
            verify(&edge, &keys.sign(&claims("erin")))
                .await
                .unwrap()
                .sub,
            "erin"
        );
        assert_eq!(idp.fetches(), 4);
        verify(&edge, &keys.sign(&claims("frank"))).await.unwrap();
        assert_eq!(idp.fetches(), 4);
    }

    #[tokio::test]
    async fn no_keys_and_no_idp_is_unavailable_until_the_idp_answers() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        idp.down.store(true, Ordering::SeqCst);
        let edge = edge(&url);
        let token = keys.sign(&claims("alice"));

        let err = verify(&edge, &token).await.unwrap_err();
        assert_eq!(err, EdgeJwtError::KeysUnavailable);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            verify(&edge, &token).await.unwrap_err(),
            EdgeJwtError::KeysUnavailable
        );
        assert_eq!(idp.fetches(), 1);

        idp.down.store(false, Ordering::SeqCst);
        skip(FETCH_RETRY_INTERVAL).await;
        assert_eq!(verify(&edge, &token).await.unwrap().sub, "alice");
        assert_eq!(idp.fetches(), 2);
    }

    #[tokio::test]
    async fn an_unreachable_idp_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        drop(listener);
        let keys = KeySet::generate(3_600);
        let err = verify(&edge(&url), &keys.sign(&claims("alice")))
            .await
            .unwrap_err();
        assert_eq!(err, EdgeJwtError::KeysUnavailable);
    }

    #[tokio::test]
    async fn an_oversized_jwks_is_refused() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        idp.oversized.store(true, Ordering::SeqCst);
        let err = verify(&edge(&url), &keys.sign(&claims("alice")))
            .await
            .unwrap_err();
        assert_eq!(err, EdgeJwtError::KeysUnavailable);
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_fetch() {
        let keys = KeySet::generate(3_600);
        let (idp, url) = start_idp(&keys).await;
        let edge = edge(&url);
        let tokens: Vec<String> = (0..16)
            .map(|n| keys.sign(&claims(&format!("user{n}"))))
            .collect();
        let results = futures_util::future::join_all(tokens.iter().map(|t| verify(&edge, t))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(idp.fetches(), 1);
    }
}
