//! Expressions for step conditions (`when`) and fan-out sources (`for_each`).
//!
//! A step's `when` is an expression that must give `true` or `false`; its
//! `for_each` is one that gives a list. Expressions read the same paths as
//! input templates ([`crate::template`]) and nothing else: they cannot change
//! anything, call out or loop, so evaluating one costs no more than a pass
//! over its source and the values it reads.
//!
//! ```text
//! steps.scan.output.summary.high > 0
//! 'bug' in trigger.payload.labels
//! len(steps.diff.output.files) > 0 && trigger.kind == 'webhook'
//! trigger.payload.env not in ['prod', 'staging']
//! steps.lint.status == 'failed' || !(trigger.payload.draft == true)
//! ```
//!
//! # Values
//!
//! - Numbers as in JSON: `0`, `3`, `2.5`, `1e3`. A negative number is written
//!   with a minus sign before it: `-1`.
//! - Strings in single or double quotes: `'main'`, `"it's"`. Inside, `\\` is a
//!   backslash, `\'` and `\"` are quotes, `\n` a newline and `\t` a tab; no
//!   other escapes exist.
//! - `true`, `false` and `null`.
//! - Lists: `[1, 'a', null]`, at most 256 items. There are no object literals.
//!
//! # Paths
//!
//! Paths are those of input templates, plus a step's status:
//!
//! | Path                   | Reads                                        |
//! |------------------------|----------------------------------------------|
//! | `trigger.kind`         | how the run started: `'manual'`, `'webhook'`, `'schedule'` |
//! | `trigger.payload...`   | the trigger's payload, or a value inside it  |
//! | `steps.<id>.output...` | a step's output, or a value inside it        |
//! | `steps.<id>.status`    | a step's status, such as `'succeeded'`       |
//! | `run.id`               | the run's id                                 |
//! | `workflow.name`        | the workflow's name                          |
//!
//! Segments are separated by dots, with no spaces, and are made of ASCII
//! letters, digits, `_` and `-`; a segment of digits also picks an item of
//! a list (`trigger.payload.commits.0.id`). A path has at most 16 segments,
//! the root included.
//!
//! A path that leads nowhere — a missing member, an index past the end of a
//! list, a segment after a string or number — gives `null` rather than an
//! error, so optional fields can be tested: `trigger.payload.draft == true`
//! is `false` when the payload has no `draft`.
//!
//! Because `-` may be part of a name, `steps.my-step.output` is one path. A
//! minus sign that negates needs a space or another symbol before it:
//! `trigger.payload.delta == -1`.
//!
//! # Operators
//!
//! From loosest to tightest (`a`, `b`, `x` and `c` stand for any
//! expression):
//!
//! | Operator                                    | Gives                     |
//! |---------------------------------------------|---------------------------|
//! | `a \|\| b`                                  | whether either is true    |
//! | `a && b`                                    | whether both are true     |
//! | `!a`                                        | the opposite of `a`       |
//! | `a == b`, `a != b`                          | whether `a` and `b` are equal |
//! | `a < b`, `a <= b`, `a > b`, `a >= b`        | how `a` and `b` order     |
//! | `x in c`, `x not in c`                      | whether `c` holds `x`     |
//! | `-a`                                        | `a` negated               |
//! | `len(x)`, `(a)`, values and paths           |                           |
//!
//! The three rows of comparisons are one level.
//!
//! - `!` binds looser than comparisons: `!steps.check.output.ok == true`
//!   means `!(steps.check.output.ok == true)`. To compare a negation, put it
//!   in parentheses: `a == (!b)`.
//! - Comparisons do not chain: `a < b < c` and `a == b == c` are errors; write
//!   `a < b && b < c`.
//! - Equality is deep JSON equality; numbers compare by value (`1 == 1.0`),
//!   and values of different types are unequal (`1 == '1'` is `false`).
//! - `<`, `<=`, `>` and `>=` need two numbers or two strings; strings order
//!   by Unicode code point (`'B' < 'a'`). Anything else, `null` included, is
//!   an error.
//! - `x in list` is whether an item of the list equals `x`; `s in string`
//!   whether `s` is part of the string; `k in object` whether the object has a
//!   member named `k`; `x in null` is `false`. Anything else is an error.
//! - `&&`, `||` and `!` need `true` or `false`; `&&` and `||` stop at the first
//!   operand that decides the result, so in
//!   `trigger.payload.n != null && trigger.payload.n > 3` the `>` never sees
//!   `null`.
//! - `len(x)` is the number of characters of a string, items of a list or
//!   members of an object; `len(null)` is `0`.
//! - There is no arithmetic: `a - 1` is an error.
//!
//! # Limits
//!
//! An expression is at most 1024 bytes long and nests at most 32 levels:
//! each parenthesis, list, `len(...)`, `!` and `-` is a level, while chains of
//! `&&` and `||` are not. A list written in an expression holds at most 256
//! items and, once its paths are read, 1 MiB of values: evaluation never
//! builds more than that, whatever the paths point at.
//!
//! ```
//! use serde_json::json;
//! use spindle_core::expr;
//!
//! let when = expr::parse("len(steps.diff.output.files) > 0 && trigger.kind == 'webhook'")?;
//! let ctx = json!({
//!     "trigger": {"kind": "webhook", "payload": {}},
//!     "steps": {"diff": {"output": {"files": ["src/main.rs"]}, "status": "succeeded"}},
//! });
//! assert!(when.eval_bool(&ctx)?);
//! assert_eq!(when.paths()[0].step(), Some("diff"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use serde_json::{Number, Value};

use crate::template::MAX_PATH_SEGMENTS;

/// Longest expression, in bytes of source.
pub const MAX_EXPR_LEN: usize = 1024;
/// Deepest nesting of parentheses, lists, `len(...)`, `!` and `-`.
///
/// Parsing, checking, evaluating, printing and dropping an expression all
/// recurse over it; the bound keeps that recursion far from the stack's end
/// however the expression is written.
pub const MAX_EXPR_DEPTH: usize = 32;
/// Most bytes of JSON a list written in an expression may hold once its
/// paths are read.
pub const MAX_LIST_BYTES: usize = 1 << 20;
/// Most items in one list literal.
pub const MAX_LIST_ITEMS: usize = 256;

/// Longest excerpt of a value quoted in an error, in characters.
const EXCERPT_CHARS: usize = 80;

/// A parse or type error; `at` is a byte offset into the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at}: {message}")]
pub struct ExprError {
    /// Where in the source the problem is, in bytes.
    pub at: usize,
    /// What is wrong, for the workflow's author.
    pub message: String,
}

/// An evaluation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

fn error(at: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        at,
        message: message.into(),
    }
}

/// Static types for registration-time checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// A string.
    String,
    /// A list.
    List,
    /// An object (only paths give one).
    Object,
    /// `null`.
    Null,
    /// Not known before the run: what a path reads.
    Any,
}

impl Type {
    /// The type as it reads in a message: "true or false", "a number", ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "true or false",
            Self::Number => "a number",
            Self::String => "a string",
            Self::List => "a list",
            Self::Object => "an object",
            Self::Null => "null",
            Self::Any => "any value",
        }
    }

    /// The bare noun, for messages naming two types side by side.
    fn noun(self) -> &'static str {
        match self {
            Self::Bool => "boolean",
            Self::Number => "number",
            Self::String => "string",
            Self::List => "list",
            Self::Object => "object",
            Self::Null => "null",
            Self::Any => "value",
        }
    }

    fn of(v: &Value) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::Bool(_) => Self::Bool,
            Value::Number(_) => Self::Number,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::List,
            Value::Object(_) => Self::Object,
        }
    }
}

/// A path as read by an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The segments, root first, as written.
    pub segments: Vec<String>,
}

