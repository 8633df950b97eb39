//! Property tests for everything that parses outside input: workflow and
//! agent definitions, agent schemas, step templates, retry policies and the
//! worker callbacks' bodies.
//!
//! Every property asserts that nothing panics and that every refusal is a
//! [`ValidationError`] the HTTP edge can render as a problem document: at
//! least one error, each with a detail and a JSON Pointer (RFC 6901) into
//! the input. Where an input is known to be good, the property also checks
//! what comes out (an order that puts needs first, a policy's bounds).
//!
//! Case counts are kept small so the file runs in seconds in a debug build;
//! for a longer run, `PROPTEST_CASES=20000 cargo test -p spindle-core --test
//! parsers`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use spindle_core::error::MAX_ERRORS;
use spindle_core::job::{Heartbeat, JobResult};
use spindle_core::retry::{MAX_ATTEMPTS, MAX_BACKOFF_MS, RetryPolicy};
use spindle_core::workflow::{ancestors, topo_order};
use spindle_core::{AgentSpec, FieldError, ValidationError, WorkflowSpec, schema, template};

/// Cases for one property: `default`, unless `PROPTEST_CASES` says otherwise.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // A failure prints its shrunk input; nothing is written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Slowest acceptable check of one generated input in a debug build. Not a
/// benchmark: a guard against inputs that take exponential time.
const SLOW: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// What a refusal must look like.

/// Whether `p` is a JSON Pointer: empty, or `/`-separated tokens where `~`
/// only starts `~0` or `~1`.
fn is_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    let mut chars = p.chars().peekable();
    if chars.next() != Some('/') {
        return false;
    }
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// The pointer to the value holding the one `p` names (`""` for `/a`).
fn parent(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

/// A refusal of a body that is not JSON (or not an object of the right
/// shape): non-empty, every pointer well formed.
fn assert_refusal(e: &ValidationError) {
    assert!(!e.errors.is_empty(), "a refusal with no errors");
    assert!(
        e.errors.len() <= MAX_ERRORS + 1,
        "{} errors listed",
        e.errors.len()
    );
    for FieldError { pointer, detail } in &e.errors {
        assert!(is_pointer(pointer), "not a JSON Pointer: {pointer:?}");
        assert!(!detail.trim().is_empty(), "no detail at {pointer:?}");
    }
    // The problem document's summary must render.
    assert!(!e.to_string().is_empty());
}

/// A refusal of the JSON document `input`: as [`assert_refusal`], and each
/// pointer names a field of `input` or a missing member of an object that
/// is in it (a required field left out).
fn assert_refusal_of(e: &ValidationError, input: &Value) {
    assert_refusal(e);
    for FieldError { pointer, .. } in &e.errors {
        assert!(
            input.pointer(pointer).is_some() || input.pointer(parent(pointer)).is_some(),
            "{pointer:?} points outside the input {input}"
        );
    }
}

// ---------------------------------------------------------------------------
// Generators.

/// Pieces of strings that parsers treat specially, and a few that are just
/// awkward (NUL, a surrogate pair's character, JSON Pointer escapes).
const FRAGMENTS: &[&str] = &[
    "",
    "a",
    "b",
    "c",
    "A",
    "-",
    "0",
    "1",
    "99999999999999999999",
    " ",
    ".",
    "..",
    "{{",
    "}}",
    "{",
    "}",
    "~",
    "~0",
    "~1",
    "/",
    "\\",
    "\"",
    "\u{0}",
    "é",
    "𝄞",
    "steps",
    "trigger",
    "payload",
    "output",
    "kind",
    "run",
    "id",
    "workflow",
    "name",
    "input",
    "{{ steps.a.output }}",
    "{{ trigger.payload }}",
    "{{ run.id }}",
    "{{ workflow.name }}",
    "{{ steps.b.output.x.0 }}",
    "{{ trigger.payload.items.0 }}",
    "{{}}",
    "{{ env.HOME }}",
    "{{ steps.a.input }}",
];

fn fragment_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(select(FRAGMENTS), 0..6).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// Member names: the fields of the specs, so random documents often get
/// past the first check, and some junk.
const KEYS: &[&str] = &[
    "name",
    "steps",
    "id",
    "agent",
    "needs",
    "input",
    "retry",
    "timeout_secs",
    "deadline_secs",
    "description",
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "image",
    "command",
    "risk_level",
    "input_schema",
    "output_schema",
    "memory_mb",
    "network",
    "job_id",
    "worker",
    "status",
    "output",
    "error",
    "exit_code",
    "logs_tail",
    "started_at_ms",
    "finished_at_ms",
    "kind",
    "message",
    "a",
    "b",
    "",
    "~/",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(KEYS).prop_map(str::to_owned),
        1 => fragment_string(),
    ]
}

