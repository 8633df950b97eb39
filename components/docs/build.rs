//! Renders `docs/openapi.json` into the HTML page `GET /api/docs` serves,
//! and works out every page's entity tag, at compile time: the component
//! ships finished bytes, so a request costs a copy, and the page can never
//! disagree with the document served beside it.
//!
//! The page is plain server-rendered HTML: no script at all, one inline
//! stylesheet admitted by its hash in the Content-Security-Policy, no
//! outside fonts, images or links. Every string taken from the document is
//! HTML-escaped; `$ref`s become links to the components section.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The methods an OpenAPI path item may hold, in the order the page shows
/// them.
const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

const STYLE: &str = include_str!("src/api-docs.css");

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let spec_path = dir.join("../../docs/openapi.json");
    let problems_path = dir.join("../../docs/problems.md");
    for p in [&spec_path, &problems_path, &dir.join("src/api-docs.css")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let spec_text = read(&spec_path);
    let spec: Value = serde_json::from_str(&spec_text)
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", spec_path.display()));
    let page = render(&spec);
    std::fs::write(out.join("api-docs.html"), &page).expect("write the page");

    let style_hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
    let consts = format!(
        "/// The entity tag of `docs/openapi.json`.\n\
         pub const OPENAPI_ETAG: &str = {:?};\n\
         /// The entity tag of the rendered page.\n\
         pub const PAGE_ETAG: &str = {:?};\n\
         /// The entity tag of `docs/problems.md`.\n\
         pub const PROBLEMS_ETAG: &str = {:?};\n\
         /// The page's policy: nothing may load but its own stylesheet.\n\
         pub const PAGE_CSP: &str = {:?};\n",
        etag(spec_text.as_bytes()),
        etag(page.as_bytes()),
        etag(read(&problems_path).as_bytes()),
        format!(
            "default-src 'none'; style-src 'sha256-{style_hash}'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        ),
    );
    std::fs::write(out.join("generated.rs"), consts).expect("write the constants");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A strong entity tag: the first 128 bits of the SHA-256, quoted.
fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Escapes text for HTML content and quoted attribute values alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A fragment id from free text: ASCII letters, digits, `-`, `_` and `.`
/// kept, anything else turned into `-` (no escaping needed afterwards).
fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The fragment id of a component: `c-<kind>-<name>`.
fn component_anchor(kind: &str, name: &str) -> String {
    format!("c-{}-{}", anchor(kind), anchor(name))
}

/// Where a local `$ref` (`#/components/<kind>/<name>`) points on the page.
fn ref_anchor(spec: &Value, r: &str) -> Option<String> {
    let rest = r.strip_prefix("#/components/")?;
    let (kind, name) = rest.split_once('/')?;
    spec["components"][kind].get(name)?;
    Some(component_anchor(kind, name))
}

/// The object a `$ref` names, or the value itself.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| spec.pointer(p))
            .unwrap_or_else(|| panic!("docs/openapi.json: dangling $ref {r}")),
        None => v,
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Pretty JSON as HTML: escaped, with every resolvable `$ref` a link.
fn json(spec: &Value, v: &Value, indent: usize, out: &mut String) {
    let pad = |n: usize| " ".repeat(n);
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push_str("{\n");
            for (i, (k, item)) in m.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                out.push_str(&esc(&Value::String(k.clone()).to_string()));
                out.push_str(": ");
                match (k.as_str(), item.as_str().and_then(|r| ref_anchor(spec, r))) {
                    ("$ref", Some(target)) => {
                        let _ = write!(out, "<a href=\"#{target}\">{}</a>", esc(&item.to_string()));
                    }
                    _ => json(spec, item, indent + 2, out),
                }
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, item) in a.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                json(spec, item, indent + 2, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        other => out.push_str(&esc(&other.to_string())),
    }
}

fn pre(spec: &Value, v: &Value, out: &mut String) {
    out.push_str("<pre>");
    json(spec, v, 0, out);
    out.push_str("</pre>\n");
}

/// A schema that is only a `$ref`, as a link to the component it names.
fn ref_link(spec: &Value, schema: &Value) -> Option<String> {
    let r = str_of(schema, "$ref")?;
    if schema.as_object()?.len() != 1 {
        return None;
    }
    let target = ref_anchor(spec, r)?;
    let name = r.rsplit('/').next().unwrap_or(r);
    Some(format!(
        "<a href=\"#{target}\"><code>{}</code></a>",
        esc(name)
    ))
}

/// A one-line schema for table cells: a `$ref` as a link to its name,
/// anything else as compact JSON.
fn schema_cell(spec: &Value, schema: &Value) -> String {
    ref_link(spec, schema).unwrap_or_else(|| format!("<code>{}</code>", esc(&schema.to_string())))
}

/// "GET" and the like, as a coloured badge.
fn badge(method: &str) -> String {
    format!(
        "<span class=\"method m-{}\">{}</span>",
        esc(method),
        esc(&method.to_uppercase())
    )
}

fn op_anchor(path: &str, method: &str, op: &Value) -> String {
    match str_of(op, "operationId") {
        Some(id) => format!("op-{}", anchor(id)),
        None => format!("op-{}-{}", anchor(method), anchor(path)),
    }
}

/// Who may call the operation, in a word or two, for the overview.
fn access_short(op: &Value) -> String {
    if let Some(role) = str_of(op, "x-required-role") {
        return format!("<span class=\"role\">{}</span>", esc(role));
    }
    let names: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|req| req.keys())
        .map(|name| format!("<code>{}</code>", esc(name)))
        .collect();
    if names.is_empty() {
        "public".to_owned()
    } else {
        names.join(" or ")
    }
}

