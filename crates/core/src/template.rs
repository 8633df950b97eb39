//! Step input templates.
//!
//! A step's `input` is any JSON document whose strings may hold expressions
//! in double braces: `{{ trigger.payload.repository.full_name }}` or
//! `{{ steps.scan.output.findings }}`. A string that is exactly one
//! expression takes the referenced value with its JSON type (an array stays
//! an array); an expression inside longer text is interpolated as text.
//!
//! Roots: `trigger` (`trigger.kind`, `trigger.payload...`), `steps.<id>`
//! (`steps.<id>.output...`, only for ancestors of the step), `run.id` and
//! `workflow.name`. Path segments are object keys or array indexes
//! (`items.0.name`).

use std::fmt;

use serde_json::Value;

/// Most segments one expression may have.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Deepest nesting of a step's input document.
pub const MAX_INPUT_DEPTH: usize = 32;

/// A parse error in one template string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("unclosed '{{{{' at byte {0}")]
    Unclosed(usize),
    /// An expression with nothing in it.
    #[error("empty expression at byte {0}")]
    Empty(usize),
    /// A path segment that is not a plain name or index.
    #[error("invalid path segment {0:?}: use letters, digits, '_' and '-'")]
    Segment(String),
    /// A path that starts anywhere but the known roots.
    #[error("unknown root {0:?}: expressions start with trigger, steps, run or workflow")]
    Root(String),
    /// A path the roots do not allow, e.g. `steps.scan.input`.
    #[error("{0}")]
    Shape(String),
    /// More segments than [`MAX_PATH_SEGMENTS`].
    #[error("expression is deeper than {MAX_PATH_SEGMENTS} segments")]
    TooDeep,
}

/// A parsed expression: a path from a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    /// The segments, root first, as written.
    pub path: Vec<String>,
}

impl Expr {
    /// The step an expression reads, if it reads one.
    pub fn step(&self) -> Option<&str> {
        (self.path[0] == "steps").then(|| self.path[1].as_str())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path.join("."))
    }
}

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text taken as written.
    Text(String),
    /// An expression to substitute.
    Expr(Expr),
}

/// Parses one string into text and expressions.
pub fn parse(s: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + open))?;
        let inner = after[..close].trim();
        if inner.is_empty() {
            return Err(TemplateError::Empty(offset + open));
        }
        parts.push(Part::Expr(parse_expr(inner)?));
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn parse_expr(inner: &str) -> Result<Expr, TemplateError> {
    let path: Vec<String> = inner.split('.').map(|s| s.trim().to_owned()).collect();
    if path.len() > MAX_PATH_SEGMENTS {
        return Err(TemplateError::TooDeep);
    }
    for seg in &path {
        if seg.is_empty()
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TemplateError::Segment(seg.clone()));
        }
    }
    match path[0].as_str() {
        "trigger" => {
            if path.len() < 2 || !matches!(path[1].as_str(), "payload" | "kind") {
                return Err(TemplateError::Shape(
                    "use trigger.payload... or trigger.kind".into(),
                ));
            }
        }
        "steps" => {
            if path.len() < 3 || path[2] != "output" {
                return Err(TemplateError::Shape(
                    "use steps.<id>.output... (only outputs of earlier steps can be read)".into(),
                ));
            }
        }
        "run" | "workflow" => {
            let ok = path.len() == 2
                && matches!(
                    (path[0].as_str(), path[1].as_str()),
                    ("run", "id") | ("workflow", "name")
                );
            if !ok {
                return Err(TemplateError::Shape("use run.id or workflow.name".into()));
            }
        }
        other => return Err(TemplateError::Root(other.to_owned())),
    }
    Ok(Expr { path })
}

