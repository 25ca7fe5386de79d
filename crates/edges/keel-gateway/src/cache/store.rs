//! Storage and eviction: [`WebCache`], one moka entry per primary key under a memory bound,
//! each dropped once none of its variants can be used any more.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_LOCATION, ETAG, LOCATION};
use http::response::Parts;
use http::{Method, StatusCode, Uri};
use moka::Expiry;
use moka::ops::compute::Op;

use super::directives::Directives;
use super::freshness::{Stored, admit_request, response_policy, updatable_from_304};
use super::key::{CacheKey, Variants, vary_fields, vary_value};
use super::revalidate::{CachedResponse, Lookup, Revalidation, opaque_tag};
use super::{CacheRequest, CacheStatus, MAX_VARIANTS, Uncacheable};

/// The shared response cache. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct WebCache {
    pub(super) entries: moka::sync::Cache<CacheKey, Arc<Variants>>,
    pub(super) max_object_bytes: usize,
}

impl WebCache {
    /// At most `max_bytes` of bodies plus headers in total (moka evicts by weight), and no
    /// single response larger than `max_object_bytes`.
    pub fn new(max_bytes: u64, max_object_bytes: usize) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, variants: &Arc<Variants>| {
                let key_bytes = key.host.len() + key.path_and_query.len();
                u32::try_from(variants.weight + key_bytes).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .build();
        WebCache {
            entries,
            max_object_bytes,
        }
    }

    pub fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    /// What to do with `req` at `now`. Only GET and HEAD are looked up.
    pub fn lookup(&self, req: &CacheRequest<'_>, now: SystemTime) -> Lookup {
        if !req.is_get_or_head() {
            return Lookup::Bypass;
        }
        let wants = Directives::from_request(req.headers);
        if wants.no_store {
            return Lookup::Bypass;
        }
        let Some(variants) = self.entries.get(&req.key) else {
            return Lookup::Miss;
        };
        let Some(stored) = variants.select(req.headers) else {
            return Lookup::Miss;
        };
        if req.authorized() && !stored.policy.shareable_with_auth {
            return Lookup::Miss;
        }
        let age = stored.current_age(now);
        let lifetime = stored.policy.lifetime;
        let client_revalidates = wants.no_cache
            || wants
                .max_age
                .is_some_and(|max| max == 0 || age.as_secs() > max)
            || wants
                .min_fresh
                .is_some_and(|min| lifetime.saturating_sub(age).as_secs() < min);
        if age < lifetime && !stored.policy.no_cache && !client_revalidates {
            return Lookup::Fresh(stored.response(req.method, age, CacheStatus::Hit));
        }
        let stale_window = lifetime + stored.policy.stale_while_revalidate;
        let serve_stale = !client_revalidates && stored.may_serve_stale() && age < stale_window;
        let response = serve_stale.then(|| stored.response(req.method, age, CacheStatus::Stale));
        let claimed = serve_stale && stored.claim_refresh(now);
        let revalidation = Revalidation {
            key: req.key.clone(),
            conditional: stored.conditional_headers(),
            stored,
            method: req.method.clone(),
            authorized: req.authorized(),
        };
        match response {
            Some(response) => Lookup::Stale {
                response,
                refresh: claimed.then_some(revalidation),
            },
            None => Lookup::Revalidate(revalidation),
        }
    }

