//! CORS at the gateway: answers preflights itself and stamps the CORS headers on actual
//! responses, so upstreams need no CORS code of their own.
//!
//! When CORS is configured the gateway owns the `Access-Control-Allow-*` response headers: it
//! overwrites what an upstream sent for allowed origins and strips it for others, so the
//! configured list is the one policy in force.

use crate::settings::CorsSettings;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderName, HeaderValue, ORIGIN,
};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::compress::add_vary;

/// A configured list, or `*` meaning anything.
#[derive(Debug, Clone)]
enum Allowed<T> {
    Any,
    List(Vec<T>),
}

/// CORS policy with its header values built once at startup.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Origins lowercased, since scheme and host compare case-insensitively.
    origins: Allowed<String>,
    methods: Allowed<Method>,
    headers: Allowed<HeaderName>,
    /// Joined `methods` for preflight answers; None when the list is `*` or empty.
    allow_methods: Option<HeaderValue>,
    /// Joined `headers` for preflight answers; None when the list is `*` or empty.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    pub fn new(settings: &CorsSettings) -> Result<Self, String> {
        let origins = parse_origins(&settings.allow_origins)?;
        if settings.allow_credentials && matches!(origins, Allowed::Any) {
            // Browsers refuse `Access-Control-Allow-Origin: *` on credentialed requests; echoing
            // any origin instead would hand every site the user's cookies.
            return Err(
                "cors allow_origins \"*\" cannot be combined with allow_credentials".to_owned(),
            );
        }
        let methods = parse_list(&settings.allow_methods, "allow_methods", |entry| {
            Method::from_bytes(entry.to_ascii_uppercase().as_bytes()).ok()
        })?;
        let headers = parse_list(&settings.allow_headers, "allow_headers", header_name)?;
        // `*` in expose_headers is sent as is: browsers read it as "all" without credentials.
        let expose = parse_list(&settings.expose_headers, "expose_headers", header_name)?;
        let expose_headers = match expose {
            Allowed::Any => Some(HeaderValue::from_static("*")),
            Allowed::List(list) => joined(list.iter().map(HeaderName::as_str)),
        };
        let allow_methods = match &methods {
            Allowed::Any => None,
            Allowed::List(list) => joined(list.iter().map(Method::as_str)),
        };
        let allow_headers = match &headers {
            Allowed::Any => None,
            Allowed::List(list) => joined(list.iter().map(HeaderName::as_str)),
        };
        Ok(Self {
            origins,
            methods,
            headers,
            allow_methods,
            allow_headers,
            expose_headers,
            credentials: settings.allow_credentials,
            max_age: HeaderValue::from(settings.max_age_secs),
        })
    }

    /// Answers a CORS preflight: 204 with the grants when origin, method and headers are all
    /// allowed, 403 otherwise. None when the request is not a preflight (not OPTIONS, or missing
    /// Origin or Access-Control-Request-Method), so it goes upstream like any other.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<()>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(ORIGIN)?;
        let requested_method = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::FORBIDDEN;
        let res_headers = res.headers_mut();
        self.add_vary(res_headers);
        if matches!(self.methods, Allowed::Any) {
            add_vary(res_headers, "access-control-request-method");
        }
        if matches!(self.headers, Allowed::Any) {
            add_vary(res_headers, "access-control-request-headers");
        }
        let Some(allow_origin) = self.allow_origin(origin) else {
            return Some(res);
        };
        if !self.method_allowed(requested_method) {
            return Some(res);
        }
        let Some(requested_headers) = self.requested_headers_allowed(headers) else {
            return Some(res);
        };
        res_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            res_headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // With `*` the request's own values are echoed: a literal `*` is ignored by browsers on
        // credentialed requests, and the echo is right either way.
        let allow_methods = match self.methods {
            Allowed::Any => Some(requested_method.clone()),
            Allowed::List(_) => self.allow_methods.clone(),
        };
        if let Some(allow_methods) = allow_methods {
            res_headers.insert(ACCESS_CONTROL_ALLOW_METHODS, allow_methods);
        }
        let allow_headers = match self.headers {
            Allowed::Any => requested_headers,
            Allowed::List(_) => self.allow_headers.clone(),
        };
        if let Some(allow_headers) = allow_headers {
            res_headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        }
        res_headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        *res.status_mut() = StatusCode::NO_CONTENT;
        Some(res)
    }

    /// Stamps the CORS headers on the response to an actual (non-preflight) request.
    ///
    /// With an origin list, `Vary: Origin` goes on every response, even to requests without an
    /// Origin: otherwise a cache (the browser's included) may replay a response stored for a
    /// same-origin request, which lacks Access-Control-Allow-Origin, to a cross-origin fetch.
    pub fn apply(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        self.add_vary(response_headers);
        let Some(origin) = request_headers.get(ORIGIN) else {
            return;
        };
        let Some(allow_origin) = self.allow_origin(origin) else {
            response_headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
            response_headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            response_headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            return;
        };
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            response_headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else {
            response_headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        match &self.expose_headers {
            Some(expose) => {
                response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
            None => {
                response_headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            }
        }
    }

    /// A wildcard policy answers `*` to everyone, so only a list makes responses vary.
    fn add_vary(&self, response_headers: &mut HeaderMap) {
        if matches!(self.origins, Allowed::List(_)) {
            add_vary(response_headers, "origin");
        }
    }

    /// The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Allowed::Any => Some(HeaderValue::from_static("*")),
            Allowed::List(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// GET, HEAD and POST always pass, as in browsers: they never preflight those methods on
    /// their own, so refusing them here would protect nothing.
    fn method_allowed(&self, requested: &HeaderValue) -> bool {
        let Ok(method) = Method::from_bytes(requested.as_bytes()) else {
            return false;
        };
        if matches!(method, Method::GET | Method::HEAD | Method::POST) {
            return true;
        }
        match &self.methods {
            Allowed::Any => true,
            Allowed::List(list) => list.contains(&method),
        }
    }

    /// Checks Access-Control-Request-Headers; on success returns the requested names joined
    /// (None when there were none), for echoing under a `*` policy.
    fn requested_headers_allowed(&self, headers: &HeaderMap) -> Option<Option<HeaderValue>> {
        let mut requested = Vec::new();
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let value = value.to_str().ok()?;
            for name in value
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                let name = header_name(name)?;
                if let Allowed::List(list) = &self.headers
                    && !list.contains(&name)
                {
                    return None;
                }
                requested.push(name);
            }
        }
        Some(joined(requested.iter().map(HeaderName::as_str)))
    }
}