/// Who may call the operation, as HTML.
fn access(op: &Value) -> String {
    let schemes = |op: &Value| -> Vec<String> {
        op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|req| req.keys())
            .map(|name| {
                format!(
                    "<a href=\"#{}\"><code>{}</code></a>",
                    component_anchor("securitySchemes", name),
                    esc(name)
                )
            })
            .collect()
    };
    if let Some(role) = str_of(op, "x-required-role") {
        return format!(
            "role <span class=\"role\">{}</span> or higher, with {}",
            esc(role),
            schemes(op).join(" or ")
        );
    }
    let names = schemes(op);
    if names.is_empty() {
        "public: no credential".to_owned()
    } else {
        format!("no role; {}", names.join(" or "))
    }
}

fn parameters(spec: &Value, params: &[&Value], out: &mut String) {
    if params.is_empty() {
        return;
    }
    out.push_str(
        "<h4>Parameters</h4>\n<table>\n<tr><th>Name</th><th>In</th><th>Required</th>\
         <th>Schema</th><th>Description</th></tr>\n",
    );
    for p in params {
        let p = deref(spec, p);
        let mut description = esc(str_of(p, "description").unwrap_or(""));
        if let Some(example) = p.get("example") {
            let _ = write!(
                description,
                " <span class=\"muted\">Example:</span> <code>{}</code>",
                esc(&example.to_string())
            );
        }
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"desc\">{}</td></tr>",
            esc(str_of(p, "name").unwrap_or("?")),
            esc(str_of(p, "in").unwrap_or("?")),
            if p["required"] == true { "yes" } else { "no" },
            p.get("schema")
                .map(|s| schema_cell(spec, s))
                .unwrap_or_default(),
            description,
        );
    }
    out.push_str("</table>\n");
}

/// The media types of a request body or response, each with its schema
/// (and example, folded).
fn content(spec: &Value, content: &Map<String, Value>, out: &mut String) {
    for (media, entry) in content {
        let schema = entry.get("schema");
        match schema.and_then(|s| ref_link(spec, s)) {
            Some(link) => {
                let _ = writeln!(out, "<p><code>{}</code>: {link}</p>", esc(media));
            }
            None => {
                let _ = writeln!(out, "<p><code>{}</code></p>", esc(media));
                if let Some(schema) = schema {
                    pre(spec, schema, out);
                }
            }
        }
        if let Some(example) = entry.get("example") {
            out.push_str("<details><summary>Example</summary>\n");
            pre(spec, example, out);
            out.push_str("</details>\n");
        }
    }
}

fn request_body(spec: &Value, op: &Value, out: &mut String) {
    let Some(body) = op.get("requestBody") else {
        return;
    };
    let body = deref(spec, body);
    let _ = writeln!(
        out,
        "<h4>Request body{}</h4>",
        if body["required"] == true {
            " <span class=\"muted\">(required)</span>"
        } else {
            ""
        }
    );
    if let Some(d) = str_of(body, "description") {
        let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(d));
    }
    if let Some(c) = body["content"].as_object() {
        content(spec, c, out);
    }
}

