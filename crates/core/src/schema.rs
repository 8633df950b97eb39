//! JSON Schema checks for agent inputs and outputs.
//!
//! Schemas come from users and run against values other users send (trigger
//! payloads, agent outputs), so a schema is vetted before it is compiled:
//!
//! - references stay inside the document (`#` or `#/json/pointer`) and the
//!   compiler runs offline, so a schema can never make Spindle fetch a URL or
//!   read a file (the `jsonschema` crate is built without those features
//!   too);
//! - the document, and the chain of subschemas its references reach, nest
//!   at most [`MAX_SCHEMA_DEPTH`] deep, and references expand to at most
//!   [`MAX_SCHEMA_EXPANSION`] subschemas, so neither compiling nor
//!   validating can exhaust a component's stack or run for exponential time
//!   (`{"allOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/a"}]}`, nested
//!   twenty times, is a million checks of one value);
//! - a recursive schema recurses in one way only: two references back to
//!   one subschema along paths that can meet the same values would multiply
//!   the work at every level of the value, and a cycle passes through at most
//!   [`MAX_CYCLE_LEN`] subschemas (this catches the shapes that matter in
//!   practice; it is not a proof for cycles that interleave through several
//!   subschemas);
//! - `pattern`s use the `regex` engine, which runs in time linear in the
//!   input, so no pattern can backtrack catastrophically (lookaround and
//!   backreferences are refused when the schema is registered).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::FieldError;
use crate::template::escape_pointer;

/// Most schema violations reported for one document.
const MAX_REPORTED: usize = 5;
/// Deepest nesting of a schema document, and of the subschemas its
/// references chain together.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Most subschemas a schema may expand to, counting a subschema once for
/// every chain of references that reaches it.
pub const MAX_SCHEMA_EXPANSION: usize = 10_000;
/// Most subschemas one cycle of a recursive schema may pass through: a value
/// nests up to 128 levels (serde_json's limit), and each level of recursion
/// costs the validator stack for every subschema of the cycle.
pub const MAX_CYCLE_LEN: usize = 8;
/// Most references back to one subschema.
const MAX_CYCLES_PER_TARGET: usize = 256;
/// Largest compiled form of one `pattern`, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What is wrong with `schema`, if anything: a vetting rule it breaks or
/// the compiler's message, with a JSON Pointer into the schema (empty for
/// the whole schema).
pub fn compile_error(schema: &Value) -> Option<FieldError> {
    compile(schema).err()
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, FieldError> {
    vet(schema)?;
    jsonschema::options()
        .offline()
        .with_pattern_options(jsonschema::PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT))
        .build(schema)
        .map_err(|e| FieldError::new(e.instance_path().to_string(), e.to_string()))
}