/// Numbers at the edges of the specs' ranges and of the integer types.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    3,
    20,
    21,
    64,
    65,
    300,
    86_400,
    86_401,
    3_600_000,
    4_294_967_295,
    4_294_967_296,
    u64::MAX,
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(EDGES).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

/// Any JSON document, shallow and small, biased towards the specs' names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        fragment_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const IDS: &[&str] = &["a", "b", "c", "d", "A", "", "a-", "-b", "x.y"];

fn retry_policy() -> impl Strategy<Value = RetryPolicy> {
    let attempts = prop_oneof![0..=MAX_ATTEMPTS + 2, any::<u32>()];
    let backoff = || prop_oneof![0..=MAX_BACKOFF_MS + 2, any::<u64>()];
    (attempts, backoff(), backoff()).prop_map(
        |(max_attempts, initial_backoff_ms, max_backoff_ms)| RetryPolicy {
            max_attempts,
            initial_backoff_ms,
            max_backoff_ms,
        },
    )
}

/// A step as a client might write it, with ids from a small alphabet so
/// duplicates, self needs, missing needs and cycles all come up often.
fn hostile_step() -> impl Strategy<Value = Value> {
    (
        select(IDS),
        select(&["scanner", "ghost", "", "Scanner"][..]),
        prop::collection::vec(select(IDS), 0..4),
        prop_oneof![json_value(), fragment_string().prop_map(Value::String)],
        prop::option::of(retry_policy()),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(id, agent, needs, input, retry, timeout)| {
            let mut step = json!({"id": id, "agent": agent, "needs": needs, "input": input});
            if let Some(r) = retry {
                step["retry"] = serde_json::to_value(r).unwrap();
            }
            if let Some(t) = timeout {
                step["timeout_secs"] = json!(t);
            }
            step
        })
}

fn hostile_workflow() -> impl Strategy<Value = Value> {
    (
        select(&["wf", "", "Bad Name", "a-"][..]),
        prop::collection::vec(hostile_step(), 0..7),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(name, steps, deadline)| {
            let mut w = json!({"name": name, "steps": steps});
            if let Some(d) = deadline {
                w["deadline_secs"] = json!(d);
            }
            w
        })
}

