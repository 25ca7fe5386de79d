//! Request ids (`x-request-id`): a caller's id is kept when sane, else one is made, so a request
//! has one id from the gateway through the API to the logs of both.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The generator: a random per-process prefix and a counter. It lives in keel-domain while
/// keel-gateway names it there; it moves here once the gateway imports it from this crate
/// (docs/decisions/0100).
pub use keel_domain::trace::RequestIds;

/// The request id header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's `x-request-id` when the caller sent a sane one, else a new one from `ids`.
pub fn keep_or_make(ids: &RequestIds, headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&REQUEST_ID)
        && RequestIds::sane(given.as_bytes())
    {
        return given.clone();
    }
    HeaderValue::from_bytes(&ids.next()).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_any_other_replaced() {
        let ids = RequestIds::default();
        let mut headers = HeaderMap::new();
        let made = keep_or_make(&ids, &headers);
        assert_eq!(made.len(), 20);
        assert_ne!(keep_or_make(&ids, &headers), made, "each request its own");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(keep_or_make(&ids, &headers), "abc-123:x.y_z");
        headers.insert(&REQUEST_ID, HeaderValue::from_static("no spaces"));
        assert_eq!(keep_or_make(&ids, &headers).len(), 20);
    }
}