    /// Whether a response with these headers may be stored, checked before buffering its body
    /// (a `Content-Length` over the limit fails here). [`WebCache::store`] checks again.
    /// `received` is when the response head arrived.
    pub fn storable(
        &self,
        req: &CacheRequest<'_>,
        res: &Parts,
        received: SystemTime,
    ) -> Result<(), Uncacheable> {
        admit_request(req)?;
        response_policy(res.status, &res.headers, req.authorized(), received)?;
        vary_fields(&res.headers)?;
        let declared = res
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_object_bytes) {
            return Err(Uncacheable::TooLarge);
        }
        Ok(())
    }

    /// Stores the upstream's answer to `req`, replacing the variant with the same `Vary`
    /// values. `sent` is when the upstream request left, `received` when the response head
    /// arrived: their gap counts toward the response's age (RFC 9111 §4.2.3).
    pub fn store(
        &self,
        req: &CacheRequest<'_>,
        res: &Parts,
        body: Bytes,
        sent: SystemTime,
        received: SystemTime,
    ) -> Result<(), Uncacheable> {
        admit_request(req)?;
        let policy = response_policy(res.status, &res.headers, req.authorized(), received)?;
        let vary = vary_fields(&res.headers)?
            .into_iter()
            .map(|name| {
                let value = vary_value(req.headers, &name);
                (name, value)
            })
            .collect();
        let headers = res.headers.clone();
        let stored = Stored::new(res.status, headers, body, vary, policy, sent, received);
        if stored.size > self.max_object_bytes {
            return Err(Uncacheable::TooLarge);
        }
        self.insert(req.key.clone(), Arc::new(stored), None);
        Ok(())
    }

    /// Applies the upstream's 304 to the stored response: its header fields replace the stored
    /// ones (RFC 9111 §3.2, except `Content-Length` and the body's encoding) and freshness
    /// starts over. Returns the response to send, marked [`CacheStatus::Revalidated`].
    ///
    /// `None` when `res` is not a 304, or its `ETag` names another representation (the stale
    /// entry is dropped): forward the request again without validators. A 200 goes to
    /// [`WebCache::store`] instead.
    pub fn revalidated(
        &self,
        revalidation: &Revalidation,
        res: &Parts,
        sent: SystemTime,
        received: SystemTime,
    ) -> Option<CachedResponse> {
        if res.status != StatusCode::NOT_MODIFIED {
            return None;
        }
        let old = &revalidation.stored;
        if let (Some(new_tag), Some(old_tag)) = (res.headers.get(ETAG), old.headers.get(ETAG))
            && opaque_tag(new_tag.as_bytes()) != opaque_tag(old_tag.as_bytes())
        {
            self.remove_variant(&revalidation.key, old);
            return None;
        }
        let mut headers = old.headers.clone();
        for name in res.headers.keys() {
            if !updatable_from_304(name) {
                continue;
            }
            headers.remove(name);
            for value in res.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // The merged response meets the same rules as a new one: a 304 may turn `private`.
        let policy = response_policy(old.status, &headers, revalidation.authorized, received);
        let admitted = policy.is_ok();
        let stored = Arc::new(Stored::new(
            old.status,
            headers,
            old.body.clone(),
            old.vary.clone(),
            policy.unwrap_or_default(),
            sent,
            received,
        ));
        if admitted && stored.size <= self.max_object_bytes {
            self.insert(revalidation.key.clone(), stored.clone(), Some(old));
        } else {
            self.remove_variant(&revalidation.key, old);
        }
        let age = stored.current_age(received);
        Some(stored.response(&revalidation.method, age, CacheStatus::Revalidated))
    }

    /// RFC 9111 §4.4: a successful unsafe request (POST, PUT, DELETE, ...) drops the stored
    /// responses for its URI and for the same-host `Location` and `Content-Location`. Returns
    /// the number of keys removed.
    pub fn invalidate_after_unsafe(&self, req: &CacheRequest<'_>, res: &Parts) -> usize {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        if safe.contains(req.method) || !(res.status.is_success() || res.status.is_redirection()) {
            return 0;
        }
        let mut keys = vec![req.key.clone()];
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(uri) = res
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok()?.parse::<Uri>().ok())
            else {
                continue;
            };
            let same_host = uri.host().is_none_or(|host| req.key.host_matches(host));
            if same_host && let Some(pq) = uri.path_and_query() {
                keys.push(CacheKey::new(&req.key.host, pq.as_str()));
            }
        }
        keys.iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count()
    }

    /// Removes every key whose path-and-query starts with `path_prefix`, on `host` (port
    /// optional) or on all hosts. Returns the number of keys removed (all variants of a URL
    /// count as one).
    pub fn purge(&self, path_prefix: &str, host: Option<&str>) -> usize {
        let host = host.map(str::to_ascii_lowercase);
        let doomed: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                key.path_and_query.starts_with(path_prefix)
                    && host.as_deref().is_none_or(|host| key.host_matches(host))
            })
            .map(|(key, _)| CacheKey::clone(&key))
            .collect();
        doomed
            .iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count()
    }

    /// Removes one URL (all its variants). `true` if it was stored.
    pub fn purge_exact(&self, host: &str, path_and_query: &str) -> bool {
        self.entries
            .remove(&CacheKey::new(host, path_and_query))
            .is_some()
    }

    /// Number of stored URLs. Approximate: moka updates it in its housekeeping.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against `max_bytes`. Approximate, like [`WebCache::len`].
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Puts `stored` first among the key's variants, replacing the one with the same `Vary`
    /// values. With `replacing`, does nothing if that variant is no longer the one revalidated
    /// (a concurrent 200 already stored something newer).
    pub(super) fn insert(
        &self,
        key: CacheKey,
        stored: Arc<Stored>,
        replacing: Option<&Arc<Stored>>,
    ) {
        self.entries.entry(key).and_compute_with(|current| {
            let current = current.map(moka::Entry::into_value);
            let existing: &[Arc<Stored>] = current.as_ref().map_or(&[], |v| v.list.as_slice());
            let same_variant = existing.iter().find(|v| v.vary == stored.vary);
            if let (Some(replacing), Some(same)) = (replacing, same_variant)
                && !Arc::ptr_eq(replacing, same)
            {
                return Op::Nop;
            }
            let mut list = vec![stored.clone()];
            list.extend(
                existing
                    .iter()
                    .filter(|v| v.vary != stored.vary)
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
            Op::Put(Arc::new(Variants::new(list)))
        });
    }

    pub(super) fn remove_variant(&self, key: &CacheKey, stored: &Arc<Stored>) {
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            let list: Vec<_> = current
                .value()
                .list
                .iter()
                .filter(|v| !Arc::ptr_eq(v, stored))
                .cloned()
                .collect();
            match list.len() {
                0 => Op::Remove,
                n if n == current.value().list.len() => Op::Nop,
                _ => Op::Put(Arc::new(Variants::new(list))),
            }
        });
    }
}

/// Drops keys once no stored variant can be used any more, rather than waiting for the
/// memory bound to push them out.
pub(super) struct KeepFor;

impl Expiry<CacheKey, Arc<Variants>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}
