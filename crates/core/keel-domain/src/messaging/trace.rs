//! Trace context: the W3C `traceparent` of the request being served travels into the headers of
//! the messages it causes, so a worker's logs and the hospital name the request that started it.

use std::collections::BTreeMap;

/// The trace context of the request being served: the caller's `traceparent`, if it sent one,
/// and this request's own, made on first use (most requests cause no message, so they pay
/// nothing).
struct Context {
    incoming: Option<String>,
    own: std::cell::OnceCell<String>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs `f` as the handling of a request whose caller sent `incoming` as its `traceparent`.
pub async fn scope<F: std::future::Future>(incoming: Option<String>, f: F) -> F::Output {
    let context = Context {
        incoming,
        own: std::cell::OnceCell::new(),
    };
    CONTEXT.scope(context, f).await
}

/// The current request's `traceparent` (same trace as its caller's, its own span), if a request
/// is being served.
pub fn current() -> Option<String> {
    CONTEXT
        .try_with(|c| {
            c.own
                .get_or_init(|| child_of(c.incoming.as_deref()))
                .clone()
        })
        .ok()
}

/// Message headers carrying the current trace context (empty outside a request).
pub fn headers() -> BTreeMap<String, String> {
    current()
        .map(|parent| BTreeMap::from([("traceparent".to_owned(), parent)]))
        .unwrap_or_default()
}

/// A `traceparent` continuing `incoming` (same trace, new span) or starting a new trace.
pub fn child_of(incoming: Option<&str>) -> String {
    let trace = incoming
        .and_then(|p| {
            let mut parts = p.split('-');
            let (version, trace) = (parts.next()?, parts.next()?);
            (version == "00"
                && trace.len() == 32
                && trace.bytes().all(|b| b.is_ascii_hexdigit())
                && trace != "0".repeat(32))
            .then(|| trace.to_ascii_lowercase())
        })
        .unwrap_or_else(|| format!("{:032x}", uuid::Uuid::new_v4().as_u128()));
    let span = format!("{:016x}", fastrand_u64());
    format!("00-{trace}-{span}-01")
}

fn fastrand_u64() -> u64 {
    // A span id needs uniqueness, not secrecy; v4 UUIDs are random enough and already a dependency.
    (uuid::Uuid::new_v4().as_u128() >> 64) as u64 | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_a_bad_parent_starts_a_new_one() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_of(Some(parent));
        assert!(child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_ne!(child, parent);
        let fresh = child_of(Some("garbage"));
        assert_eq!(fresh.len(), 55);
        assert!(!fresh.contains("0af7651916cd43dd8448eb211c80319c"));
    }

    #[tokio::test]
    async fn headers_carry_the_scoped_trace_and_one_request_has_one_context() {
        assert!(headers().is_empty());
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
        let (first, second) = scope(Some(parent), async { (headers(), headers()) }).await;
        let first = &first["traceparent"];
        assert!(first.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_eq!(Some(first), second.get("traceparent"));
        let fresh = scope(None, async { current() }).await.unwrap();
        assert_eq!(fresh.len(), 55);
    }
}