/// A valid DAG: step `i` needs only steps before it and reads only its
/// ancestors' outputs; written in a shuffled order.
fn valid_dag(
    sizes: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<(String, Vec<String>, Vec<String>)>> {
    sizes
        .prop_flat_map(|n| {
            let needs: Vec<_> = (0..n)
                .map(|i| prop::collection::btree_set(0..i.max(1), 0..=i.min(3)))
                .collect();
            (
                Just(n),
                needs,
                prop::collection::vec(any::<prop::sample::Index>(), n),
            )
        })
        .prop_map(|(n, needs, reads)| {
            let needs: Vec<Vec<usize>> = needs
                .into_iter()
                .enumerate()
                .map(|(i, set)| set.into_iter().filter(|&j| j < i).collect())
                .collect();
            let closure = closure(&needs);
            (0..n)
                .map(|i| {
                    let anc: Vec<usize> = closure[i].iter().copied().collect();
                    let read =
                        (!anc.is_empty()).then(|| format!("s{}", anc[reads[i].index(anc.len())]));
                    (
                        format!("s{i}"),
                        needs[i].iter().map(|j| format!("s{j}")).collect(),
                        read.into_iter().collect(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// Transitive needs of each step, computed the plain way.
fn closure(needs: &[Vec<usize>]) -> Vec<BTreeSet<usize>> {
    let mut out: Vec<BTreeSet<usize>> = Vec::new();
    for direct in needs {
        let mut set = BTreeSet::new();
        for &j in direct {
            set.insert(j);
            set.extend(out[j].iter().copied());
        }
        out.push(set);
    }
    out
}

const TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null", "nope",
];
const REFS: &[&str] = &[
    "#",
    "#/$defs/a",
    "#/$defs/b",
    "#/properties/a",
    "#/allOf/0",
    "#/$defs/missing",
    "#anchor",
    "#/%zz",
    "http://127.0.0.1:9/s.json",
    "file:///etc/passwd",
    "urn:x",
    "",
];
const PATTERNS: &[&str] = &[
    "^(a+)+$",
    "(",
    "(?=a)",
    "(a)\\1",
    "^https?://",
    "\\d+",
    "a{1000}{1000}",
    "[",
    "é+",
];

/// JSON Schema keywords with values that are legal, illegal and hostile:
/// catastrophic and malformed patterns, local, remote, missing and anchor
/// references, nested ids.
fn schema_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({})),
        Just(json!(true)),
        Just(json!(false)),
        select(TYPES).prop_map(|t| json!({"type": t})),
        select(REFS).prop_map(|r| json!({"$ref": r})),
        select(PATTERNS).prop_map(|p| json!({"pattern": p})),
        number().prop_map(|n| json!({"minimum": n})),
        number().prop_map(|n| json!({"multipleOf": n})),
        number().prop_map(|n| json!({"minLength": n})),
        json_value().prop_map(|v| json!({"const": v})),
        Just(json!({"$id": "http://127.0.0.1:9/x"})),
        Just(json!({"$schema": "http://json-schema.org/draft-04/schema#", "id": "urn:y"})),
        Just(json!({"$dynamicRef": "#meta"})),
        Just(json!({"format": "regex"})),
    ];
    leaf.prop_recursive(5, 40, 4, |inner| {
        let named = || {
            prop::collection::btree_map(select(&["a", "b", "c"][..]), inner.clone(), 0..3).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            )
        };
        let list = || prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array);
        prop_oneof![
            named().prop_map(|m| json!({"properties": m})),
            named().prop_map(|m| json!({"$defs": m})),
            named().prop_map(|m| json!({"patternProperties": m})),
            list().prop_map(|l| json!({"allOf": l})),
            list().prop_map(|l| json!({"anyOf": l})),
            list().prop_map(|l| json!({"oneOf": l})),
            list().prop_map(|l| json!({"prefixItems": l})),
            inner.clone().prop_map(|s| json!({"not": s})),
            inner.clone().prop_map(|s| json!({"items": s})),
            inner
                .clone()
                .prop_map(|s| json!({"additionalProperties": s})),
            inner.clone().prop_map(|s| json!({"contains": s})),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| merge(a, b)),
        ]
    })
}

/// Both schemas' keywords in one object (the first wins a clash).
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                a.entry(k).or_insert(v);
            }
            Value::Object(a)
        }
        (a, _) => a,
    }
}

/// What template strings are made of.
const TEMPLATE_PIECES: &[&str] = &[
    "{{",
    "}}",
    " ",
    ".",
    "steps",
    "trigger",
    "payload",
    "output",
    "kind",
    "run",
    "id",
    "workflow",
    "name",
    "a",
    "b",
    "0",
    "1",
    "-",
    "_",
    "x y",
    "é",
    "{{ ",
    " }}",
    "[0]",
    "{{ trigger.payload.a }}",
    "{{ steps.a.output }}",
    "{{ run.id }}",
];

