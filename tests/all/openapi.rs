//! `docs/openapi.json` and the running application agree: every documented
//! operation is driven against the real host, and each answer must carry a
//! documented status and match the documented schema.

use serde_json::Value;
use spindle_tests::{HostBuilder, client, root};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn spec() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/a/b`) to the object it names.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
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

fn example_path(spec: &Value, path: &str, item: &Value) -> String {
    let mut out = path.to_owned();
    for p in item["parameters"].as_array().into_iter().flatten() {
        let p = deref(spec, p);
        if p["in"] == "path" {
            let name = p["name"].as_str().unwrap();
            let example = p["example"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: path parameter {name} needs an example"));
            out = out.replace(&format!("{{{name}}}"), example);
        }
    }
    assert!(!out.contains('{'), "{path}: undocumented path parameter");
    out
}

/// Sends one request and checks the answer against the operation.
async fn exercise(
    spec: &Value,
    host: &spindle_tests::Host,
    method: &str,
    url_path: &str,
    op: &Value,
    body: Option<(&str, Vec<u8>)>,
) -> u16 {
    let what = format!("{} {url_path}", method.to_uppercase());
    let mut req = client().request(method.to_uppercase().parse().unwrap(), host.url(url_path));
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
    if let Some(content) = documented.get("content").and_then(Value::as_object) {
        let ct = ct.unwrap_or_else(|| panic!("{what}: no content-type"));
        let media = ct.split(';').next().unwrap().trim();
        let entry = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: {status} answered {media}, not documented"));
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON: {e}"));
        check(
            spec,
            &entry["schema"],
            &value,
            &format!("{what} -> {status}"),
        );
    }
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_answers_as_documented() {
    let spec = spec();
    let state = tempfile::tempdir().unwrap();
    let host = HostBuilder::new(root().join("spin.toml"))
        .state_dir(state.path())
        .start();
    let paths = spec["paths"].as_object().expect("paths");

    // Creating operations first, so the reads after them find their examples.
    let mut ops: Vec<(&str, &str, &Value, &Value)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter_map(move |m| item.get(*m).map(|op| (path.as_str(), *m, item, op)))
        })
        .collect();
    ops.sort_by_key(|(path, m, _, _)| (*m != "post", path.len()));

    for (path, method, item, op) in ops {
        let url_path = example_path(&spec, path, item);
        let body = op.get("requestBody").map(|rb| {
            let media = &deref(&spec, rb)["content"]["application/json"];
            let example = media
                .get("example")
                .unwrap_or_else(|| panic!("{method} {path}: request body needs an example"));
            check(
                &spec,
                &media["schema"],
                example,
                &format!("{method} {path} request example"),
            );
            example.clone()
        });
        let success = exercise(
            &spec,
            &host,
            method,
            &url_path,
            op,
            body.as_ref()
                .map(|b| ("application/json", serde_json::to_vec(b).unwrap())),
        )
        .await;
        let reserved = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k == "501");
        assert!(
            success < 300 || reserved,
            "{method} {path}: the documented example should succeed, got {success}"
        );

        if body.is_some() {
            // The error answers are documented too.
            let s = exercise(
                &spec,
                &host,
                method,
                &url_path,
                op,
                Some(("application/json", b"{}".to_vec())),
            )
            .await;
            assert!(
                (400..500).contains(&s),
                "{method} {path}: empty object accepted"
            );
            let s = exercise(
                &spec,
                &host,
                method,
                &url_path,
                op,
                Some(("text/plain", b"x".to_vec())),
            )
            .await;
            assert_eq!(s, 415, "{method} {path}: wrong media type");
            let s = exercise(
                &spec,
                &host,
                method,
                &url_path,
                op,
                Some(("application/json", vec![b' '; 2 << 20])),
            )
            .await;
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
        let reserved = METHODS.iter().filter_map(|m| item.get(*m)).all(|op| {
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| k == "501")
        });
        if reserved {
            continue;
        }
        let url_path = example_path(&spec, path, item);
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
