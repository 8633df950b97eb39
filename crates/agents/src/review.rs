//! `code-reviewer` and `compliance-checker`.
//!
//! `code-reviewer` input: `{"diff": "..."}`; output: `{"comments": [{"file",
//! "line", "severity", "message"}], "verdict": "approve" | "comment" |
//! "request_changes", "stats": {"files", "added"}}`.
//!
//! `compliance-checker` input: `{"findings": [...]?, "diff": "..."?,
//! "files": [{"path"}]?, "policy": {"max_high": 0, "max_medium": n,
//! "require_license": bool}?}`; output: `{"compliant": bool, "violations":
//! [{"rule", "detail"}], "checked": [...]}`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::diff::added_lines;
use crate::{Failure, field};

const MAX_LINE: usize = 120;

pub fn run(input: Value) -> Result<Value, Failure> {
    let diff = field(&input, "diff")?;
    let added = added_lines(diff);
    let mut comments = Vec::new();
    let mut note = |a: &crate::diff::Added, severity: &str, message: String| {
        comments.push(
            json!({"file": a.file, "line": a.line, "severity": severity, "message": message}),
        );
    };
    for a in &added {
        let t = a.text.trim();
        if ["TODO", "FIXME", "XXX"].iter().any(|m| t.contains(m)) {
            note(a, "info", "new TODO/FIXME: track it in an issue".into());
        }
        if [
            "console.log(",
            "dbg!(",
            "println!(\"debug",
            "pdb.set_trace()",
            "debugger;",
        ]
        .iter()
        .any(|m| t.contains(m))
        {
            note(a, "warning", "debugging statement left in".into());
        }
        if a.text.chars().count() > MAX_LINE {
            note(a, "info", format!("line longer than {MAX_LINE} characters"));
        }
        if t.contains(".unwrap()") && !a.file.contains("test") {
            note(
                a,
                "warning",
                "unwrap() outside tests: handle the error".into(),
            );
        }
        if a.text.ends_with(' ') || a.text.ends_with('\t') {
            note(a, "info", "trailing whitespace".into());
        }
    }
    let files: BTreeSet<&str> = added.iter().map(|a| a.file.as_str()).collect();
    if added.len() > 400 {
        comments.push(json!({"file": "", "line": 0, "severity": "warning",
            "message": format!("{} added lines: consider splitting the change", added.len())}));
    }
    let warnings = comments
        .iter()
        .filter(|c| c["severity"] == "warning")
        .count();
    let verdict = match (warnings, comments.len()) {
        (0, 0) => "approve",
        (0, _) => "comment",
        _ => "request_changes",
    };
    Ok(json!({
        "comments": comments,
        "verdict": verdict,
        "stats": {"files": files.len(), "added": added.len()},
    }))
}

pub fn compliance(input: Value) -> Result<Value, Failure> {
    let policy = input.get("policy").cloned().unwrap_or(json!({}));
    let max_high = policy.get("max_high").and_then(Value::as_u64).unwrap_or(0);
    let max_medium = policy
        .get("max_medium")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let require_license = policy
        .get("require_license")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut violations = Vec::new();
    let mut checked = Vec::new();

    if let Some(findings) = input.get("findings") {
        let findings = findings
            .as_array()
            .ok_or_else(|| Failure::Permanent("\"findings\" must be an array".into()))?;
        checked.push("findings");
        let count = |sev: &str| findings.iter().filter(|f| f["severity"] == sev).count() as u64;
        let (high, medium) = (count("high"), count("medium"));
        if high > max_high {
            violations.push(json!({"rule": "no-high-findings",
                "detail": format!("{high} high-severity finding(s); the policy allows {max_high}")}));
        }
        if medium > max_medium {
            violations.push(json!({"rule": "medium-findings",
                "detail": format!("{medium} medium-severity finding(s); the policy allows {max_medium}")}));
        }
    }
    if let Some(diff) = input.get("diff").and_then(Value::as_str) {
        checked.push("diff");
        for a in added_lines(diff) {
            if a.file.ends_with(".env") || a.file.ends_with(".pem") || a.file.ends_with("id_rsa") {
                violations.push(json!({"rule": "no-credential-files",
                    "detail": format!("{} must not be committed", a.file)}));
                break;
            }
        }
    }
    if require_license {
        checked.push("license");
        let has = input
            .get("files")
            .and_then(Value::as_array)
            .is_some_and(|fs| {
                fs.iter().any(|f| {
                    f["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("LICENSE") || p.starts_with("COPYING"))
                })
            });
        if !has {
            violations
                .push(json!({"rule": "license-file", "detail": "no LICENSE or COPYING file"}));
        }
    }
    if checked.is_empty() {
        return Err(Failure::Permanent(
            "input needs \"findings\", \"diff\" or a policy with require_license".into(),
        ));
    }
    Ok(json!({"compliant": violations.is_empty(), "violations": violations, "checked": checked}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_comments_and_verdicts() {
        let d = "--- a/src/x.js\n+++ b/src/x.js\n@@ -1,0 +1,2 @@\n+console.log(\"here\") // TODO remove\n+const ok = 1;\n";
        let out = run(json!({"diff": d})).unwrap();
        assert_eq!(out["verdict"], "request_changes");
        assert_eq!(out["comments"].as_array().unwrap().len(), 2);
        assert_eq!(out["stats"], json!({"files": 1, "added": 2}));
        let clean = run(json!({"diff": "+++ b/a\n@@ -0,0 +1 @@\n+let a = 1;\n"})).unwrap();
        assert_eq!(clean["verdict"], "approve");
    }

    #[test]
    fn compliance_follows_the_policy() {
        let findings = json!([{"severity": "high"}, {"severity": "medium"}]);
        let out = compliance(json!({"findings": findings})).unwrap();
        assert_eq!(out["compliant"], false);
        assert_eq!(out["violations"][0]["rule"], "no-high-findings");
        let out = compliance(json!({"findings": findings, "policy": {"max_high": 1}})).unwrap();
        assert_eq!(out["compliant"], true);
        let out = compliance(json!({"diff": "+++ b/prod.env\n@@ -0,0 +1 @@\n+A=1\n", "policy": {"require_license": true}, "files": [{"path": "LICENSE"}]})).unwrap();
        assert_eq!(out["violations"][0]["rule"], "no-credential-files");
        assert!(matches!(compliance(json!({})), Err(Failure::Permanent(_))));
    }
}
