//! `patcher`: applies a unified diff with `git apply` and reports the result.
//!
//! Input: `{"files": [{"path": "...", "content": "..."}], "patch": "<diff>"}`:
//! the files the patch applies to, and the patch. Output: `{"applied": true,
//! "changed": [{"path", "content"}], "deleted": ["..."], "stats": "..."}`.
//! A patch that does not apply fails permanently (exit 65) with git's
//! message: retrying cannot make it apply. Its agent definition is
//! `approval_required`: changing code waits for a human.
//!
//! With `"revert": true` the patch is applied in reverse (`git apply -R`) and
//! the output adds `"reverted": true`: a compensation step undoes a patch by
//! passing the same patch and the patched files (this agent's own `changed`
//! output) back.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::{Failure, field};

fn safe_relative(path: &str) -> Result<PathBuf, Failure> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(Failure::Permanent(format!(
            "file path {path:?} must be relative and stay inside the tree"
        )))
    }
}

fn read_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            read_tree(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                String::from_utf8_lossy(&std::fs::read(&path)?).into_owned(),
            );
        }
    }
    Ok(())
}

fn git_apply(dir: &Path, reverse: bool, args: &[&str]) -> Result<String, Failure> {
    let out = Command::new("git")
        .args(["apply", "--whitespace=nowarn"])
        .args(reverse.then_some("-R"))
        .args(args)
        .arg("change.patch")
        .current_dir(dir)
        .output()
        .map_err(|e| Failure::Transient(format!("cannot run git: {e}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(Failure::Permanent(format!(
            "the patch does not apply{}: {}",
            if reverse { " in reverse" } else { "" },
            text.trim()
        )))
    }
}

pub fn run(input: Value) -> Result<Value, Failure> {
    let patch = field(&input, "patch")?;
    let revert = match input.get("revert") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| Failure::Permanent(format!("revert must be true or false, not {v}")))?,
    };
    let files = input
        .get("files")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let work = std::env::temp_dir().join(format!(
        "spindle-patcher-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| Failure::Transient(format!("temp dir: {e}")))?;
    let result = (|| {
        let mut before = BTreeMap::new();
        for f in &files {
            let path = f.get("path").and_then(Value::as_str).unwrap_or("");
            let rel = safe_relative(path)?;
            let content = f.get("content").and_then(Value::as_str).unwrap_or("");
            let full = tree.join(&rel);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Failure::Transient(e.to_string()))?;
            }
            std::fs::write(&full, content).map_err(|e| Failure::Transient(e.to_string()))?;
            before.insert(path.to_owned(), content.to_owned());
        }
        std::fs::write(tree.join("change.patch"), patch)
            .map_err(|e| Failure::Transient(e.to_string()))?;
        git_apply(&tree, revert, &["--check"])?;
        let stats = git_apply(&tree, revert, &["--stat"])?;
        git_apply(&tree, revert, &[])?;
        std::fs::remove_file(tree.join("change.patch"))
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let mut after = BTreeMap::new();
        read_tree(&tree, &tree, &mut after).map_err(|e| Failure::Transient(e.to_string()))?;
        let changed: Vec<Value> = after
            .iter()
            .filter(|(p, c)| before.get(*p) != Some(*c))
            .map(|(p, c)| json!({"path": p, "content": c}))
            .collect();
        let deleted: Vec<&String> = before.keys().filter(|p| !after.contains_key(*p)).collect();
        let mut out =
            json!({"applied": true, "changed": changed, "deleted": deleted, "stats": stats.trim()});
        if revert {
            out["reverted"] = true.into();
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git() -> bool {
        Command::new("git").arg("--version").output().is_ok()
    }

    #[test]
    fn applies_a_patch_and_reports_the_changes() {
        if !git() {
            eprintln!("git not installed; skipping");
            return;
        }
        let patch = "--- a/src/app.txt\n+++ b/src/app.txt\n@@ -1,2 +1,2 @@\n hello\n-password = \"x\"\n+password = env(\"PASSWORD\")\n";
        let out = run(json!({"files": [{"path": "src/app.txt", "content": "hello\npassword = \"x\"\n"}], "patch": patch})).unwrap();
        assert_eq!(out["applied"], true);
        assert_eq!(out["changed"][0]["path"], "src/app.txt");
        assert_eq!(
            out["changed"][0]["content"],
            "hello\npassword = env(\"PASSWORD\")\n"
        );
        assert!(out["stats"].as_str().unwrap().contains("app.txt"));
    }

    #[test]
    fn a_patch_reverts_from_its_own_output() {
        if !git() {
            eprintln!("git not installed; skipping");
            return;
        }
        // One file changed, one created: reverting restores the one and
        // deletes the other.
        let patch = "--- a/src/app.txt\n+++ b/src/app.txt\n@@ -1,2 +1,2 @@\n hello\n-password = \"x\"\n+password = env(\"PASSWORD\")\n\
                     --- /dev/null\n+++ b/NOTES\n@@ -0,0 +1 @@\n+rotated\n";
        let original = "hello\npassword = \"x\"\n";
        let forward =
            run(json!({"files": [{"path": "src/app.txt", "content": original}], "patch": patch}))
                .unwrap();
        assert!(forward.get("reverted").is_none());
        let back =
            run(json!({"files": forward["changed"], "patch": patch, "revert": true})).unwrap();
        assert_eq!(back["applied"], true);
        assert_eq!(back["reverted"], true);
        assert_eq!(
            back["changed"],
            json!([{"path": "src/app.txt", "content": original}])
        );
        assert_eq!(back["deleted"], json!(["NOTES"]));
        // Reverting twice finds the patch already undone.
        let twice = run(json!({"files": back["changed"], "patch": patch, "revert": true}));
        assert!(
            matches!(&twice, Err(Failure::Permanent(m)) if m.contains("does not apply in reverse")),
            "{twice:?}"
        );
        assert!(matches!(
            run(json!({"files": [], "patch": patch, "revert": "yes"})),
            Err(Failure::Permanent(_))
        ));
    }

    #[test]
    fn a_patch_that_does_not_apply_fails_permanently() {
        if !git() {
            return;
        }
        let patch = "--- a/a\n+++ b/a\n@@ -1 +1 @@\n-not there\n+x\n";
        let err = run(json!({"files": [{"path": "a", "content": "other\n"}], "patch": patch}));
        assert!(matches!(err, Err(Failure::Permanent(m)) if m.contains("does not apply")));
        assert!(matches!(
            run(json!({"files": [{"path": "../etc/passwd", "content": ""}], "patch": "x"})),
            Err(Failure::Permanent(_))
        ));
    }
}
