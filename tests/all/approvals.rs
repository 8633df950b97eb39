//! Approvals end to end: the real host and components, a real worker
//! running the reference patcher agent, API keys of every role, real HTTP.
//! A risky step parks its run; only approvers release it; rejection,
//! expiry, two approvers, self-approval and signed links do what the
//! policy says; racing decisions end in exactly one outcome.

use serde_json::{Value, json};
use spindle_tests::{client, client_with, root};

use crate::engine::{Stack, stack_with, step};

/// A patch of `config/app.env` that the patcher applies to the file below.
const DIFF: &str = "diff --git a/config/app.env b/config/app.env\n--- a/config/app.env\n+++ b/config/app.env\n@@ -1 +1,2 @@\n HOST=example.org\n+PORT=8080\n";
/// A patch that adds a private key: critical, two approvers.
const KEY_DIFF: &str = "diff --git a/deploy/id_rsa b/deploy/id_rsa\nnew file mode 100600\n--- /dev/null\n+++ b/deploy/id_rsa\n@@ -0,0 +1,3 @@\n+-----BEGIN OPENSSH PRIVATE KEY-----\n+b3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n+-----END OPENSSH PRIVATE KEY-----\n";

struct App {
    s: Stack,
    /// Keys by name: alice and bob (approvers), vic (viewer), olga
    /// (operator), carl (operator, triggers runs).
    keys: std::collections::BTreeMap<&'static str, String>,
}

async fn app() -> App {
    let s = stack_with(&[&[]]);
    for name in ["security-scanner", "patcher"] {
        let text = std::fs::read_to_string(root().join(format!("agents/{name}.json"))).unwrap();
        let (st, v) = s
            .post("/api/agents", &serde_json::from_str(&text).unwrap())
            .await;
        assert_eq!(st, 201, "{name}: {v}");
    }
    s.workflow(json!({"name": "fix", "steps": [
        {"id": "scan", "agent": "security-scanner", "input": {"diff": "{{ trigger.payload.diff }}"}},
        {"id": "patch", "agent": "patcher", "needs": ["scan"],
         "input": {"patch": "{{ trigger.payload.diff }}",
                   "files": [{"path": "config/app.env", "content": "HOST=example.org\n"}]}}
    ]}))
    .await;
    let mut keys = std::collections::BTreeMap::new();
    for (name, role) in [
        ("alice", "approver"),
        ("bob", "approver"),
        ("vic", "viewer"),
        ("olga", "operator"),
        ("carl", "operator"),
    ] {
        let (st, v) = s
            .post("/api/keys", &json!({"name": name, "role": role}))
            .await;
        assert_eq!(st, 201, "{v}");
        keys.insert(name, v["key"].as_str().unwrap().to_owned());
    }
    App { s, keys }
}

