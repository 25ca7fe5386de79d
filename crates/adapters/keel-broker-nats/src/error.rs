//! From async-nats errors to [`BrokerError`]: the server saying "no" is a fault (`Internal`),
//! except a full stream (`Full`) and JetStream's own 503s; not getting an answer at all (timeout,
//! no responders, broken connection) is `Unavailable`, which a caller may retry.

use std::error::Error;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::BatchError;
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishError,
    PublishErrorKind, RequestError,
};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, RawMessageError};
use keel_domain::BrokerError;

/// JetStream's error code for a refused store; with a discard-new stream at `max_msgs` its
/// description reads "maximum messages exceeded".
const STORE_FAILED: u64 = 10077;
/// "stream not found".
pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
/// "error creating store for stream".
pub(crate) const STREAM_STORE_FAILED: u64 = 10049;

/// An async-nats error that may carry the JetStream API's answer.
pub(crate) trait ServerAnswer: Error + Send + Sync + Sized + 'static {
    /// The server's answer, found in the error's kind or its chain of sources.
    fn answer(&self) -> Option<jetstream::Error> {
        in_sources(self)
    }
}

fn in_sources(err: &(dyn Error + 'static)) -> Option<jetstream::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(answer) = err.downcast_ref::<jetstream::Error>() {
            return Some(answer.clone());
        }
        next = err.source();
    }
    None
}

impl ServerAnswer for RequestError {}
impl ServerAnswer for BatchError {}

impl ServerAnswer for PublishError {}

impl ServerAnswer for CreateStreamError {
    fn answer(&self) -> Option<jetstream::Error> {
        match self.kind() {
            CreateStreamErrorKind::JetStream(answer) => Some(answer),
            _ => in_sources(self),
        }
    }
}

impl ServerAnswer for GetStreamError {
    fn answer(&self) -> Option<jetstream::Error> {
        match self.kind() {
            GetStreamErrorKind::JetStream(answer) => Some(answer),
            _ => in_sources(self),
        }
    }
}

impl ServerAnswer for ConsumerError {
    fn answer(&self) -> Option<jetstream::Error> {
        match self.kind() {
            ConsumerErrorKind::JetStream(answer) => Some(answer),
            _ => in_sources(self),
        }
    }
}

impl ServerAnswer for RawMessageError {
    fn answer(&self) -> Option<jetstream::Error> {
        match self.kind() {
            LastRawMessageErrorKind::JetStream(answer) => Some(answer),
            _ => in_sources(self),
        }
    }
}

/// Whether the server refused to store because the stream is at its limit.
fn is_full(answer: &jetstream::Error) -> bool {
    answer.error_code().0 == STORE_FAILED && answer.to_string().contains("maximum")
}

/// The port's view of an async-nats error.
pub(crate) fn classify<E: ServerAnswer>(err: E) -> BrokerError {
    match err.answer() {
        Some(answer) if is_full(&answer) => BrokerError::Full,
        // JetStream answers 503 when it cannot serve now (not enabled yet, no leader, …).
        Some(answer) if answer.code() == 503 => BrokerError::Unavailable(Box::new(err)),
        Some(_) => BrokerError::Internal(Box::new(err)),
        None => BrokerError::Unavailable(Box::new(err)),
    }
}

/// A publish error: as [`classify`], but a message over the server's `max_payload` is the
/// caller's mistake.
pub(crate) fn classify_publish(err: PublishError) -> BrokerError {
    if err.kind() == PublishErrorKind::MaxPayloadExceeded {
        return BrokerError::Invalid {
            what: "message",
            why: err.to_string(),
        };
    }
    classify(err)
}

/// The JetStream error code inside `err`, if the server answered.
pub(crate) fn code<E: ServerAnswer>(err: &E) -> Option<u64> {
    err.answer().map(|answer| answer.error_code().0)
}

/// A fault keel finds itself (a stream made by another configuration, a message keel did not
/// write).
pub(crate) fn internal(message: String) -> BrokerError {
    BrokerError::Internal(message.into())
}