/// A template string built from expression-ish pieces.
fn template_string() -> impl Strategy<Value = String> {
    let piece = select(TEMPLATE_PIECES);
    prop_oneof![
        4 => prop::collection::vec(piece, 0..12).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// A render context with every root, holding random values.
fn context() -> impl Strategy<Value = Value> {
    (json_value(), json_value(), json_value()).prop_map(|(payload, a, b)| {
        json!({
            "trigger": {"kind": "manual", "payload": payload},
            "steps": {"a": {"output": a}, "b": {"output": b}},
            "run": {"id": "r1"},
            "workflow": {"name": "wf"},
        })
    })
}

/// An input document whose strings are templates.
fn template_input() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => template_string().prop_map(Value::String),
        1 => number(),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// Workflows.

/// Parses and validates `body` as `POST /api/workflows` does, checking
/// whatever comes back.
fn check_workflow_body(body: &[u8]) {
    let started = Instant::now();
    let spec = match WorkflowSpec::parse(body) {
        Ok(spec) => spec,
        Err(e) => {
            match serde_json::from_slice::<Value>(body) {
                Ok(doc) => assert_refusal_of(&e, &doc),
                Err(_) => assert_refusal(&e),
            }
            return;
        }
    };
    let doc: Value = serde_json::from_slice(body).unwrap();
    // The graph helpers are public: they must answer on unvalidated steps.
    let order = topo_order(&spec.steps);
    let anc = ancestors(&spec.steps);
    match spec.validate(|a| a == "scanner") {
        Ok(()) => {
            let ids: BTreeSet<&str> = spec.steps.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(
                ids.len(),
                spec.steps.len(),
                "a validated workflow repeats an id"
            );
            let order = order.expect("a validated workflow has an order");
            assert_needs_first(&spec, &order);
            for s in &spec.steps {
                for n in &s.needs {
                    assert!(anc[s.id.as_str()].contains(n.as_str()));
                }
            }
        }
        Err(e) => assert_refusal_of(&e, &doc),
    }
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
}

fn assert_needs_first(spec: &WorkflowSpec, order: &[&str]) {
    assert_eq!(order.len(), spec.steps.len());
    let at: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for s in &spec.steps {
        for n in &s.needs {
            assert!(at[n.as_str()] < at[s.id.as_str()], "{n} after {}", s.id);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn workflow_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_workflow_body(&body);
    }

    #[test]
    fn workflow_json_never_panics(doc in json_value()) {
        check_workflow_body(doc.to_string().as_bytes());
    }

    #[test]
    fn hostile_workflows_are_refused_with_pointers(doc in hostile_workflow()) {
        check_workflow_body(doc.to_string().as_bytes());
        // Each id written more than once is named at every occurrence.
        let Ok(spec) = WorkflowSpec::parse(doc.to_string().as_bytes()) else { return Ok(()) };
        let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in spec.steps.iter().enumerate() {
            seen.entry(&s.id).or_default().push(i);
        }
        let err = spec.validate(|a| a == "scanner");
        for (id, at) in seen {
            if at.len() < 2 || spindle_core::agent::check_name(id).is_err() {
                continue;
            }
            let err = err.as_ref().expect_err("duplicate ids validated");
            for i in at {
                let pointer = format!("/steps/{i}/id");
                prop_assert!(
                    err.errors.iter().any(|e| e.pointer == pointer && e.detail.contains("duplicate")),
                    "{pointer} not named in {err}"
                );
            }
        }
    }

    #[test]
    fn valid_dags_validate_and_order_needs_first(dag in valid_dag(1..9)) {
        let steps: Vec<Value> = dag
            .iter()
            .map(|(id, needs, reads)| {
                let input: Vec<String> =
                    reads.iter().map(|r| format!("from {{{{ steps.{r}.output.x }}}}")).collect();
                json!({"id": id, "agent": "scanner", "needs": needs, "input": input})
            })
            .collect();
        let spec: WorkflowSpec =
            serde_json::from_value(json!({"name": "dag", "steps": steps})).unwrap();
        spec.validate(|a| a == "scanner").unwrap();
        let order = topo_order(&spec.steps).unwrap();
        assert_needs_first(&spec, &order);
        // ancestors agrees with the transitive closure, computed separately.
        let anc = ancestors(&spec.steps);
        let number = |id: &str| -> usize { id[1..].parse().unwrap() };
        let mut needs = vec![Vec::new(); dag.len()];
        for (id, n, _) in &dag {
            needs[number(id)] = n.iter().map(|s| number(s)).collect();
        }
        let expected = closure(&needs);
        for (id, _, _) in &dag {
            let got: BTreeSet<usize> = anc[id.as_str()].iter().map(|s| number(s)).collect();
            prop_assert_eq!(&got, &expected[number(id)]);
        }
    }

    #[test]
    fn a_dag_with_one_id_repeated_names_both_steps(
        dag in valid_dag(2..9),
        pick in any::<(prop::sample::Index, prop::sample::Index)>(),
    ) {
        let n = dag.len();
        let i = pick.0.index(n);
        let j = (i + 1 + pick.1.index(n - 1)) % n;
        let mut steps: Vec<Value> = dag
            .iter()
            .map(|(id, needs, _)| json!({"id": id, "agent": "scanner", "needs": needs}))
            .collect();
        steps[j]["id"] = steps[i]["id"].clone();
        let doc = json!({"name": "dup", "steps": steps});
        let spec: WorkflowSpec = serde_json::from_value(doc.clone()).unwrap();
        let err = spec.validate(|_| true).unwrap_err();
        assert_refusal_of(&err, &doc);
        for (at, other) in [(i, j), (j, i)] {
            let named = err.errors.iter().any(|e| {
                e.pointer == format!("/steps/{at}/id") && e.detail.contains(&format!("/steps/{other}/id"))
            });
            prop_assert!(named, "/steps/{}/id should name /steps/{}/id: {}", at, other, err);
        }
    }
}

#[test]
fn deep_and_huge_workflow_bodies_are_refused() {
    for depth in [127, 128, 129, 1_000, 100_000] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body =
            format!(r#"{{"name":"d","steps":[{{"id":"a","agent":"scanner","input":{deep}}}]}}"#);
        check_workflow_body(body.as_bytes());
    }
    let huge = "a".repeat(1 << 20);
    let body = json!({"name": huge, "steps": [{"id": huge, "agent": huge, "needs": [huge],
        "input": format!("{{{{ steps.{huge}.output }}}}")}]});
    check_workflow_body(body.to_string().as_bytes());
    let many_needs = vec!["b"; 100_000];
    let body = json!({"name": "n", "steps": [{"id": "a", "agent": "scanner", "needs": many_needs},
        {"id": "b", "agent": "scanner"}]});
    check_workflow_body(body.to_string().as_bytes());
}

// ---------------------------------------------------------------------------
// Agents and their schemas.

fn check_agent_body(body: &[u8]) {
    let started = Instant::now();
    match AgentSpec::parse(body) {
        Ok(spec) => {
            // A spec that parsed is valid, and becomes an agent.
            spec.validate().unwrap();
            spec.into_agent(1).unwrap();
        }
        Err(e) => match serde_json::from_slice::<Value>(body) {
            Ok(doc) => assert_refusal_of(&e, &doc),
            Err(_) => assert_refusal(&e),
        },
    }
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn agent_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_agent_body(&body);
    }

    #[test]
    fn agent_json_never_panics(doc in json_value()) {
        check_agent_body(doc.to_string().as_bytes());
    }

    #[test]
    fn agents_with_random_fields_are_accepted_or_refused_with_pointers(
        name in select(&["scanner", "", "Bad", "a-"][..]),
        image in prop::option::of(fragment_string()),
        command in prop::collection::vec(fragment_string(), 0..3),
        timeout in number(),
        memory in number(),
        retry in json_value(),
    ) {
        let mut doc = json!({"name": name, "command": command, "timeout_secs": timeout,
            "memory_mb": memory, "retry": retry});
        if let Some(image) = image {
            doc["image"] = json!(image);
        }
        check_agent_body(doc.to_string().as_bytes());
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn hostile_schemas_compile_or_are_refused_quickly(
        input_schema in schema_doc(),
        instance in json_value(),
    ) {
        let started = Instant::now();
        match schema::compile_error(&input_schema) {
            Some(e) => {
                prop_assert!(is_pointer(&e.pointer), "{:?}", e);
                prop_assert!(!e.detail.is_empty());
                // check() refuses a stored schema the same way.
                let refused = schema::check(&input_schema, &instance).unwrap_err();
                prop_assert!(refused.starts_with("schema: "), "{}", refused);
            }
            None => {
                let _ = schema::check(&input_schema, &instance);
            }
        }
        prop_assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
        let doc = json!({"name": "agent", "command": ["run"], "input_schema": input_schema,
            "output_schema": {"not": input_schema}});
        check_agent_body(doc.to_string().as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Templates.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn template_parsing_never_panics(s in template_string()) {
        match template::parse(&s) {
            Ok(parts) => {
                let mut text = String::new();
                for part in &parts {
                    match part {
                        template::Part::Text(t) => text.push_str(t),
                        template::Part::Expr(e) => {
                            prop_assert!(!e.path.is_empty());
                            let _ = e.step();
                        }
                    }
                }
                if !s.contains("{{") {
                    prop_assert_eq!(text, s);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn well_formed_expressions_parse_to_their_path(
        segs in prop::collection::vec("[a-z0-9_-]{1,8}", 0..5),
        pad in select(&["", " ", "  "][..]),
    ) {
        let mut path = vec!["trigger".to_owned(), "payload".to_owned()];
        path.extend(segs);
        let s = format!("x {{{{{pad}{}{pad}}}}} y", path.join("."));
        let parts = template::parse(&s).unwrap();
        prop_assert_eq!(parts.len(), 3);
        let template::Part::Expr(e) = &parts[1] else { panic!("{parts:?}") };
        prop_assert_eq!(&e.path, &path);
        prop_assert_eq!(e.step(), None);
    }

    #[test]
    fn rendering_never_panics_and_errors_point_into_the_input(
        input in template_input(),
        ctx in context(),
    ) {
        match template::render(&input, &ctx) {
            Ok(out) => {
                if !input.to_string().contains("{{") {
                    prop_assert_eq!(&out, &input);
                }
            }
            Err(e) => {
                prop_assert!(is_pointer(&e.pointer), "{:?}", e);
                prop_assert!(input.pointer(&e.pointer).is_some(), "{} not in {}", e.pointer, input);
                prop_assert!(!e.to_string().is_empty());
            }
        }
        let mut found = Vec::new();
        if template::visit(&input, "/input", 0, &mut found).is_ok() {
            let wrapped = json!({"input": input});
            for (pointer, s) in found {
                prop_assert_eq!(wrapped.pointer(&pointer).and_then(Value::as_str), Some(s));
            }
        }
    }

    #[test]
    fn a_whole_string_expression_keeps_its_value(payload in json_value(), key in "[a-z]{1,6}") {
        let ctx = json!({"trigger": {"payload": {key.clone(): payload.clone()}}});
        let out = template::render(&json!(format!("{{{{ trigger.payload.{key} }}}}")), &ctx).unwrap();
        prop_assert_eq!(out, payload);
    }
}

// ---------------------------------------------------------------------------
// Retry policies.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn retry_checks_and_backoff_never_panic(
        policy in retry_policy(),
        attempt in prop_oneof![0u32..40, any::<u32>()],
        seed in any::<String>(),
    ) {
        let mut errors = Vec::new();
        policy.check("/retry", &mut errors);
        let doc = json!({"retry": policy});
        for e in &errors {
            prop_assert!(doc.pointer(&e.pointer).is_some(), "{:?}", e);
        }
        let wait = policy.backoff_ms(attempt, &seed);
        let _ = policy.allows_retry_after(attempt);
        // Never more than the cap, whatever the numbers.
        prop_assert!(wait <= policy.max_backoff_ms);
        if errors.is_empty() {
            // A valid policy waits half to all of its exponential delay.
            let full = policy
                .initial_backoff_ms
                .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
                .min(policy.max_backoff_ms);
            prop_assert!((full / 2..=full).contains(&wait), "{} outside [{}, {}]", wait, full / 2, full);
            prop_assert!(wait <= MAX_BACKOFF_MS);
            prop_assert!(policy.max_attempts >= 1 && policy.max_attempts <= MAX_ATTEMPTS);
        }
    }

    #[test]
    fn retry_json_is_refused_not_panicked_on(doc in json_value()) {
        let _ = serde_json::from_value::<RetryPolicy>(doc);
    }
}

// ---------------------------------------------------------------------------
// Worker callbacks: `POST /jobs/{id}/heartbeat` and `/result` bodies.

/// A result body shaped like the real thing, with random values.
fn result_doc() -> impl Strategy<Value = Value> {
    (
        fragment_string(),
        select(&["succeeded", "failed", "running", ""][..]),
        prop::option::of(json_value()),
        prop::option::of(select(
            &["agent_failed", "timeout", "invalid_output", "nope"][..],
        )),
        prop::option::of(any::<i32>()),
        number(),
        number(),
    )
        .prop_map(|(job_id, status, output, kind, exit, started, finished)| {
            let mut r = json!({"job_id": job_id, "worker": "w1", "status": status,
                "started_at_ms": started, "finished_at_ms": finished});
            if let Some(o) = output {
                r["output"] = o;
            }
            if let Some(k) = kind {
                r["error"] = json!({"kind": k, "message": "m"});
            }
            if let Some(x) = exit {
                r["exit_code"] = json!(x);
            }
            r
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn callback_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<JobResult>(&body);
        let _ = serde_json::from_slice::<Heartbeat>(&body);
    }

    #[test]
    fn callback_json_never_panics(doc in json_value()) {
        let body = doc.to_string();
        let _ = serde_json::from_str::<JobResult>(&body);
        let _ = serde_json::from_str::<Heartbeat>(&body);
    }

    #[test]
    fn results_that_parse_round_trip(doc in result_doc()) {
        if let Ok(result) = serde_json::from_value::<JobResult>(doc) {
            let again: JobResult = serde_json::from_slice(&serde_json::to_vec(&result).unwrap()).unwrap();
            prop_assert_eq!(again, result);
        }
    }
}

#[test]
fn deep_callback_bodies_are_refused() {
    for depth in [128, 129, 100_000] {
        let body = format!(
            r#"{{"job_id":"r.a.1","worker":"w","status":"succeeded","started_at_ms":1,"finished_at_ms":2,"output":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(serde_json::from_str::<JobResult>(&body).is_err(), "{depth}");
    }
}
