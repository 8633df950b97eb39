//! Just enough unified-diff parsing for the agents: the lines a diff adds,
//! with their file and new line number.

/// A line a diff adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The file, as `+++ b/<path>` names it.
    pub file: String,
    /// Its line number in the new file.
    pub line: u64,
    /// The text, without the leading `+`.
    pub text: String,
}

/// Every added line of a unified diff.
pub fn added_lines(diff: &str) -> Vec<Added> {
    let mut out = Vec::new();
    let mut file = String::new();
    let mut line = 0u64;
    for l in diff.lines() {
        if l.starts_with("--- ") {
            continue;
        }
        if let Some(path) = l.strip_prefix("+++ ") {
            file = path.trim().trim_start_matches("b/").to_owned();
        } else if let Some(hunk) = l.strip_prefix("@@ ") {
            // @@ -a,b +c,d @@
            line = hunk
                .split_whitespace()
                .find_map(|p| p.strip_prefix('+'))
                .and_then(|p| p.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
        } else if let Some(text) = l.strip_prefix('+') {
            out.push(Added {
                file: file.clone(),
                line,
                text: text.to_owned(),
            });
            line += 1;
        } else if !l.starts_with('-') && !l.starts_with('\\') {
            line += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_added_lines_with_numbers() {
        let d = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,3 @@\n keep\n-old\n+new one\n+new two\n";
        let a = added_lines(d);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].file.as_str(), a[0].line, a[0].text.as_str()),
            ("x", 2, "new one")
        );
        assert_eq!(a[1].line, 3);
    }
}
