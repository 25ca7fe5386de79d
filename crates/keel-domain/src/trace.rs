//! Trace context: the W3C `traceparent` of the request being served travels into the headers of
//! the messages it causes, so a worker's logs and the hospital name the request that started it.

use std::collections::BTreeMap;

tokio::task_local! {
    static TRACEPARENT: String;
}

/// Runs `f` with `traceparent` as the current trace context.
pub async fn scope<F: std::future::Future>(traceparent: String, f: F) -> F::Output {
    TRACEPARENT.scope(traceparent, f).await
}

/// The current `traceparent`, if a request is being served.
pub fn current() -> Option<String> {
    TRACEPARENT.try_with(Clone::clone).ok()
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
    async fn headers_carry_the_scoped_trace() {
        assert!(headers().is_empty());
        let parent = child_of(None);
        let inside = scope(parent.clone(), async { headers() }).await;
        assert_eq!(inside.get("traceparent"), Some(&parent));
    }
}