/// Checks `instance` against `schema`, describing up to five violations, each
/// with the JSON Pointer of the value at fault.
pub fn check(schema: &Value, instance: &Value) -> Result<(), String> {
    check_fields(schema, instance, "").map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                if e.pointer.is_empty() {
                    e.detail
                } else {
                    format!("{}: {}", e.pointer, e.detail)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Checks `instance` against `schema`: each violation (at most
/// [`MAX_REPORTED`]) with the JSON Pointer of the value at fault, under
/// `prefix` (such as `/payload`). A stored schema that no longer passes
/// vetting is one error at `prefix`.
pub fn check_fields(schema: &Value, instance: &Value, prefix: &str) -> Result<(), Vec<FieldError>> {
    // Stored schemas are vetted again: one registered before a rule existed
    // must not get to run.
    let validator = compile(schema).map_err(|e| {
        let detail = if e.pointer.is_empty() {
            format!("schema: {}", e.detail)
        } else {
            format!("schema: {}: {}", e.pointer, e.detail)
        };
        vec![FieldError::new(prefix, detail)]
    })?;
    let errors: Vec<FieldError> = validator
        .iter_errors(instance)
        .take(MAX_REPORTED)
        .map(|e| {
            FieldError::new(
                format!("{prefix}{}", e.instance_path()),
                truncate(e.to_string()),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Longest violation message kept: the validator quotes the value at fault,
/// and a payload may be a megabyte.
const MAX_DETAIL: usize = 200;

fn truncate(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

/// One step from a subschema to a subschema it applies: to the same value
/// (`None`, e.g. `allOf`, `$ref`), to the member named `Key`, to members
/// other than the ones `properties` names (`Rest`, i.e.
/// `additionalProperties`), or to members or items the schema alone does
/// not determine (`Any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Rest(Option<&'a serde_json::Map<String, Value>>),
    Any,
}

impl Step<'_> {
    /// Whether some member of some value is reached by both steps.
    fn meets(self, other: Self) -> bool {
        match (self, other) {
            (Step::Key(a), Step::Key(b)) => a == b,
            (Step::Key(k), Step::Rest(named)) | (Step::Rest(named), Step::Key(k)) => {
                named.is_none_or(|m| !m.contains_key(k))
            }
            _ => true,
        }
    }
}

/// Whether two cycles back to one subschema can both start on the same
/// path into a value. If no two can, the cycles form a prefix code and any
/// value is walked in one way only; if two can, some value is walked in
/// exponentially many (`a` and `a.a` read `a.a.a...` in Fibonacci-many ways).
fn overlap(a: &[Step<'_>], b: &[Step<'_>]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.meets(*y))
}

/// Enforces the rules in the module documentation without recursing, so
/// vetting itself cannot exhaust the stack.
fn vet(root: &Value) -> Result<(), FieldError> {
    check_depth(root)?;
    let draft4 = root
        .get("$schema")
        .and_then(Value::as_str)
        .is_some_and(|s| s.contains("draft-04"));
    let mut walk = Walk {
        root,
        draft4,
        path: Vec::new(),
        on_path: BTreeMap::new(),
        cycles: BTreeMap::new(),
    };
    let mut expanded = 0usize;
    let mut tasks = vec![Task::Enter(root, String::new(), None)];
    while let Some(task) = tasks.pop() {
        let Task::Enter(node, pointer, step) = task else {
            if let Some((node, _)) = walk.path.pop() {
                walk.on_path.remove(&std::ptr::from_ref(node));
            }
            continue;
        };
        expanded += 1;
        if expanded > MAX_SCHEMA_EXPANSION {
            return Err(FieldError::new(
                pointer,
                format!(
                    "the schema's references expand to more than {MAX_SCHEMA_EXPANSION} subschemas; validating a value would take too long"
                ),
            ));
        }
        if walk.path.len() >= MAX_SCHEMA_DEPTH {
            return Err(FieldError::new(
                pointer,
                format!(
                    "subschemas nest deeper than {MAX_SCHEMA_DEPTH} levels (references followed)"
                ),
            ));
        }
        walk.on_path
            .insert(std::ptr::from_ref(node), walk.path.len());
        walk.path.push((node, step));
        tasks.push(Task::Leave);
        let mut children = Vec::new();
        walk.children(node, &pointer, &mut children)?;
        tasks.extend(children.into_iter().rev());
    }
    Ok(())
}

enum Task<'a> {
    /// Look at a subschema, reached from its parent by a step.
    Enter(&'a Value, String, Option<Step<'a>>),
    /// Done with the subschema entered last.
    Leave,
}

/// The state of [`vet`]'s depth-first walk.
struct Walk<'a> {
    root: &'a Value,
    draft4: bool,
    /// The chain of subschemas from the root to the one being looked at,
    /// each with the step that reached it.
    path: Vec<(&'a Value, Option<Step<'a>>)>,
    /// Where on `path` each of its subschemas is; a reference to one of them
    /// closes a cycle.
    on_path: BTreeMap<*const Value, usize>,
    /// The steps of every cycle found so far, by the subschema it returns to.
    cycles: BTreeMap<*const Value, Vec<Vec<Step<'a>>>>,
}

impl<'a> Walk<'a> {
    /// The subschemas `node` (at `pointer`) applies, checking its references.
    fn children(
        &mut self,
        node: &'a Value,
        pointer: &str,
        out: &mut Vec<Task<'a>>,
    ) -> Result<(), FieldError> {
        let Value::Object(map) = node else {
            return Ok(());
        };
        let nested = self.path.len() > 1;
        for (key, value) in map {
            let at = format!("{pointer}/{}", escape_pointer(key));
            let mut apply = |child: &'a Value, at: String, step: Option<Step<'a>>| {
                out.push(Task::Enter(child, at, step));
            };
            match key.as_str() {
                "$ref" | "$dynamicRef" | "$recursiveRef" => {
                    // A reference that is not a string is for the compiler
                    // to name.
                    if let Some(reference) = value.as_str()
                        && let Some(target) = self.follow(reference, &at)?
                    {
                        apply(target.0, target.1, None);
                    }
                }
                "$id" | "id"
                    if nested
                        && (key == "$id" || self.draft4)
                        && value.as_str().is_some_and(|s| !s.starts_with('#')) =>
                {
                    return Err(FieldError::new(
                        at,
                        "only the root schema may have an id: references are resolved within one document",
                    ));
                }
                "not" | "if" | "then" | "else" => apply(value, at, None),
                "allOf" | "anyOf" | "oneOf" => each_item(value, &at, None, &mut apply),
                "dependentSchemas" | "dependencies" => {
                    each_member(value, &at, |_| None, &mut apply)
                }
                "properties" => each_member(value, &at, |k| Some(Step::Key(k)), &mut apply),
                "patternProperties" => each_member(value, &at, |_| Some(Step::Any), &mut apply),
                "items" | "prefixItems" if value.is_array() => {
                    each_item(value, &at, Some(Step::Any), &mut apply)
                }
                "additionalProperties" => {
                    let named = map.get("properties").and_then(Value::as_object);
                    apply(value, at, Some(Step::Rest(named)))
                }
                "items"
                | "additionalItems"
                | "unevaluatedItems"
                | "contains"
                | "unevaluatedProperties"
                | "propertyNames"
                | "contentSchema" => apply(value, at, Some(Step::Any)),
                // `$defs` and `definitions` apply only through references;
                // `const`, `enum`, `default` and `examples` are values; and
                // keywords the compiler does not know apply nothing.
                _ => {}
            }
        }
        Ok(())
    }

    /// The subschema `reference` (at `at`) names, when it is to be walked;
    /// `None` when it closes an acceptable cycle.
    fn follow(
        &mut self,
        reference: &str,
        at: &str,
    ) -> Result<Option<(&'a Value, String)>, FieldError> {
        let (target, target_at) = resolve(self.root, reference).ok_or_else(|| {
            FieldError::new(
                at,
                format!(
                    "{reference:?} is not a reference within this schema; use \"#\" or a JSON Pointer such as \"#/$defs/name\" (schemas are never fetched)"
                ),
            )
        })?;
        let Some(&start) = self.on_path.get(&std::ptr::from_ref(target)) else {
            return Ok(Some((target, target_at)));
        };
        let len = self.path.len() - start;
        if len > MAX_CYCLE_LEN {
            return Err(FieldError::new(
                at,
                format!(
                    "this reference closes a cycle through {len} subschemas; at most {MAX_CYCLE_LEN} are accepted"
                ),
            ));
        }
        let word: Vec<Step<'a>> = self.path[start + 1..]
            .iter()
            .filter_map(|(_, s)| *s)
            .collect();
        let seen = self.cycles.entry(std::ptr::from_ref(target)).or_default();
        if seen.len() >= MAX_CYCLES_PER_TARGET {
            return Err(FieldError::new(
                at,
                format!(
                    "more than {MAX_CYCLES_PER_TARGET} references lead back to {}",
                    describe(&target_at)
                ),
            ));
        }
        if seen.iter().any(|w| overlap(w, &word)) {
            return Err(FieldError::new(
                at,
                format!(
                    "this reference and another lead back to {} along paths that can meet the same values, so validating a deeply nested value would take exponential time",
                    describe(&target_at)
                ),
            ));
        }
        seen.push(word);
        Ok(None)
    }
}

/// Schemas in an array keyword (`allOf`, tuple `items`).
fn each_item<'a>(
    value: &'a Value,
    at: &str,
    step: Option<Step<'a>>,
    apply: &mut impl FnMut(&'a Value, String, Option<Step<'a>>),
) {
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            apply(item, format!("{at}/{i}"), step);
        }
    }
}