fn responses(spec: &Value, op: &Value, out: &mut String) {
    let Some(responses) = op["responses"].as_object() else {
        return;
    };
    out.push_str("<h4>Responses</h4>\n<table>\n<tr><th>Status</th><th>Description</th></tr>\n");
    for (status, r) in responses {
        let resolved = deref(spec, r);
        let mut cell = format!(
            "<span class=\"desc\">{}</span>",
            esc(str_of(resolved, "description").unwrap_or(""))
        );
        if let Some(target) = str_of(r, "$ref").and_then(|x| ref_anchor(spec, x)) {
            let name = str_of(r, "$ref").unwrap().rsplit('/').next().unwrap();
            let _ = write!(
                cell,
                " <span class=\"muted\">(<a href=\"#{target}\">{}</a>)</span>",
                esc(name)
            );
        }
        if let Some(headers) = resolved["headers"].as_object() {
            let names: Vec<String> = headers
                .iter()
                .map(
                    |(name, h)| match str_of(h, "$ref").and_then(|x| ref_anchor(spec, x)) {
                        Some(target) => {
                            format!("<a href=\"#{target}\"><code>{}</code></a>", esc(name))
                        }
                        None => format!("<code>{}</code>", esc(name)),
                    },
                )
                .collect();
            let _ = write!(
                cell,
                "<br><span class=\"muted\">Headers:</span> {}",
                names.join(", ")
            );
        }
        if let Some(c) = resolved["content"].as_object() {
            cell.push('\n');
            content(spec, c, &mut cell);
        }
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{cell}</td></tr>",
            esc(status)
        );
    }
    out.push_str("</table>\n");
}

/// Every operation as (path, method, path item, operation), by path, then
/// in [`METHODS`] order.
fn operations(spec: &Value) -> Vec<(&str, &str, &Value, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                ops.push((path.as_str(), m, item, op));
            }
        }
    }
    ops
}

fn render(spec: &Value) -> String {
    let info = &spec["info"];
    let title = str_of(info, "title").unwrap_or("API");
    let version = str_of(info, "version").unwrap_or("");
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<header>\n\
         <h1>{} <small>{}</small></h1>\n",
        esc(title),
        esc(version),
        esc(title),
        esc(version)
    );
    for para in str_of(info, "description").unwrap_or("").split("\n\n") {
        let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(para));
    }
    let _ = writeln!(
        out,
        "<p>The machine-readable document: <a href=\"/api/openapi.json\">/api/openapi.json</a> \
         (OpenAPI {}). Problem types are explained in <a href=\"/docs/problems\">/docs/problems</a>.</p>\n</header>",
        esc(str_of(spec, "openapi").unwrap_or("?"))
    );

    let ops = operations(spec);
    out.push_str(
        "<nav>\n<h2 id=\"operations\">Operations</h2>\n<table>\n\
         <tr><th>Method</th><th>Path</th><th>Access</th><th>Summary</th></tr>\n",
    );
    for (path, method, _, op) in &ops {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><a href=\"#{}\"><code>{}</code></a></td><td>{}</td><td>{}</td></tr>",
            badge(method),
            op_anchor(path, method, op),
            esc(path),
            access_short(op),
            esc(str_of(op, "summary").unwrap_or("")),
        );
    }
    out.push_str("</table>\n</nav>\n<main>\n");

    for (path, method, item, op) in &ops {
        let _ = writeln!(
            out,
            "<section class=\"op\" id=\"{}\">\n<h3>{} <code>{}</code></h3>",
            op_anchor(path, method, op),
            badge(method),
            esc(path)
        );
        if let Some(s) = str_of(op, "summary") {
            let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(s));
        }
        if let Some(d) = str_of(op, "description") {
            let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(d));
        }
        out.push_str("<dl class=\"facts\">\n");
        if let Some(id) = str_of(op, "operationId") {
            let _ = writeln!(out, "<dt>Operation</dt><dd><code>{}</code></dd>", esc(id));
        }
        let _ = writeln!(out, "<dt>Access</dt><dd>{}</dd>\n</dl>", access(op));
        let params: Vec<&Value> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .collect();
        parameters(spec, &params, &mut out);
        request_body(spec, op, &mut out);
        responses(spec, op, &mut out);
        out.push_str("</section>\n");
    }

    out.push_str("<h2 id=\"components\">Components</h2>\n");
    for (kind, items) in spec["components"].as_object().into_iter().flatten() {
        let _ = writeln!(out, "<h3>{}</h3>", esc(kind));
        for (name, value) in items.as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "<section class=\"component\" id=\"{}\">\n<h4><code>{}</code></h4>",
                component_anchor(kind, name),
                esc(name)
            );
            pre(spec, value, &mut out);
            out.push_str("</section>\n");
        }
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}
