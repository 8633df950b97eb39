//! The API's own documentation through the real host: `/api/openapi.json`
//! is `docs/openapi.json` byte for byte, and `/api/docs` renders every
//! operation in it as one self-contained HTML page (no script, nothing
//! loaded from elsewhere, every string from the document escaped). Both are
//! public, cacheable and revalidated by entity tag, and both are answered by
//! the docs component although the api component's `/api/...` wildcard
//! covers their paths.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use spindle_tests::{Host, HostBuilder, TEST_ADMIN_KEY, anon_client, client_with, root};

use crate::openapi;

fn app() -> Host {
    HostBuilder::new(root().join("spin.toml"))
        .arg("--tick-interval-ms")
        .arg("0")
        .start()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Every string anywhere in `v`.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k);
            strings(x, out);
        }),
        _ => {}
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The values of `attr="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// The elements the page may use.
const ELEMENTS: [&str; 30] = [
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "small",
    "p", "a", "nav", "main", "section", "table", "tr", "th", "td", "code", "span", "pre", "br",
    "dl", "dt", "dd", "details", "summary",
];

/// The attributes the page may use.
const ATTRIBUTES: [&str; 7] = ["lang", "charset", "name", "content", "class", "id", "href"];

/// Every tag in `html` as its element's name and its attributes' names,
/// lowercase; a closing tag counts as its element.
fn tags(html: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let tag = &rest[i + 1..];
        let end = tag.find('>').expect("an unclosed tag");
        let inner = tag[..end].trim_start_matches('/').to_ascii_lowercase();
        rest = &tag[end + 1..];
        if inner.starts_with('!') {
            assert_eq!(inner, "!doctype html", "the one declaration");
            continue;
        }
        let (element, mut attrs) = inner
            .split_once(char::is_whitespace)
            .unwrap_or((inner.as_str(), ""));
        let mut names = Vec::new();
        attrs = attrs.trim();
        while !attrs.is_empty() {
            let name_end = attrs
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(attrs.len());
            names.push(attrs[..name_end].to_owned());
            attrs = attrs[name_end..].trim_start();
            if let Some(value) = attrs.strip_prefix("=\"") {
                let close = value.find('"').expect("a closed attribute value");
                attrs = value[close + 1..].trim_start();
            } else {
                assert!(!attrs.starts_with('='), "unquoted attribute in <{inner}>");
            }
        }
        out.push((element.to_owned(), names));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_served_byte_for_byte_and_revalidates() {
    let host = app();
    let file = std::fs::read(root().join("docs/openapi.json")).unwrap();
    let http = anon_client();

    // Public: no credential needed, and one that is sent changes nothing.
    let mut etags = Vec::new();
    for http in [http.clone(), client_with(Some(TEST_ADMIN_KEY))] {
        let resp = http
            .get(host.url("/api/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-type"), "application/json");
        assert_eq!(header(&resp, "cache-control"), "public, max-age=300");
        assert!(header(&resp, "content-security-policy").starts_with("default-src 'none'"));
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
        etags.push(header(&resp, "etag").to_owned());
        let body = resp.bytes().await.unwrap();
        assert!(
            body == file,
            "the served document differs from docs/openapi.json"
        );
    }
    assert_eq!(etags[0], etags[1]);
    let etag = &etags[0];
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10);

    // Revalidation: the current tag (strong, weak, in a list, or `*`) is
    // answered 304 without a body; any other tag gets the document.
    let weak = format!("W/{etag}");
    let listed = format!("\"stale\", {etag}");
    for tag in [etag.as_str(), &weak, &listed, "*"] {
        let resp = http
            .get(host.url("/api/openapi.json"))
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "If-None-Match: {tag}");
        assert_eq!(header(&resp, "etag"), etag);
        assert_eq!(header(&resp, "cache-control"), "public, max-age=300");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let resp = http
        .get(host.url("/api/openapi.json"))
        .header("if-none-match", "\"an-older-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), file.len());

    // HEAD: the same headers, no body.
    let resp = http
        .head(host.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "etag"), etag);
    assert!(resp.bytes().await.unwrap().is_empty());

    // Read-only, and nothing else under the exact routes is theirs: the
    // api component still answers the rest of /api (401 without a
    // credential).
    let resp = http
        .post(host.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(header(&resp, "allow"), "GET, HEAD");
    for path in ["/api/openapi.json/x", "/api/docs/x", "/api/openapi"] {
        let resp = http.get(host.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} belongs to the api component");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_renders_every_operation_with_nothing_to_run_or_load() {
    let host = app();
    let spec = openapi::spec();
    let file = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    let resp = anon_client()
        .get(host.url("/api/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&resp, "cache-control"), "public, max-age=300");
    let csp = header(&resp, "content-security-policy").to_owned();
    let etag = header(&resp, "etag").to_owned();
    let page = resp.text().await.unwrap();

    // Bounded: the page grows with the document, not faster.
    assert!(
        page.len() < 4 * file.len(),
        "{} bytes for a {}-byte document",
        page.len(),
        file.len()
    );

    // Nothing runs and nothing loads: no script, no event handler, no
    // frame or object, no link off the page but to Spindle's own routes,
    // and a policy that admits exactly the inline stylesheet, by its hash.
    let lower = page.to_ascii_lowercase();
    for banned in [
        "<script",
        "javascript:",
        "<iframe",
        "<object",
        "<embed",
        "<link",
        "<img",
        "@import",
        "url(",
    ] {
        assert!(!lower.contains(banned), "the page contains {banned}");
    }
    // Every tag is one of a few plain ones with plain attributes (so no
    // event handler, `src`, `style` or form): the stylesheet aside, a `<`
    // in the page only ever opens a tag, since text is escaped.
    let (before_style, rest) = page.split_once("<style>").unwrap();
    let after_style = rest.split_once("</style>").unwrap().1;
    for (element, attributes) in tags(before_style).into_iter().chain(tags(after_style)) {
        assert!(
            ELEMENTS.contains(&element.as_str()),
            "<{element}> on the page"
        );
        for a in attributes {
            assert!(
                ATTRIBUTES.contains(&a.as_str()),
                "<{element} {a}=...> on the page"
            );
        }
    }
    let ids: Vec<&str> = attribute_values(&page, "id");
    for href in attribute_values(&page, "href") {
        match href.strip_prefix('#') {
            Some(fragment) => assert!(ids.contains(&fragment), "dangling link #{fragment}"),
            None => assert!(
                ["/api/openapi.json", "/docs/problems"].contains(&href),
                "link off the page: {href}"
            ),
        }
    }
    let mut seen_ids = std::collections::BTreeSet::new();
    for id in &ids {
        assert!(seen_ids.insert(id), "id {id} is used twice");
    }
    assert_eq!(lower.matches("<style>").count(), 1);
    let style = &page[page.find("<style>").unwrap() + 7..page.find("</style>").unwrap()];
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(style));
    assert_eq!(
        csp,
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    );
    assert!(!csp.contains("unsafe"));

    // Every operation has its section: method, path, operationId, access,
    // summary, every parameter, a request body where it takes one, and
    // every documented status.
    let mut sections = 0;
    for (path, method, item, op) in openapi::operations(&spec) {
        let id = op["operationId"].as_str().unwrap();
        let what = format!("{} {path}", method.to_uppercase());
        let start = page
            .find(&format!("<section class=\"op\" id=\"op-{id}\">"))
            .unwrap_or_else(|| panic!("{what}: no section for {id}"));
        let section = &page[start..start + page[start..].find("</section>").unwrap()];
        sections += 1;
        assert!(
            section.contains(&format!(
                "<span class=\"method m-{method}\">{}</span> <code>{}</code>",
                method.to_uppercase(),
                escape(path)
            )),
            "{what}: heading"
        );
        assert!(
            section.contains(&format!("<code>{}</code>", escape(id))),
            "{what}: id"
        );
        if let Some(summary) = op["summary"].as_str() {
            assert!(section.contains(&escape(summary)), "{what}: summary");
        }
        match op["x-required-role"].as_str() {
            Some(role) => assert!(
                section.contains(&format!(
                    "role <span class=\"role\">{role}</span> or higher"
                )),
                "{what}: role {role}"
            ),
            None if op["security"] == serde_json::json!([]) => {
                assert!(section.contains("public: no credential"), "{what}: public")
            }
            None => assert!(section.contains("no role; "), "{what}: its own scheme"),
        }
        for p in item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
        {
            let p = openapi::deref(&spec, p);
            let name = p["name"].as_str().unwrap();
            assert!(
                section.contains(&format!("<tr><td><code>{}</code></td>", escape(name))),
                "{what}: parameter {name}"
            );
        }
        assert_eq!(
            section.contains("<h4>Request body"),
            op.get("requestBody").is_some(),
            "{what}: request body"
        );
        for status in op["responses"].as_object().unwrap().keys() {
            assert!(
                section.contains(&format!("<tr><td><code>{status}</code></td>")),
                "{what}: status {status}"
            );
        }
    }
    assert_eq!(page.matches("<section class=\"op\"").count(), sections);
    // Every component is on the page, so every $ref has a target.
    for (kind, items) in spec["components"].as_object().unwrap() {
        for name in items.as_object().unwrap().keys() {
            assert!(
                ids.contains(&format!("c-{kind}-{name}").as_str()),
                "component {kind}/{name}"
            );
        }
    }

    // Every string of the document is escaped: none that holds markup
    // appears raw, and the description's `<key>` reads as text.
    let mut all = Vec::new();
    strings(&spec, &mut all);
    let marked_up: Vec<&&str> = all.iter().filter(|s| s.contains('<')).collect();
    assert!(!marked_up.is_empty(), "the document has strings with '<'");
    for s in marked_up {
        assert!(!page.contains(*s), "unescaped: {s}");
    }
    assert!(page.contains("Bearer &lt;key&gt;"));

    // Revalidation as for the document.
    let resp = anon_client()
        .get(host.url("/api/docs"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert!(resp.bytes().await.unwrap().is_empty());
}
