//! Who may do what, through the real host and the real components: every
//! guarded operation refuses a caller without a valid credential, or with
//! too low a role, and changes nothing when it does; JWTs of every accepted
//! algorithm, and the ways a token can be wrong; API keys from creation to
//! revocation; per-caller rate limits under concurrent bursts and across
//! component instances; the headers every answer carries; each of the
//! requests one instance serves at once keeping its own request id, budget
//! and actor; and who is recorded as having started or cancelled a run.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use jwt_simple::prelude::{
    ECDSAP256KeyPairLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike, HS256Key, JWTClaims,
    MACLike,
};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder as _, Encoder as _};
use serde_json::{Value, json};
use spindle_auth::Role;
use spindle_auth::jwt::mint_hs256;
use spindle_tests::{
    Host, HostBuilder, TEST_ADMIN_KEY, TEST_JWT_SECRET, anon_client, free_port, now_ms, now_s, root,
};

use crate::openapi;

/// What every 401 says, whatever was wrong with the credential.
const UNAUTHORIZED: &str = "/docs/problems#unauthorized";
/// Spindle's rate-limit window.
const WINDOW_MS: u64 = 60_000;

/// The shipped app with no worker behind it (a job cannot be dispatched,
/// which no test here needs) and no tick, so the store changes only when a
/// request changes it.
fn app() -> HostBuilder {
    HostBuilder::new(root().join("spin.toml"))
        .env(
            "SPIN_VARIABLE_WORKERS",
            &format!("http://127.0.0.1:{}", free_port()),
        )
        .arg("--tick-interval-ms")
        .arg("0")
}

/// A credential as a request presents it: a header and its value.
type Cred = Option<(&'static str, String)>;

fn bearer(credential: &str) -> Cred {
    Some(("authorization", format!("Bearer {credential}")))
}

fn api_key(key: &str) -> Cred {
    Some(("x-api-key", key.to_owned()))
}

/// An answer, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Checks this is the one 401 every refused credential gets, and
    /// returns the problem document without its (per-request) id.
    fn unauthorized(&self, what: &str) -> Value {
        assert_eq!(self.status, 401, "{what}: {}", self.text);
        assert_eq!(
            self.header("www-authenticate"),
            Some("Bearer realm=\"spindle\""),
            "{what}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(self.body["type"], UNAUTHORIZED, "{what}");
        assert_eq!(
            self.body["request_id"].as_str(),
            self.header("x-request-id"),
            "{what}"
        );
        let mut doc = self.body.clone();
        doc.as_object_mut().unwrap().remove("request_id");
        doc
    }
}

/// Sends `method path` with `cred` (and nothing else that could
/// authenticate), an optional JSON body and extra headers.
async fn call_with(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    cred: &Cred,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http.request(method.to_uppercase().parse().unwrap(), url);
    if let Some((name, value)) = cred {
        req = req.header(*name, value);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_vec());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        body,
    }
}

async fn call(host: &Host, method: &str, path: &str, cred: &Cred, body: Option<&Value>) -> Answer {
    let body = body.map(|b| b.to_string().into_bytes());
    call_with(
        &anon_client(),
        &host.url(path),
        method,
        cred,
        body.as_deref(),
        &[],
    )
    .await
}

/// As the bootstrap admin.
async fn admin(host: &Host, method: &str, path: &str, body: Option<&Value>) -> Answer {
    call(host, method, path, &bearer(TEST_ADMIN_KEY), body).await
}

/// Creates an API key; returns its creation answer (`key`, `id`...).
async fn new_key(host: &Host, name: &str, role: &str) -> Value {
    let a = admin(
        host,
        "post",
        "/api/keys",
        Some(&json!({"name": name, "role": role})),
    )
    .await;
    assert_eq!(a.status, 201, "key {name}: {}", a.text);
    a.body
}