fn parse_origins(entries: &[String]) -> Result<Allowed<String>, String> {
    if entries.is_empty() {
        return Err("cors allow_origins is empty, so no origin could ever be allowed".to_owned());
    }
    if entries.iter().any(|entry| entry.trim() == "*") {
        return Ok(Allowed::Any);
    }
    entries
        .iter()
        .map(|entry| {
            let origin = entry.trim();
            check_origin(origin)
                .map(|()| origin.to_ascii_lowercase())
                .map_err(|why| format!("cors allow_origins entry {entry:?} {why}"))
        })
        .collect::<Result<_, _>>()
        .map(Allowed::List)
}

/// Origins are compared as exact strings, so catch entries that could never equal what a
/// browser sends (`scheme://host[:port]`, nothing after).
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin.eq_ignore_ascii_case("null") {
        return Err("is refused: sandboxed frames and local files all send \"null\"");
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return Err("is not an origin (expected scheme://host[:port])");
    };
    if scheme.is_empty() || host.is_empty() {
        return Err("is not an origin (expected scheme://host[:port])");
    }
    if host.contains(['/', '?', '#']) {
        return Err("has a path, but an origin is only scheme://host[:port]");
    }
    if !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has characters a browser never sends in an origin");
    }
    Ok(())
}

/// Parses each entry, or returns Any when one of them is `*`.
fn parse_list<T>(
    entries: &[String],
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Allowed<T>, String> {
    if entries.iter().any(|entry| entry.trim() == "*") {
        return Ok(Allowed::Any);
    }
    entries
        .iter()
        .map(|entry| {
            parse(entry.trim())
                .ok_or_else(|| format!("cors {field} entry {entry:?} is not a valid name"))
        })
        .collect::<Result<_, _>>()
        .map(Allowed::List)
}

/// Header names are matched lowercased, as HTTP compares them case-insensitively.
fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

/// `a, b, c` as one header value, or None for no items.
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    if text.is_empty() {
        return None;
    }
    // The items are validated methods and header names, which are always valid header values.
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use http::header::VARY;

    use super::*;

    const APP: &str = "https://app.example.com";

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            allow_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            ..CorsSettings::default()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn request(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn preflight(cors: &Cors, pairs: &[(&'static str, &str)]) -> Response<()> {
        cors.preflight(&Method::OPTIONS, &request(pairs))
            .expect("a preflight")
    }

    fn vary(map: &HeaderMap) -> Vec<&str> {
        map.get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn an_allowed_preflight_gets_204_with_the_grants() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let res = preflight(
            &cors,
            &[
                ("origin", APP),
                ("access-control-request-method", "PUT"),
                (
                    "access-control-request-headers",
                    "Content-Type, authorization",
                ),
            ],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let headers = res.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        assert_eq!(
            headers[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST, PUT, PATCH, DELETE"
        );
        assert_eq!(
            headers[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type, x-request-id"
        );
        assert_eq!(headers[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(vary(headers), ["origin"]);
    }

    #[test]
    fn a_preflight_from_an_unknown_origin_is_refused() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let res = preflight(
            &cors,
            &[
                ("origin", "https://evil.example.com"),
                ("access-control-request-method", "PUT"),
            ],
        );
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(!res.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(vary(res.headers()), ["origin"]);
    }

    #[test]
    fn origins_compare_case_insensitively() {
        let cors = Cors::new(&settings(&["HTTPS://App.Example.com"])).unwrap();
        let res = preflight(
            &cors,
            &[("origin", APP), ("access-control-request-method", "PUT")],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    }

    #[test]
    fn a_preflight_for_a_disallowed_method_is_refused() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        for method in ["PROPFIND", "put", "not a method"] {
            let res = preflight(
                &cors,
                &[("origin", APP), ("access-control-request-method", method)],
            );
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method}");
        }
    }

    #[test]
    fn safelisted_methods_always_pass_a_preflight() {
        let cors = Cors::new(&CorsSettings {
            allow_methods: Vec::new(),
            ..settings(&[APP])
        })
        .unwrap();
        let res = preflight(
            &cors,
            &[
                ("origin", APP),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert!(!res.headers().contains_key(ACCESS_CONTROL_ALLOW_METHODS));
    }

    #[test]
    fn a_preflight_for_a_disallowed_header_is_refused() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let res = preflight(
            &cors,
            &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization, x-secret"),
            ],
        );
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let res = preflight(
            &cors,
            &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
                ("access-control-request-headers", "x-secret"),
            ],
        );
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn requests_that_are_not_preflights_are_passed_on() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let full = request(&[("origin", APP), ("access-control-request-method", "PUT")]);
        assert!(cors.preflight(&Method::GET, &full).is_none());
        let no_origin = request(&[("access-control-request-method", "PUT")]);
        assert!(cors.preflight(&Method::OPTIONS, &no_origin).is_none());
        let no_method = request(&[("origin", APP)]);
        assert!(cors.preflight(&Method::OPTIONS, &no_method).is_none());
    }

    #[test]
    fn credentials_are_granted_when_configured() {
        let cors = Cors::new(&CorsSettings {
            allow_credentials: true,
            max_age_secs: 30,
            ..settings(&[APP])
        })
        .unwrap();
        let res = preflight(
            &cors,
            &[("origin", APP), ("access-control-request-method", "DELETE")],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(res.headers()[ACCESS_CONTROL_MAX_AGE], "30");
        let mut response = HeaderMap::new();
        cors.apply(&request(&[("origin", APP)]), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }

    #[test]
    fn wildcards_answer_star_and_echo_what_was_asked() {
        let cors = Cors::new(&CorsSettings {
            allow_methods: strings(&["*"]),
            allow_headers: strings(&["*"]),
            ..settings(&["*"])
        })
        .unwrap();
        let res = preflight(
            &cors,
            &[
                ("origin", "https://anyone.example"),
                ("access-control-request-method", "PROPFIND"),
                ("access-control-request-headers", "X-One,x-two"),
            ],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let headers = res.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "PROPFIND");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_HEADERS], "x-one, x-two");
        assert_eq!(
            vary(headers),
            [
                "access-control-request-method",
                "access-control-request-headers"
            ]
        );
    }

    #[test]
    fn wildcard_origin_with_credentials_is_rejected() {
        let err = Cors::new(&CorsSettings {
            allow_credentials: true,
            ..settings(&[APP, "*"])
        })
        .unwrap_err();
        assert!(err.contains("allow_credentials"), "{err}");
    }

    #[test]
    fn bad_settings_are_rejected_by_entry() {
        for (origins, needle) in [
            (vec![], "empty"),
            (vec!["https://app.example.com/"], "path"),
            (vec!["https://app.example.com/api"], "path"),
            (vec!["app.example.com"], "scheme://"),
            (vec!["https://"], "scheme://"),
            (vec!["null"], "null"),
            (vec!["https://a b"], "characters"),
        ] {
            let err = Cors::new(&settings(&origins)).unwrap_err();
            assert!(err.contains(needle), "{origins:?}: {err}");
        }
        let err = Cors::new(&CorsSettings {
            allow_methods: strings(&["GET", "BAD METHOD"]),
            ..settings(&[APP])
        })
        .unwrap_err();
        assert!(err.contains("allow_methods entry \"BAD METHOD\""), "{err}");
        let err = Cors::new(&CorsSettings {
            allow_headers: strings(&["x:y"]),
            ..settings(&[APP])
        })
        .unwrap_err();
        assert!(err.contains("allow_headers entry \"x:y\""), "{err}");
        let err = Cors::new(&CorsSettings {
            expose_headers: strings(&["bad header"]),
            ..settings(&[APP])
        })
        .unwrap_err();
        assert!(err.contains("expose_headers"), "{err}");
    }

    #[test]
    fn lowercase_methods_in_settings_are_normalised() {
        let cors = Cors::new(&CorsSettings {
            allow_methods: strings(&["put", "patch"]),
            ..settings(&[APP])
        })
        .unwrap();
        let res = preflight(
            &cors,
            &[("origin", APP), ("access-control-request-method", "PATCH")],
        );
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_METHODS], "PUT, PATCH");
    }

    #[test]
    fn an_allowed_actual_request_gets_its_origin_echoed() {
        let cors = Cors::new(&settings(&[APP, "https://other.example"])).unwrap();
        let mut response = request(&[("vary", "accept-encoding")]);
        cors.apply(&request(&[("origin", APP)]), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        assert_eq!(response[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(vary(&response), ["accept-encoding", "origin"]);
    }

    #[test]
    fn a_disallowed_actual_request_gets_no_grant_even_from_upstream() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let mut response = request(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
        ]);
        cors.apply(
            &request(&[("origin", "https://evil.example")]),
            &mut response,
        );
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!response.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(vary(&response), ["origin"]);
    }

    #[test]
    fn requests_without_origin_get_only_vary_under_an_origin_list() {
        let cors = Cors::new(&settings(&[APP])).unwrap();
        let mut response = request(&[("content-type", "text/plain")]);
        cors.apply(&HeaderMap::new(), &mut response);
        assert_eq!(
            response,
            request(&[("content-type", "text/plain"), ("vary", "origin")])
        );
        let wildcard = Cors::new(&settings(&["*"])).unwrap();
        let mut response = request(&[("content-type", "text/plain")]);
        wildcard.apply(&HeaderMap::new(), &mut response);
        assert_eq!(response, request(&[("content-type", "text/plain")]));
    }

    #[test]
    fn a_wildcard_policy_answers_star_without_vary() {
        let cors = Cors::new(&CorsSettings {
            expose_headers: Vec::new(),
            ..settings(&["*"])
        })
        .unwrap();
        let mut response = HeaderMap::new();
        cors.apply(&request(&[("origin", APP)]), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!response.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
        assert!(vary(&response).is_empty());
    }
}