impl App {
    async fn call(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let c = match who {
            Some("admin") => client(),
            Some(k) => client_with(Some(&self.keys[k])),
            None => client_with(None),
        };
        let url = self.s.host.url(path);
        let req = match method {
            "GET" => c.get(url),
            "PUT" => c.put(url),
            _ => c.post(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Triggers `fix` as `who` with `diff`; waits for the patch step to
    /// park; returns the run id and its approval.
    async fn parked(&self, who: &str, diff: &str) -> (String, Value) {
        let (st, v) = self
            .call(
                Some(who),
                "POST",
                "/trigger/fix",
                Some(json!({"diff": diff})),
            )
            .await;
        assert_eq!(st, 202, "{v}");
        let run = v["run_id"].as_str().unwrap().to_owned();
        let r = self
            .s
            .wait(&run, 30, |v| v["status"] == "waiting_approval")
            .await;
        assert_eq!(
            step(&r, "patch")["attempts"],
            json!([]),
            "nothing dispatched"
        );
        (run.clone(), self.pending(&run).await)
    }

    /// The run's one pending approval.
    async fn pending(&self, run: &str) -> Value {
        let (st, list) = self
            .call(
                Some("vic"),
                "GET",
                &format!("/approvals?run={run}&status=pending"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{list}");
        let list = list["approvals"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{list:#?}");
        let id = list[0]["id"].as_str().unwrap();
        let (st, a) = self
            .call(Some("vic"), "GET", &format!("/approvals/{id}"), None)
            .await;
        assert_eq!(st, 200, "{a}");
        // The listing leaves out only the input, which one approval shows.
        assert!(list[0].get("input").is_none(), "{:#}", list[0]);
        let mut without_input = a.clone();
        without_input.as_object_mut().unwrap().remove("input");
        assert_eq!(without_input, list[0]);
        assert!(a["input"].is_object(), "{a:#}");
        a
    }

    /// Links for `approver` to approval `id`, minted as `who`.
    async fn mint(&self, who: &str, id: &str, approver: &str) -> (u16, Value) {
        self.call(
            Some(who),
            "POST",
            &format!("/approvals/{id}/links"),
            Some(json!({"approver": approver})),
        )
        .await
    }

    async fn decide(&self, who: Option<&str>, id: &str, decision: &str) -> (u16, Value) {
        self.call(
            who,
            "POST",
            &format!("/approvals/{id}/decision"),
            Some(json!({"decision": decision, "comment": format!("{decision} by test")})),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_approvers_release_a_parked_patch_and_it_then_runs() {
    let a = app().await;
    let (run, approval) = a.parked("carl", DIFF).await;
    let id = approval["id"].as_str().unwrap();
    assert_eq!(approval["status"], "pending");
    assert_eq!(approval["requested_by"], "key:carl");
    assert_eq!(approval["approvers_needed"], 1);
    assert!(approval["preview"].as_str().unwrap().contains("+PORT=8080"));
    assert_eq!(approval["input_sha256"].as_str().unwrap().len(), 64);
    assert!(approval["expires_at_ms"].as_u64().is_some());

    let (st, list) = a
        .call(Some("vic"), "GET", "/approvals?status=pending", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1, "{list}");

    // Nobody below approver decides; nothing changes when they try.
    assert_eq!(a.decide(None, id, "approve").await.0, 401);
    for who in ["vic", "olga"] {
        let (st, p) = a.decide(Some(who), id, "approve").await;
        assert_eq!(st, 403, "{who}: {p}");
    }
    let (st, p) = a.decide(Some("alice"), id, "maybe").await;
    assert_eq!(st, 400);
    assert_eq!(p["errors"][0]["pointer"], "/decision");
    let r = a.s.get(&format!("/api/runs/{run}")).await.1;
    assert_eq!(r["status"], "waiting_approval");

    let (st, d) = a.decide(Some("alice"), id, "approve").await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["result"], "approved_and_dispatched");
    let r = a.s.finished(&run, 60).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(step(&r, "patch")["output"]["applied"], true);
    assert!(
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "step_approved" && e["actor"] == "key:alice")
    );

    // A late decision is refused and changes nothing.
    let (st, p) = a.decide(Some("bob"), id, "reject").await;
    assert_eq!(st, 409, "{p}");
    assert_eq!(
        a.s.get(&format!("/api/runs/{run}")).await.1["status"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejection_self_approval_and_two_approvers() {
    let a = app().await;
    // Alice started it: she may not approve it, but Bob may reject it.
    let (run, approval) = a.parked("alice", DIFF).await;
    let id = approval["id"].as_str().unwrap();
    let (st, p) = a.decide(Some("alice"), id, "approve").await;
    assert_eq!(st, 403, "{p}");
    assert_eq!(p["type"], "/docs/problems#self-approval");
    let (st, d) = a.decide(Some("bob"), id, "reject").await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["result"], "rejected");
    let r = a.s.finished(&run, 30).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(step(&r, "patch")["error"]["kind"], "rejected");

    // A private key is critical: two approvers, each counted once. Even
    // the scanner (an auto agent) waits: its input carries the key.
    let (run, approval) = a.parked("carl", KEY_DIFF).await;
    let id = approval["id"].as_str().unwrap();
    assert_eq!(approval["step"], "scan");
    assert_eq!(approval["level"], "critical", "{approval:#}");
    assert!(
        approval["matched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["rule"] == "private-key-material"),
        "{approval:#}"
    );
    assert_eq!(approval["approvers_needed"], 2);
    let (st, d) = a.decide(Some("alice"), id, "approve").await;
    assert_eq!(
        (st, d["result"].clone()),
        (200, json!("waiting_for_approvers")),
        "{d}"
    );
    assert_eq!(d["remaining"], 1);
    let (st, p) = a.decide(Some("alice"), id, "approve").await;
    assert_eq!(st, 409);
    assert_eq!(p["type"], "/docs/problems#already-decided");
    let r = a.s.get(&format!("/api/runs/{run}")).await.1;
    assert_eq!(step(&r, "scan")["attempts"], json!([]));
    let (st, d) = a.decide(Some("bob"), id, "approve").await;
    assert_eq!(
        (st, d["result"].clone()),
        (200, json!("approved_and_dispatched")),
        "{d}"
    );
    // Then the patch, with the same key, waits for two approvers of its own.
    a.s.wait(&run, 30, |v| {
        step(v, "patch")["status"] == "waiting_approval"
    })
    .await;
    let patch = a.pending(&run).await;
    assert_eq!(
        (patch["step"].clone(), patch["approvers_needed"].clone()),
        (json!("patch"), json!(2))
    );
}

/// The path of a link's URL (its base is the app's `public_url`).
fn link_path(url: &str) -> &str {
    &url[url.find("/approvals/").unwrap()..]
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_links_work_once_and_forged_ones_never() {
    let a = app().await;
    let (run, approval) = a.parked("carl", DIFF).await;
    let id = approval["id"].as_str().unwrap();
    // Only an admin mints links for someone else.
    let (st, _) = a.mint("alice", id, "key:bob").await;
    assert_eq!(st, 403);
    let (st, links) = a.mint("admin", id, "key:bob").await;
    assert_eq!(st, 201, "{links}");
    // Minting is audited like any other change (who gave whom a way to
    // decide, until when), and the links themselves are never logged.
    let log = std::fs::read_to_string(a.s.host.state_dir.join("logs/approve_stdout.txt")).unwrap();
    let minted = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["audit"]["kind"] == "approval_link_minted" && l["audit"]["approval"] == id)
        .unwrap_or_else(|| panic!("no audit line for the minted links in {log}"));
    assert_eq!(minted["audit"]["actor"], "key:bootstrap", "{minted}");
    assert_eq!(minted["audit"]["approver"], "key:bob", "{minted}");
    assert_eq!(minted["audit"]["expires_at_ms"], links["expires_at_ms"]);
    assert_eq!(minted["run"], run.as_str(), "{minted}");
    assert!(minted["request_id"].is_string(), "{minted}");
    let host_log = a.s.host.stderr();
    for verdict in ["approve", "reject"] {
        let token = links[verdict]["token"].as_str().unwrap();
        assert!(!log.contains(token) && !host_log.contains(token));
    }
    // Only for someone who may approve: not an operator's key.
    let (st, p) = a.mint("admin", id, "key:olga").await;
    assert_eq!(st, 400, "{p}");
    assert_eq!(p["errors"][0]["pointer"], "/approver");
    let url = links["approve"]["url"].as_str().unwrap();
    let path = link_path(url);

    // Opening it decides nothing (chat previews fetch links).
    let page = client_with(None)
        .get(a.s.host.url(path))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\"") && html.contains("+PORT=8080"));
    assert!(!html.contains("<script"));
    assert_eq!(
        a.s.get(&format!("/api/runs/{run}")).await.1["status"],
        "waiting_approval"
    );

    // A forged link (another decision under the same signature) is refused.
    let token = path.rsplit('/').next().unwrap();
    let (payload, sig) = token.split_once('.').unwrap();
    let forged = format!("/approvals/link/{}A.{sig}", payload);
    let (st, p) = a.call(None, "POST", &forged, Some(json!({}))).await;
    assert_eq!(st, 401, "{p}");
    assert_eq!(p["type"], "/docs/problems#bad-link");

    let (st, d) = a
        .call(None, "POST", path, Some(json!({"comment": "from chat"})))
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["result"], "approved_and_dispatched");
    assert_eq!(d["approval"]["decisions"][0]["by"], "key:bob");
    assert_eq!(d["approval"]["decisions"][0]["via_link"], true);
    let (st, p) = a.call(None, "POST", path, Some(json!({}))).await;
    assert_eq!(st, 409);
    assert_eq!(p["type"], "/docs/problems#link-used");
    assert_eq!(a.s.finished(&run, 60).await["status"], "succeeded");

    // A link dies with its approver's key.
    let (run, approval) = a.parked("carl", DIFF).await;
    let id = approval["id"].as_str().unwrap();
    let (_, links) = a.mint("admin", id, "key:bob").await;
    let url = links["approve"]["url"].as_str().unwrap();
    let path = link_path(url).to_owned();
    let (_, keys) = a.call(Some("admin"), "GET", "/api/keys", None).await;
    let bob = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client()
        .delete(a.s.host.url(&format!("/api/keys/{bob}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (st, p) = a.call(None, "POST", &path, Some(json!({}))).await;
    assert_eq!(st, 403, "{p}");
    assert_eq!(
        a.s.get(&format!("/api/runs/{run}")).await.1["status"],
        "waiting_approval"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_approval_expires_per_policy() {
    let a = app().await;
    let (st, p) = a
        .call(
            Some("alice"),
            "PUT",
            "/api/policies/approvals",
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 403, "only an admin sets the policy: {p}");
    let (st, p) = a
        .call(
            Some("admin"),
            "PUT",
            "/api/policies/approvals",
            Some(json!({"levels": {
                "low": {"expires_in_secs": 2, "on_expiry": "cancel"},
                "medium": {"expires_in_secs": 2, "on_expiry": "cancel"},
                "high": {"expires_in_secs": 2, "on_expiry": "cancel"},
                "critical": {"expires_in_secs": 2, "on_expiry": "cancel", "approvers": 2}
            }})),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    let (st, p) = a
        .call(Some("admin"), "PUT", "/api/policies/approvals", Some(json!({"rules": [{"id": "x", "category": "c", "level": "high", "pattern": "(", "reason": "r"}]})))
        .await;
    assert_eq!(st, 400);
    assert_eq!(p["errors"][0]["pointer"], "/rules/0/pattern", "{p}");
    let (_, policy) = a
        .call(Some("vic"), "GET", "/api/policies/approvals", None)
        .await;
    assert_eq!(policy["default"], false);
    assert_eq!(policy["levels"]["high"]["expires_in_secs"], 2);
    assert!(
        policy["rules"].as_array().unwrap().len() > 10,
        "the default rules stay"
    );
    let (run, approval) = a.parked("carl", DIFF).await;
    assert_eq!(approval["on_expiry"], "cancel", "{approval:#}");
    let r = a.s.finished(&run, 30).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
    let id = approval["id"].as_str().unwrap();
    let (_, v) = a
        .call(Some("vic"), "GET", &format!("/approvals/{id}"), None)
        .await;
    assert_eq!(v["status"], "expired");
    let (st, _) = a.decide(Some("alice"), id, "approve").await;
    assert_eq!(st, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_racing_decisions_end_in_one_outcome() {
    let a = app().await;
    let (run, approval) = a.parked("carl", DIFF).await;
    let id = approval["id"].as_str().unwrap().to_owned();
    let who = ["alice", "bob", "admin"];
    // Keys, not clients: each task builds its own request.
    let host = a.s.host.url("");
    let keys = a.keys.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = match who[i % who.len()] {
            "admin" => client(),
            k => client_with(Some(&keys[k])),
        };
        let url = format!("{host}/approvals/{id}/decision");
        tasks.spawn(async move {
            let decision = if i % 4 == 0 { "reject" } else { "approve" };
            let resp = c
                .post(url)
                .json(&json!({"decision": decision}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    let answers: Vec<(u16, Value)> = tasks.join_all().await;
    let wins: Vec<&Value> = answers
        .iter()
        .filter(|(st, d)| *st == 200 && d["result"] != "waiting_for_approvers")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(wins.len(), 1, "{answers:#?}");
    for (st, d) in &answers {
        assert!(*st == 200 || *st == 409, "{st}: {d}");
    }
    let r = a.s.finished(&run, 60).await;
    let attempts = step(&r, "patch")["attempts"].as_array().unwrap().len();
    if wins[0]["result"] == "rejected" {
        assert_eq!(r["status"], "failed");
        assert_eq!(attempts, 0);
    } else {
        assert_eq!(r["status"], "succeeded");
        assert_eq!(attempts, 1, "dispatched once");
    }
}