/// Schemas in an object keyword (`properties`, `dependentSchemas`); array
/// members (draft 4's property dependencies) are not schemas.
fn each_member<'a>(
    value: &'a Value,
    at: &str,
    step: impl Fn(&'a str) -> Option<Step<'a>>,
    apply: &mut impl FnMut(&'a Value, String, Option<Step<'a>>),
) {
    if let Value::Object(members) = value {
        for (k, v) in members {
            if v.is_object() || v.is_boolean() {
                apply(v, format!("{at}/{}", escape_pointer(k)), step(k));
            }
        }
    }
}

/// A subschema's pointer for a message.
fn describe(pointer: &str) -> String {
    if pointer.is_empty() {
        "the root schema".to_owned()
    } else {
        format!("{pointer:?}")
    }
}

/// The subschema a same-document reference names, and its pointer.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<(&'a Value, String)> {
    let fragment = reference.strip_prefix('#')?;
    let pointer = percent_decode(fragment)?;
    if !(pointer.is_empty() || pointer.starts_with('/')) {
        return None; // an anchor name: resolving it needs the compiler's rules
    }
    Some((root.pointer(&pointer)?, pointer))
}

/// Decodes `%XX` escapes (a URI fragment or query value); `None` if
/// malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Refuses documents nested deeper than [`MAX_SCHEMA_DEPTH`], naming the
/// first value too deep.
fn check_depth(root: &Value) -> Result<(), FieldError> {
    let mut stack = vec![(root, String::new(), 0usize)];
    while let Some((v, at, depth)) = stack.pop() {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(FieldError::new(
                at,
                format!("the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"),
            ));
        }
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((item, format!("{at}/{i}"), depth + 1));
                }
            }
            Value::Object(members) => {
                for (k, item) in members {
                    stack.push((item, format!("{at}/{}", escape_pointer(k)), depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The pointer of the refusal, or `None` if the schema is accepted.
    fn refused(schema: Value) -> Option<String> {
        compile_error(&schema).map(|e| e.pointer)
    }

    #[test]
    fn reports_violations_with_their_pointer() {
        let schema = json!({"type": "object", "required": ["findings"],
            "properties": {"findings": {"type": "array"}}});
        assert!(check(&schema, &json!({"findings": []})).is_ok());
        let err = check(&schema, &json!({"findings": 3})).unwrap_err();
        assert!(err.starts_with("/findings:"), "{err}");
        assert!(check(&schema, &json!({})).unwrap_err().contains("findings"));
    }

    #[test]
    fn bad_schemas_are_named_and_remote_refs_are_not_fetched() {
        assert_eq!(refused(json!({"type": "no-such-type"})).unwrap(), "/type");
        assert_eq!(refused(json!({"type": "object"})), None);
        for remote in [
            "http://127.0.0.1:9/schema.json",
            "file:///etc/passwd",
            "urn:x",
            "other.json#/a",
        ] {
            assert_eq!(refused(json!({"$ref": remote})).unwrap(), "/$ref");
        }
        let nested_id = json!({"properties": {"a": {"$id": "http://127.0.0.1:9/", "$ref": "#/x"}}});
        assert_eq!(refused(nested_id).unwrap(), "/properties/a/$id");
        // Anchors and missing or malformed pointers are refused too, naming
        // the reference.
        for bad in ["#node", "#/$defs/missing", "#/%zz", "#/a/~2"] {
            assert_eq!(refused(json!({"$ref": bad})).unwrap(), "/$ref", "{bad}");
        }
        let spaced = json!({"$ref": "#/$defs/a%20b", "$defs": {"a b": {"type": "string"}}});
        assert_eq!(refused(spaced.clone()), None);
        assert!(check(&spaced, &json!(1)).is_err());
        // A stored schema is vetted again before it runs.
        assert!(
            check(&json!({"$ref": "http://x"}), &json!(1))
                .unwrap_err()
                .starts_with("schema: /$ref:")
        );
    }

    #[test]
    fn patterns_run_in_linear_time_and_bad_ones_are_named() {
        let evil = json!({"pattern": "^(a+)+$"});
        let started = std::time::Instant::now();
        let long = format!("{}!", "a".repeat(100_000));
        assert!(check(&evil, &json!(long)).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        for bad in ["(", "(?=a)b", "(a)\\1", "a{1000}{1000}{1000}"] {
            let schema = json!({"properties": {"p": {"pattern": bad}}});
            assert_eq!(refused(schema).unwrap(), "/properties/p/pattern", "{bad}");
        }
        assert!(check(&json!({"pattern": "^\\d+$"}), &json!("123")).is_ok());
    }

    #[test]
    fn nesting_is_bounded_in_the_document_and_through_references() {
        let mut deep = json!({});
        for _ in 0..=MAX_SCHEMA_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(refused(deep).unwrap().starts_with("/not/not/"));
        let mut defs = serde_json::Map::new();
        for i in 0..MAX_SCHEMA_DEPTH {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert(format!("d{MAX_SCHEMA_DEPTH}"), json!({"type": "integer"}));
        let chain = json!({"$ref": "#/$defs/d0", "$defs": defs});
        assert!(refused(chain).is_some());
    }

    #[test]
    fn references_cannot_fan_out_exponentially() {
        let mut defs = serde_json::Map::new();
        // 2^14 paths to the last one, nested only 29 subschemas deep.
        for i in 0..14 {
            let next = json!({"$ref": format!("#/$defs/d{}", i + 1)});
            defs.insert(format!("d{i}"), json!({"allOf": [next.clone(), next]}));
        }
        defs.insert("d14".into(), json!({"type": "integer"}));
        let fan = json!({"$ref": "#/$defs/d0", "$defs": defs});
        let err = compile_error(&fan).unwrap();
        assert!(err.detail.contains("expand to more than"), "{err:?}");
    }

    #[test]
    fn recursion_is_accepted_only_when_it_walks_a_value_one_way() {
        let ok = [
            json!({"$ref": "#"}),
            json!({"allOf": [{"$ref": "#"}]}),
            json!({"properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}}}),
            json!({"properties": {"children": {"items": {"$ref": "#/$defs/n"}}},
                   "$defs": {"n": {"$ref": "#"}}}),
            json!({"properties": {"a": {"$ref": "#"}}, "additionalProperties": {"$ref": "#"}}),
        ];
        for schema in ok {
            assert_eq!(compile_error(&schema), None, "{schema}");
            assert!(check(&schema, &json!({"left": {"right": {}}})).is_ok());
        }
        let doubling = [
            json!({"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}),
            json!({"properties": {"a": {"allOf": [{"$ref": "#"}, {"$ref": "#"}]}}}),
            // a and a.a read a.a.a... in Fibonacci-many ways.
            json!({"properties": {"a": {"anyOf": [{"$ref": "#"},
                   {"properties": {"a": {"$ref": "#"}}}]}}}),
            json!({"properties": {"a": {"$ref": "#"}}, "patternProperties": {"^a": {"$ref": "#"}}}),
            json!({"items": {"$ref": "#"}, "contains": {"$ref": "#"}}),
        ];
        for schema in doubling {
            let err = compile_error(&schema).unwrap_or_else(|| panic!("accepted {schema}"));
            assert!(err.detail.contains("exponential"), "{err:?}");
        }
        let mut long = json!({"properties": {"a": {"$ref": "#"}}});
        for _ in 0..MAX_CYCLE_LEN {
            long = json!({"allOf": [long]});
        }
        assert!(compile_error(&long).unwrap().detail.contains("cycle"));
    }
}
