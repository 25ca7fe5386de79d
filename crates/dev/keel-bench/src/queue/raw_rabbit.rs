//! The RabbitMQ ceiling: lapin alone, no keel code. A fresh durable queue (quorum by default,
//! or classic), persistent messages published in batches on channels with publisher confirms
//! (a batch is sent, then every confirm awaited), and one consumer channel per worker with a
//! prefetch of one fetch batch and a manual ack per message.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::watch;

use super::load::{self, Effects, Figures, Pace, Plan};

/// Which kind of RabbitMQ queue the run declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// Replicated Raft log: RabbitMQ's recommended durable queue.
    Quorum,
    /// The classic durable queue.
    Classic,
}

impl QueueType {
    pub(crate) fn parse(raw: &str) -> anyhow::Result<Self> {
        match raw {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => bail!("unknown RabbitMQ queue type {other:?} (quorum or classic)"),
        }
    }

    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// Runs `plan` on a fresh queue named `queue`, deleted afterwards whatever the outcome.
pub(super) async fn run(
    plan: Plan,
    url: &str,
    queue: &str,
    kind: QueueType,
) -> anyhow::Result<Figures> {
    let admin = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let channel = admin.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(kind.as_str())),
    );
    // An interrupted run cannot delete its queue: RabbitMQ does, once it is unused this long.
    args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .context("declare the queue")?;
    let figures = drive(plan, url, queue).await;
    let deleted = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = admin.close(200, "bench done".into()).await;
    let figures = figures?;
    deleted.context("delete the queue")?;
    Ok(figures)
}

async fn drive(plan: Plan, url: &str, queue: &str) -> anyhow::Result<Figures> {
    let origin = Instant::now();
    let effects = Arc::new(Effects::new(plan, origin, false));
    let (stop, stopped) = watch::channel(false);
    let consumers = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut workers = Vec::new();
    for w in 0..plan.workers {
        let channel = consumers.create_channel().await?;
        channel
            .basic_qos(
                u16::try_from(plan.fetch_batch).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("bench-{w}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (effects, mut stopped) = (effects.clone(), stopped.clone());
        workers.push(tokio::spawn(async move {
            let _channel = channel;
            loop {
                let delivery = tokio::select! {
                    d = consumer.next() => d,
                    _ = stopped.wait_for(|s| *s) => return Ok(()),
                };
                let Some(delivery) = delivery else {
                    return Ok(());
                };
                let delivery = delivery?;
                // The delivery tag is per channel; the body's number is the message's identity.
                let id = load::parse(&delivery.data).map_or(0, |(n, _)| u128::from(n));
                effects.record(id, &delivery.data);
                delivery.ack(BasicAckOptions::default()).await?;
            }
        }));
    }

    let publishers_conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        let channel = publishers_conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queue = queue.to_owned();
        publishers.push(tokio::spawn(async move {
            let mut pace = Pace::new(&plan);
            for numbers in plan.batches(p) {
                pace.wait(numbers.len()).await;
                let mut confirms = Vec::with_capacity(numbers.len());
                for n in numbers {
                    let body = load::body(&plan, n, origin);
                    confirms.push(
                        channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions::default(),
                                &body,
                                BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?,
                    );
                }
                for confirm in confirms {
                    if !confirm.await?.is_ack() {
                        return Err(anyhow::anyhow!("RabbitMQ refused a publish (nack)"));
                    }
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
        w.await
            .context("worker panicked")?
            .map_err(|e: lapin::Error| anyhow::Error::new(e).context("consume"))?;
    }
    let elapsed = started.elapsed();
    let _ = publishers_conn.close(200, "bench done".into()).await;
    let _ = consumers.close(200, "bench done".into()).await;
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
