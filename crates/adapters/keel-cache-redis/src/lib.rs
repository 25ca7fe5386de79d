//! keel's cache on Redis: [`RedisTier`] implements the cache's shared-tier port
//! ([`keel_cache::SharedTier`]) with shared values, versioned writes, and the invalidation
//! channel that keeps every instance's L1 coherent. Every Redis command the cache runs is here.
//!
//! Keys are `keel:<resource>:<key>`; a value is `<version>:d:<json>` (data) or `<version>:t:`
//! (tombstone). Writes go through a script that refuses to replace a newer version, so a slow
//! loader can never put back a value an update or delete has already superseded.
//!
//! Invalidations are published on `keel:inval:<resource>` as `<instance>:<nonce>:<version>:<key>`.
//! A writer waits until its own message comes back through Redis before it answers: Redis has
//! then handed the message to every subscriber, so another instance holds the invalidation
//! before the client can ask it for the key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use keel_cache::tier::{Event, L2Entry, OnEvent};
use keel_cache::{SharedTier, TierError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::oneshot;

/// Longest wait for a published invalidation to come back before the writer answers anyway.
const ECHO_TIMEOUT: Duration = Duration::from_millis(500);

const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv, ck = string.match(cur, '^(%-?%d+):(%a)')
  cv = tonumber(cv)
  local nv = tonumber(ARGV[2])
  if cv then
    if ARGV[3] == 'd' then
      if cv > nv or (cv == nv and ck == 'd') then return 0 end
    elseif cv > nv then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1
"#;

/// A connection to Redis for one resource's L2 and invalidations.
pub struct RedisTier {
    client: redis::Client,
    conn: ConnectionManager,
    /// This process's id, so that it recognises (and does not apply) its own invalidations.
    instance: String,
    /// True while the invalidation subscription is up; L1 is bypassed otherwise.
    coherent: AtomicBool,
    nonce: AtomicU64,
    /// Writers waiting for their invalidation to come back, by nonce.
    echoes: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    script: Script,
}

impl RedisTier {
    /// Connects, failing fast if Redis cannot be reached. Commands time out after
    /// `response_timeout` so that a stuck Redis slows requests down to the database's pace
    /// rather than hanging them.
    pub async fn connect(url: &str, response_timeout: Duration) -> redis::RedisResult<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Arc::new(Self {
            client,
            conn,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            coherent: AtomicBool::new(false),
            nonce: AtomicU64::new(0),
            echoes: Mutex::default(),
            script: Script::new(SET_IF_NEWER),
        }))
    }

    fn key(resource: &str, key: &str) -> String {
        format!("keel:{resource}:{key}")
    }

    fn channel(resource: &str) -> String {
        format!("keel:inval:{resource}")
    }

    /// One round trip, for the readiness probe.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
    }

    /// Applies one invalidation message: our own echo wakes its writer; another instance's is
    /// reported. False when the owner is gone.
    fn handle<F: FnMut(Event) -> bool>(&self, payload: &str, on_event: &mut F) -> bool {
        let mut parts = payload.splitn(4, ':');
        let (Some(instance), Some(nonce), Some(version), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return true;
        };
        if instance == self.instance {
            if let Ok(nonce) = nonce.parse::<u64>()
                && let Some(waiter) = self.echoes.lock().expect("echo lock").remove(&nonce)
            {
                let _ = waiter.send(());
            }
            return true;
        }
        match version.parse::<i64>() {
            Ok(version) => on_event(Event::Invalidated {
                key: key.to_owned(),
                version,
            }),
            Err(_) => true,
        }
    }
}

#[async_trait]
impl SharedTier for RedisTier {
    fn is_coherent(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    async fn get(&self, resource: &str, key: &str) -> Result<Option<L2Entry>, TierError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn
            .get(Self::key(resource, key))
            .await
            .map_err(TierError::new)?;
        Ok(raw.and_then(|raw| decode(&raw)))
    }

    async fn delete(&self, resource: &str, key: &str) -> Result<(), TierError> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(Self::key(resource, key))
            .await
            .map_err(TierError::new)
    }

    /// Stores `json` (or a tombstone when `None`) at `version`, unless Redis holds a newer state.
    async fn set_if_newer(
        &self,
        resource: &str,
        key: &str,
        version: i64,
        json: Option<&Bytes>,
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let (kind, payload): (&str, &[u8]) = match json {
            Some(json) => ("d", json),
            None => ("t", b""),
        };
        let mut value = format!("{version}:{kind}:").into_bytes();
        value.extend_from_slice(payload);
        let mut conn = self.conn.clone();
        let set: i64 = self
            .script
            .key(Self::key(resource, key))
            .arg(value)
            .arg(version)
            .arg(kind)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(TierError::new)?;
        Ok(set == 1)
    }

    /// Publishes an invalidation and waits (bounded) until Redis has fanned it out.
    async fn publish_and_wait(
        &self,
        resource: &str,
        key: &str,
        version: i64,
    ) -> Result<(), TierError> {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let subscribed = self.is_coherent();
        if subscribed {
            self.echoes.lock().expect("echo lock").insert(nonce, tx);
        }
        let message = format!("{}:{nonce}:{version}:{key}", self.instance);
        let mut conn = self.conn.clone();
        let res: redis::RedisResult<i64> = conn.publish(Self::channel(resource), message).await;
        if res.is_err() || !subscribed {
            self.echoes.lock().expect("echo lock").remove(&nonce);
            return res.map(drop).map_err(TierError::new);
        }
        if tokio::time::timeout(ECHO_TIMEOUT, rx).await.is_err() {
            self.echoes.lock().expect("echo lock").remove(&nonce);
            tracing::warn!(resource, "invalidation echo not seen in time");
        }
        Ok(())
    }

    /// Runs the subscription for `resource` in a task, reconnecting with backoff, and reports to
    /// `on_event` until it returns false (its cache is gone).
    fn subscribe(self: Arc<Self>, resource: &'static str, mut on_event: OnEvent) {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(Self::channel(resource)).await {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            if !on_event(Event::Resubscribed) {
                                return;
                            }
                            self.coherent.store(true, Ordering::Release);
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let Ok(payload) = msg.get_payload::<String>() else {
                                    continue;
                                };
                                if !self.handle(&payload, &mut on_event) {
                                    return;
                                }
                            }
                            tracing::warn!(
                                resource,
                                "invalidation subscription lost; L1 bypassed until it is back"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(resource, error = %e, "cannot subscribe to invalidations");
                        }
                    },
                    Err(e) => {
                        tracing::warn!(resource, error = %e, "cannot connect for invalidations");
                    }
                }
                self.coherent.store(false, Ordering::Release);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }
}

fn decode(raw: &[u8]) -> Option<L2Entry> {
    let text_end = raw.iter().position(|&b| b == b':')?;
    let rest = &raw[text_end + 1..];
    match rest.split_first() {
        Some((b'd', tail)) => Some(L2Entry::Data(Bytes::copy_from_slice(
            tail.strip_prefix(b":")?,
        ))),
        Some((b't', _)) => Some(L2Entry::Tomb),
        _ => None,
    }
}