impl Path {
    /// The step a path reads (`Some("scan")` for `steps.scan.output.x`), if
    /// it reads one.
    pub fn step(&self) -> Option<&str> {
        // Matched, not indexed: `segments` is public, so a `Path` may not
        // have come from `parse`.
        match self.segments.as_slice() {
            [root, id, ..] if root == "steps" => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// A parsed expression, ready to check and evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Node,
}

/// A byte offset kept for error messages.
///
/// Equal to every other, so that two expressions are equal when they mean
/// the same, however they were spaced or parenthesised.
#[derive(Debug, Clone, Copy)]
struct At(usize);

impl PartialEq for At {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// Where the node starts (for a unary operator, the operator).
    at: At,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `null`, a boolean, a number or a string; kept as a value so that
    /// evaluating one borrows rather than copies.
    Literal(Value),
    List(Vec<Node>),
    Path(Path),
    Len(Box<Node>),
    Neg(Box<Node>),
    Not(Box<Node>),
    // Chains are flat, so that `a || b || ...` costs no depth however long.
    And(Vec<Node>),
    Or(Vec<Node>),
    Compare {
        lhs: Box<Node>,
        op: Op,
        op_at: At,
        rhs: Box<Node>,
    },
}

impl Kind {
    /// How tightly the node binds, loosest lowest; printing puts a child in
    /// parentheses when it binds too loosely for its place.
    fn binding(&self) -> u8 {
        match self {
            Self::Or(_) => 1,
            Self::And(_) => 2,
            Self::Not(_) => 3,
            Self::Compare { .. } => 4,
            Self::Neg(_) => 5,
            Self::Literal(_) | Self::List(_) | Self::Path(_) | Self::Len(_) => 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::In => "in",
            Self::NotIn => "not in",
        }
    }

    /// Whether values of these types can be compared with `self`; `Any`
    /// stands for a value not known yet, so it fits every rule.
    ///
    /// Shared by `type_check` and `eval`, so that a registration-time check
    /// refuses exactly what evaluation would.
    fn accepts(self, l: Type, r: Type) -> bool {
        use Type::{Any, List, Null, Number, Object, String};
        match self {
            Self::Eq | Self::Ne => true,
            Self::Lt | Self::Le | Self::Gt | Self::Ge => matches!(
                (l, r),
                (Number | Any, Number | Any) | (String | Any, String | Any)
            ),
            Self::In | Self::NotIn => match r {
                List | Null | Any => true,
                String | Object => matches!(l, String | Any),
                _ => false,
            },
        }
    }

    /// Why `accepts(l, r)` is false.
    fn mismatch(self, l: Type, r: Type) -> String {
        let op = self.symbol();
        match self {
            Self::In | Self::NotIn => match r {
                Type::String | Type::Object => format!(
                    "{op} needs a string on the left when the right is {}, found {}",
                    r.name(),
                    l.name()
                ),
                _ => format!(
                    "{op} needs a list, string or object on the right, found {}",
                    r.name()
                ),
            },
            _ => match (l, r) {
                (Type::Any, t) | (t, Type::Any) => format!(
                    "cannot compare {} using {op}: only two numbers or two strings can be",
                    t.noun()
                ),
                _ => format!("cannot compare {} with {} using {op}", l.noun(), r.noun()),
            },
        }
    }
}

/// Parses an expression.
///
/// Refuses sources longer than [`MAX_EXPR_LEN`], nested deeper than
/// [`MAX_EXPR_DEPTH`], empty ones and ones with anything after a complete
/// expression. Types are not checked here; see [`Expression::type_check`].
pub fn parse(src: &str) -> Result<Expression, ExprError> {
    if src.len() > MAX_EXPR_LEN {
        return Err(error(
            MAX_EXPR_LEN,
            format!("expression is longer than {MAX_EXPR_LEN} bytes"),
        ));
    }
    if src.trim().is_empty() {
        return Err(error(0, "empty expression"));
    }
    let mut lexer = Lexer { src, pos: 0 };
    let cur = lexer.next()?;
    let mut parser = Parser {
        lexer,
        cur,
        depth: 0,
    };
    let root = parser.or()?;
    if parser.cur.tok != Tok::End {
        return Err(parser.unexpected("an operator or the end of the expression"));
    }
    Ok(Expression { root })
}

impl Expression {
    /// Every path the expression reads, in source order.
    pub fn paths(&self) -> Vec<&Path> {
        fn walk<'a>(n: &'a Node, out: &mut Vec<&'a Path>) {
            match &n.kind {
                Kind::Path(p) => out.push(p),
                Kind::List(xs) | Kind::And(xs) | Kind::Or(xs) => {
                    xs.iter().for_each(|x| walk(x, out));
                }
                Kind::Len(x) | Kind::Neg(x) | Kind::Not(x) => walk(x, out),
                Kind::Compare { lhs, rhs, .. } => {
                    walk(lhs, out);
                    walk(rhs, out);
                }
                Kind::Literal(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// The expression's static type, or the first operation that would fail
    /// whatever the run's data (`len(3)`, `'a' < 1`, `1 && true`).
    ///
    /// Paths are [`Type::Any`], so an expression that passes can still fail
    /// when evaluated against data of the wrong shape.
    pub fn type_check(&self) -> Result<Type, ExprError> {
        check(&self.root)
    }

    /// Evaluates the expression against `ctx`, an object with the roots as
    /// keys: `{"trigger": {"kind": .., "payload": ..}, "steps": {"<id>":
    /// {"output": .., "status": ..}}, "run": {"id": ..}, "workflow": {"name":
    /// ..}}`.
    pub fn eval(&self, ctx: &Value) -> Result<Value, EvalError> {
        eval(&self.root, ctx).map(Cow::into_owned)
    }

    /// Evaluates a condition: like [`Expression::eval`], but a result other
    /// than `true` or `false` is an error.
    pub fn eval_bool(&self, ctx: &Value) -> Result<bool, EvalError> {
        match eval(&self.root, ctx)?.as_ref() {
            Value::Bool(b) => Ok(*b),
            Value::Null => Err(EvalError(
                "the condition gave null, not true or false".to_owned(),
            )),
            other => Err(EvalError(format!(
                "the condition gave {} ({}), not true or false",
                Type::of(other).name(),
                excerpt(other)
            ))),
        }
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_node(&self.root, f)
    }
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Literal(Value),
    Path(Path),
    Len,
    Not,
    /// A comparison, `in` included; `not in` is `Not` then `In`.
    Op(Op),
    Bang,
    Minus,
    AndAnd,
    OrOr,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Self::Literal(Value::String(_)) => "a string".to_owned(),
            Self::Literal(v) => v.to_string(),
            Self::Path(p) => format!("the path {p}"),
            Self::Len => "len".to_owned(),
            Self::Not => "not".to_owned(),
            Self::Op(op) => op.symbol().to_owned(),
            Self::Bang => "'!'".to_owned(),
            Self::Minus => "'-'".to_owned(),
            Self::AndAnd => "'&&'".to_owned(),
            Self::OrOr => "'||'".to_owned(),
            Self::LParen => "'('".to_owned(),
            Self::RParen => "')'".to_owned(),
            Self::LBracket => "'['".to_owned(),
            Self::RBracket => "']'".to_owned(),
            Self::Comma => "','".to_owned(),
            Self::End => "the end of the expression".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    at: usize,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl<'s> Lexer<'s> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    fn next(&mut self) -> Result<Token, ExprError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        let at = self.pos;
        let Some(c) = trimmed.chars().next() else {
            return Ok(Token { tok: Tok::End, at });
        };
        let second = self.byte(at + 1);
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            ',' => (Tok::Comma, 1),
            '-' => (Tok::Minus, 1),
            '!' if second == Some(b'=') => (Tok::Op(Op::Ne), 2),
            '!' => (Tok::Bang, 1),
            '=' if second == Some(b'=') => (Tok::Op(Op::Eq), 2),
            '<' if second == Some(b'=') => (Tok::Op(Op::Le), 2),
            '<' => (Tok::Op(Op::Lt), 1),
            '>' if second == Some(b'=') => (Tok::Op(Op::Ge), 2),
            '>' => (Tok::Op(Op::Gt), 1),
            '&' if second == Some(b'&') => (Tok::AndAnd, 2),
            '|' if second == Some(b'|') => (Tok::OrOr, 2),
            '=' => return Err(error(at, "write == to compare")),
            '&' => return Err(error(at, "write && for and")),
            '|' => return Err(error(at, "write || for or")),
            '+' | '*' | '/' | '%' => {
                return Err(error(
                    at,
                    format!("there is no arithmetic in expressions: {c:?} is not an operator"),
                ));
            }
            '\'' | '"' => return self.string(c),
            '0'..='9' => return self.number(),
            c if c.is_ascii_alphabetic() || c == '_' => return self.word(),
            c => return Err(error(at, format!("unexpected character {c:?}"))),
        };
        self.pos += len;
        Ok(Token { tok, at })
    }

    fn string(&mut self, quote: char) -> Result<Token, ExprError> {
        let at = self.pos;
        let body = at + 1;
        let mut out = String::new();
        let mut chars = self.src[body..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos = body + i + 1;
                    return Ok(Token {
                        tok: Tok::Literal(Value::String(out)),
                        at,
                    });
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '\'')) => out.push('\''),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => {
                        return Err(error(
                            body + i,
                            format!("unknown escape \\{other}: use \\\\, \\', \\\", \\n or \\t"),
                        ));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(error(at, "unterminated string: no closing quote"))
    }

    fn number(&mut self) -> Result<Token, ExprError> {
        let at = self.pos;
        let digits = |mut i: usize| {
            while self.byte(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            i
        };
        let mut end = digits(at);
        let mut float = false;
        if self.byte(end) == Some(b'.') {
            let after = digits(end + 1);
            if after == end + 1 {
                return Err(error(end + 1, "expected a digit after the decimal point"));
            }
            end = after;
            float = true;
        }
        if matches!(self.byte(end), Some(b'e' | b'E')) {
            let mut i = end + 1;
            if matches!(self.byte(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let after = digits(i);
            if after == i {
                return Err(error(i, "expected digits in the exponent"));
            }
            end = after;
            float = true;
        }
        // A number running into a name (`3x`, `0x1F`) is a typo, not a
        // number followed by a path. `-` is left to the parser, which says
        // there is no arithmetic.
        if self
            .byte(end)
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            let mut word_end = end;
            while self.byte(word_end).is_some_and(is_name_byte) {
                word_end += 1;
            }
            let word = &self.src[at..word_end];
            return Err(error(at, format!("{word:?} is not a number")));
        }
        let text = &self.src[at..end];
        if text.len() > 1 && text.starts_with('0') && text.as_bytes()[1].is_ascii_digit() {
            return Err(error(
                at,
                format!("{text:?}: a number does not start with 0 followed by digits"),
            ));
        }
        let exact = if float {
            None
        } else {
            text.parse::<u64>().ok().map(Number::from)
        };
        // Rust's float parsing rounds correctly, so printing an expression
        // and parsing it again gives back the very same numbers.
        let n = match exact {
            Some(n) => n,
            None => text
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .ok_or_else(|| error(at, format!("{text} is too large a number")))?,
        };
        self.pos = end;
        Ok(Token {
            tok: Tok::Literal(Value::Number(n)),
            at,
        })
    }

    /// One name: a root, a segment or a keyword.
    fn name(&mut self) -> Result<&'s str, ExprError> {
        let start = self.pos;
        while self.byte(self.pos).is_some_and(is_name_byte) {
            self.pos += 1;
        }
        // Otherwise `café` would read as `caf` and then an odd character.
        if let Some(c) = self.src[self.pos..].chars().next()
            && c.is_alphanumeric()
        {
            return Err(error(
                self.pos,
                "names use ASCII letters, digits, '_' and '-'",
            ));
        }
        Ok(&self.src[start..self.pos])
    }

    fn word(&mut self) -> Result<Token, ExprError> {
        let at = self.pos;
        let first = self.name()?;
        if self.byte(self.pos) != Some(b'.') {
            let tok = match first {
                "true" => Some(Tok::Literal(Value::Bool(true))),
                "false" => Some(Tok::Literal(Value::Bool(false))),
                "null" => Some(Tok::Literal(Value::Null)),
                "len" => Some(Tok::Len),
                "in" => Some(Tok::Op(Op::In)),
                "not" => Some(Tok::Not),
                "and" => return Err(error(at, "write && for and")),
                "or" => return Err(error(at, "write || for or")),
                _ => None,
            };
            if let Some(tok) = tok {
                return Ok(Token { tok, at });
            }
        }
        let mut segments = vec![first.to_owned()];
        while self.byte(self.pos) == Some(b'.') {
            self.pos += 1;
            let seg_at = self.pos;
            let seg = self.name()?;
            if seg.is_empty() {
                return Err(error(
                    seg_at,
                    "expected a path segment after '.': use letters, digits, '_' and '-'",
                ));
            }
            if segments.len() == MAX_PATH_SEGMENTS {
                return Err(error(
                    at,
                    format!("a path has at most {MAX_PATH_SEGMENTS} segments"),
                ));
            }
            segments.push(seg.to_owned());
        }
        check_shape(&segments).map_err(|m| error(at, m))?;
        Ok(Token {
            tok: Tok::Path(Path { segments }),
            at,
        })
    }
}

/// The roots and shapes of `template`'s paths, plus `steps.<id>.status`:
/// a condition may test how an earlier step ended.
fn check_shape(path: &[String]) -> Result<(), String> {
    let seg = |i: usize| path.get(i).map(String::as_str);
    match path[0].as_str() {
        "trigger" => match seg(1) {
            Some("payload") => Ok(()),
            Some("kind") if path.len() == 2 => Ok(()),
            _ => Err("use trigger.payload... or trigger.kind".to_owned()),
        },
        "steps" => match seg(2) {
            Some("output") => Ok(()),
            Some("status") if path.len() == 3 => Ok(()),
            _ => Err("use steps.<id>.output... or steps.<id>.status".to_owned()),
        },
        "run" | "workflow" => match (path[0].as_str(), seg(1), path.len()) {
            ("run", Some("id"), 2) | ("workflow", Some("name"), 2) => Ok(()),
            _ => Err("use run.id or workflow.name".to_owned()),
        },
        other => Err(format!(
            "unknown root {other:?}: paths start with trigger, steps, run or workflow"
        )),
    }
}

// --------------------------------------------------------------- parsing

struct Parser<'s> {
    lexer: Lexer<'s>,
    cur: Token,
    /// Levels entered so far; see [`MAX_EXPR_DEPTH`].
    depth: usize,
}

fn node(at: usize, kind: Kind) -> Node {
    Node { at: At(at), kind }
}

impl Parser<'_> {
    fn bump(&mut self) -> Result<Token, ExprError> {
        let next = self.lexer.next()?;
        Ok(std::mem::replace(&mut self.cur, next))
    }

    fn nested(
        &mut self,
        at: usize,
        f: impl FnOnce(&mut Self) -> Result<Node, ExprError>,
    ) -> Result<Node, ExprError> {
        if self.depth == MAX_EXPR_DEPTH {
            return Err(error(
                at,
                format!("expression nests deeper than {MAX_EXPR_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if self.cur.tok != tok {
            return Err(self.unexpected(what));
        }
        self.bump()?;
        Ok(())
    }

    /// The current token where `expected` should have been.
    fn unexpected(&self, expected: &str) -> ExprError {
        let message = match &self.cur.tok {
            Tok::Minus => "there is no arithmetic in expressions: - only negates a number".into(),
            Tok::LBracket => "pick a list item with a dot, as in items.0".into(),
            tok => format!("expected {expected}, found {}", tok.describe()),
        };
        error(self.cur.at, message)
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let first = self.and()?;
        if self.cur.tok != Tok::OrOr {
            return Ok(first);
        }
        let at = first.at.0;
        let mut items = vec![first];
        while self.cur.tok == Tok::OrOr {
            self.bump()?;
            items.push(self.and()?);
        }
        Ok(node(at, Kind::Or(items)))
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let first = self.not()?;
        if self.cur.tok != Tok::AndAnd {
            return Ok(first);
        }
        let at = first.at.0;
        let mut items = vec![first];
        while self.cur.tok == Tok::AndAnd {
            self.bump()?;
            items.push(self.not()?);
        }
        Ok(node(at, Kind::And(items)))
    }

    fn not(&mut self) -> Result<Node, ExprError> {
        if self.cur.tok != Tok::Bang {
            return self.comparison();
        }
        let at = self.cur.at;
        self.bump()?;
        let inner = self.nested(at, Self::not)?;
        Ok(node(at, Kind::Not(Box::new(inner))))
    }

    fn comparison(&mut self) -> Result<Node, ExprError> {
        let lhs = self.negation()?;
        let op_at = self.cur.at;
        let op = match self.cur.tok {
            Tok::Op(op) => op,
            Tok::Not => {
                self.bump()?;
                if self.cur.tok != Tok::Op(Op::In) {
                    return Err(error(
                        self.cur.at,
                        "expected in after not (write ! to negate)",
                    ));
                }
                Op::NotIn
            }
            _ => return Ok(lhs),
        };
        self.bump()?;
        let rhs = self.negation()?;
        if matches!(self.cur.tok, Tok::Op(_) | Tok::Not) {
            return Err(error(
                self.cur.at,
                "comparisons do not chain: join two with &&, as in a < b && b < c",
            ));
        }
        Ok(node(
            lhs.at.0,
            Kind::Compare {
                lhs: Box::new(lhs),
                op,
                op_at: At(op_at),
                rhs: Box::new(rhs),
            },
        ))
    }

    fn negation(&mut self) -> Result<Node, ExprError> {
        if self.cur.tok != Tok::Minus {
            return self.primary();
        }
        let at = self.cur.at;
        self.bump()?;
        let inner = self.nested(at, Self::negation)?;
        Ok(node(at, Kind::Neg(Box::new(inner))))
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let at = self.cur.at;
        // Refused before moving on, so that a bad token after this one
        // cannot hide the real mistake.
        match &self.cur.tok {
            Tok::Literal(_) | Tok::Path(_) | Tok::Len | Tok::LParen | Tok::LBracket => {}
            Tok::Bang => {
                return Err(error(
                    at,
                    "this ! needs parentheses, as in a == (!b): ! binds looser than comparisons",
                ));
            }
            Tok::Not => return Err(error(at, "write ! to negate; not only goes in not in")),
            tok => {
                return Err(error(
                    at,
                    format!("expected a value, found {}", tok.describe()),
                ));
            }
        }
        match self.bump()?.tok {
            Tok::Literal(v) => Ok(node(at, Kind::Literal(v))),
            Tok::Path(p) => Ok(node(at, Kind::Path(p))),
            Tok::Len => self.nested(at, |p| {
                p.expect(Tok::LParen, "'(' after len")?;
                let arg = p.or()?;
                p.expect(Tok::RParen, "')' to close len(")?;
                Ok(node(at, Kind::Len(Box::new(arg))))
            }),
            Tok::LParen => self.nested(at, |p| {
                let inner = p.or()?;
                p.expect(Tok::RParen, &format!("')' to close the '(' at byte {at}"))?;
                Ok(inner)
            }),
            _ => self.nested(at, |p| p.list(at)),
        }
    }

    fn list(&mut self, at: usize) -> Result<Node, ExprError> {
        let mut items = Vec::new();
        if self.cur.tok != Tok::RBracket {
            loop {
                if items.len() == MAX_LIST_ITEMS {
                    return Err(error(
                        self.cur.at,
                        format!("a list has at most {MAX_LIST_ITEMS} items"),
                    ));
                }
                items.push(self.or()?);
                if self.cur.tok != Tok::Comma {
                    break;
                }
                self.bump()?;
            }
        }
        self.expect(Tok::RBracket, "',' or ']'")?;
        Ok(node(at, Kind::List(items)))
    }
}

// -------------------------------------------------------- type checking

fn check(n: &Node) -> Result<Type, ExprError> {
    let want_bool = |t: Type, at: At, what: &str| {
        if matches!(t, Type::Bool | Type::Any) {
            Ok(())
        } else {
            Err(error(at.0, format!("{what}, found {}", t.name())))
        }
    };
    Ok(match &n.kind {
        Kind::Literal(v) => Type::of(v),
        Kind::Path(_) => Type::Any,
        Kind::List(xs) => {
            for x in xs {
                check(x)?;
            }
            Type::List
        }
        Kind::Len(x) => {
            let t = check(x)?;
            if !matches!(
                t,
                Type::String | Type::List | Type::Object | Type::Null | Type::Any
            ) {
                return Err(error(x.at.0, len_mismatch(t)));
            }
            Type::Number
        }
        Kind::Neg(x) => {
            let t = check(x)?;
            if !matches!(t, Type::Number | Type::Any) {
                return Err(error(n.at.0, neg_mismatch(t)));
            }
            Type::Number
        }
        Kind::Not(x) => {
            want_bool(check(x)?, n.at, "! needs true or false")?;
            Type::Bool
        }
        Kind::And(xs) | Kind::Or(xs) => {
            let what = chain_needs(&n.kind);
            for x in xs {
                want_bool(check(x)?, x.at, what)?;
            }
            Type::Bool
        }
        Kind::Compare {
            lhs,
            op,
            op_at,
            rhs,
        } => {
            let (l, r) = (check(lhs)?, check(rhs)?);
            if !op.accepts(l, r) {
                return Err(error(op_at.0, op.mismatch(l, r)));
            }
            Type::Bool
        }
    })
}

fn len_mismatch(t: Type) -> String {
    format!("len needs a string, list or object, found {}", t.name())
}

fn neg_mismatch(t: Type) -> String {
    format!("- needs a number, found {}", t.name())
}

fn chain_needs(kind: &Kind) -> &'static str {
    match kind {
        Kind::And(_) => "&& needs true or false on both sides",
        _ => "|| needs true or false on both sides",
    }
}

// ------------------------------------------------------------ evaluation

fn eval<'a>(n: &'a Node, ctx: &'a Value) -> Result<Cow<'a, Value>, EvalError> {
    let bool_of = |v: &Value, what: &str| match v {
        Value::Bool(b) => Ok(*b),
        other => Err(EvalError(format!(
            "{what}, found {}",
            Type::of(other).name()
        ))),
    };
    Ok(match &n.kind {
        Kind::Literal(v) => Cow::Borrowed(v),
        Kind::Path(p) => lookup(p, ctx).map_or(Cow::Owned(Value::Null), Cow::Borrowed),
        Kind::List(xs) => {
            // Paths to large values would be copied into the list: bounded,
            // so a short expression cannot build gigabytes.
            let mut left = MAX_LIST_BYTES;
            let mut items = Vec::with_capacity(xs.len());
            for x in xs {
                let v = eval(x, ctx)?.into_owned();
                left = crate::template::json_len(&v, left)
                    .and_then(|n| left.checked_sub(n))
                    .ok_or_else(|| {
                        EvalError(format!(
                            "a list written in the expression would hold more than {MAX_LIST_BYTES} bytes"
                        ))
                    })?;
                items.push(v);
            }
            Cow::Owned(Value::Array(items))
        }
        Kind::Len(x) => {
            let len = match eval(x, ctx)?.as_ref() {
                Value::String(s) => s.chars().count(),
                Value::Array(items) => items.len(),
                Value::Object(members) => members.len(),
                Value::Null => 0,
                other => return Err(EvalError(len_mismatch(Type::of(other)))),
            };
            Cow::Owned(Value::from(len))
        }
        Kind::Neg(x) => match eval(x, ctx)?.as_ref() {
            Value::Number(v) => Cow::Owned(Value::Number(negate(v))),
            other => return Err(EvalError(neg_mismatch(Type::of(other)))),
        },
        Kind::Not(x) => Cow::Owned(Value::Bool(!bool_of(
            &*eval(x, ctx)?,
            "! needs true or false",
        )?)),
        Kind::And(xs) | Kind::Or(xs) => {
            // `&&` stops at the first false, `||` at the first true.
            let stop = matches!(n.kind, Kind::Or(_));
            let what = chain_needs(&n.kind);
            for x in xs {
                if bool_of(&*eval(x, ctx)?, what)? == stop {
                    return Ok(Cow::Owned(Value::Bool(stop)));
                }
            }
            Cow::Owned(Value::Bool(!stop))
        }
        Kind::Compare { lhs, op, rhs, .. } => {
            let l = eval(lhs, ctx)?;
            // `x in [a, b]` compares item by item rather than building the
            // list, so that listing paths to large values copies none. Every
            // item is still evaluated, so errors do not depend on `x`.
            if let (Op::In | Op::NotIn, Kind::List(items)) = (op, &rhs.kind) {
                let mut found = false;
                for item in items {
                    let v = eval(item, ctx)?;
                    found = found || json_eq(&l, &v);
                }
                return Ok(Cow::Owned(Value::Bool(found == (*op == Op::In))));
            }
            let r = eval(rhs, ctx)?;
            Cow::Owned(Value::Bool(compare(&l, *op, &r)?))
        }
    })
}

fn lookup<'a>(path: &Path, ctx: &'a Value) -> Option<&'a Value> {
    path.segments.iter().try_fold(ctx, |cur, seg| match cur {
        Value::Object(members) => members.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn compare(l: &Value, op: Op, r: &Value) -> Result<bool, EvalError> {
    let mismatch = || EvalError(op.mismatch(Type::of(l), Type::of(r)));
    Ok(match op {
        Op::Eq => json_eq(l, r),
        Op::Ne => !json_eq(l, r),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ord = match (l, r) {
                (Value::Number(a), Value::Number(b)) => num_cmp(a, b),
                // Byte order of UTF-8 is code point order.
                (Value::String(a), Value::String(b)) => a.cmp(b),
                _ => return Err(mismatch()),
            };
            match op {
                Op::Lt => ord.is_lt(),
                Op::Le => ord.is_le(),
                Op::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }
        }
        Op::In | Op::NotIn => {
            let found = match (l, r) {
                (x, Value::Array(items)) => items.iter().any(|item| json_eq(x, item)),
                (Value::String(s), Value::String(text)) => text.contains(s.as_str()),
                (Value::String(k), Value::Object(members)) => members.contains_key(k),
                (_, Value::Null) => false,
                _ => return Err(mismatch()),
            };
            found == (op == Op::In)
        }
    })
}

/// Deep equality with numbers compared by value.
///
/// Walks with its own stack rather than recursing: the values come from
/// outside, and nothing bounds their depth here.
fn json_eq(a: &Value, b: &Value) -> bool {
    let mut todo = vec![(a, b)];
    while let Some(pair) = todo.pop() {
        match pair {
            (Value::Number(x), Value::Number(y)) => {
                if num_cmp(x, y).is_ne() {
                    return false;
                }
            }
            (Value::Array(xs), Value::Array(ys)) => {
                if xs.len() != ys.len() {
                    return false;
                }
                todo.extend(xs.iter().zip(ys));
            }
            (Value::Object(xs), Value::Object(ys)) => {
                if xs.len() != ys.len() {
                    return false;
                }
                for (k, x) in xs {
                    match ys.get(k) {
                        Some(y) => todo.push((x, y)),
                        None => return false,
                    }
                }
            }
            (Value::Null, Value::Null) => {}
            (Value::Bool(x), Value::Bool(y)) if x == y => {}
            (Value::String(x), Value::String(y)) if x == y => {}
            _ => return false,
        }
    }
    true
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Every JSON number has an `f64` view (serde_json is built without
/// arbitrary precision); NaN never occurs.
fn float(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

fn num_cmp(a: &Number, b: &Number) -> Ordering {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => int_float_cmp(x, float(b)),
        (None, Some(y)) => int_float_cmp(y, float(a)).reverse(),
        (None, None) => float(a).partial_cmp(&float(b)).unwrap_or(Ordering::Equal),
    }
}

/// Compares exactly, where `i as f64` would round past 2^53.
fn int_float_cmp(i: i128, f: f64) -> Ordering {
    const BOUND: f64 = i128::MAX as f64; // 2^127, exactly
    if f >= BOUND {
        return Ordering::Less;
    }
    if f < -BOUND {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // In range and integral, so the cast is exact.
    i.cmp(&(whole as i128))
        .then_with(|| 0.0_f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal))
}

fn negate(n: &Number) -> Number {
    if let Some(i) = integer(n) {
        let m = -i;
        if let Ok(v) = i64::try_from(m) {
            return v.into();
        }
        if let Ok(v) = u64::try_from(m) {
            return v.into();
        }
    }
    Number::from_f64(-float(n)).unwrap_or_else(|| n.clone())
}

/// `v` as JSON, cut after [`EXCERPT_CHARS`] characters; serialising stops
/// there, so a huge value costs no more than its excerpt.
fn excerpt(v: &Value) -> String {
    struct Capped {
        text: String,
        chars: usize,
        cut: bool,
    }
    impl fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.chars == EXCERPT_CHARS {
                    self.cut = true;
                    return Err(fmt::Error);
                }
                self.text.push(c);
                self.chars += 1;
            }
            Ok(())
        }
    }
    let mut out = Capped {
        text: String::new(),
        chars: 0,
        cut: false,
    };
    // An error here only means the excerpt is full.
    let _ = write!(out, "{v}");
    if out.cut {
        out.text.push('…');
    }
    out.text
}

// -------------------------------------------------------------- printing

fn write_node(n: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let binding = n.kind.binding();
    match &n.kind {
        Kind::Literal(v) => write_literal(v, f),
        Kind::Path(p) => write!(f, "{p}"),
        Kind::List(xs) => {
            f.write_char('[')?;
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_node(x, f)?;
            }
            f.write_char(']')
        }
        Kind::Len(x) => {
            f.write_str("len(")?;
            write_node(x, f)?;
            f.write_char(')')
        }
        // A unary operator takes its own kind unparenthesised (`!!a`, `--1`).
        Kind::Not(x) => {
            f.write_char('!')?;
            write_operand(x, x.kind.binding() < binding, f)
        }
        Kind::Neg(x) => {
            f.write_char('-')?;
            write_operand(x, x.kind.binding() < binding, f)
        }
        // A binary operator parenthesises its own kind too: `(a || b) || c`
        // is kept as written, so printing never reshapes the tree.
        Kind::And(xs) | Kind::Or(xs) => {
            let sep = if matches!(n.kind, Kind::And(_)) {
                " && "
            } else {
                " || "
            };
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write_operand(x, x.kind.binding() <= binding, f)?;
            }
            Ok(())
        }
        Kind::Compare { lhs, op, rhs, .. } => {
            write_operand(lhs, lhs.kind.binding() <= binding, f)?;
            write!(f, " {} ", op.symbol())?;
            write_operand(rhs, rhs.kind.binding() <= binding, f)
        }
    }
}

fn write_operand(n: &Node, parens: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if parens {
        f.write_char('(')?;
        write_node(n, f)?;
        f.write_char(')')
    } else {
        write_node(n, f)
    }
}

fn write_literal(v: &Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v {
        Value::String(s) => {
            f.write_char('\'')?;
            for c in s.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\'' => f.write_str("\\'")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    c => f.write_char(c)?,
                }
            }
            f.write_char('\'')
        }
        // Numbers print in JSON form, which the lexer reads back exactly.
        other => write!(f, "{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_list_written_in_an_expression_cannot_copy_a_large_value_many_times() {
        let big = "x".repeat(MAX_LIST_BYTES / 8);
        let ctx = json!({"trigger": {"kind": "manual", "payload": {"big": big}}});
        let few = parse(&format!(
            "len([{}]) == 4",
            ["trigger.payload.big"; 4].join(", ")
        ))
        .unwrap();
        assert!(few.eval_bool(&ctx).unwrap());
        let many = parse(&format!(
            "len([{}]) > 0",
            ["trigger.payload.big"; 40].join(", ")
        ))
        .unwrap();
        let err = many.eval(&ctx).unwrap_err();
        assert!(err.0.contains("more than"), "{err}");
    }

