//! `docs/openapi.json` and the running application agree: every documented
//! operation is driven against the real host, and each answer must carry a
//! documented status and match the documented schema. Every protected
//! operation states the role it needs; `access.rs` proves the application
//! enforces exactly that role.
//!
//! The extensions the driver reads (also listed in the spec's
//! `info.description`):
//! - `x-example-from: "<operationId>#<pointer>"` on a path parameter: its
//!   value comes from an earlier answer (plus `x-example-suffix`);
//! - `x-example-needs: ["<operationId>", ...]`: those operations' examples
//!   run first (a schedule's example names the workflow's);
//! - `x-example-status`: the status the example gets here, when not 2xx;
//! - `x-auth: "tick"`: sent with the tick secret;
//! - `x-signed: true`: signed as a worker signs a job callback;
//!   `x-signed: "github"`: signed as GitHub signs a delivery
//!   (`X-Hub-Signature-256` under [`TEST_GITHUB_WEBHOOK_SECRET`], the test
//!   hosts' `github_webhook_secret`);
//! - a header parameter with an `example` is sent with that value.

use serde_json::Value;
use spindle_core::job::SIGNATURE_HEADER;
use spindle_core::sign;
use spindle_core::webhook::Verification;
use spindle_tests::{
    HostBuilder, TEST_ADMIN_KEY, TEST_CALLBACK_SECRET, TEST_GITHUB_WEBHOOK_SECRET,
    TEST_TICK_SECRET, client, root,
};

pub(crate) const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The answers every protected operation may give before it does anything:
/// no valid credential, too low a role, no budget left.
const GUARD_STATUSES: [&str; 3] = ["401", "403", "429"];

/// Paths under `/api` that need no credential: the API's own documentation,
/// which holds no secret and which a client reads before it has a key.
pub(crate) const PUBLIC_API_PATHS: [&str; 2] = ["/api/openapi.json", "/api/docs"];

/// The roles, lowest first, as `x-required-role` names them.
pub(crate) const ROLES: [&str; 4] = ["viewer", "operator", "approver", "admin"];

/// Whether `op` is reserved: apart from the guard's refusals, it only
/// answers 501 (its feature is not built yet).
pub(crate) fn is_reserved(op: &Value) -> bool {
    op["responses"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !GUARD_STATUSES.contains(&k.as_str()))
        .all(|k| k == "501")
}