/// Registers an agent that does nothing and a one-step workflow using it.
async fn register_workflow(host: &Host, name: &str) {
    let agent = json!({"name": "noop", "command": ["sh", "-c", "cat"]});
    let a = admin(host, "post", "/api/agents", Some(&agent)).await;
    assert!(a.status == 201 || a.status == 409, "{}", a.text);
    let wf = json!({"name": name, "steps": [{"id": "a", "agent": "noop"}]});
    let a = admin(host, "post", "/api/workflows", Some(&wf)).await;
    assert_eq!(a.status, 201, "{}", a.text);
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// Claims that pass every check of the test hosts' JWT settings; tests
/// change one thing at a time.
fn claims(sub: &str, role: &str) -> Value {
    let now = now_s();
    json!({
        "sub": sub, "role": role, "iss": "spindle", "aud": "spindle",
        "iat": now, "nbf": now, "exp": now + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

/// A token MACed with `key` under any header: how an attacker (or a
/// careless issuer) builds one.
fn hs256_raw(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let tag = HS256Key::from_bytes(key).authentication_tag(input.as_bytes());
    format!("{input}.{}", b64(tag))
}

fn hs256(claims: &Value) -> String {
    hs256_raw(
        TEST_JWT_SECRET.as_bytes(),
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
    )
}

type AnyClaims = JWTClaims<serde_json::Map<String, Value>>;

fn es256(key: &ES256KeyPair, claims: &Value) -> String {
    key.sign(serde_json::from_value::<AnyClaims>(claims.clone()).unwrap())
        .unwrap()
}

fn eddsa(key: &Ed25519KeyPair, claims: &Value) -> String {
    key.sign(serde_json::from_value::<AnyClaims>(claims.clone()).unwrap())
        .unwrap()
}

/// `token` with its signature changed in one place.
fn tampered_signature(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
    sig[0] ^= 1;
    format!("{input}.{}", b64(sig))
}

/// `token` claiming `role` instead, its signature kept.
fn tampered_claims(token: &str, role: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = Base64UrlSafeNoPadding::decode_to_vec(parts[1], None).unwrap();
    let mut claims: Value = serde_json::from_slice(&payload).unwrap();
    claims["role"] = json!(role);
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

/// Every row of the host's store a request could change on purpose: all
/// but the rate-limit counters and the counters of refusals (a refused
/// request bumps those by design), and with API keys' `last_used_ms`
/// left out (authenticating refreshes it).
fn snapshot(state_dir: &Path) -> BTreeMap<(String, String), String> {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("sqlite_key_value.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT store, key, value FROM spin_key_value")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .unwrap();
    let mut out = BTreeMap::new();
    for row in rows {
        let (store, key, value) = row.unwrap();
        // Rate-limit budgets and metrics move with every request, refused
        // or not; they are not state the request changed.
        if key.starts_with("ratelimit:")
            || key.starts_with("counter:m:")
            || key.starts_with("metrics:")
            || key.starts_with("counter:ratelimit-expire:")
        {
            continue;
        }
        let value = match serde_json::from_slice::<Value>(&value) {
            Ok(mut doc) if key.starts_with("apikey:") => {
                doc.as_object_mut().unwrap().remove("last_used_ms");
                doc.to_string()
            }
            Ok(doc) => doc.to_string(),
            Err(_) => format!("{value:?}"),
        };
        out.insert((store, key), value);
    }
    out
}

/// Panics naming the rows that differ.
fn assert_unchanged(
    before: &BTreeMap<(String, String), String>,
    after: &BTreeMap<(String, String), String>,
    what: &str,
) {
    let changed: BTreeSet<&(String, String)> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "{what} changed the store: {changed:?}");
}

/// The role matrix. For every operation that states `x-required-role`:
/// each way of not being authenticated gets the same 401, a caller one
/// role short gets 403, and none of them changes a row of the store; then a
/// caller with exactly the role is let through. Together with
/// `openapi::every_protected_operation_states_its_role_and_security`, this
/// proves the documented roles are the enforced ones: a stated role higher
/// than the enforced one would let the caller one role short through, a
/// lower one would refuse the caller with exactly the role.
#[tokio::test(flavor = "multi_thread")]
async fn every_guarded_operation_refuses_bad_credentials_and_lower_roles_and_changes_nothing() {
    let spec = openapi::spec();
    let host = app().start();
    let mut keys = BTreeMap::new();
    for role in openapi::ROLES {
        let k = new_key(&host, &format!("as-{role}"), role).await;
        keys.insert(role, k["key"].as_str().unwrap().to_owned());
    }
    let revoked = new_key(&host, "revoked", "admin").await;
    let a = admin(
        &host,
        "delete",
        &format!("/api/keys/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Admin tokens, each wrong in one way only.
    let now = now_s();
    let token = |iss: &str, aud: &str, lifetime_s: u64, at_s: u64| {
        mint_hs256(
            TEST_JWT_SECRET,
            "mallory",
            Role::Admin,
            iss,
            aud,
            lifetime_s,
            at_s,
        )
        .unwrap()
    };
    let refused: Vec<(&str, Cred)> = vec![
        ("no credential", None),
        (
            "a malformed credential",
            Some(("authorization", "Basic x".into())),
        ),
        (
            "an unknown API key",
            bearer(&format!("spk_0123456789abcdef_{}", "ab".repeat(32))),
        ),
        (
            "a revoked API key",
            api_key(revoked["key"].as_str().unwrap()),
        ),
        (
            "a token that expired 2 minutes ago",
            bearer(&token("spindle", "spindle", 60, now - 180)),
        ),
        (
            "a token for another audience",
            bearer(&token("spindle", "another-api", 600, now)),
        ),
        (
            "a token from another issuer",
            bearer(&token("someone-else", "spindle", 600, now)),
        ),
    ];

    let mut seen = openapi::Seen::new();
    let mut documents = BTreeSet::new();
    let mut checked = 0;
    for (path, method, item, op) in openapi::operations(&spec) {
        let Some(role) = op["x-required-role"].as_str() else {
            continue;
        };
        let (url_path, params) = openapi::example_path(&spec, path, item, &seen);
        let body = openapi::example_body(&spec, op, &params);
        let url = host.url(&url_path);
        let what = format!("{} {url_path}", method.to_uppercase());
        let http = anon_client();

        let before = snapshot(&host.state_dir);
        for (how, cred) in &refused {
            let a = call_with(&http, &url, method, cred, body.as_deref(), &[]).await;
            documents.insert(a.unauthorized(&format!("{what} with {how}")).to_string());
        }
        if let Some(below) = Role::parse(role).unwrap().below() {
            let cred = bearer(&keys[below.as_str()]);
            let a = call_with(&http, &url, method, &cred, body.as_deref(), &[]).await;
            assert_eq!(a.status, 403, "{what} as {below}: {}", a.text);
            assert_eq!(a.body["type"], "/docs/problems#forbidden", "{what}");
        }
        let after = snapshot(&host.state_dir);
        assert_unchanged(&before, &after, &what);

        let cred = bearer(&keys[role]);
        let a = call_with(&http, &url, method, &cred, body.as_deref(), &[]).await;
        // Or the status its example documents for the test app (a step's
        // output, which no worker produced here: 404 past the guard).
        let documented = op["x-example-status"].as_u64() == Some(u64::from(a.status));
        assert!(
            a.status < 300 || openapi::is_reserved(op) || documented,
            "{what} as {role} should be let through and succeed: {} {}",
            a.status,
            a.text
        );
        // The snapshot sees what a request changes: the same request let
        // through does change the store.
        if method != "get" && a.status < 300 {
            assert_ne!(after, snapshot(&host.state_dir), "{what} as {role}");
        }
        if let Some(id) = op["operationId"].as_str() {
            seen.insert(id.to_owned(), a.body);
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} guarded operations");
    assert_eq!(
        documents.len(),
        1,
        "every 401 must read the same, whatever was wrong: {documents:#?}"
    );
}

/// The remote-execution path is closed: without a credential no agent (a
/// command the worker would run) can be registered or changed, no workflow
/// stored and no run started.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_credential_nothing_is_registered_or_started() {
    let host = app().start();
    register_workflow(&host, "existing").await;
    let before = snapshot(&host.state_dir);
    let agent = json!({"name": "pwn", "command": ["sh", "-c", "id > /tmp/pwned"]});
    let hijack = json!({"name": "noop", "command": ["sh", "-c", "id > /tmp/pwned"]});
    let workflow = json!({"name": "pwn", "steps": [{"id": "a", "agent": "noop"}]});
    for (method, path, body) in [
        ("post", "/api/agents", &agent),
        ("put", "/api/agents/noop", &hijack),
        ("post", "/api/workflows", &workflow),
        ("post", "/trigger/x", &json!({})),
        ("post", "/trigger/existing", &json!({})),
    ] {
        let a = call(&host, method, path, &None, Some(body)).await;
        a.unauthorized(&format!("{method} {path}"));
    }
    assert_unchanged(
        &before,
        &snapshot(&host.state_dir),
        "unauthenticated writes",
    );
    let agents = admin(&host, "get", "/api/agents", None).await.body;
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["noop"]);
    let runs = admin(&host, "get", "/api/runs", None).await.body;
    assert_eq!(runs["runs"], json!([]));
    // The same bodies are fine for an admin: the 401s were about the
    // missing credential, nothing else.
    assert_eq!(
        admin(&host, "post", "/api/workflows", Some(&workflow))
            .await
            .status,
        201
    );
}

/// Who a token authenticates as: `(actor, role)`, or `None` if it does not.
type Who = Option<(String, String)>;

/// What `GET /api/whoami` says of `token` on `host`; a 401 is checked to be
/// the usual one.
async fn whoami(host: &Host, token: &str, what: &str) -> Who {
    let a = call(host, "get", "/api/whoami", &bearer(token), None).await;
    if a.status == 401 {
        a.unauthorized(what);
        return None;
    }
    assert_eq!(a.status, 200, "{what}: {}", a.text);
    Some((
        a.body["actor"].as_str().unwrap().to_owned(),
        a.body["role"].as_str().unwrap().to_owned(),
    ))
}

fn who(actor: &str, role: &str) -> Who {
    Some((actor.to_owned(), role.to_owned()))
}

/// JWTs through a real request: HS256 under `jwt_secret`, ES256 or EdDSA
/// under `jwt_public_key` (one key type per deployment), and every way a
/// token can be wrong is a 401.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_every_accepted_kind_authenticate_and_wrong_ones_do_not() {
    let es = ES256KeyPair::generate();
    let ed = Ed25519KeyPair::generate();
    let es_pem = es.public_key().to_pem().unwrap();
    let ed_pem = ed.public_key().to_pem();
    let es_host = app().env("SPIN_VARIABLE_JWT_PUBLIC_KEY", &es_pem).start();
    let ed_host = app().env("SPIN_VARIABLE_JWT_PUBLIC_KEY", &ed_pem).start();
    let now = now_s();
    let good = claims("alice", "operator");

    let minted = mint_hs256(
        TEST_JWT_SECRET,
        "ci-bot",
        Role::Approver,
        "spindle",
        "spindle",
        300,
        now,
    )
    .unwrap();
    let idp_roles = with(
        with(claims("bob@example.com", "x"), "role", Value::Null),
        "roles",
        json!([
            "billing-admin",
            "admin",
            "spindle:viewer",
            "spindle:approver",
            7
        ]),
    );
    let cases: Vec<(&str, &Host, String, Who)> = vec![
        // Accepted.
        (
            "HS256 as `spindle token` mints it",
            &es_host,
            minted,
            who("token:ci-bot", "approver"),
        ),
        (
            "HS256 built by hand",
            &ed_host,
            hs256(&good),
            who("token:alice", "operator"),
        ),
        (
            "ES256",
            &es_host,
            es256(&es, &good),
            who("token:alice", "operator"),
        ),
        (
            "EdDSA",
            &ed_host,
            eddsa(&ed, &good),
            who("token:alice", "operator"),
        ),
        (
            "an identity provider's roles list (the highest spindle:<role> wins; its own admin does not count)",
            &es_host,
            es256(&es, &idp_roles),
            who("token:bob@example.com", "approver"),
        ),
        (
            "expired 30 s ago, within the clock skew",
            &es_host,
            hs256(&with(good.clone(), "exp", json!(now - 30))),
            who("token:alice", "operator"),
        ),
        // Refused.
        (
            "expired 2 minutes ago",
            &es_host,
            hs256(&with(good.clone(), "exp", json!(now - 120))),
            None,
        ),
        (
            "ES256, expired 2 minutes ago",
            &es_host,
            es256(&es, &with(good.clone(), "exp", json!(now - 120))),
            None,
        ),
        (
            "no expiry",
            &es_host,
            hs256(&with(good.clone(), "exp", Value::Null)),
            None,
        ),
        (
            "not valid for another 5 minutes (nbf)",
            &es_host,
            hs256(&with(good.clone(), "nbf", json!(now + 300))),
            None,
        ),
        (
            "EdDSA, not valid yet (nbf)",
            &ed_host,
            eddsa(&ed, &with(good.clone(), "nbf", json!(now + 300))),
            None,
        ),
        (
            "another issuer",
            &es_host,
            es256(&es, &with(good.clone(), "iss", json!("someone-else"))),
            None,
        ),
        (
            "another audience",
            &ed_host,
            eddsa(&ed, &with(good.clone(), "aud", json!("another-api"))),
            None,
        ),
        (
            "no subject",
            &es_host,
            hs256(&with(good.clone(), "sub", Value::Null)),
            None,
        ),
        (
            "a role Spindle does not have",
            &es_host,
            hs256(&with(good.clone(), "role", json!("root"))),
            None,
        ),
        (
            "HS256, signature changed",
            &es_host,
            tampered_signature(&hs256(&good)),
            None,
        ),
        (
            "ES256, signature changed",
            &es_host,
            tampered_signature(&es256(&es, &good)),
            None,
        ),
        (
            "EdDSA, signature changed",
            &ed_host,
            tampered_signature(&eddsa(&ed, &good)),
            None,
        ),
        (
            "ES256, role raised to admin after signing",
            &es_host,
            tampered_claims(&es256(&es, &good), "admin"),
            None,
        ),
        (
            "HS256, role raised to admin after signing",
            &ed_host,
            tampered_claims(&hs256(&good), "admin"),
            None,
        ),
        (
            "HS256 under another secret",
            &es_host,
            hs256_raw(
                b"another-secret-0123456789abcdefghijklmn",
                &json!({"alg": "HS256"}),
                &good,
            ),
            None,
        ),
        (
            "ES256 from another key",
            &es_host,
            es256(&ES256KeyPair::generate(), &good),
            None,
        ),
        (
            "EdDSA from another key",
            &ed_host,
            eddsa(&Ed25519KeyPair::generate(), &good),
            None,
        ),
        (
            "EdDSA where the deployment's key is ES256",
            &es_host,
            eddsa(&ed, &good),
            None,
        ),
        (
            "ES256 where the deployment's key is Ed25519",
            &ed_host,
            es256(&es, &good),
            None,
        ),
        (
            "HS256 keyed with the public key (algorithm confusion)",
            &es_host,
            hs256_raw(es_pem.as_bytes(), &json!({"alg": "HS256"}), &good),
            None,
        ),
        (
            "alg none, no signature",
            &es_host,
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"}).to_string()),
                b64(good.to_string())
            ),
            None,
        ),
        (
            "alg none, with a valid token's signature",
            &es_host,
            {
                let sig = hs256(&good).rsplit_once('.').unwrap().1.to_owned();
                format!(
                    "{}.{}.{sig}",
                    b64(json!({"alg": "none"}).to_string()),
                    b64(good.to_string())
                )
            },
            None,
        ),
        (
            "alg HS512",
            &es_host,
            hs256_raw(TEST_JWT_SECRET.as_bytes(), &json!({"alg": "HS512"}), &good),
            None,
        ),
    ];
    for (what, host, token, expected) in &cases {
        assert_eq!(&whoami(host, token, what).await, expected, "{what}");
    }
    // Tokens work wherever a role is checked, not only on whoami: an
    // operator token may trigger but not register.
    let operator = hs256(&good);
    let a = call(
        &es_host,
        "post",
        "/trigger/nothing",
        &bearer(&operator),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = call(
        &es_host,
        "post",
        "/api/agents",
        &bearer(&operator),
        Some(&json!({"name": "x", "command": ["cat"]})),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text);
}

/// An API key's life: created by an admin and shown once, never listed
/// with its secret or hash, accepted in either header, its last use
/// recorded, refused the moment it is revoked; and only admins manage keys.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_is_shown_once_works_in_both_headers_and_dies_when_revoked() {
    let host = app().start();
    let before = now_ms();
    let a = admin(
        &host,
        "post",
        "/api/keys",
        Some(&json!({"name": "deploy-bot", "role": "operator", "expires_in_days": 30})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let created = a.body.clone();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("spk_{id}_")) && key.len() == 4 + 16 + 1 + 64);
    assert_eq!(
        a.header("location"),
        Some(format!("/api/keys/{id}").as_str())
    );
    assert_eq!(created["role"], "operator");
    assert_eq!(created["created_by"], "key:bootstrap");
    assert_eq!(created["active"], true);
    let created_ms = created["created_ms"].as_u64().unwrap();
    assert!((before..=now_ms()).contains(&created_ms));
    assert_eq!(
        created["expires_ms"].as_u64(),
        Some(created_ms + 30 * 86_400_000)
    );
    assert_eq!(created["last_used_ms"], Value::Null);

    // Never shown again: not listed, not readable, not stored.
    let secret = &key[key.len() - 64..];
    let hash = spindle_auth::keys::hash(&key);
    let listed = admin(&host, "get", "/api/keys", None).await;
    let one = admin(&host, "get", &format!("/api/keys/{id}"), None).await;
    for text in [&listed.text, &one.text] {
        assert!(!text.contains(secret) && !text.contains(&hash), "{text}");
        assert!(
            !text.contains("\"key\"") && !text.contains("sha256"),
            "{text}"
        );
    }
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    let stored = snapshot(&host.state_dir);
    let record = &stored[&("default".to_owned(), format!("apikey:{id}"))];
    assert!(!record.contains(secret), "the store keeps only the hash");
    assert!(
        !stored.values().any(|v| v.contains(secret)),
        "nowhere in the store"
    );

    // Either header works; both at once is refused.
    let used_from = now_ms();
    for cred in [bearer(&key), api_key(&key)] {
        let a = call(&host, "get", "/api/whoami", &cred, None).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.body,
            json!({"actor": "key:deploy-bot", "name": "deploy-bot", "role": "operator"})
        );
    }
    let a = anon_client()
        .get(host.url("/api/whoami"))
        .bearer_auth(&key)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 401);
    let one = admin(&host, "get", &format!("/api/keys/{id}"), None).await;
    let last_used = one.body["last_used_ms"].as_u64().expect("last_used_ms set");
    assert!((used_from..=now_ms()).contains(&last_used));

    // Only admins manage keys, whatever key they hold.
    let viewer = new_key(&host, "dashboard", "viewer").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for cred in [bearer(&viewer), bearer(&key)] {
        let body = json!({"name": "escalate", "role": "admin"});
        let a = call(&host, "post", "/api/keys", &cred, Some(&body)).await;
        assert_eq!(a.status, 403, "{}", a.text);
        let a = call(&host, "get", "/api/keys", &cred, None).await;
        assert_eq!(a.status, 403, "{}", a.text);
        let a = call(&host, "delete", &format!("/api/keys/{id}"), &cred, None).await;
        assert_eq!(a.status, 403, "{}", a.text);
    }
    // An admin key (not only the bootstrap key) may, and is named as the
    // creator.
    let root_key = new_key(&host, "ops-admin", "admin").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = call(
        &host,
        "post",
        "/api/keys",
        &api_key(&root_key),
        Some(&json!({"name": "second", "role": "viewer"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["created_by"], "key:ops-admin");
    let a = admin(
        &host,
        "post",
        "/api/keys",
        Some(&json!({"name": "Bad Name", "role": "root", "expires_in_days": 0})),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    let pointers: Vec<&str> = a.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/name", "/role", "/expires_in_days"]);

    // Revoked: refused at once, in both headers, and listed as revoked.
    let a = admin(&host, "delete", &format!("/api/keys/{id}"), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["active"], false);
    assert!(a.body["revoked_ms"].as_u64().is_some());
    for cred in [bearer(&key), api_key(&key)] {
        let a = call(&host, "get", "/api/whoami", &cred, None).await;
        a.unauthorized("a revoked key");
    }
    let a = call(&host, "post", "/trigger/anything", &bearer(&key), None).await;
    a.unauthorized("a revoked key triggering");
    let one = admin(&host, "get", &format!("/api/keys/{id}"), None).await;
    assert_eq!(one.body["active"], false);
    let a = admin(&host, "get", "/api/keys/0000000000000000", None).await;
    assert_eq!(a.status, 404);
    let a = admin(&host, "get", "/api/keys/not-an-id", None).await;
    assert_eq!(a.status, 400);
}

/// One answer of a burst: status and the headers that matter here.
#[derive(Debug)]
struct Hit {
    status: u16,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
    problem_type: Option<String>,
}

/// Sends `n` concurrent `POST path` per credential, the credentials'
/// requests interleaved, spread over `bases` in turn; returns each
/// credential's answers.
async fn burst(bases: &[&str], path: &str, creds: &[String], n: usize) -> Vec<Vec<Hit>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        for (c, cred) in creds.iter().enumerate() {
            let url = format!("{}{path}", bases[(i + c) % bases.len()]);
            let req = http.post(url).bearer_auth(cred);
            tasks.spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let num = |name: &str| {
                    headers
                        .get(name)
                        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
                };
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let hit = Hit {
                    status,
                    limit: num("ratelimit-limit"),
                    remaining: num("ratelimit-remaining"),
                    reset: num("ratelimit-reset"),
                    retry_after: num("retry-after"),
                    problem_type: body["type"].as_str().map(str::to_owned),
                };
                (c, hit)
            });
        }
    }
    let mut out: Vec<Vec<Hit>> = creds.iter().map(|_| Vec::new()).collect();
    while let Some(r) = tasks.join_next().await {
        let (c, hit) = r.unwrap();
        out[c].push(hit);
    }
    out
}

/// Runs `round` inside one rate-limit window: a window about to end is
/// waited out, and a round that straddled a window boundary anyway is run
/// again (`round` makes fresh callers, so counts never carry over). The
/// host and the test read the same clock.
async fn in_one_window<T, Fut: Future<Output = T>>(mut round: impl FnMut() -> Fut) -> T {
    for _ in 0..3 {
        let left = WINDOW_MS - now_ms() % WINDOW_MS;
        if left < 10_000 {
            tokio::time::sleep(Duration::from_millis(left + 100)).await;
        }
        let start = now_ms();
        let out = round().await;
        if start / WINDOW_MS == now_ms() / WINDOW_MS {
            return out;
        }
    }
    panic!("three rounds in a row straddled a window boundary");
}

/// One caller's answers to a burst against a limit of `limit`: exactly
/// `limit` let through (each told a distinct number of requests left),
/// the rest refused with 429, `Retry-After` and nothing left.
fn check_budget(hits: &[Hit], limit: u64, allowed_status: u16, what: &str) {
    let (allowed, refused): (Vec<&Hit>, Vec<&Hit>) =
        hits.iter().partition(|h| h.status == allowed_status);
    assert!(
        refused.iter().all(|h| h.status == 429),
        "{what}: {:?}",
        refused.iter().find(|h| h.status != 429)
    );
    assert_eq!(allowed.len() as u64, limit, "{what}: requests let through");
    let mut left: Vec<u64> = allowed
        .iter()
        .map(|h| {
            h.remaining.unwrap_or_else(|| {
                panic!("{what}: an answer let through has no RateLimit-Remaining: {h:?}")
            })
        })
        .collect();
    left.sort_unstable();
    assert_eq!(
        left,
        (0..limit).collect::<Vec<_>>(),
        "{what}: every request let through took one unit of the budget"
    );
    for h in &allowed {
        assert_eq!(h.limit, Some(limit), "{what}");
        assert!(h.reset.is_some_and(|r| (1..=60).contains(&r)), "{what}");
    }
    for h in &refused {
        assert_eq!(
            h.problem_type.as_deref(),
            Some("/docs/problems#rate-limited"),
            "{what}"
        );
        assert_eq!((h.limit, h.remaining), (Some(limit), Some(0)), "{what}");
        let reset = h.reset.expect("RateLimit-Reset");
        assert!((1..=60).contains(&reset), "{what}");
        assert_eq!(h.retry_after, Some(reset), "{what}: Retry-After");
    }
}

/// Makes `callers` fresh operator keys (through `hosts[0]`; the store is
/// shared) and has each send `per_caller` concurrent triggers of a workflow
/// that does not exist, spread over `hosts`, inside one rate-limit window.
/// A 404 takes from the budget like any answer: the limit is applied
/// before the route is looked at. Returns the keys and each one's answers.
async fn bursts(
    hosts: &[&Host],
    callers: usize,
    per_caller: usize,
) -> (Vec<String>, Vec<Vec<Hit>>) {
    let bases: Vec<&str> = hosts.iter().map(|h| h.base.as_str()).collect();
    in_one_window(|| async {
        let mut keys = Vec::new();
        for k in 0..callers {
            let name = format!("caller-{k}-{}", now_ms());
            let body = new_key(hosts[0], &name, "operator").await;
            keys.push(body["key"].as_str().unwrap().to_owned());
        }
        let hits = burst(&bases, "/trigger/ghost", &keys, per_caller).await;
        (keys, hits)
    })
    .await
}

/// Three callers bursting 120 triggers each, all at once, against a limit
/// of 60 a minute: each gets exactly its 60, the rest 429 with the headers
/// that say when to come back; a caller that sent nothing and the same
/// callers' reads are unaffected; `RateLimit-Remaining` counts down on
/// successful answers too.
#[tokio::test(flavor = "multi_thread")]
async fn each_caller_gets_exactly_its_budget_under_concurrent_bursts() {
    const LIMIT: u64 = 60;
    let host = app()
        .env("SPIN_VARIABLE_RATE_LIMIT_TRIGGER", &LIMIT.to_string())
        .start();
    register_workflow(&host, "noop-flow").await;
    let (keys, hits) = bursts(&[&host], 3, 120).await;
    for (k, hits) in hits.iter().enumerate() {
        check_budget(hits, LIMIT, 404, &format!("caller {k}"));
    }
    // Another caller's budget is untouched.
    let quiet = new_key(&host, "quiet", "operator").await;
    let a = call(
        &host,
        "post",
        "/trigger/ghost",
        &bearer(quiet["key"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(a.header("ratelimit-remaining"), Some("59"));
    // So is the read budget of the callers that ran out.
    let a = call(&host, "get", "/api/whoami", &bearer(&keys[0]), None).await;
    assert_eq!(a.status, 200, "{}", a.text);

    // Successful answers carry the headers and count down.
    let remaining = in_one_window(|| async {
        let k = new_key(&host, &format!("steady-{}", now_ms()), "operator").await;
        let cred = bearer(k["key"].as_str().unwrap());
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let a = call(&host, "post", "/trigger/noop-flow", &cred, Some(&json!({}))).await;
            assert_eq!(a.status, 202, "{}", a.text);
            assert_eq!(a.header("ratelimit-limit"), Some("60"));
            assert!(a.header("ratelimit-reset").is_some());
            assert_eq!(a.header("retry-after"), None);
            remaining.push(a.header("ratelimit-remaining").unwrap().to_owned());
        }
        remaining
    })
    .await;
    assert_eq!(remaining, ["59", "58", "57"]);
}

/// The budget lives in the shared store, not in a component instance: with
/// a fresh instance for every request, two callers' concurrent bursts are
/// still cut at exactly the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_holds_across_component_instances() {
    const LIMIT: u64 = 40;
    let host = app()
        .env("SPIN_VARIABLE_RATE_LIMIT_TRIGGER", &LIMIT.to_string())
        .arg("--instance-per-request")
        .start();
    let (_, hits) = bursts(&[&host], 2, 80).await;
    for (k, hits) in hits.iter().enumerate() {
        check_budget(
            hits,
            LIMIT,
            404,
            &format!("caller {k}, an instance per request"),
        );
    }
}

/// Two host processes serving one SQLite store, each answering half of a
/// caller's burst, let exactly the limit through between them.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_holds_across_two_hosts_on_one_store() {
    const LIMIT: u64 = 40;
    let state = tempfile::tempdir().unwrap();
    let [one, two] = [(); 2].map(|()| {
        app()
            .state_dir(state.path())
            .env("SPIN_VARIABLE_RATE_LIMIT_TRIGGER", &LIMIT.to_string())
            .start()
    });
    let (_, hits) = bursts(&[&one, &two], 2, 80).await;
    for (k, hits) in hits.iter().enumerate() {
        check_budget(hits, LIMIT, 404, &format!("caller {k} across two hosts"));
    }
}

/// The headers every answer carries, from every component, whatever the
/// status; request ids honoured when well-formed and replaced otherwise;
/// HSTS only over https; no CORS unless configured.
#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_a_request_id_and_the_security_headers() {
    let host = app().start();
    let admin_key = bearer(TEST_ADMIN_KEY);
    let cases: Vec<(&str, &str, Cred, Option<Value>, u16)> = vec![
        ("get", "/api/whoami", admin_key.clone(), None, 200),
        ("get", "/api/agents", None, None, 401),
        ("get", "/api/nothing-here", admin_key.clone(), None, 404),
        // Without a credential nothing is found or not found: 401 first.
        ("get", "/api/nothing-here", None, None, 401),
        ("post", "/trigger/Not_A_Name", None, None, 401),
        ("get", "/health/live", None, None, 200),
        ("get", "/health/ready", None, None, 200),
        ("get", "/docs/problems", None, None, 200),
        ("get", "/api/openapi.json", None, None, 200),
        ("get", "/api/docs", None, None, 200),
        ("post", "/api/docs", None, None, 405),
        ("post", "/jobs/r1.a.1/result", None, Some(json!({})), 401),
        ("post", "/internal/tick", None, None, 401),
        ("post", "/trigger/x", None, None, 401),
        ("post", "/approvals/1", None, None, 401),
        // Unsigned: refused before the body is parsed.
        ("post", "/webhooks/github", None, Some(json!({})), 401),
        // Answered by the host itself: no route matches.
        ("get", "/nope", None, None, 404),
        (
            "post",
            "/nothing/routes/here",
            admin_key.clone(),
            Some(json!({})),
            404,
        ),
        ("get", "/.well-known/spin/health", None, None, 200),
    ];
    let is_fresh_id = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let mut ids = BTreeSet::new();
    for (method, path, cred, body, status) in &cases {
        let what = format!("{} {path}", method.to_uppercase());
        let a = call(&host, method, path, cred, body.as_ref()).await;
        assert_eq!(a.status, *status, "{what}: {}", a.text);
        let id = a
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no id"));
        assert!(is_fresh_id(id), "{what}: {id}");
        ids.insert(id.to_owned());
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{what}");
        let public_docs = ["/docs/problems", "/api/openapi.json", "/api/docs"];
        let cache = if *status == 200 && public_docs.contains(path) {
            "public, max-age=300"
        } else {
            "no-store"
        };
        assert_eq!(a.header("cache-control"), Some(cache), "{what}");
        assert_eq!(a.header("strict-transport-security"), None, "{what}");
        if a.header("content-type") == Some("application/problem+json") {
            assert_eq!(a.body["request_id"].as_str(), Some(id), "{what}");
        }
        if *status == 404 && !path.starts_with("/api") {
            assert_eq!(a.body["type"], "/docs/problems#not-found", "{what}");
            assert_eq!(a.body["status"], 404, "{what}");
        }
    }
    assert_eq!(ids.len(), cases.len(), "every request has its own id");

    // A well-formed incoming id is kept, in the header and the problem.
    let long_ok = "a".repeat(128);
    for id in ["trace-42_a.b:c", long_ok.as_str()] {
        for (path, cred, status) in [
            ("/api/whoami", admin_key.clone(), 200),
            ("/api/whoami", None, 401),
            ("/health/live", None, 200),
            ("/nope", None, 404),
        ] {
            let a = call_with(
                &anon_client(),
                &host.url(path),
                "get",
                &cred,
                None,
                &[("x-request-id", id)],
            )
            .await;
            assert_eq!(a.status, status);
            assert_eq!(a.header("x-request-id"), Some(id), "{path}");
            if status >= 400 {
                assert_eq!(a.body["request_id"], id, "{path}");
            }
        }
    }
    // The host's request log lines carry it too, whoever answered.
    for (path, status) in [("/api/whoami", 200), ("/api/whoami", 401), ("/nope", 404)] {
        host.log_line(|l| {
            l["msg"] == "request"
                && l["request_id"] == "trace-42_a.b:c"
                && l["path"] == path
                && l["status"] == status
        });
    }
    // Anything else is replaced by a fresh id.
    let too_long = "a".repeat(129);
    let way_too_long = "b".repeat(200);
    for id in [
        "has spaces",
        "semi;colon",
        too_long.as_str(),
        way_too_long.as_str(),
    ] {
        for path in ["/api/agents", "/nope"] {
            let a = call_with(
                &anon_client(),
                &host.url(path),
                "get",
                &None,
                None,
                &[("x-request-id", id)],
            )
            .await;
            let got = a.header("x-request-id").unwrap();
            assert!(is_fresh_id(got), "{path}: {id:?} was answered with {got:?}");
            assert_eq!(a.body["request_id"], got, "{path}");
        }
    }

    // HSTS only when the request came over https.
    for (proto, hsts) in [
        ("https", Some("max-age=31536000; includeSubDomains")),
        ("http", None),
    ] {
        for (path, cred) in [
            ("/api/whoami", admin_key.clone()),
            ("/api/whoami", None),
            ("/nope", None),
        ] {
            let a = call_with(
                &anon_client(),
                &host.url(path),
                "get",
                &cred,
                None,
                &[("x-forwarded-proto", proto)],
            )
            .await;
            assert_eq!(
                a.header("strict-transport-security"),
                hsts,
                "{proto} {path}"
            );
        }
    }

    // No CORS unless configured: no browser origin may read an answer.
    let a = call_with(
        &anon_client(),
        &host.url("/api/whoami"),
        "get",
        &admin_key,
        None,
        &[("origin", "https://ui.example")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);
    let a = preflight(&host, "/api/agents", "https://ui.example").await;
    assert_ne!(a.status, 204);
    assert_eq!(a.header("access-control-allow-origin"), None);
}

async fn preflight(host: &Host, path: &str, origin: &str) -> Answer {
    call_with(
        &anon_client(),
        &host.url(path),
        "options",
        &None,
        None,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
    )
    .await
}

/// With `cors_origins` set, browsers from the listed origins (and only
/// those) may call the API: their preflights are answered without a
/// credential, and every answer names the origin.
#[tokio::test(flavor = "multi_thread")]
async fn cors_admits_the_listed_origins_only() {
    let host = app()
        .env(
            "SPIN_VARIABLE_CORS_ORIGINS",
            "https://ui.example, https://admin.example",
        )
        .start();
    for origin in ["https://ui.example", "https://admin.example"] {
        for (path, cred, status) in [
            ("/api/whoami", bearer(TEST_ADMIN_KEY), 200),
            ("/api/whoami", None, 401),
        ] {
            let a = call_with(
                &anon_client(),
                &host.url(path),
                "get",
                &cred,
                None,
                &[("origin", origin)],
            )
            .await;
            assert_eq!(a.status, status);
            assert_eq!(a.header("access-control-allow-origin"), Some(origin));
            assert_eq!(a.header("vary"), Some("origin"));
            let exposed = a.header("access-control-expose-headers").unwrap();
            assert!(exposed.contains("etag"), "{exposed}");
        }
        for path in ["/api/agents", "/trigger/x"] {
            let a = preflight(&host, path, origin).await;
            assert_eq!(a.status, 204, "{path}: {}", a.text);
            assert_eq!(a.header("access-control-allow-origin"), Some(origin));
            let methods = a.header("access-control-allow-methods").unwrap();
            assert!(methods.contains("POST"), "{methods}");
            let headers = a.header("access-control-allow-headers").unwrap();
            assert!(
                headers.contains("authorization") && headers.contains("x-api-key"),
                "{headers}"
            );
            // A polling client revalidates with If-None-Match and reads ETag.
            assert!(headers.contains("if-none-match"), "{headers}");
            assert!(a.header("x-request-id").is_some());
            assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        }
    }
    for origin in ["https://evil.example", "https://ui.example.evil", "null"] {
        let a = call_with(
            &anon_client(),
            &host.url("/api/whoami"),
            "get",
            &bearer(TEST_ADMIN_KEY),
            None,
            &[("origin", origin)],
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("access-control-allow-origin"), None, "{origin}");
        let a = preflight(&host, "/api/agents", origin).await;
        assert_ne!(a.status, 204, "{origin}");
        assert_eq!(a.header("access-control-allow-origin"), None, "{origin}");
    }
}

/// Who started a run and who cancelled it is on the run: the trigger's
/// actor and the first event's for the key that triggered it, the cancel
/// event's for the token that cancelled it; the API's audit line names the
/// token too.
#[tokio::test(flavor = "multi_thread")]
async fn runs_record_who_started_and_who_cancelled_them() {
    let host = app().start();
    register_workflow(&host, "deploy").await;
    let bot = new_key(&host, "deploy-bot", "operator").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = call(
        &host,
        "post",
        "/trigger/deploy",
        &bearer(&bot),
        Some(&json!({"ref": "main"})),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    let run = a.body["run_id"].as_str().unwrap().to_owned();
    let a = admin(&host, "post", "/trigger/deploy", Some(&json!({}))).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let by_admin = a.body["run_id"].as_str().unwrap().to_owned();

    let alice = mint_hs256(
        TEST_JWT_SECRET,
        "alice",
        Role::Operator,
        "spindle",
        "spindle",
        600,
        now_s(),
    )
    .unwrap();
    let a = call(
        &host,
        "post",
        &format!("/api/runs/{run}/cancel"),
        &bearer(&alice),
        Some(&json!({"reason": "wrong branch"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "cancelled");
    let cancel_request_id = a.header("x-request-id").unwrap().to_owned();

    let doc = admin(&host, "get", &format!("/api/runs/{run}"), None)
        .await
        .body;
    assert_eq!(doc["trigger"]["actor"], "key:deploy-bot");
    assert_eq!(doc["trigger"]["payload"], json!({"ref": "main"}));
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "run_created");
    assert_eq!(events[0]["actor"], "key:deploy-bot");
    let cancel = events
        .iter()
        .find(|e| e["kind"] == "cancel_requested")
        .unwrap_or_else(|| panic!("no cancel_requested event: {events:#?}"));
    assert_eq!(cancel["actor"], "token:alice");
    assert_eq!(cancel["detail"], "wrong branch");
    // Events nobody caused (the engine's own) name no actor.
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] != "run_created" && e["kind"] != "cancel_requested")
            .all(|e| e.get("actor").is_none()),
        "{events:#?}"
    );

    let doc = admin(&host, "get", &format!("/api/runs/{by_admin}"), None)
        .await
        .body;
    assert_eq!(doc["trigger"]["actor"], "key:bootstrap");
    assert_eq!(doc["events"][0]["actor"], "key:bootstrap");

    // The API's audit log names who cancelled, under the request's id.
    let log = std::fs::read_to_string(host.state_dir.join("logs/api_stdout.txt")).unwrap();
    let audit: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["audit"]["path"] == format!("/api/runs/{run}/cancel"))
        .unwrap_or_else(|| panic!("no audit line for the cancel in {log}"));
    assert_eq!(audit["audit"]["actor"], "token:alice");
    assert_eq!(audit["request_id"], cancel_request_id.as_str());
}

