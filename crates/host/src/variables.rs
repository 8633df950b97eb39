//! Application variables and the `{{ name }}` templates that reference them.
//!
//! Values come from `SPIN_VARIABLE_<NAME>` environment variables, as Spin's
//! environment provider reads them, falling back to the manifest default.
//! Secret values are never printed: [`Variables`]' `Debug` redacts them.

use std::collections::BTreeMap;

/// Checks a variable name against Spin's rules: lowercase letters, digits and
/// single underscores, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.contains("__")
        && !name.ends_with('_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid variable name {name:?}: use lowercase letters, digits and single underscores, starting with a letter"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

/// A string with `{{ variable }}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `{{` must be closed by `}}` around a valid name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed '{{{{' in {text:?}"))?;
            let name = after[..end].trim();
            check_name(name)?;
            parts.push(Part::Var(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variable names referenced.
    pub fn references(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(v.as_str()),
                Part::Literal(_) => None,
            })
            .collect()
    }
}

#[derive(Clone)]
struct Value {
    value: String,
    secret: bool,
}

/// Resolved application variables.
#[derive(Clone, Default)]
pub struct Variables {
    values: BTreeMap<String, Value>,
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.values {
            if v.secret {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, &v.value);
            }
        }
        m.finish()
    }
}

impl Variables {
    /// Adds a resolved variable.
    pub fn insert(&mut self, name: String, value: String, secret: bool) {
        self.values.insert(name, Value { value, secret });
    }

    /// The value of `name`, if defined.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.value.as_str())
    }

    /// Whether `name` is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Renders a template whose references were checked at load time.
    pub fn render(&self, t: &Template) -> String {
        t.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Var(v) => self.values.get(v).map_or("", |v| v.value.as_str()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_literals_and_references() {
        let mut vars = Variables::default();
        vars.insert("host".into(), "127.0.0.1".into(), false);
        vars.insert("port".into(), "8081".into(), false);
        let t = Template::parse("http://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.references(), ["host", "port"]);
        assert_eq!(vars.render(&t), "http://127.0.0.1:8081/x");
        assert_eq!(vars.render(&Template::parse("plain").unwrap()), "plain");
    }

    #[test]
    fn bad_templates_and_names() {
        assert!(Template::parse("{{ open").is_err());
        assert!(Template::parse("{{ Bad }}").is_err());
        for bad in ["", "1a", "A", "a-b", "a__b", "a_"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("tick_secret2").unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut vars = Variables::default();
        vars.insert("token".into(), "hunter2".into(), true);
        vars.insert("pool".into(), "http://w".into(), false);
        let shown = format!("{vars:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("http://w"));
    }
}
