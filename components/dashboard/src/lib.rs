//! The dashboard: one page and its script and style sheet, built into the
//! component, for operators and approvers in a browser.
//!
//! - `GET /` sends the browser to `/ui/`.
//! - `GET /ui/assets/<name>`: the script, the style sheet and the icon.
//! - `GET /ui/...` (any other path): the page. The script reads the path
//!   and draws the view it names (`/ui/runs/<id>`, `/ui/approvals`, ...),
//!   so every view has an address that can be bookmarked and shared.
//!
//! The component holds no data and no credential: it opens no store, reads
//! no variable and makes no outbound request. The script calls the same
//! API as every other client with the key or token the user enters, kept
//! in the tab's session storage and sent in the `Authorization` header,
//! never in a cookie, so a page elsewhere cannot make the browser decide
//! an approval (no CSRF) and the API's roles decide what each user may do.
//! Every answer carries a Content-Security-Policy that lets the page load
//! its own script and style sheet and talk to its own origin, and nothing
//! else: no inline script, no outside font or script, no framing.

use spin_sdk::http::{FullBody, Request};
use spin_sdk::http_service;
use spindle_spin::http::{Builtin, INERT_CSP, Problem, Response, builtin, refuse_unless_get};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

const PAGE: &str = include_str!(concat!(env!("OUT_DIR"), "/index.html"));
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const ICON: &str = include_str!("../assets/icon.svg");

/// What the page may load and where its script may connect: its own
/// origin only. `img-src data:` is for nothing but the browser's own
/// rendering of form controls; `form-action 'none'` because every form is
/// sent by the script, with the credential in a header.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

struct Asset {
    body: &'static str,
    content_type: &'static str,
    version: &'static str,
}

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("dashboard", req, |req| async move { answer(&req) }).await
}

fn asset(name: &str) -> Option<Asset> {
    Some(match name {
        "app.js" => Asset {
            body: APP_JS,
            content_type: "text/javascript; charset=utf-8",
            version: generated::APP_JS_VERSION,
        },
        "app.css" => Asset {
            body: APP_CSS,
            content_type: "text/css; charset=utf-8",
            version: generated::APP_CSS_VERSION,
        },
        "icon.svg" => Asset {
            body: ICON,
            content_type: "image/svg+xml",
            version: generated::ICON_VERSION,
        },
        _ => return None,
    })
}

fn answer(req: &Request) -> Result<Response, Problem> {
    if let Some(refused) = refuse_unless_get(req) {
        return Ok(refused);
    }
    let path = req.uri().path();
    if path == "/" || path == "/ui" {
        return Ok(redirect("/ui/"));
    }
    let Some(rest) = path.strip_prefix("/ui/") else {
        return Err(Problem::not_found(format!(
            "the dashboard serves nothing at {path}"
        )));
    };
    if let Some(name) = rest.strip_prefix("assets/") {
        let Some(asset) = asset(name) else {
            return Err(Problem::not_found(format!(
                "no dashboard asset named {name:?}"
            )));
        };
        // The page names each asset with its fingerprint: an address that
        // carries the current one never changes meaning, so it may be kept.
        let current = query_param(req, "v") == Some(asset.version);
        return Ok(builtin(
            req,
            &Builtin {
                body: asset.body,
                content_type: asset.content_type,
                etag: &format!("\"{}\"", asset.version),
                cache: if current {
                    "public, max-age=31536000, immutable"
                } else {
                    "no-cache"
                },
                csp: INERT_CSP,
            },
        ));
    }
    // Revalidated on every visit: an upgrade shows at the next load.
    Ok(builtin(
        req,
        &Builtin {
            body: PAGE,
            content_type: "text/html; charset=utf-8",
            etag: &format!("\"{}\"", generated::PAGE_VERSION),
            cache: "no-cache",
            csp: CSP,
        },
    ))
}

fn redirect(to: &'static str) -> Response {
    http::Response::builder()
        .status(302)
        .header("location", to)
        .body(FullBody::new(bytes::Bytes::new()))
        .expect("valid response")
}

fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}
