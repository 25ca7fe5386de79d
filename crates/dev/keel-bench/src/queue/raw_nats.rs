//! The NATS JetStream ceiling: async-nats alone, no keel code. A fresh file-backed stream with
//! work-queue retention (an acknowledged message is removed, as in keel's queue: a ceiling that
//! kept every message would skip the deletions keel must make, measured here at about a third of
//! the server's work), batches
//! published with every publish acknowledgement awaited after the batch is sent, and one durable
//! pull consumer with explicit acks shared by the workers (each pulls batches of one fetch batch
//! and acks every message).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::load::{self, Effects, Figures, Pace, Plan};

/// Runs `plan` on a fresh stream named `name` (subjects `<name>.>`), deleted afterwards whatever
/// the outcome.
pub(super) async fn run(plan: Plan, url: &str, name: &str) -> anyhow::Result<Figures> {
    let client = async_nats::connect(url).await.context("connect to NATS")?;
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .context("create the stream")?;
    let figures = drive(plan, &js, &stream, name).await;
    let deleted = js.delete_stream(name).await;
    let figures = figures?;
    deleted.context("delete the stream")?;
    Ok(figures)
}

async fn drive(
    plan: Plan,
    js: &jetstream::Context,
    stream: &stream::Stream,
    name: &str,
) -> anyhow::Result<Figures> {
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: i64::try_from(plan.workers * plan.fetch_batch * 2).unwrap_or(-1),
            ..Default::default()
        })
        .await
        .context("create the consumer")?;
    let origin = Instant::now();
    let effects = Arc::new(Effects::new(plan, origin, false));
    let (stop, stopped) = watch::channel(false);
    let mut workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    for _ in 0..plan.workers {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(plan.fetch_batch)
            .messages()
            .await
            .context("pull")?;
        let (effects, mut stopped) = (effects.clone(), stopped.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = messages.next() => m,
                    _ = stopped.wait_for(|s| *s) => return Ok(()),
                };
                let Some(message) = message else {
                    return Ok(());
                };
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                let id = load::parse(&message.payload).map_or(0, |(n, _)| u128::from(n));
                effects.record(id, &message.payload);
                message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
        }));
    }

    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        let (js, subject) = (js.clone(), format!("{name}.msg"));
        publishers.push(tokio::spawn(async move {
            let mut pace = Pace::new(&plan);
            for numbers in plan.batches(p) {
                pace.wait(numbers.len()).await;
                let mut acks = Vec::with_capacity(numbers.len());
                for n in numbers {
                    let body = load::body(&plan, n, origin);
                    acks.push(js.publish(subject.clone(), body.into()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut outcome = Ok(());
    for p in publishers {
        if let Err(e) = p.await.context("publisher panicked")? {
            outcome = Err(e.context("publish"));
        }
    }
    let publish_elapsed = started.elapsed();
    if outcome.is_ok() {
        outcome = load::wait_done(&effects, &plan).await;
    }
    stop.send_replace(true);
    for w in workers {
        w.await.context("worker panicked")?.context("consume")?;
    }
    let elapsed = started.elapsed();
    outcome?;
    let tally = effects.tally();
    load::verify(&plan, &tally, false)?;
    Ok(Figures {
        messages: plan.messages,
        elapsed,
        publish_elapsed,
        tally,
        notes: Vec::new(),
    })
}
