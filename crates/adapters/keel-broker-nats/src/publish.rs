//! Publishing: the bindings of groups to topic patterns (a stream every process reads before
//! it publishes), and storing a copy of each message in the stream of every bound group.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self};
use bytes::Bytes;
use chrono::Utc;
use keel_domain::messaging::queue::{check_name, check_publish};
use keel_domain::messaging::queue::{key_chains, topic_matches, worst};
use keel_domain::{BrokerError, Outgoing};

use crate::error::{classify, classify_publish, internal};
use crate::names::Slot;
use crate::{Binding, Inner, codec, lock, names};

/// A message of a batch, encoded once for all its copies.
struct Prepared {
    topic: String,
    key: Option<String>,
    slot: Slot,
    id: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
}

impl Inner {
    /// Stores one copy in `group`'s stream. A stream deleted behind keel's back is made again.
    pub(crate) async fn store(
        &self,
        group: &str,
        slot: Slot,
        headers: &async_nats::HeaderMap,
        body: &Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        for attempt in 0..2 {
            let opened = self
                .group(group, true)
                .await?
                .ok_or_else(|| internal(format!("group {group:?} has no stream")))?;
            // No `Nats-Expected-Stream`: the group's subjects belong to its stream alone (names
            // are made per namespace and group), and a missing stream answers "no responders",
            // which is `StreamNotFound` all the same; one header less on every message.
            let mut message = PublishMessage::build()
                .payload(body.clone())
                .headers(headers.clone());
            if let Some(id) = dedupe_id {
                message = message.message_id(id);
            }
            let sent = self.js.send_publish(opened.subject(slot), message).await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match acked {
                Ok(_) => return Ok(()),
                Err(err)
                    if attempt == 0
                        && err.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
                {
                    tracing::warn!(group, "group stream missing; creating it again");
                    let gone = lock(&self.groups).remove(group);
                    if let Some(gone) = gone {
                        self.retire(&gone);
                    }
                }
                Err(err) => return Err(classify_publish(err)),
            }
        }
        Err(internal(format!("group {group:?} has no stream")))
    }

    /// Stores a copy in each group; all are attempted, the worst error is returned (`Full` first:
    /// the producer must slow down).
    pub(crate) async fn store_all(
        &self,
        groups: &[String],
        slot: Slot,
        headers: &async_nats::HeaderMap,
        body: &Bytes,
        dedupe_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let results = futures_util::future::join_all(
            groups
                .iter()
                .map(|group| self.store(group, slot, headers, body, dedupe_id)),
        )
        .await;
        worst(results)
    }

