//! A group's depth: the stream's message count, less the deliveries this process holds.

use std::time::Instant;

use chrono::{DateTime, Utc};
use keel_domain::messaging::queue::check_name;
use keel_domain::{BrokerError, QueueDepth};

use crate::error::classify;
use crate::{Inner, error, lock};

impl Inner {
    pub(crate) async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        check_name("group", group, false)?;
        let Some(opened) = self.group(group, false).await? else {
            return Ok(QueueDepth::default());
        };
        let info = match opened.stream.get_info().await {
            Ok(info) => info,
            Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => {
                return Ok(QueueDepth::default());
            }
            Err(err) => return Err(classify(err)),
        };
        let state = info.state;
        let in_flight = lock(&self.ledger).held(group, Instant::now()).in_flight;
        let oldest = (state.messages > 0)
            .then(|| {
                let first = DateTime::from_timestamp_nanos(
                    i64::try_from(state.first_timestamp.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                );
                (Utc::now() - first).to_std().ok()
            })
            .flatten();
        Ok(QueueDepth {
            ready: state.messages.saturating_sub(in_flight),
            in_flight,
            oldest,
        })
    }
}