/// Every template string in `input`, with its JSON Pointer below `at`.
///
/// Keys are not templated, only string values.
pub fn visit<'a>(
    input: &'a Value,
    at: &str,
    depth: usize,
    out: &mut Vec<(String, &'a str)>,
) -> Result<(), String> {
    if depth > MAX_INPUT_DEPTH {
        return Err(at.to_owned());
    }
    match input {
        Value::String(s) => out.push((at.to_owned(), s)),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                visit(v, &format!("{at}/{i}"), depth + 1, out)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                visit(v, &format!("{at}/{}", escape_pointer(k)), depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Escapes one JSON Pointer reference token (RFC 6901).
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A failure to render an input against its context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {{{{ {expr} }}}} {reason}")]
pub struct RenderError {
    /// Where in the input the template is.
    pub pointer: String,
    /// The expression.
    pub expr: String,
    /// What went wrong.
    pub reason: String,
}

/// Renders `input` against `context`, an object with the roots as keys
/// (`trigger`, `steps`, `run`, `workflow`).
pub fn render(input: &Value, context: &Value) -> Result<Value, RenderError> {
    render_at(input, context, "")
}

fn render_at(input: &Value, context: &Value, at: &str) -> Result<Value, RenderError> {
    Ok(match input {
        Value::String(s) => render_string(s, context, at)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_at(v, context, &format!("{at}/{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    render_at(v, context, &format!("{at}/{}", escape_pointer(k)))
                        .map(|v| (k.clone(), v))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(s: &str, context: &Value, at: &str) -> Result<Value, RenderError> {
    let parts = parse(s).map_err(|e| RenderError {
        pointer: at.to_owned(),
        expr: s.to_owned(),
        reason: e.to_string(),
    })?;
    if let [Part::Expr(e)] = parts.as_slice() {
        return lookup(e, context, at).cloned();
    }
    let mut out = String::new();
    for part in &parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Expr(e) => match lookup(e, context, at)? {
                Value::String(v) => out.push_str(v),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

fn lookup<'a>(e: &Expr, context: &'a Value, at: &str) -> Result<&'a Value, RenderError> {
    let mut cur = context;
    for (i, seg) in e.path.iter().enumerate() {
        let next = match cur {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        cur = next.ok_or_else(|| RenderError {
            pointer: at.to_owned(),
            expr: e.to_string(),
            reason: format!("has no value at {:?}", e.path[..=i].join(".")),
        })?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expr(s: &str) -> Expr {
        match parse(s).unwrap().as_slice() {
            [Part::Expr(e)] => e.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_text_and_expressions() {
        let parts = parse("repo {{ trigger.payload.repo }} at {{run.id}}!").unwrap();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[0], Part::Text("repo ".into()));
        assert_eq!(parts[4], Part::Text("!".into()));
        assert_eq!(
            expr("{{ steps.scan.output.findings }}").step(),
            Some("scan")
        );
        assert_eq!(expr("{{ trigger.kind }}").step(), None);
    }

    #[test]
    fn malformed_templates_are_refused_with_a_reason() {
        assert_eq!(parse("a {{ trigger.kind"), Err(TemplateError::Unclosed(2)));
        assert_eq!(parse("{{   }}"), Err(TemplateError::Empty(0)));
        assert!(matches!(parse("{{ env.HOME }}"), Err(TemplateError::Root(r)) if r == "env"));
        assert!(matches!(
            parse("{{ steps.scan.input }}"),
            Err(TemplateError::Shape(_))
        ));
        assert!(matches!(
            parse("{{ trigger..x }}"),
            Err(TemplateError::Segment(_))
        ));
        assert!(matches!(
            parse("{{ trigger.payload[0] }}"),
            Err(TemplateError::Segment(_))
        ));
        assert!(matches!(
            parse("{{ run.secret }}"),
            Err(TemplateError::Shape(_))
        ));
        let deep = format!(
            "{{{{ trigger.payload{} }}}}",
            ".a".repeat(MAX_PATH_SEGMENTS)
        );
        assert_eq!(parse(&deep), Err(TemplateError::TooDeep));
    }

    #[test]
    fn whole_string_expressions_keep_their_type_and_text_interpolates() {
        let ctx = json!({
            "trigger": {"kind": "manual", "payload": {"repo": "acme/app", "n": 3, "items": [{"name": "x"}]}},
            "steps": {"scan": {"output": {"findings": [{"severity": "high"}]}}},
            "run": {"id": "r1"},
            "workflow": {"name": "wf"},
        });
        let input = json!({
            "findings": "{{ steps.scan.output.findings }}",
            "title": "scan of {{ trigger.payload.repo }} ({{ trigger.payload.n }} files) in {{run.id}}",
            "first": "{{ trigger.payload.items.0.name }}",
            "list": ["{{ workflow.name }}", 7, null],
        });
        let out = render(&input, &ctx).unwrap();
        assert_eq!(out["findings"], json!([{"severity": "high"}]));
        assert_eq!(out["title"], "scan of acme/app (3 files) in r1");
        assert_eq!(out["first"], "x");
        assert_eq!(out["list"], json!(["wf", 7, null]));
    }

    #[test]
    fn missing_values_are_errors_naming_the_field_and_path() {
        let ctx = json!({"trigger": {"payload": {"a": {}}}});
        let err = render(&json!({"x": {"y": "{{ trigger.payload.a.b }}"}}), &ctx).unwrap_err();
        assert_eq!(err.pointer, "/x/y");
        assert!(err.reason.contains("trigger.payload.a.b"), "{err}");
    }

    #[test]
    fn visit_finds_strings_with_escaped_pointers_and_caps_depth() {
        let input = json!({"a/b": ["{{ run.id }}", {"c~d": "x"}], "n": 1});
        let mut found = Vec::new();
        visit(&input, "/input", 0, &mut found).unwrap();
        let pointers: Vec<_> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/input/a~1b/0", "/input/a~1b/1/c~0d"]);

        let mut deep = json!("x");
        for _ in 0..=MAX_INPUT_DEPTH {
            deep = json!([deep]);
        }
        assert!(visit(&deep, "", 0, &mut Vec::new()).is_err());
    }
}
