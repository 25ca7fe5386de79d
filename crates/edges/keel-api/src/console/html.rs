//! The console's views' building blocks: the page layout with its inline stylesheet, the
//! security headers, the CSRF field and the small formatters. Every value rendered goes through
//! [`esc`] (keel-http's escaper). No script, no asset from anywhere: the page is whole as
//! served.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, SecondsFormat, Utc};

/// Percent-encoding for a query value (everything but the unreserved characters).
pub use keel_credentials::percent_encode as url_encode;
pub use keel_http::html::escape as esc;

use super::auth::Csrf;

/// A time as the console shows it: UTC, to the millisecond.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The first line of a text, cut to `max` characters (with an ellipsis when cut).
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let cut: String = line.chars().take(max).collect();
    if cut.len() < line.len() || text.lines().nth(1).is_some() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Bytes shown as text: UTF-8 as is, anything else lossily with a note.
pub fn body_text(body: &[u8]) -> (String, bool) {
    match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), true),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), false),
    }
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f4f5f7}
header{display:flex;gap:1.5em;align-items:center;padding:.7em 1.5em;background:#1d2330;color:#fff}
header a{color:#fff;text-decoration:none}
header .brand{font-weight:700;letter-spacing:.02em}
header nav{display:flex;gap:1em}
header nav a{opacity:.85}
header nav a:hover{opacity:1;text-decoration:underline}
header .who{margin-left:auto;opacity:.7;font-size:.9em}
main{padding:1.2em 1.5em;max-width:1400px}
h1{font-size:1.35em;margin:.2em 0 .8em}
h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{text-align:left;padding:.4em .6em;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600;font-size:.9em}
tr:hover td{background:#fafbfc}
table.kv th{width:12em}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
td.mono{white-space:nowrap}
td.wrap{white-space:normal}
pre{background:#fff;border:1px solid #e3e6ea;padding:.7em;overflow:auto;max-height:28em;white-space:pre-wrap;word-break:break-all;margin:.3em 0}
form.filters{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-end;background:#fff;padding:.8em;margin-bottom:1em;box-shadow:0 1px 2px rgba(0,0,0,.08)}
form.filters label{display:flex;flex-direction:column;font-size:.85em;color:#555}
input,select,textarea,button{font:inherit}
input,select{padding:.3em .4em;border:1px solid #c5cad3;border-radius:3px}
textarea{width:100%;min-height:12em;padding:.5em;border:1px solid #c5cad3;border-radius:3px;font-family:ui-monospace,Menlo,Consolas,monospace}
button,.button{display:inline-block;padding:.35em .9em;border:1px solid #2f5bd3;background:#2f5bd3;color:#fff;border-radius:3px;cursor:pointer;text-decoration:none}
button.secondary,.button.secondary{background:#fff;color:#2f5bd3}
button.danger{background:#c62828;border-color:#c62828}
.actions{display:flex;gap:1.5em;flex-wrap:wrap;margin:1em 0}
.actions form{background:#fff;padding:.8em;box-shadow:0 1px 2px rgba(0,0,0,.08);flex:1;min-width:18em}
.flash{padding:.6em .9em;margin-bottom:1em;border-radius:3px;background:#e7f4e8;border:1px solid #a5d6a7}
.flash.error{background:#fdecea;border-color:#ef9a9a}
.state{display:inline-block;padding:0 .5em;border-radius:9px;font-size:.85em;font-weight:600}
.state.waiting{background:#fff3cd;color:#7a5a00}
.state.replayed{background:#e3f2fd;color:#0d47a1}
.state.discarded{background:#eceff1;color:#455a64}
.muted{color:#6b7280}
.pager{margin:1em 0}
.count{font-weight:700}
"#;

/// A whole page: header with navigation, `flash` (escaped) if any, then `body` (already HTML).
pub fn page(title: &str, admin: &str, flash: Option<(&str, bool)>, body: &str) -> String {
    let flash = match flash {
        Some((text, is_error)) => format!(
            "<div class=\"flash{}\" role=\"status\">{}</div>",
            if is_error { " error" } else { "" },
            esc(text)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · keel error hospital</title><style>{CSS}</style></head><body>\
         <header><a class=\"brand\" href=\"/admin/hospital\">keel · error hospital</a>\
         <nav><a href=\"/admin/hospital\">Patients</a><a href=\"/admin/hospital/causes\">By cause</a>\
         <a href=\"/admin/hospital/audit\">Audit log</a></nav>\
         <span class=\"who\">signed in as {admin}</span></header>\
         <main>{flash}{body}</main></body></html>",
        title = esc(title),
        admin = esc(admin),
    )
}

/// A page without navigation (sign-in refusals, errors before authentication).
pub fn bare_page(title: &str, body: &str) -> axum::response::Html<String> {
    axum::response::Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · keel error hospital</title>\
         <style>{CSS}</style></head><body><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    ))
}

/// Headers every console response carries: no script may run, no other site may frame it or
/// receive a form from it, nothing is cached.
pub fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// The hidden field carrying a form's CSRF token.
pub fn csrf_field(csrf: &Csrf) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&csrf.token)
    )
}

/// A state badge.
pub fn state_badge(state: keel_domain::PatientState) -> String {
    format!("<span class=\"state {0}\">{0}</span>", esc(state.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_inert() {
        let page = page("<b>", "<i>", Some(("<u>", true)), "");
        assert!(!page.contains("<b>") && !page.contains("<i>") && !page.contains("<u>"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(url_encode("order-<n>_x.y~"), "order-%3Cn%3E_x.y~");
    }

    #[test]
    fn first_lines_are_cut_with_an_ellipsis() {
        assert_eq!(first_line("short", 10), "short");
        assert_eq!(first_line("two\nlines", 10), "two…");
        assert_eq!(first_line("abcdefghijkl", 5), "abcde…");
    }
}