pub(crate) fn spec() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/a/b`) to the object it names.
pub(crate) fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// Validates `instance` against `schema`, resolving its `$ref`s into the
/// spec's components.
fn check(spec: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut root = schema.clone();
    root["components"] = spec["components"].clone();
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("{what}: schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance} breaks the schema: {errors:?}"
    );
}

/// Responses of earlier operations, by operationId, for `x-example-from`.
pub(crate) type Seen = std::collections::BTreeMap<String, Value>;

/// The path with every parameter replaced by its example, or by the value
/// `x-example-from` names in an earlier response (plus `x-example-suffix`).
/// Also returns the parameter values, for placeholders in bodies.
pub(crate) fn example_path(
    spec: &Value,
    path: &str,
    item: &Value,
    seen: &Seen,
) -> (String, Vec<(String, String)>) {
    let mut out = path.to_owned();
    let mut values = Vec::new();
    for p in item["parameters"].as_array().into_iter().flatten() {
        let p = deref(spec, p);
        if p["in"] != "path" {
            continue;
        }
        let name = p["name"].as_str().unwrap();
        let value = if let Some(from) = p["x-example-from"].as_str() {
            let (op, pointer) = from.split_once('#').unwrap();
            let v = seen
                .get(op)
                .and_then(|r| r.pointer(pointer))
                .and_then(Value::as_str)
                .unwrap_or_else(|| {
                    panic!("{path}: {name} comes from {from}, which has not answered")
                });
            format!("{v}{}", p["x-example-suffix"].as_str().unwrap_or(""))
        } else {
            p["example"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: path parameter {name} needs an example"))
                .to_owned()
        };
        out = out.replace(&format!("{{{name}}}"), &value);
        values.push((name.to_owned(), value));
    }
    assert!(!out.contains('{'), "{path}: undocumented path parameter");
    (out, values)
}

/// Headers an operation needs: the tick secret, a worker's signature, or
/// (for the raw requests that bypass [`client`]) the admin credential.
fn auth_headers(op: &Value, params: &[(String, String)], body: &[u8]) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if op.get("x-required-role").is_some() {
        h.push(("authorization".into(), format!("Bearer {TEST_ADMIN_KEY}")));
    }
    if op["x-auth"] == "tick" {
        h.push(("authorization".into(), format!("Bearer {TEST_TICK_SECRET}")));
    }
    match &op["x-signed"] {
        Value::Bool(true) => {
            let job = &params
                .iter()
                .find(|(n, _)| n == "job_id")
                .expect("signed ops name a job")
                .1;
            let token = sign::job_token(TEST_CALLBACK_SECRET, job);
            h.push((SIGNATURE_HEADER.into(), sign::sign(&token, body)));
        }
        // Signed as GitHub signs a delivery: every body the driver sends,
        // so the checks behind the signature (media type, size) are reached.
        Value::String(sender) if sender == "github" => {
            let signature =
                Verification::github().sign(TEST_GITHUB_WEBHOOK_SECRET.as_bytes(), body, 0);
            h.push(("x-hub-signature-256".into(), signature));
        }
        Value::Null => {}
        other => panic!("unknown x-signed {other}"),
    }
    h
}

/// The header parameters (of the path and of the operation) that have an
/// example, with it: a webhook's event and delivery headers, say.
pub(crate) fn example_headers(spec: &Value, item: &Value, op: &Value) -> Vec<(String, String)> {
    item["parameters"]
        .as_array()
        .into_iter()
        .chain(op["parameters"].as_array())
        .flatten()
        .map(|p| deref(spec, p))
        .filter(|p| p["in"] == "header")
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["example"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// One operation as the driver sends it.
struct Target<'a> {
    method: &'a str,
    url_path: &'a str,
    op: &'a Value,
    /// The path parameters' values.
    params: &'a [(String, String)],
    /// The example header parameters ([`example_headers`]).
    headers: &'a [(String, String)],
}

/// Sends one request and checks the answer against the operation.
async fn exercise(
    spec: &Value,
    host: &spindle_tests::Host,
    target: &Target<'_>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let Target {
        method,
        url_path,
        op,
        params,
        headers,
    } = *target;
    let what = format!("{} {url_path}", method.to_uppercase());
    let mut req = client().request(method.to_uppercase().parse().unwrap(), host.url(url_path));
    let signed_over = body.as_ref().map(|(_, b)| b.clone()).unwrap_or_default();
    for (k, v) in headers
        .iter()
        .cloned()
        .chain(auth_headers(op, params, &signed_over))
    {
        req = req.header(k, v);
    }
    if let Some((ct, bytes)) = body {
        req = req.header("content-type", ct).body(bytes);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.bytes().await.unwrap();
    let documented = op["responses"].get(status.to_string()).unwrap_or_else(|| {
        panic!(
            "{what}: status {status} is not documented; body {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let documented = deref(spec, documented);
    let mut answer = Value::Null;
    if let Some(content) = documented.get("content").and_then(Value::as_object) {
        let ct = ct.unwrap_or_else(|| panic!("{what}: no content-type"));
        let media = ct.split(';').next().unwrap().trim();
        let entry = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: {status} answered {media}, not documented"));
        // JSON media types are checked as JSON; any other (the Markdown of
        // /docs/problems) as one string of text.
        let value: Value = if media.ends_with("json") {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON: {e}"))
        } else {
            Value::String(
                String::from_utf8(bytes.to_vec())
                    .unwrap_or_else(|e| panic!("{what}: {status} body is not UTF-8: {e}")),
            )
        };
        check(
            spec,
            &entry["schema"],
            &value,
            &format!("{what} -> {status}"),
        );
        answer = value;
    }
    (status, answer)
}

/// Every documented operation as (path, method, path item, operation), in
/// an order in which each one's example can succeed: create first, then
/// update, read, and delete (deepest paths first, so a workflow goes
/// before the agent it uses), and each after the operations its
/// `x-example-needs` names (a schedule after the workflow it starts).
pub(crate) fn operations(spec: &Value) -> Vec<(&str, &str, &Value, &Value)> {
    let paths = spec["paths"].as_object().expect("paths");
    let mut ops: Vec<(&str, &str, &Value, &Value)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter_map(move |m| item.get(*m).map(|op| (path.as_str(), *m, item, op)))
        })
        .collect();
    ops.sort_by_key(|(path, m, _, _)| {
        let rank = ["post", "put", "patch", "get", "delete"]
            .iter()
            .position(|x| x == m)
            .unwrap();
        let len = path.len() as i64;
        (rank, if *m == "delete" { -len } else { len })
    });
    // Then each operation after those its `x-example-needs` names, keeping
    // that order otherwise: take the first whose needs have all run.
    let needs = |op: &Value| -> Vec<String> {
        op["x-example-needs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                n.as_str()
                    .expect("x-example-needs lists operationIds")
                    .to_owned()
            })
            .collect()
    };
    let ids: Vec<&str> = ops
        .iter()
        .filter_map(|(_, _, _, op)| op["operationId"].as_str())
        .collect();
    for (path, m, _, op) in &ops {
        for n in needs(op) {
            assert!(ids.contains(&n.as_str()), "{m} {path}: needs unknown {n}");
        }
    }
    let mut ordered = Vec::with_capacity(ops.len());
    let mut done: Vec<String> = Vec::new();
    while !ops.is_empty() {
        let next = ops
            .iter()
            .position(|(_, _, _, op)| needs(op).iter().all(|n| done.contains(n)))
            .expect("x-example-needs has a cycle");
        let op = ops.remove(next);
        done.extend(op.3["operationId"].as_str().map(str::to_owned));
        ordered.push(op);
    }
    ordered
}

/// The operation's request body example, with `{name}` placeholders
/// replaced by the path parameters' values; `None` if it takes no body.
pub(crate) fn example_body(
    spec: &Value,
    op: &Value,
    params: &[(String, String)],
) -> Option<Vec<u8>> {
    let media = &deref(spec, op.get("requestBody")?)["content"]["application/json"];
    let mut text = media.get("example")?.to_string();
    for (name, value) in params {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    Some(text.into_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_answers_as_documented() {
    let spec = spec();
    let state = tempfile::tempdir().unwrap();
    let host = HostBuilder::new(root().join("spin.toml"))
        .state_dir(state.path())
        .start();

    let mut seen = Seen::new();
    for (path, method, item, op) in operations(&spec) {
        let (url_path, params) = example_path(&spec, path, item, &seen);
        let headers = example_headers(&spec, item, op);
        let media = op
            .get("requestBody")
            .map(|rb| deref(&spec, rb)["content"]["application/json"].clone());
        let body = media.as_ref().map(|media| {
            let example = media
                .get("example")
                .unwrap_or_else(|| panic!("{method} {path}: request body needs an example"));
            check(
                &spec,
                &media["schema"],
                example,
                &format!("{method} {path} request example"),
            );
            example_body(&spec, op, &params).expect("an example")
        });
        let target = Target {
            method,
            url_path: &url_path,
            op,
            params: &params,
            headers: &headers,
        };
        let (status, answer) = exercise(
            &spec,
            &host,
            &target,
            body.clone().map(|b| ("application/json", b)),
        )
        .await;
        let reserved = is_reserved(op);
        match op["x-example-status"].as_u64() {
            Some(expected) => assert_eq!(u64::from(status), expected, "{method} {path}"),
            None => assert!(
                status < 300 || reserved,
                "{method} {path}: the documented example should succeed, got {status}: {answer}"
            ),
        }
        if let Some(id) = op["operationId"].as_str() {
            seen.insert(id.to_owned(), answer);
        }

        if let Some(media) = &media {
            // The error answers are documented too.
            if deref(&spec, &media["schema"]).get("required").is_some() {
                let (s, _) = exercise(
                    &spec,
                    &host,
                    &target,
                    Some(("application/json", b"{}".to_vec())),
                )
                .await;
                assert!(
                    (400..500).contains(&s),
                    "{method} {path}: empty object accepted"
                );
            }
            let (s, _) = exercise(&spec, &host, &target, Some(("text/plain", b"x".to_vec()))).await;
            assert_eq!(s, 415, "{method} {path}: wrong media type");
            let mut headers = headers.clone();
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
            headers.extend(auth_headers(op, &params, b""));
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let s = spindle_tests::oversized_status(
                &host.base,
                &method.to_uppercase(),
                &url_path,
                &headers,
                2 << 20,
            );
            assert_eq!(s, 413, "{method} {path}: oversized body");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn undocumented_methods_are_refused() {
    let spec = spec();
    let state = tempfile::tempdir().unwrap();
    let host = HostBuilder::new(root().join("spin.toml"))
        .state_dir(state.path())
        .start();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let dynamic = item["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.get("x-example-from").is_some());
        let reserved = dynamic || METHODS.iter().filter_map(|m| item.get(*m)).all(is_reserved);
        if reserved {
            continue;
        }
        let (url_path, _) = example_path(&spec, path, item, &seen_stub());
        for m in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let resp = client()
                .request(m.to_uppercase().parse().unwrap(), host.url(&url_path))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                405,
                "{} {url_path} is not documented, so it must be refused",
                m.to_uppercase()
            );
        }
    }
}

/// Undocumented methods are checked on paths whose examples are static;
/// paths that need an earlier response are covered by the component's own
/// router tests in the engine suite.
fn seen_stub() -> Seen {
    Seen::new()
}

#[test]
fn every_route_in_spin_toml_is_documented() {
    let spec = spec();
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("spin.toml")).unwrap()).unwrap();
    let documented: Vec<&String> = spec["paths"].as_object().unwrap().keys().collect();
    for trigger in manifest["trigger"]["http"].as_array().unwrap() {
        let Some(route) = trigger["route"].as_str() else {
            continue;
        };
        let prefix = route.trim_end_matches("...");
        assert!(
            documented.iter().any(|p| p.starts_with(prefix)),
            "route {route} of component {} has no operation in docs/openapi.json",
            trigger["component"]
        );
    }
}

/// Every operation says who may call it. Under `/api`, `/trigger` and
/// `/approvals` that is a role (`x-required-role`) and the two credential
/// schemes, with the guard's 401, 403 (unless any caller has the role) and
/// 429 documented; elsewhere the route is open or has its own scheme (the
/// tick secret, a worker's signature) and states no role. `access.rs` walks
/// the same operations and proves the application enforces exactly the
/// role stated, no more and no less.
#[test]
fn every_protected_operation_states_its_role_and_security() {
    let spec = spec();
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    assert!(
        spec["components"]["schemas"]["Problem"]["properties"]
            .get("request_id")
            .is_some(),
        "problem documents carry the request id"
    );
    let credentials = serde_json::json!([{"bearer": []}, {"apiKey": []}]);
    let mut protected = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let what = format!("{} {path}", m.to_uppercase());
            let security = op
                .get("security")
                .unwrap_or_else(|| panic!("{what}: no security (use [] for an open route)"));
            for requirement in security.as_array().expect("security is a list") {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{what}: unknown scheme {name}");
                }
            }
            // A signed approval link is its own credential; the API's
            // documentation is public.
            let guarded = (["/approvals", "/health", "/metrics"].contains(&path.as_str())
                || ["/api/", "/trigger/", "/approvals/"]
                    .iter()
                    .any(|p| path.starts_with(p)))
                && !path.starts_with("/approvals/link/")
                && !PUBLIC_API_PATHS.contains(&path.as_str());
            let role = op.get("x-required-role").and_then(Value::as_str);
            if !guarded {
                assert_eq!(role, None, "{what}: not a guarded route, yet states a role");
                assert!(
                    !security.to_string().contains("\"bearer\"")
                        && !security.to_string().contains("\"apiKey\""),
                    "{what}: takes no API credential, yet documents one"
                );
                continue;
            }
            protected += 1;
            let role = role.unwrap_or_else(|| panic!("{what}: no x-required-role"));
            assert!(ROLES.contains(&role), "{what}: unknown role {role}");
            assert_eq!(security, &credentials, "{what}: security");
            let responses = op["responses"].as_object().unwrap();
            for (status, name) in [("401", "Unauthorized"), ("429", "RateLimited")] {
                assert_eq!(
                    responses.get(status).map(|r| r["$ref"].clone()),
                    Some(Value::String(format!("#/components/responses/{name}"))),
                    "{what}: {status}"
                );
            }
            // Every authenticated caller is at least a viewer, so a viewer
            // route cannot answer 403.
            assert_eq!(
                responses.contains_key("403"),
                role != "viewer",
                "{what}: 403 is documented exactly when some caller lacks {role}"
            );
        }
    }
    assert!(protected >= 20, "only {protected} protected operations");
    let unauthorized = &spec["components"]["responses"]["Unauthorized"];
    assert!(unauthorized["headers"].get("WWW-Authenticate").is_some());
    let limited = &spec["components"]["responses"]["RateLimited"];
    for h in [
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ] {
        assert!(limited["headers"].get(h).is_some(), "429 documents {h}");
    }
}