    fn ctx() -> Value {
        json!({
            "trigger": {
                "kind": "webhook",
                "payload": {
                    "labels": ["bug", "ui"],
                    "env": "dev",
                    "count": 3,
                    "ratio": 2.5,
                    "name": "spindle",
                    "commits": [{"id": "c1"}, {"id": "c2"}],
                    "repo": {"owner": "acme", "private": true},
                    "yes": "yes",
                    "nothing": null,
                },
            },
            "steps": {
                "scan": {"output": {"summary": {"high": 2, "low": 0}}, "status": "succeeded"},
                "diff": {"output": {"files": ["a.rs", "b.rs"]}, "status": "succeeded"},
                "my-step": {"output": {"ok": false}, "status": "failed"},
            },
            "run": {"id": "run-1"},
            "workflow": {"name": "triage"},
        })
    }

    fn ev(src: &str) -> Value {
        parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(&ctx())
            .unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn eval_err(src: &str) -> String {
        match parse(src).unwrap().eval(&ctx()) {
            Ok(v) => panic!("{src} gave {v}"),
            Err(e) => e.0,
        }
    }

    fn parse_err(src: &str) -> ExprError {
        match parse(src) {
            Ok(e) => panic!("{src:?} parsed as {e}"),
            Err(e) => e,
        }
    }

    fn type_err(src: &str) -> ExprError {
        match parse(src).unwrap().type_check() {
            Ok(t) => panic!("{src} checked as {t:?}"),
            Err(e) => e,
        }
    }

    fn shown(src: &str) -> String {
        parse(src).unwrap().to_string()
    }

    #[test]
    fn literals() {
        assert_eq!(ev("0"), json!(0));
        assert_eq!(ev("3"), json!(3));
        assert_eq!(ev("2.5"), json!(2.5));
        assert_eq!(ev("1e3"), json!(1000.0));
        assert_eq!(ev("1E-2"), json!(0.01));
        assert_eq!(ev("-1"), json!(-1));
        assert_eq!(ev("- 2.5"), json!(-2.5));
        assert_eq!(ev("--1"), json!(1));
        assert_eq!(ev("-18446744073709551615"), json!(-18446744073709551615.0));
        assert_eq!(ev("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(ev("18446744073709551616"), json!(18446744073709551616.0));
        assert_eq!(ev("true"), json!(true));
        assert_eq!(ev("false"), json!(false));
        assert_eq!(ev("null"), json!(null));
        assert_eq!(ev("[1, 'a', null, [true]]"), json!([1, "a", null, [true]]));
        assert_eq!(ev("[]"), json!([]));
        assert_eq!(ev(" [ 1 ,2 ] "), json!([1, 2]));
    }

    #[test]
    fn string_escapes() {
        assert_eq!(ev(r"'it\'s'"), json!("it's"));
        assert_eq!(ev(r#""say \"hi\"""#), json!("say \"hi\""));
        assert_eq!(ev(r#""it's""#), json!("it's"));
        assert_eq!(ev(r#"'say "hi"'"#), json!("say \"hi\""));
        assert_eq!(ev(r"'a\\b\nc\td'"), json!("a\\b\nc\td"));
        assert_eq!(ev("'é ✓'"), json!("é ✓"));
        let e = parse_err(r"'a\x'");
        assert_eq!(e.at, 2);
        assert_eq!(e.message, r#"unknown escape \x: use \\, \', \", \n or \t"#);
        assert_eq!(
            parse_err("'abc").message,
            "unterminated string: no closing quote"
        );
        assert_eq!(parse_err(r"'abc\'").at, 0);
        assert_eq!(parse_err(r#""abc'"#).at, 0);
    }

    #[test]
    fn paths_read_the_context_and_missing_ones_are_null() {
        assert_eq!(ev("trigger.kind"), json!("webhook"));
        assert_eq!(ev("trigger.payload.commits.1.id"), json!("c2"));
        assert_eq!(ev("steps.scan.output.summary.high"), json!(2));
        assert_eq!(ev("steps.my-step.output.ok"), json!(false));
        assert_eq!(ev("steps.scan.status"), json!("succeeded"));
        assert_eq!(ev("run.id"), json!("run-1"));
        assert_eq!(ev("workflow.name"), json!("triage"));
        for missing in [
            "trigger.payload.draft",
            "trigger.payload.commits.2.id",
            "trigger.payload.commits.x",
            "trigger.payload.name.first",
            "trigger.payload.count.0",
            "steps.nope.output",
            "steps.nope.status",
        ] {
            assert_eq!(ev(missing), Value::Null, "{missing}");
        }
        assert_eq!(ev("trigger.payload.draft == true"), json!(false));
        assert_eq!(ev("len(trigger.payload.draft)"), json!(0));
        let e = parse("trigger.kind").unwrap();
        assert_eq!(e.eval(&json!(null)).unwrap(), Value::Null);
        assert_eq!(e.eval(&json!([1])).unwrap(), Value::Null);
    }

    #[test]
    fn equality_is_deep_and_numeric() {
        assert_eq!(ev("1 == 1.0"), json!(true));
        assert_eq!(ev("1 != 1.0"), json!(false));
        assert_eq!(ev("0 == -0"), json!(true));
        assert_eq!(ev("0.0 == -0.0"), json!(true));
        assert_eq!(ev("1 == '1'"), json!(false));
        assert_eq!(ev("null == false"), json!(false));
        assert_eq!(ev("null == null"), json!(true));
        assert_eq!(ev("trigger.payload.nothing == null"), json!(true));
        assert_eq!(ev("'a' == \"a\""), json!(true));
        assert_eq!(ev("[1, [2.0]] == [1.0, [2]]"), json!(true));
        assert_eq!(ev("[1, 2] == [2, 1]"), json!(false));
        assert_eq!(ev("[1] == [1, 1]"), json!(false));
        assert_eq!(ev("trigger.payload.labels == ['bug', 'ui']"), json!(true));
        assert_eq!(
            ev("trigger.payload.repo == trigger.payload.repo"),
            json!(true)
        );
        assert_eq!(
            ev("trigger.payload.repo == steps.scan.output"),
            json!(false)
        );
        // Exact past 2^53, where floats round.
        assert_eq!(ev("9007199254740993 == 9007199254740992.0"), json!(false));
        assert_eq!(ev("9007199254740992 == 9007199254740992.0"), json!(true));
        assert!(json_eq(
            &json!({"a": [1, {"b": 2}]}),
            &json!({"a": [1.0, {"b": 2.0}]})
        ));
        assert!(!json_eq(&json!({"a": 1}), &json!({"b": 1})));
    }

    #[test]
    fn ordering_needs_two_numbers_or_two_strings() {
        assert_eq!(ev("1 < 2"), json!(true));
        assert_eq!(ev("2 <= 2.0"), json!(true));
        assert_eq!(ev("2.5 > 2"), json!(true));
        assert_eq!(ev("-3 >= -2.5"), json!(false));
        assert_eq!(ev("-1 < 0"), json!(true));
        assert_eq!(ev("'B' < 'a'"), json!(true));
        assert_eq!(ev("'z' < 'é'"), json!(true));
        assert_eq!(ev("'abc' >= 'abd'"), json!(false));
        assert_eq!(ev("steps.scan.output.summary.high > 0"), json!(true));
        assert_eq!(
            eval_err("trigger.payload.draft > 0"),
            "cannot compare null with number using >"
        );
        assert_eq!(
            eval_err("'a' <= 1"),
            "cannot compare string with number using <="
        );
        assert_eq!(
            eval_err("trigger.payload.labels < true"),
            "cannot compare list with boolean using <"
        );
        assert_eq!(
            eval_err("trigger.payload.repo >= trigger.payload.repo"),
            "cannot compare object with object using >="
        );
    }

    #[test]
    fn membership() {
        assert_eq!(ev("'bug' in trigger.payload.labels"), json!(true));
        assert_eq!(ev("'docs' in trigger.payload.labels"), json!(false));
        assert_eq!(ev("1.0 in [1, 2]"), json!(true));
        assert_eq!(ev("[1] in [[1.0]]"), json!(true));
        assert_eq!(ev("'pin' in trigger.payload.name"), json!(true));
        assert_eq!(ev("'' in 'x'"), json!(true));
        assert_eq!(ev("'owner' in trigger.payload.repo"), json!(true));
        assert_eq!(ev("'admin' in trigger.payload.repo"), json!(false));
        assert_eq!(ev("1 in trigger.payload.draft"), json!(false));
        assert_eq!(ev("1 not in null"), json!(true));
        assert_eq!(ev("trigger.kind in [run.id, 'webhook']"), json!(true));
        assert_eq!(
            ev("trigger.payload.repo in [1, trigger.payload.repo]"),
            json!(true)
        );
        assert_eq!(
            ev("trigger.payload.repo not in [trigger.payload.labels]"),
            json!(true)
        );
        assert_eq!(ev("[] in [[]]"), json!(true));
        assert_eq!(
            eval_err("1 in [1, len(3)]"),
            "len needs a string, list or object, found a number"
        );
        assert_eq!(
            ev("trigger.payload.env not in ['prod', 'staging']"),
            json!(true)
        );
        assert_eq!(ev("'bug' not in trigger.payload.labels"), json!(false));
        assert_eq!(
            eval_err("3 in 4"),
            "in needs a list, string or object on the right, found a number"
        );
        assert_eq!(
            eval_err("3 not in true"),
            "not in needs a list, string or object on the right, found true or false"
        );
        assert_eq!(
            eval_err("3 in 'a3'"),
            "in needs a string on the left when the right is a string, found a number"
        );
        assert_eq!(
            eval_err("null in trigger.payload.repo"),
            "in needs a string on the left when the right is an object, found null"
        );
    }

    #[test]
    fn boolean_operators_short_circuit_and_need_booleans() {
        assert_eq!(ev("true && true"), json!(true));
        assert_eq!(ev("true && false"), json!(false));
        assert_eq!(ev("false || true"), json!(true));
        assert_eq!(ev("false || false || false"), json!(false));
        assert_eq!(ev("!true"), json!(false));
        assert_eq!(ev("!!true"), json!(true));
        // The right side is never evaluated, so its error never happens.
        assert_eq!(ev("false && len(3) > 0"), json!(false));
        assert_eq!(ev("true || 'x'"), json!(true));
        assert_eq!(
            ev("trigger.payload.draft != null && trigger.payload.draft > 0"),
            json!(false)
        );
        assert_eq!(
            eval_err("true && 'x'"),
            "&& needs true or false on both sides, found a string"
        );
        assert_eq!(
            eval_err("1 && true"),
            "&& needs true or false on both sides, found a number"
        );
        assert_eq!(
            eval_err("false || null"),
            "|| needs true or false on both sides, found null"
        );
        assert_eq!(eval_err("!'x'"), "! needs true or false, found a string");
        assert_eq!(
            eval_err("!trigger.payload.draft"),
            "! needs true or false, found null"
        );
    }

    #[test]
    fn len_and_negation() {
        assert_eq!(ev("len('héllo')"), json!(5));
        assert_eq!(ev("len(trigger.payload.labels)"), json!(2));
        assert_eq!(ev("len(trigger.payload.repo)"), json!(2));
        assert_eq!(ev("len([])"), json!(0));
        assert_eq!(ev("len(null)"), json!(0));
        assert_eq!(ev("len ( 'ab' ) == 2"), json!(true));
        assert_eq!(
            eval_err("len(3)"),
            "len needs a string, list or object, found a number"
        );
        assert_eq!(
            eval_err("len(true)"),
            "len needs a string, list or object, found true or false"
        );
        assert_eq!(ev("-trigger.payload.count"), json!(-3));
        assert_eq!(ev("-trigger.payload.ratio"), json!(-2.5));
        assert_eq!(eval_err("-'a'"), "- needs a number, found a string");
        assert_eq!(
            eval_err("-trigger.payload.draft"),
            "- needs a number, found null"
        );
    }

    #[test]
    fn precedence() {
        // `!` binds looser than comparisons: `'yes' == true` is false, so
        // the whole is true; `(!'yes') == true` would be an error.
        assert_eq!(ev("!trigger.payload.yes == true"), json!(true));
        let e = parse("!steps.a.output.ok == true").unwrap();
        assert!(matches!(&e.root.kind, Kind::Not(x) if matches!(x.kind, Kind::Compare { .. })));
        assert_eq!(ev("(!true) == false"), json!(true));

        // && binds tighter than ||.
        assert_eq!(ev("true || false && false"), json!(true));
        assert_eq!(ev("(true || false) && false"), json!(false));
        let e = parse("run.id == 'a' || run.id == 'b' && workflow.name == 'c'").unwrap();
        assert!(matches!(&e.root.kind, Kind::Or(xs) if matches!(xs[1].kind, Kind::And(_))));

        // ! binds tighter than && and ||.
        assert_eq!(ev("!false && false"), json!(false));
        assert_eq!(ev("!true || true"), json!(true));

        // Unary minus binds tighter than comparisons.
        assert_eq!(ev("-1 < 0 && -trigger.payload.count == -3"), json!(true));
        assert_eq!(ev("-len('abc') == -3"), json!(true));

        // Comparisons do not chain.
        for src in [
            "1 < 2 < 3",
            "1 == 1 == true",
            "1 in [1] in [true]",
            "1 == 1 not in []",
        ] {
            let e = parse_err(src);
            assert!(
                e.message.starts_with("comparisons do not chain"),
                "{src}: {e}"
            );
        }
        assert_eq!(ev("(1 < 2) == true"), json!(true));
        let e = parse_err("true == !false");
        assert_eq!(e.at, 8);
        assert!(e.message.contains("needs parentheses"), "{e}");
        assert_eq!(ev("true == (!false)"), json!(true));
    }

    #[test]
    fn minus_inside_names_and_no_arithmetic() {
        assert_eq!(ev("steps.my-step.status == 'failed'"), json!(true));
        assert_eq!(ev("trigger.payload.count==-3"), json!(false));
        assert_eq!(ev("[1,-1] == [1, -1]"), json!(true));
        assert_eq!(
            parse_err("trigger.payload.count - 1").message,
            "there is no arithmetic in expressions: - only negates a number"
        );
        assert_eq!(parse_err("(1 -1)").at, 3);
        assert_eq!(parse_err("1 + 1").at, 2);
        assert!(parse_err("2 * 3").message.contains("no arithmetic"));
        // `count-1` is one (unknown) segment, not a subtraction.
        assert_eq!(
            parse("trigger.payload.count-1").unwrap().paths()[0].segments[2],
            "count-1"
        );
    }

    #[test]
    fn parse_errors_say_what_to_write() {
        let e = parse_err("env.HOME == 'x'");
        assert_eq!(e.at, 0);
        assert_eq!(
            e.message,
            "unknown root \"env\": paths start with trigger, steps, run or workflow"
        );
        assert_eq!(e.to_string(), format!("at byte 0: {}", e.message));
        let e = parse_err("1 == steps.scan.input");
        assert_eq!(e.at, 5);
        assert_eq!(e.message, "use steps.<id>.output... or steps.<id>.status");
        assert_eq!(parse_err("steps.scan").message, e.message);
        assert_eq!(parse_err("steps.scan.status.x").message, e.message);
        assert_eq!(
            parse_err("trigger.headers").message,
            "use trigger.payload... or trigger.kind"
        );
        assert_eq!(
            parse_err("trigger").message,
            "use trigger.payload... or trigger.kind"
        );
        assert_eq!(
            parse_err("trigger.kind.x").message,
            "use trigger.payload... or trigger.kind"
        );
        assert_eq!(
            parse_err("run.secret").message,
            "use run.id or workflow.name"
        );
        assert_eq!(
            parse_err("workflow.name.x").message,
            "use run.id or workflow.name"
        );
        assert_eq!(
            parse_err("foo").message.split(':').next(),
            Some("unknown root \"foo\"")
        );
        let e = parse_err("trigger..x");
        assert_eq!(
            (e.at, e.message.starts_with("expected a path segment")),
            (8, true)
        );
        assert_eq!(parse_err("trigger.payload.").at, 16);
        let e = parse_err("trigger.payload[0]");
        assert_eq!(e.at, 15);
        assert_eq!(e.message, "pick a list item with a dot, as in items.0");
        assert_eq!(parse_err("trigger.payload.café").at, 19);
        assert_eq!(parse_err("").message, "empty expression");
        assert_eq!(parse_err("  \n\t").message, "empty expression");
        let e = parse_err("true false");
        assert_eq!(e.at, 5);
        assert_eq!(
            e.message,
            "expected an operator or the end of the expression, found false"
        );
        assert_eq!(
            parse_err("(true").message,
            "expected ')' to close the '(' at byte 0, found the end of the expression"
        );
        assert_eq!(parse_err("[1 2]").message, "expected ',' or ']', found 2");
        assert_eq!(parse_err("[1,]").message, "expected a value, found ']'");
        assert_eq!(
            parse_err("len 3").message,
            "expected '(' after len, found 3"
        );
        assert_eq!(
            parse_err("len('a'").message,
            "expected ')' to close len(, found the end of the expression"
        );
        assert_eq!(
            parse_err("1 ==").message,
            "expected a value, found the end of the expression"
        );
        assert_eq!(parse_err("run.id = 1").message, "write == to compare");
        assert_eq!(
            parse_err("run.id == 'a' & true").message,
            "write && for and"
        );
        assert_eq!(parse_err("true | true").message, "write || for or");
        assert_eq!(parse_err("true and true").message, "write && for and");
        assert_eq!(parse_err("true or true").message, "write || for or");
        assert_eq!(
            parse_err("1 not 2").message,
            "expected in after not (write ! to negate)"
        );
        assert_eq!(
            parse_err("not true").message,
            "write ! to negate; not only goes in not in"
        );
        assert_eq!(
            parse_err("01").message,
            "\"01\": a number does not start with 0 followed by digits"
        );
        assert_eq!(parse_err("0x1F").message, "\"0x1F\" is not a number");
        assert_eq!(
            parse_err("1.").message,
            "expected a digit after the decimal point"
        );
        assert_eq!(parse_err("1e+").message, "expected digits in the exponent");
        assert_eq!(parse_err("1e400").message, "1e400 is too large a number");
        assert_eq!(parse_err(".5").message, "unexpected character '.'");
        assert_eq!(parse_err("1 == ∞").at, 5);
    }

    #[test]
    fn type_check_catches_provable_mistakes() {
        for (src, at, message) in [
            (
                "len(3)",
                4,
                "len needs a string, list or object, found a number",
            ),
            ("'a' < 1", 4, "cannot compare string with number using <"),
            (
                "1 && true",
                0,
                "&& needs true or false on both sides, found a number",
            ),
            (
                "true || 'x'",
                8,
                "|| needs true or false on both sides, found a string",
            ),
            ("!'x'", 0, "! needs true or false, found a string"),
            (
                "3 in 4",
                2,
                "in needs a list, string or object on the right, found a number",
            ),
            ("-'a'", 0, "- needs a number, found a string"),
            ("-(1 == 1)", 0, "- needs a number, found true or false"),
            (
                "len(len('a'))",
                4,
                "len needs a string, list or object, found a number",
            ),
            (
                "trigger.kind > null",
                13,
                "cannot compare null using >: only two numbers or two strings can be",
            ),
            (
                "1 in 'abc'",
                2,
                "in needs a string on the left when the right is a string, found a number",
            ),
            (
                "[1, len(true)]",
                8,
                "len needs a string, list or object, found true or false",
            ),
            ("-1 < true", 3, "cannot compare number with boolean using <"),
        ] {
            let e = type_err(src);
            assert_eq!((e.at, e.message.as_str()), (at, message), "{src}");
        }
    }

    #[test]
    fn type_check_accepts_sound_expressions() {
        for (src, t) in [
            ("steps.scan.output.summary.high > 0", Type::Bool),
            ("'bug' in trigger.payload.labels", Type::Bool),
            (
                "len(steps.diff.output.files) > 0 && trigger.kind == 'webhook'",
                Type::Bool,
            ),
            ("trigger.payload.env not in ['prod', 'staging']", Type::Bool),
            ("!steps.a.output.ok == true", Type::Bool),
            ("steps.diff.output.files", Type::Any),
            ("[1, 'a']", Type::List),
            ("-trigger.payload.n", Type::Number),
            ("len(trigger.payload)", Type::Number),
            ("1 == 'a'", Type::Bool),
            ("'k' in trigger.payload", Type::Bool),
            ("1 in null", Type::Bool),
            ("!trigger.payload.x || trigger.payload.y", Type::Bool),
            ("null", Type::Null),
        ] {
            assert_eq!(parse(src).unwrap().type_check(), Ok(t), "{src}");
        }
    }

    #[test]
    fn eval_bool_wants_true_or_false() {
        let c = ctx();
        assert!(
            parse("trigger.kind == 'webhook'")
                .unwrap()
                .eval_bool(&c)
                .unwrap()
        );
        assert_eq!(
            parse("len('abc')").unwrap().eval_bool(&c),
            Err(EvalError(
                "the condition gave a number (3), not true or false".into()
            ))
        );
        assert_eq!(
            parse("trigger.payload.draft")
                .unwrap()
                .eval_bool(&c)
                .unwrap_err()
                .0,
            "the condition gave null, not true or false"
        );
        assert_eq!(
            parse("trigger.payload.labels")
                .unwrap()
                .eval_bool(&c)
                .unwrap_err()
                .0,
            "the condition gave a list ([\"bug\",\"ui\"]), not true or false"
        );
        let long = json!({"trigger": {"payload": "x".repeat(10_000)}});
        let e = parse("trigger.payload")
            .unwrap()
            .eval_bool(&long)
            .unwrap_err()
            .0;
        assert!(e.starts_with("the condition gave a string (\"xxx"), "{e}");
        assert!(e.ends_with("…), not true or false"), "{e}");
        assert!(e.chars().count() < 140, "{e}");
    }

    #[test]
    fn paths_in_source_order_with_their_steps() {
        let e = parse(
            "len(steps.diff.output.files) > 0 && (trigger.kind in [run.id, steps.b.status] || !workflow.name == '')",
        )
        .unwrap();
        let paths: Vec<String> = e.paths().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            paths,
            [
                "steps.diff.output.files",
                "trigger.kind",
                "run.id",
                "steps.b.status",
                "workflow.name"
            ]
        );
        let steps: Vec<_> = e.paths().iter().map(|p| p.step()).collect();
        assert_eq!(steps, [Some("diff"), None, None, Some("b"), None]);
        assert!(parse("1 == 1").unwrap().paths().is_empty());
        for segments in [vec![], vec!["steps".to_owned()]] {
            assert_eq!(Path { segments }.step(), None);
        }
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for (src, canonical) in [
            ("1<2", "1 < 2"),
            ("(((trigger.kind)))", "trigger.kind"),
            ("!(trigger.kind == 'a')", "!trigger.kind == 'a'"),
            ("(!true) == false", "(!true) == false"),
            ("(true || false) && true", "(true || false) && true"),
            ("true || (false || true)", "true || (false || true)"),
            ("(true || false) || true", "(true || false) || true"),
            ("true || false || true", "true || false || true"),
            ("true && false || true", "true && false || true"),
            ("!(true && false)", "!(true && false)"),
            ("!!true", "!!true"),
            ("- -1", "--1"),
            ("-(1)", "-1"),
            ("-(len('a'))", "-len('a')"),
            ("(1 < 2) == (2 > 1)", "(1 < 2) == (2 > 1)"),
            ("\"it's\\n\\\\\"", r"'it\'s\n\\'"),
            ("'tab\there'", r"'tab\there'"),
            ("1e3", "1000.0"),
            ("1E20", "1e+20"),
            ("[ 1,'a' , [null] ]", "[1, 'a', [null]]"),
            ("len ( trigger.payload )", "len(trigger.payload)"),
            ("1 not  in []", "1 not in []"),
            ("steps.a.output.0.b-c", "steps.a.output.0.b-c"),
        ] {
            let Ok(e) = parse(src) else {
                assert!(canonical.is_empty(), "{src}");
                continue;
            };
            assert_eq!(e.to_string(), canonical, "{src}");
            assert_eq!(parse(canonical), Ok(e), "{src}");
        }
        assert_eq!(shown("'\u{1}\r'"), "'\u{1}\r'");
    }

    #[test]
    fn limits_are_errors_not_overflows() {
        let e = parse_err(&"(".repeat(10_000));
        assert_eq!(e.message, "expression is longer than 1024 bytes");
        assert_eq!(e.at, MAX_EXPR_LEN);
        assert!(
            parse_err(&"!".repeat(10_000))
                .message
                .contains("longer than")
        );
        let ok = format!(
            "{}1{}",
            "(".repeat(MAX_EXPR_DEPTH),
            ")".repeat(MAX_EXPR_DEPTH)
        );
        assert_eq!(parse(&ok).unwrap().to_string(), "1");
        let too_deep = [
            format!("{}1{}", "(".repeat(500), ")".repeat(500)),
            format!(
                "{}1{}",
                "(".repeat(MAX_EXPR_DEPTH + 1),
                ")".repeat(MAX_EXPR_DEPTH + 1)
            ),
            format!("{}true", "!".repeat(1000)),
            format!("{}1", "-".repeat(1000)),
            format!("{}{}", "[".repeat(500), "]".repeat(500)),
            format!("{}1{}", "len(".repeat(200), ")".repeat(200)),
            format!("{}true", "!(".repeat(400)),
            "(".repeat(MAX_EXPR_LEN),
        ];
        for src in &too_deep {
            let e = parse_err(src);
            assert_eq!(e.message, "expression nests deeper than 32 levels", "{src}");
        }
        assert_eq!(parse_err(&too_deep[1]).at, MAX_EXPR_DEPTH);

        let max_items = format!("[{}0]", "0,".repeat(MAX_LIST_ITEMS - 1));
        assert_eq!(
            parse(&max_items)
                .unwrap()
                .eval(&json!({}))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            256
        );
        let e = parse_err(&format!("[{}0]", "0,".repeat(MAX_LIST_ITEMS)));
        assert_eq!(e.message, "a list has at most 256 items");
        assert_eq!(e.at, 1 + 2 * MAX_LIST_ITEMS);

        let sixteen = format!("trigger.payload{}", ".a".repeat(MAX_PATH_SEGMENTS - 2));
        assert_eq!(parse(&sixteen).unwrap().paths()[0].segments.len(), 16);
        let e = parse_err(&format!("{sixteen}.a"));
        assert_eq!(
            (e.at, e.message.as_str()),
            (0, "a path has at most 16 segments")
        );

        // Long chains of && and || are flat, not deep.
        let chain = vec!["true"; 150].join("||");
        assert!(parse(&chain).unwrap().eval_bool(&json!({})).unwrap());
        let chain = vec!["run.id == 'x'"; 50].join(" && ");
        assert!(!parse(&chain).unwrap().eval_bool(&ctx()).unwrap());
    }

    #[test]
    fn the_deepest_expression_checks_evaluates_prints_and_drops() {
        let mut src = "trigger.payload".to_owned();
        let mut levels = 0;
        for i in 0.. {
            let (next, cost) = match i % 4 {
                0 => (format!("!({src} == null || false)"), 2),
                1 => (format!("[{src}]"), 1),
                2 => (format!("len({src}) > 0"), 1),
                _ => (format!("({src})"), 1),
            };
            if levels + cost > MAX_EXPR_DEPTH {
                break;
            }
            (src, levels) = (next, levels + cost);
        }
        assert_eq!(levels, MAX_EXPR_DEPTH);
        let e = parse(&src).unwrap();
        assert!(e.type_check().is_ok());
        assert!(e.eval(&ctx()).is_ok());
        assert_eq!(parse(&e.to_string()), Ok(e.clone()));
        drop(e);
        let e = parse_err(&format!("[{src}]"));
        assert_eq!(e.message, "expression nests deeper than 32 levels");
    }

    // ------------------------------------------------------ properties

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z'\"\\\\é ]{0,6}".prop_map(Value::String),
        ];
        let key = prop_oneof![
            prop::sample::select(vec![
                "payload", "kind", "output", "status", "a", "b", "0", "1", "x", "id", "name",
            ])
            .prop_map(str::to_owned),
            "[a-z0-9]{0,3}",
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Contexts shaped like a run's, with arbitrary data where it varies,
    /// and some of no shape at all.
    fn arb_context() -> impl Strategy<Value = Value> {
        prop_oneof![
            arb_json(),
            (arb_json(), arb_json(), arb_json(), arb_json()).prop_map(|(p, a, b, s)| {
                json!({
                    "trigger": {"kind": "webhook", "payload": p},
                    "steps": {"a": {"output": a, "status": s}, "b": {"output": b}},
                    "run": {"id": "r"},
                    "workflow": {"name": "w"},
                })
            }),
        ]
    }

    const PATHS: &[&str] = &[
        "trigger.kind",
        "trigger.payload",
        "trigger.payload.a",
        "trigger.payload.0",
        "trigger.payload.a.b-c.1",
        "steps.a.output",
        "steps.a.output.x",
        "steps.a.status",
        "steps.b.output.a.0",
        "steps.my-step.output.id",
        "run.id",
        "workflow.name",
    ];

    /// Tokens of the language, joined at random: mostly nonsense, often
    /// nearly right, sometimes an expression.
    fn token_soup() -> impl Strategy<Value = String> {
        let mut vocab = vec![
            "(", ")", "[", "]", ",", "!", "-", "==", "!=", "<", "<=", ">", ">=", "in", "not in",
            "not", "&&", "||", "len(", "len", "true", "false", "null", "0", "1", "2.5", "1e3",
            "'a'", "\"b\"", r"'x\'y'", "''", "'ab'",
        ];
        vocab.extend_from_slice(PATHS);
        let token = prop::sample::select(vocab);
        let space = prop::sample::select(vec!["", " ", " ", "\n"]);
        prop::collection::vec((token, space), 1..12)
            .prop_map(|ts| ts.into_iter().map(|(t, s)| format!("{t}{s}")).collect())
    }

    /// Expression trees of every kind, as `parse` builds them.
    fn arb_node() -> impl Strategy<Value = Node> {
        let literal = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            (0u32..1000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            any::<f64>().prop_filter_map("finite", |f| f.is_finite().then(|| Value::from(f.abs()))),
            prop::collection::vec(any::<char>(), 0..6)
                .prop_map(|cs| Value::String(cs.into_iter().collect())),
            "['\"\\\\\n\t a]{0,4}".prop_map(Value::String),
        ]
        .prop_map(|v| node(0, Kind::Literal(v)));
        let path = prop::sample::select(PATHS).prop_map(|p| {
            node(
                0,
                Kind::Path(Path {
                    segments: p.split('.').map(str::to_owned).collect(),
                }),
            )
        });
        let op = prop::sample::select(vec![
            Op::Eq,
            Op::Ne,
            Op::Lt,
            Op::Le,
            Op::Gt,
            Op::Ge,
            Op::In,
            Op::NotIn,
        ]);
        prop_oneof![literal, path].prop_recursive(6, 48, 4, move |inner| {
            let boxed = inner.clone().prop_map(Box::new);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|xs| node(0, Kind::List(xs))),
                boxed.clone().prop_map(|x| node(0, Kind::Len(x))),
                boxed.clone().prop_map(|x| node(0, Kind::Neg(x))),
                boxed.clone().prop_map(|x| node(0, Kind::Not(x))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|xs| node(0, Kind::And(xs))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|xs| node(0, Kind::Or(xs))),
                (boxed.clone(), op.clone(), boxed).prop_map(|(lhs, op, rhs)| node(
                    0,
                    Kind::Compare {
                        lhs,
                        op,
                        op_at: At(0),
                        rhs
                    }
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_strings(src in any::<String>()) {
            let _ = parse(&src);
        }

        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn printing_a_tree_parses_back_to_it(root in arb_node()) {
            let e = Expression { root };
            let text = e.to_string();
            if text.len() <= MAX_EXPR_LEN {
                prop_assert_eq!(parse(&text), Ok(e), "{}", text);
            }
        }

        #[test]
        fn eval_never_panics(root in arb_node(), ctx in arb_context()) {
            let e = Expression { root };
            let checked = e.type_check();
            let result = e.eval(&ctx);
            let _ = e.eval_bool(&ctx);
            // What passes the check gives a value of the checked type, if any.
            if let (Ok(t), Ok(v)) = (checked, result) {
                prop_assert!(t == Type::Any || t == Type::of(&v), "{} gave {} for {:?}", e, v, t);
            }
        }
    }

    proptest! {
        // Few soups parse, so this one draws many.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn parsed_soup_checks_evaluates_and_prints_back(src in token_soup(), ctx in arb_context()) {
            if let Ok(e) = parse(&src) {
                let _ = e.type_check();
                let _ = e.paths();
                let _ = e.eval(&ctx);
                let _ = e.eval_bool(&ctx);
                let text = e.to_string();
                prop_assert_eq!(parse(&text), Ok(e), "{} printed as {}", src, text);
            }
        }
    }
}
