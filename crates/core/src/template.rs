//! Step input templates.
//!
//! A step's `input` is any JSON document whose strings may hold expressions
//! in double braces: `{{ trigger.payload.repository.full_name }}` or
//! `{{ steps.scan.output.findings }}`. A string that is exactly one
//! expression takes the referenced value with its JSON type (an array stays
//! an array); an expression inside longer text is interpolated as text.
//!
//! Roots: `trigger` (`trigger.kind`, `trigger.payload...`), `steps.<id>`
//! (`steps.<id>.output...` and `steps.<id>.status`, only for ancestors of
//! the step; a skipped step's output is `null`), `run.id` and
//! `workflow.name`; in a fan-out step, `item...` (the item this job is
//! for) and `item_index`; in a compensation or on-failure step,
//! `failure...` (the step that failed and why). Path segments are object
//! keys or array indexes (`items.0.name`).

use std::fmt;

use serde_json::Value;

/// Most segments one expression may have.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Deepest nesting of a step's input document.
pub const MAX_INPUT_DEPTH: usize = 32;
/// Most bytes of JSON the expressions of one input may substitute in all.
///
/// One short template can name a large value many times (a megabyte of
/// trigger payload, repeated), so without a cap a small workflow could
/// make rendering exhaust a component's memory. A rendered input is sent to
/// a worker in one request and stored as one document; the largest request
/// body Spindle accepts is a fair bound.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// Deepest nesting of a value Spindle takes in from outside (a trigger
/// payload, an agent's output). Stored documents hold such values a few
/// levels down, and a step's input may wrap one in its template (at most
/// [`MAX_INPUT_DEPTH`] more); the store's JSON reader stops at 128 levels,
/// so a deeper value would make its run unreadable.
pub const MAX_VALUE_DEPTH: usize = 64;