/// Requests served at the same time (by one component instance, which
/// serves up to 16 at once) each keep their own context: the request id
/// they sent, the rate-limit headers of their own caller's budget, and
/// their own caller as the actor recorded for what they change.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_keep_their_own_request_id_budget_and_actor() {
    const LIMIT: u64 = 1000;
    let host = app()
        .env("SPIN_VARIABLE_RATE_LIMIT_READ", &LIMIT.to_string())
        .start();
    let mut readers = Vec::new();
    for k in 0..8 {
        let body = new_key(&host, &format!("reader-{k}"), "viewer").await;
        readers.push(body["key"].as_str().unwrap().to_owned());
    }
    let mut admins = Vec::new();
    for k in 0..4 {
        let body = new_key(&host, &format!("admin-{k}"), "admin").await;
        admins.push(body["key"].as_str().unwrap().to_owned());
    }
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        for (k, key) in readers.iter().enumerate() {
            let id = format!("req-{k}-{i}");
            let req = http
                .get(host.url("/api/whoami"))
                .bearer_auth(key)
                .header("x-request-id", &id);
            tasks.spawn(async move {
                let a = req.send().await.unwrap();
                let header = |n: &str| a.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                let (got_id, remaining) = (header("x-request-id"), header("ratelimit-remaining"));
                let body: Value = a.json().await.unwrap();
                (k, id, got_id, remaining, body)
            });
        }
    }
    let mut left: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut wrong = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (k, id, got_id, remaining, body) = r.unwrap();
        assert_eq!(body["actor"], format!("key:reader-{k}"));
        if got_id.as_deref() != Some(id.as_str()) {
            wrong.push(format!("sent {id}, answered {got_id:?}"));
        }
        match remaining {
            Some(r) => left.entry(k).or_default().push(r.parse().unwrap()),
            None => wrong.push(format!("{id}: no RateLimit-Remaining")),
        }
    }
    for (k, mut l) in left {
        l.sort_unstable();
        if l != (LIMIT - 16..LIMIT).collect::<Vec<_>>() {
            wrong.push(format!("reader-{k} was told {l:?} requests left"));
        }
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        for (k, key) in admins.iter().enumerate() {
            let req = http
                .post(host.url("/api/keys"))
                .bearer_auth(key)
                .json(&json!({"name": format!("made-by-{k}-{i}"), "role": "viewer"}));
            tasks.spawn(async move {
                let body: Value = req.send().await.unwrap().json().await.unwrap();
                (k, body)
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        let (k, body) = r.unwrap();
        if body["created_by"] != format!("key:admin-{k}") {
            wrong.push(format!(
                "{} created by admin-{k} records {}",
                body["name"], body["created_by"]
            ));
        }
    }

    // Runs cancelled at once by different people: each cancel event names
    // the one who cancelled that run.
    register_workflow(&host, "long").await;
    let mut runs = Vec::new();
    for _ in 0..16 {
        let a = admin(&host, "post", "/trigger/long", Some(&json!({}))).await;
        assert_eq!(a.status, 202, "{}", a.text);
        runs.push(a.body["run_id"].as_str().unwrap().to_owned());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, run) in runs.iter().enumerate() {
        let sub = format!("op-{}", i % 4);
        let token = mint_hs256(
            TEST_JWT_SECRET,
            &sub,
            Role::Operator,
            "spindle",
            "spindle",
            600,
            now_s(),
        )
        .unwrap();
        let req = http
            .post(host.url(&format!("/api/runs/{run}/cancel")))
            .bearer_auth(token);
        let run = run.clone();
        tasks.spawn(async move {
            let status = req.send().await.unwrap().status().as_u16();
            (run, sub, status)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (run, sub, status) = r.unwrap();
        assert_eq!(status, 200, "cancel {run}");
        let doc = admin(&host, "get", &format!("/api/runs/{run}"), None)
            .await
            .body;
        let actor = doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "cancel_requested")
            .map(|e| e["actor"].clone());
        if actor != Some(json!(format!("token:{sub}"))) {
            wrong.push(format!("{run} cancelled by {sub} records {actor:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} mix-ups: {wrong:#?}", wrong.len());
}

/// Guessing credentials is limited by client address: past the write limit
/// a refused credential gets 429 (with `Retry-After`), not another 401,
/// while a valid credential from the same address keeps its own budget.
#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_meet_the_write_limit_of_their_address() {
    const LIMIT: usize = 5;
    let host = app()
        .env("SPIN_VARIABLE_RATE_LIMIT_WRITE", &LIMIT.to_string())
        .start();
    let (statuses, last) = in_one_window(|| async {
        let mut statuses = Vec::new();
        let mut last = None;
        for i in 0..LIMIT + 3 {
            let a = call(
                &host,
                "get",
                "/api/agents",
                &bearer(&format!("spk_{:016x}_{}", i, "0".repeat(64))),
                None,
            )
            .await;
            statuses.push(a.status);
            last = Some(a);
        }
        (statuses, last)
    })
    .await;
    assert_eq!(&statuses[..LIMIT], &[401; LIMIT], "{statuses:?}");
    assert_eq!(&statuses[LIMIT..], &[429, 429, 429], "{statuses:?}");
    let last = last.unwrap();
    assert_eq!(last.body["type"], "/docs/problems#rate-limited");
    assert!(last.header("retry-after").is_some());
    // The admin, from the same address, is not locked out.
    let ok = admin(&host, "get", "/api/agents", None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

/// Runs the `spindle` CLI with `args`, its credentials only from what the
/// test gives it (`env`, and the secrets file the arguments name); returns
/// whether it succeeded, its stdout and its stderr.
fn spindle_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(spindle_tests::spindle_bin());
    cmd.args(args);
    for name in [
        "SPINDLE_API_KEY",
        "SPINDLE_URL",
        "SPIN_VARIABLE_ADMIN_KEY",
        "SPIN_VARIABLE_JWT_SECRET",
        "SPIN_VARIABLE_JWT_ISSUER",
        "SPIN_VARIABLE_JWT_AUDIENCE",
    ] {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `spindle keys create`, `list` and `revoke` against a running app, and
/// `spindle token`, reading the admin key and the JWT secret from the
/// secrets file `scripts/up` writes (or the environment): the credentials
/// they print work, a revoked key stops working at once, and a refusal is
/// a failed command that says why.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_keys_and_mints_tokens_that_work() {
    let host = app().start();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.env");
    std::fs::write(
        &secrets,
        format!(
            "SPIN_VARIABLE_CALLBACK_SECRET=unused\nSPIN_VARIABLE_ADMIN_KEY={TEST_ADMIN_KEY}\nSPIN_VARIABLE_JWT_SECRET={TEST_JWT_SECRET}\n"
        ),
    )
    .unwrap();
    let secrets = secrets.to_str().unwrap();
    let target = ["--url", host.base.as_str(), "--secrets", secrets];
    let keys = |args: &[&str], env: &[(&str, &str)]| {
        let all: Vec<&str> = ["keys"]
            .iter()
            .chain(args)
            .chain(&target)
            .copied()
            .collect();
        spindle_cli(&all, env)
    };

    // Created: the key on stdout (alone, for scripts), the rest on stderr.
    let (ok, out, err) = keys(&["create", "--name", "ci", "--role", "operator"], &[]);
    assert!(ok, "{err}");
    let key = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(key.starts_with("spk_"), "{out}");
    let id = key[4..20].to_owned();
    assert!(
        err.contains(&format!("created key {id} (ci, role operator)")),
        "{err}"
    );
    assert_eq!(
        whoami(&host, &key, "the CLI's key").await,
        who("key:ci", "operator")
    );
    let (ok, out, err) = keys(
        &[
            "create",
            "--name",
            "ops",
            "--role",
            "admin",
            "--expires-in-days",
            "1",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let ops = out.trim().to_owned();

    // Listed without secrets; an admin key in the environment is used
    // before the file's.
    let (ok, out, err) = keys(&["list"], &[("SPINDLE_API_KEY", &ops)]);
    assert!(ok, "{err}");
    assert!(
        !out.contains(&key[21..]) && !out.contains(&ops[21..]),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} is not listed: {out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words, [id.as_str(), "ci", "operator", "active"], "{out}");
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .eq([&ops[4..20], "ops", "admin", "active"])),
        "{out}"
    );
    let (ok, _, err) = keys(
        &["list"],
        &[("SPINDLE_API_KEY", "spk_0123456789abcdef_nope")],
    );
    assert!(!ok);
    assert!(err.contains("401"), "{err}");

    // Revoked: refused at once, and listed as such.
    let (ok, out, err) = keys(&["revoke", &id], &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("revoked {id}"));
    assert_eq!(whoami(&host, &key, "a key the CLI revoked").await, None);
    let (_, out, _) = keys(&["list"], &[]);
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .eq([id.as_str(), "ci", "operator", "revoked"])),
        "{out}"
    );
    // An id that is not one never reaches the app.
    let (ok, _, err) = keys(&["revoke", "../agents/x"], &[]);
    assert!(!ok);
    assert!(err.contains("is not a key id"), "{err}");

    // Tokens, under the app's JWT secret from the file.
    let (ok, out, err) = spindle_cli(
        &[
            "token",
            "--sub",
            "alice",
            "--role",
            "approver",
            "--secrets",
            secrets,
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(
        whoami(&host, out.trim(), "the CLI's token").await,
        who("token:alice", "approver")
    );
    // A token for another audience than the app's is refused by the app.
    let (ok, out, err) = spindle_cli(
        &[
            "token",
            "--sub",
            "bob",
            "--role",
            "admin",
            "--secrets",
            secrets,
        ],
        &[("SPIN_VARIABLE_JWT_AUDIENCE", "elsewhere")],
    );
    assert!(ok, "{err}");
    assert_eq!(whoami(&host, out.trim(), "another audience").await, None);
    // Without a secret anywhere, nothing is minted.
    let (ok, out, err) = spindle_cli(
        &[
            "token",
            "--sub",
            "carol",
            "--role",
            "viewer",
            "--secrets",
            "/nonexistent",
        ],
        &[],
    );
    assert!(!ok && out.is_empty());
    assert!(err.contains("no JWT secret"), "{err}");
}

/// Worker callbacks and the tick are never rate limited: they are signed,
/// and limiting them would stall runs. With every class limited to one
/// request a minute, a guarded route meets its limit at once while the
/// callbacks and the tick are all answered on their merits, with no
/// rate-limit headers.
#[tokio::test(flavor = "multi_thread")]
async fn callbacks_and_the_tick_are_not_rate_limited() {
    let host = app()
        .env("SPIN_VARIABLE_RATE_LIMIT_WRITE", "1")
        .env("SPIN_VARIABLE_RATE_LIMIT_TRIGGER", "1")
        .env("SPIN_VARIABLE_RATE_LIMIT_READ", "1")
        .start();
    let statuses = in_one_window(|| async {
        let mut guarded = Vec::new();
        for _ in 0..3 {
            guarded.push(admin(&host, "get", "/api/agents", None).await.status);
        }
        guarded
    })
    .await;
    assert_eq!(statuses, [200, 429, 429]);
    let http = anon_client();
    for i in 0..20 {
        let tick = http
            .post(host.url("/internal/tick"))
            .bearer_auth(spindle_tests::TEST_TICK_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(tick.status(), 200, "tick {i}");
        assert!(tick.headers().get("ratelimit-limit").is_none());
        for action in ["heartbeat", "result"] {
            let a = call_with(
                &http,
                &host.url(&format!("/jobs/r1-1.a.1/{action}")),
                "post",
                &None,
                Some(b"{}"),
                &[("x-spindle-signature", "sha256=00")],
            )
            .await;
            assert_ne!(a.status, 429, "{action} {i}: {}", a.text);
            assert!(a.status < 500, "{action} {i}: {}", a.text);
            assert_eq!(a.header("ratelimit-limit"), None, "{action} {i}");
        }
    }
}

/// The metrics' counts of refused authentications, by reason.
fn auth_failures(state_dir: &Path) -> BTreeMap<String, i64> {
    use spindle_core::metrics::AUTH_FAILURES;
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("sqlite_key_value.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for reason in [
        "missing",
        "malformed",
        "unknown",
        "expired",
        "revoked",
        "invalid_token",
    ] {
        let key = AUTH_FAILURES.count_key(&AUTH_FAILURES.series(&[reason]));
        let value: Option<Vec<u8>> = db
            .query_row(
                "SELECT value FROM spin_key_value WHERE key = ?1",
                [&key],
                |r| r.get(0),
            )
            .ok();
        if let Some(value) = value {
            let n = i64::from_le_bytes(<[u8; 8]>::try_from(value.as_slice()).unwrap());
            out.insert(reason.to_owned(), n);
        }
    }
    out
}

/// Each refused authentication is counted under its reason (for the
/// metrics), and an API key past its expiry is refused end to end, like a
/// revoked one.
#[tokio::test(flavor = "multi_thread")]
async fn refused_authentications_are_counted_by_reason_and_expired_keys_refused() {
    let host = app().start();
    let created = admin(
        &host,
        "post",
        "/api/keys",
        Some(&json!({"name": "short-lived", "role": "viewer", "expires_in_days": 1})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        whoami(&host, &key, "a fresh key").await,
        who("key:short-lived", "viewer")
    );
    // A day is long for a test: move the key's expiry into the past in the
    // store, as time would.
    {
        let db = rusqlite::Connection::open(host.state_dir.join("sqlite_key_value.db")).unwrap();
        let record: Vec<u8> = db
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
                [format!("apikey:{id}")],
                |r| r.get(0),
            )
            .unwrap();
        let mut record: Value = serde_json::from_slice(&record).unwrap();
        record["expires_ms"] = json!(now_ms() - 1000);
        db.execute(
            "UPDATE spin_key_value SET value = ?1 WHERE store = 'default' AND key = ?2",
            rusqlite::params![record.to_string().into_bytes(), format!("apikey:{id}")],
        )
        .unwrap();
    }
    let revoked = new_key(&host, "gone", "viewer").await;
    let a = admin(
        &host,
        "delete",
        &format!("/api/keys/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);

    let before = auth_failures(&host.state_dir);
    let unknown = format!("spk_{}_{}", "0".repeat(16), "0".repeat(64));
    let wrong_key_token = hs256_raw(
        b"another-secret-0123456789abcdefghijkl",
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims("mallory", "admin"),
    );
    let cases: [(&str, Cred, &str); 6] = [
        ("missing", None, "no credential"),
        (
            "malformed",
            Some(("authorization", "Basic eDp5".into())),
            "not a bearer",
        ),
        ("unknown", bearer(&unknown), "an unknown key"),
        ("expired", bearer(&key), "an expired key"),
        (
            "revoked",
            api_key(revoked["key"].as_str().unwrap()),
            "a revoked key",
        ),
        (
            "invalid_token",
            bearer(&wrong_key_token),
            "a token signed with another key",
        ),
    ];
    for (_, cred, what) in &cases {
        let a = call(&host, "get", "/api/whoami", cred, None).await;
        a.unauthorized(what);
    }
    let after = auth_failures(&host.state_dir);
    for (reason, _, what) in &cases {
        let moved =
            after.get(*reason).copied().unwrap_or(0) - before.get(*reason).copied().unwrap_or(0);
        assert_eq!(
            moved, 1,
            "{what}: spindle_auth_failures_total{{reason={reason}}} {before:?} -> {after:?}"
        );
    }
    // The expired key stays listed as such.
    let listed = admin(&host, "get", &format!("/api/keys/{id}"), None).await;
    assert_eq!(listed.body["active"], false, "{}", listed.text);
}
