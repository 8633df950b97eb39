//! `security-scanner`: finds secrets and risky patterns in the lines a diff
//! adds, or in whole files.
//!
//! Input: `{"diff": "<unified diff>"}` and/or
//! `{"files": [{"path": "...", "content": "..."}]}`.
//! Output: `{"findings": [{"rule", "severity", "file", "line", "excerpt"}],
//! "summary": {"high": n, "medium": n, "low": n}, "scanned_lines": n}`.

use serde_json::{Value, json};

use crate::Failure;
use crate::diff::added_lines;

/// A rule: a name, a severity, and a test on one line.
struct Rule {
    name: &'static str,
    severity: &'static str,
    matches: fn(&str) -> bool,
}

fn has_run(line: &str, prefix: &str, len: usize, ok: fn(u8) -> bool) -> bool {
    line.match_indices(prefix).any(|(i, _)| {
        let rest = &line.as_bytes()[i + prefix.len()..];
        rest.len() >= len && rest[..len].iter().all(|b| ok(*b))
    })
}

fn assigns_literal(line: &str, keys: &[&str]) -> bool {
    let lower = line.to_ascii_lowercase();
    keys.iter().any(|k| {
        lower.match_indices(k).any(|(i, _)| {
            let rest = lower[i + k.len()..].trim_start_matches(['"', '\'', ' ', '_']);
            let Some(rest) = rest.strip_prefix(['=', ':']) else {
                return false;
            };
            let value = rest.trim().trim_matches([',', ';']);
            let quoted = value.len() >= 10 && (value.starts_with('"') || value.starts_with('\''));
            quoted && !value.contains("${") && !value.contains("{{")
        })
    })
}

const RULES: &[Rule] = &[
    Rule {
        name: "aws-access-key-id",
        severity: "high",
        matches: |l| {
            has_run(l, "AKIA", 16, |b| {
                b.is_ascii_uppercase() || b.is_ascii_digit()
            })
        },
    },
    Rule {
        name: "private-key",
        severity: "high",
        matches: |l| l.contains("-----BEGIN") && l.contains("PRIVATE KEY-----"),
    },
    Rule {
        name: "github-token",
        severity: "high",
        matches: |l| {
            ["ghp_", "gho_", "ghs_", "github_pat_"]
                .iter()
                .any(|p| has_run(l, p, 20, |b| b.is_ascii_alphanumeric() || b == b'_'))
        },
    },
    Rule {
        name: "hardcoded-secret",
        severity: "high",
        matches: |l| {
            assigns_literal(
                l,
                &["password", "passwd", "secret", "api_key", "apikey", "token"],
            )
        },
    },
    Rule {
        name: "curl-pipe-shell",
        severity: "medium",
        matches: |l| {
            (l.contains("curl ") || l.contains("wget "))
                && (l.contains("| sh") || l.contains("| bash") || l.contains("|sh"))
        },
    },
    Rule {
        name: "world-writable",
        severity: "medium",
        matches: |l| l.contains("chmod 777") || l.contains("chmod -R 777") || l.contains("0o777"),
    },
    Rule {
        name: "dynamic-eval",
        severity: "medium",
        matches: |l| l.contains("eval(") || l.contains("exec(") || l.contains("os.system("),
    },
    Rule {
        name: "tls-verification-disabled",
        severity: "medium",
        matches: |l| {
            l.contains("verify=False")
                || l.contains("InsecureSkipVerify: true")
                || l.contains("danger_accept_invalid_certs(true)")
                || l.contains("NODE_TLS_REJECT_UNAUTHORIZED")
        },
    },
    Rule {
        name: "plain-http-url",
        severity: "low",
        matches: |l| {
            l.contains("http://")
                && !l.contains("http://localhost")
                && !l.contains("http://127.0.0.1")
        },
    },
];

fn excerpt(line: &str) -> String {
    let t = line.trim();
    let mut s: String = t.chars().take(80).collect();
    if t.chars().count() > 80 {
        s.push('…');
    }
    s
}

/// Scans `(file, line, text)` triples.
pub fn scan<'a>(lines: impl Iterator<Item = (String, u64, &'a str)>) -> (Vec<Value>, u64) {
    let mut findings = Vec::new();
    let mut n = 0;
    for (file, line, text) in lines {
        n += 1;
        for rule in RULES {
            if (rule.matches)(text) {
                findings.push(json!({
                    "rule": rule.name, "severity": rule.severity,
                    "file": file, "line": line, "excerpt": excerpt(text),
                }));
            }
        }
    }
    (findings, n)
}

pub fn run(input: Value) -> Result<Value, Failure> {
    let diff = input.get("diff").and_then(Value::as_str);
    let files = input.get("files").and_then(Value::as_array);
    if diff.is_none() && files.is_none() {
        return Err(Failure::Permanent(
            "input needs \"diff\" (a unified diff) or \"files\"".into(),
        ));
    }
    let mut findings = Vec::new();
    let mut scanned = 0;
    if let Some(diff) = diff {
        let added = added_lines(diff);
        let (f, n) = scan(
            added
                .iter()
                .map(|a| (a.file.clone(), a.line, a.text.as_str())),
        );
        findings.extend(f);
        scanned += n;
    }
    for f in files.into_iter().flatten() {
        let path = f
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let content = f.get("content").and_then(Value::as_str).unwrap_or("");
        let (found, n) = scan(
            content
                .lines()
                .enumerate()
                .map(|(i, l)| (path.clone(), i as u64 + 1, l)),
        );
        findings.extend(found);
        scanned += n;
    }
    let count = |sev: &str| findings.iter().filter(|f| f["severity"] == sev).count();
    Ok(json!({
        "findings": findings,
        "summary": {"high": count("high"), "medium": count("medium"), "low": count("low")},
        "scanned_lines": scanned,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(out: &Value) -> Vec<&str> {
        out["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn finds_secrets_and_risky_patterns_in_added_lines_only() {
        let diff = "--- a/app.py\n+++ b/app.py\n@@ -1,1 +1,4 @@\n-password = \"old-removed-value\"\n+AWS_KEY = \"AKIAABCDEFGHIJKLMNOP\"\n+password = \"hunter2hunter2\"\n+subprocess.run(\"curl https://x.sh | sh\")\n+print('fine')\n";
        let out = run(json!({"diff": diff})).unwrap();
        assert_eq!(
            rules(&out),
            ["aws-access-key-id", "hardcoded-secret", "curl-pipe-shell"]
        );
        assert_eq!(out["findings"][0]["line"], 1);
        assert_eq!(out["findings"][0]["file"], "app.py");
        assert_eq!(out["summary"], json!({"high": 2, "medium": 1, "low": 0}));
        assert_eq!(out["scanned_lines"], 4);
    }

    #[test]
    fn templated_values_are_not_secrets_and_clean_input_is_clean() {
        let out = run(json!({"files": [{"path": "c.yml", "content": "password: \"${DB_PASSWORD}\"\ntoken: {{ secret }}\n"}]})).unwrap();
        assert_eq!(out["findings"], json!([]));
        assert!(matches!(run(json!({})), Err(Failure::Permanent(_))));
    }

    #[test]
    fn private_keys_and_github_tokens() {
        let out = run(json!({"files": [{"path": "k", "content": "-----BEGIN RSA PRIVATE KEY-----\nx = ghp_abcdefghijklmnopqrstuvwxyz0123456789\n"}]})).unwrap();
        assert_eq!(rules(&out), ["private-key", "github-token"]);
    }
}