/// The JSON Pointer of the first container in `value` nested more than
/// `max` levels down, if any.
pub fn too_deep(value: &Value, max: usize) -> Option<String> {
    fn walk(v: &Value, at: String, left: usize) -> Option<String> {
        let children: Vec<(String, &Value)> = match v {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, c)| (i.to_string(), c))
                .collect(),
            Value::Object(members) => members
                .iter()
                .map(|(k, c)| (escape_pointer(k), c))
                .collect(),
            _ => return None,
        };
        if left == 0 {
            return Some(at);
        }
        children
            .into_iter()
            .find_map(|(key, child)| walk(child, format!("{at}/{key}"), left - 1))
    }
    walk(value, String::new(), max)
}

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
    #[error(
        "unknown root {0:?}: expressions start with trigger, steps, run, workflow, item, item_index or failure"
    )]
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
    /// The root it reads from: `trigger`, `steps`, `run`, `workflow`,
    /// `item`, `item_index` or `failure`.
    pub fn root(&self) -> &str {
        self.path.first().map_or("", String::as_str)
    }

    /// The step an expression reads, if it reads one.
    pub fn step(&self) -> Option<&str> {
        // Matched, not indexed: `path` is public, so an `Expr` may not have
        // come from `parse`.
        match self.path.as_slice() {
            [root, id, ..] if root == "steps" => Some(id),
            _ => None,
        }
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
            let ok = path.len() >= 3
                && (path[2] == "output" || (path[2] == "status" && path.len() == 3));
            if !ok {
                return Err(TemplateError::Shape(
                    "use steps.<id>.output... or steps.<id>.status (only earlier steps can be read)"
                        .into(),
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
        "item" | "failure" => {}
        "item_index" => {
            if path.len() != 1 {
                return Err(TemplateError::Shape("item_index is a number".into()));
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// Where in the input the template is.
    pub pointer: String,
    /// The expression; empty when the failure is not about one expression.
    pub expr: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expr.is_empty() {
            write!(f, "{}: {}", self.pointer, self.reason)
        } else {
            write!(
                f,
                "{}: {{{{ {} }}}} {}",
                self.pointer, self.expr, self.reason
            )
        }
    }
}

impl std::error::Error for RenderError {}

/// Renders `input` against `context`, an object with the roots as keys
/// (`trigger`, `steps`, `run`, `workflow`).
///
/// Refuses inputs nested deeper than [`MAX_INPUT_DEPTH`] (validation
/// already does, but a stored document is only as good as the store) and
/// substitutions adding up to more than [`MAX_RENDERED_BYTES`].
pub fn render(input: &Value, context: &Value) -> Result<Value, RenderError> {
    let mut budget = MAX_RENDERED_BYTES;
    render_at(input, context, "", 0, &mut budget)
}

fn render_at(
    input: &Value,
    context: &Value,
    at: &str,
    depth: usize,
    budget: &mut usize,
) -> Result<Value, RenderError> {
    if depth > MAX_INPUT_DEPTH {
        return Err(RenderError {
            pointer: at.to_owned(),
            expr: String::new(),
            reason: format!("input nests deeper than {MAX_INPUT_DEPTH} levels"),
        });
    }
    Ok(match input {
        Value::String(s) => render_string(s, context, at, budget)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_at(v, context, &format!("{at}/{i}"), depth + 1, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let at = format!("{at}/{}", escape_pointer(k));
                    render_at(v, context, &at, depth + 1, budget).map(|v| (k.clone(), v))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(
    s: &str,
    context: &Value,
    at: &str,
    budget: &mut usize,
) -> Result<Value, RenderError> {
    let parts = parse(s).map_err(|e| RenderError {
        pointer: at.to_owned(),
        expr: s.to_owned(),
        reason: e.to_string(),
    })?;
    if let [Part::Expr(e)] = parts.as_slice() {
        let v = lookup(e, context, at)?;
        spend(budget, json_len(v, *budget), e, at)?;
        return Ok(v.clone());
    }
    let mut out = String::new();
    for part in &parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Expr(e) => match lookup(e, context, at)? {
                Value::String(v) => {
                    spend(budget, Some(v.len()), e, at)?;
                    out.push_str(v);
                }
                other => {
                    spend(budget, json_len(other, *budget), e, at)?;
                    out.push_str(&other.to_string());
                }
            },
        }
    }
    Ok(Value::String(out))
}

/// Takes `len` bytes (`None`: more than is left) from what substitutions
/// may still add.
fn spend(budget: &mut usize, len: Option<usize>, e: &Expr, at: &str) -> Result<(), RenderError> {
    match len.and_then(|n| budget.checked_sub(n)) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(RenderError {
            pointer: at.to_owned(),
            expr: e.to_string(),
            reason: format!(
                "makes the input larger than {MAX_RENDERED_BYTES} bytes of substituted JSON"
            ),
        }),
    }
}

/// The length of `v` as JSON, or `None` once it passes `limit`; stops
/// serialising there, so measuring a huge value costs no more than `limit`.
pub(crate) fn json_len(v: &Value, limit: usize) -> Option<usize> {
    struct Count {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count { n: 0, limit };
    serde_json::to_writer(&mut count, v).ok().map(|()| count.n)
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
mod depth_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn too_deep_points_at_the_first_container_past_the_limit() {
        let mut v = json!(1);
        for _ in 0..3 {
            v = json!({"a/b": [v]});
        }
        assert_eq!(too_deep(&v, 6), None);
        assert_eq!(too_deep(&v, 5).as_deref(), Some("/a~1b/0/a~1b/0/a~1b"));
        assert_eq!(too_deep(&json!("flat"), 0), None);
    }
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
        assert!(matches!(
            parse("{{ item_index.x }}"),
            Err(TemplateError::Shape(_))
        ));
        assert_eq!(expr("{{ item.path }}").root(), "item");
        assert_eq!(expr("{{ failure }}").root(), "failure");
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
    fn substitutions_are_capped_so_a_small_template_cannot_exhaust_memory() {
        let big = "x".repeat(MAX_RENDERED_BYTES / 4 + 1);
        let ctx = json!({"trigger": {"payload": big, "n": 1}});
        let four: Vec<Value> = (0..4).map(|_| json!("{{ trigger.payload }}")).collect();
        let out = render(&Value::Array(four.clone()), &ctx).unwrap_err();
        assert_eq!(out.pointer, "/3");
        assert!(out.reason.contains("larger than"), "{out}");
        let text = json!({"t": "a {{ trigger.payload }} b {{ trigger.payload }}"});
        assert!(render(&text, &ctx).is_ok());
        let twice = json!([text.clone(), text]);
        assert_eq!(render(&twice, &ctx).unwrap_err().pointer, "/1/t");
        assert!(render(&Value::Array(four[..3].to_vec()), &ctx).is_ok());
    }

    #[test]
    fn render_refuses_inputs_nested_too_deep_and_odd_exprs_do_not_panic() {
        let mut deep = json!("x");
        for _ in 0..=MAX_INPUT_DEPTH {
            deep = json!([deep]);
        }
        let err = render(&deep, &json!({})).unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
        assert!(!err.to_string().contains("{{"), "{err}");
        for path in [vec![], vec!["steps".to_owned()]] {
            assert_eq!(Expr { path }.step(), None);
        }
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