    /// Stores a batch: `copies[i]` lists the groups message `i` goes to. Copies of one key bound
    /// for one group are sent one after another, each after the previous one's publish ack, so
    /// that a refusal (`Full`) can never let a later message of a key be stored before an
    /// earlier one; other keys, groups and unkeyed copies go concurrently. Every chain is run to
    /// its end or its first error; the worst error is returned, as in `store_all`.
    async fn store_batch(
        &self,
        batch: &[Prepared],
        copies: &[Vec<String>],
    ) -> Result<(), BrokerError> {
        // Per group, the indices of the messages it gets, then their chains by key.
        let mut per_group: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, groups) in copies.iter().enumerate() {
            for group in groups {
                per_group.entry(group.as_str()).or_default().push(i);
            }
        }
        let chains = per_group.into_iter().flat_map(|(group, indices)| {
            key_chains(indices.iter().map(|&i| batch[i].key.as_deref()))
                .into_iter()
                .map(move |chain| (group, chain.into_iter().map(|c| indices[c]).collect()))
                .collect::<Vec<(&str, Vec<usize>)>>()
        });
        let sent = futures_util::future::join_all(chains.map(|(group, chain)| async move {
            for i in chain {
                let message = &batch[i];
                self.store(
                    group,
                    message.slot,
                    &message.headers,
                    &message.body,
                    Some(&message.id),
                )
                .await?;
            }
            Ok(())
        }))
        .await;
        worst(sent)
    }

    /// The groups bound to each message's topic; a batch's topics repeat, each is matched once.
    fn matching_each(&self, batch: &[Prepared]) -> Vec<Vec<String>> {
        let mut of_topic: HashMap<&str, Vec<String>> = HashMap::new();
        batch
            .iter()
            .map(|m| {
                of_topic
                    .entry(m.topic.as_str())
                    .or_insert_with(|| self.matching(&m.topic))
                    .clone()
            })
            .collect()
    }

    /// The groups bound to `topic`, as this process knows them.
    pub(crate) fn matching(&self, topic: &str) -> Vec<String> {
        let bindings = self.bindings.read().unwrap_or_else(PoisonError::into_inner);
        let mut groups: Vec<String> = bindings
            .patterns
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| topic_matches(p, topic)))
            .map(|(group, _)| group.clone())
            .collect();
        groups.sort();
        groups
    }

    /// Makes sure a refresh that started after `ticket` was taken has read every binding.
    pub(crate) async fn refresh_bindings(&self, ticket: u64) -> Result<(), BrokerError> {
        if self.covered.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let _one_at_a_time = self.refresh.lock().await;
        if self.covered.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        // Every ticket taken so far is covered by the read below, which starts after this load.
        let covering = self.tickets.load(Ordering::Acquire);
        let last = self
            .bindings_stream
            .get_info()
            .await
            .map_err(classify)?
            .state
            .last_sequence;
        let filter = names::bindings_filter(&self.options.namespace);
        let mut seen = self
            .bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .seen;
        while seen < last {
            let message = match self
                .bindings_stream
                .get_first_raw_message_by_subject(&filter, seen + 1)
                .await
            {
                Ok(message) => message,
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(classify(err)),
            };
            let mut bindings = self
                .bindings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match serde_json::from_slice::<Binding>(&message.payload) {
                Ok(binding) => {
                    bindings
                        .patterns
                        .entry(binding.group)
                        .or_default()
                        .insert(binding.pattern);
                }
                Err(err) => {
                    tracing::error!(seq = message.sequence, %err, "unreadable binding skipped");
                }
            }
            seen = message.sequence;
            bindings.seen = seen;
        }
        self.covered.fetch_max(covering, Ordering::AcqRel);
        Ok(())
    }

    pub(crate) async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        check_name("group", group, false)?;
        check_name("pattern", pattern, true)?;
        // The stream first: a publisher that sees the binding must find the stream.
        self.group(group, true).await?;
        let known = self
            .bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .patterns
            .get(group)
            .is_some_and(|patterns| patterns.contains(pattern));
        if known {
            return Ok(());
        }
        let body = serde_json::to_vec(&Binding {
            group: group.to_owned(),
            pattern: pattern.to_owned(),
        })
        .map_err(|err| BrokerError::Internal(Box::new(err)))?;
        let message = PublishMessage::build()
            .payload(body.into())
            .expected_stream(self.bindings_stream.cached_info().config.name.as_str());
        self.js
            .send_publish(
                names::binding_subject(&self.options.namespace, group, pattern),
                message,
            )
            .await
            .map_err(classify_publish)?
            .await
            .map_err(classify_publish)?;
        self.bindings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .patterns
            .entry(group.to_owned())
            .or_default()
            .insert(pattern.to_owned());
        Ok(())
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        message: Outgoing,
    ) -> Result<bool, BrokerError> {
        check_publish(topic, &message.body, self.options.max_body_bytes)?;
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let headers = codec::encode(topic, &message, Utc::now());
        let slot = Slot::of(message.key.as_deref(), self.options.partitions);
        let id = message.id.to_string();
        let body = Bytes::from(message.body);
        let known = self.matching(topic);
        let (stored, refreshed) = tokio::join!(
            self.store_all(&known, slot, &headers, &body, Some(&id)),
            self.refresh_bindings(ticket),
        );
        refreshed?;
        stored?;
        let all = self.matching(topic);
        let late: Vec<String> = all
            .iter()
            .filter(|group| !known.contains(group))
            .cloned()
            .collect();
        self.store_all(&late, slot, &headers, &body, Some(&id))
            .await?;
        Ok(!all.is_empty())
    }

    pub(crate) async fn publish_many(
        &self,
        batch: &[(String, Outgoing)],
    ) -> Result<Vec<bool>, BrokerError> {
        for (topic, message) in batch {
            check_publish(topic, &message.body, self.options.max_body_bytes)?;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Utc::now();
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|(topic, message)| Prepared {
                topic: topic.clone(),
                key: message.key.clone(),
                slot: Slot::of(message.key.as_deref(), self.options.partitions),
                id: message.id.to_string(),
                headers: codec::encode(topic, message, now),
                body: Bytes::from(message.body.clone()),
            })
            .collect();
        let known = self.matching_each(&prepared);
        // As in `publish`: the refresh runs beside the stores to the groups already known.
        let (stored, refreshed) = tokio::join!(
            self.store_batch(&prepared, &known),
            self.refresh_bindings(ticket),
        );
        refreshed?;
        stored?;
        let all = self.matching_each(&prepared);
        let late: Vec<Vec<String>> = all
            .iter()
            .zip(&known)
            .map(|(all, known)| all.iter().filter(|g| !known.contains(g)).cloned().collect())
            .collect();
        if late.iter().any(|groups| !groups.is_empty()) {
            self.store_batch(&prepared, &late).await?;
        }
        Ok(all.iter().map(|groups| !groups.is_empty()).collect())
    }

    pub(crate) async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        check_name("group", group, false)?;
        check_publish(topic, &message.body, self.options.max_body_bytes)?;
        let headers = codec::encode(topic, &message, Utc::now());
        let slot = Slot::of(message.key.as_deref(), self.options.partitions);
        self.store(group, slot, &headers, &Bytes::from(message.body), None)
            .await
    }
}
