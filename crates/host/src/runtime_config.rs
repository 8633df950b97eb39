//! Spin's runtime configuration file (`--runtime-config-file`), the part
//! that says where each key-value store label lives, so one file configures
//! `spin up` and Spindle's host alike:
//!
//! ```toml
//! [key_value_store.default]
//! type = "spin"
//! path = "data/spindle.db"   # relative to this file's directory
//! ```
//!
//! As in Spin, `default` is defined without the file (an SQLite file in the
//! state directory), a relative `path` is resolved against the directory of
//! the runtime configuration file, and a `spin` store without a `path` is
//! kept in memory. Every other label a component names must be defined
//! here. Anything the host does not carry out (another store type, other
//! sections such as variable providers) stops start-up with the field at
//! fault rather than being ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The label every app has.
pub const DEFAULT_LABEL: &str = "default";

/// Where one store label lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file, the `spin` type with a `path`.
    Sqlite(PathBuf),
    /// An SQLite database in memory, the `spin` type without a `path`:
    /// gone when the host stops.
    Memory,
}

/// A runtime configuration the host cannot carry out.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    /// The file could not be read.
    #[error("cannot read runtime configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value the host cannot accept.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `key_value_store.cache.type`.
        field: String,
        /// What is wrong and what would do.
        message: String,
    },
}

/// The key-value stores of an app: `default` and every configured label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stores {
    /// Each label's location.
    pub labels: BTreeMap<String, StoreLocation>,
}

impl Stores {
    /// Only `default`, in `state_dir` (what the host does without a file).
    pub fn default_in(state_dir: &Path) -> Self {
        Stores {
            labels: BTreeMap::from([(
                DEFAULT_LABEL.to_owned(),
                StoreLocation::Sqlite(state_dir.join("sqlite_key_value.db")),
            )]),
        }
    }

    /// The stores of the runtime configuration file at `path`, on top of
    /// `default` in `state_dir`.
    pub fn load(path: &Path, state_dir: &Path) -> Result<Self, RuntimeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base, state_dir)
    }

    /// The stores `text` configures; `file` names it in errors and `base`
    /// is where relative paths start.
    pub fn parse(
        text: &str,
        file: &Path,
        base: &Path,
        state_dir: &Path,
    ) -> Result<Self, RuntimeConfigError> {
        let invalid = |field: String, message: String| RuntimeConfigError::Invalid {
            path: file.to_owned(),
            field,
            message,
        };
        let doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| RuntimeConfigError::Parse {
                    path: file.to_owned(),
                    message: e.to_string(),
                })?;
        let mut stores = Self::default_in(state_dir);
        for (section, value) in &doc {
            if section != "key_value_store" {
                let hint = match section.as_str() {
                    "variables_provider" | "config_provider" => {
                        "; set variables with SPIN_VARIABLE_* environment variables"
                    }
                    "state_dir" | "log_dir" => "; use --state-dir",
                    _ => "",
                };
                return Err(invalid(
                    section.clone(),
                    format!(
                        "Spindle's host reads only [key_value_store.<label>] sections of a runtime configuration{hint}"
                    ),
                ));
            }
            let Some(labels) = value.as_table() else {
                return Err(invalid(section.clone(), "must be a table of labels".into()));
            };
            for (label, store) in labels {
                let field = |name: &str| format!("key_value_store.{label}{name}");
                check_label(label).map_err(|m| invalid(field(""), m))?;
                let Some(store) = store.as_table() else {
                    return Err(invalid(field(""), "must be a table with a `type`".into()));
                };
                let kind = match store.get("type") {
                    Some(toml::Value::String(kind)) => kind.as_str(),
                    Some(_) => return Err(invalid(field(".type"), "must be a string".into())),
                    None => return Err(invalid(field(".type"), "is missing; use \"spin\"".into())),
                };
                if kind != "spin" {
                    return Err(invalid(
                        field(".type"),
                        format!(
                            "{kind:?} is not a store type Spindle's host runs; use \"spin\" (SQLite)"
                        ),
                    ));
                }
                let mut location = StoreLocation::Memory;
                for (key, v) in store {
                    match key.as_str() {
                        "type" => {}
                        "path" => {
                            let Some(p) = v.as_str().filter(|p| !p.is_empty()) else {
                                return Err(invalid(
                                    field(".path"),
                                    "must be a non-empty string".into(),
                                ));
                            };
                            let p = Path::new(p);
                            location = StoreLocation::Sqlite(if p.is_absolute() {
                                p.to_owned()
                            } else {
                                base.join(p)
                            });
                        }
                        other => {
                            return Err(invalid(
                                field(&format!(".{other}")),
                                "is not a field of a \"spin\" store (it has `type` and `path`)"
                                    .into(),
                            ));
                        }
                    }
                }
                stores.labels.insert(label.clone(), location);
            }
        }
        Ok(stores)
    }

    /// Whether components may open `label`.
    pub fn defines(&self, label: &str) -> bool {
        self.labels.contains_key(label)
    }
}

/// Labels as a Spin manifest accepts them: kebab-case or snake_case
/// words, each starting with a letter and all lower or all upper case.
fn check_label(label: &str) -> Result<(), String> {
    let sep = if label.contains('-') { '-' } else { '_' };
    let word_ok = |w: &str| {
        w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && (w
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                || w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
    };
    if !(label.contains('-') && label.contains('_')) && label.split(sep).all(word_ok) {
        Ok(())
    } else {
        Err(format!(
            "{label:?} is not a store label (kebab-case or snake_case words, each starting with a letter, all lower or all upper case)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Stores, RuntimeConfigError> {
        Stores::parse(
            text,
            Path::new("/etc/spindle/rc.toml"),
            Path::new("/etc/spindle"),
            Path::new("/state"),
        )
    }

    #[test]
    fn labels_follow_spins_rule() {
        for ok in [
            "cache", "CACHE", "my-store", "MY-STORE", "my_store", "a1-b2", "x",
        ] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Bad", "1a", "a--b", "a-", "-a", "a-_b", "a_-b", "my-Store", "é",
        ] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_sections_only_the_default_store_exists_in_the_state_dir() {
        let s = parse("").unwrap();
        assert_eq!(s, Stores::default_in(Path::new("/state")));
        assert!(s.defines("default"));
        assert!(!s.defines("cache"));
    }

    #[test]
    fn paths_are_relative_to_the_file_and_a_store_without_one_is_in_memory() {
        let s = parse(
            r#"
[key_value_store.default]
type = "spin"
path = "data/app.db"

[key_value_store.cache]
type = "spin"

[key_value_store.audit]
type = "spin"
path = "/var/lib/spindle/audit.db"
"#,
        )
        .unwrap();
        assert_eq!(
            s.labels,
            BTreeMap::from([
                (
                    "audit".to_owned(),
                    StoreLocation::Sqlite("/var/lib/spindle/audit.db".into())
                ),
                ("cache".to_owned(), StoreLocation::Memory),
                (
                    "default".to_owned(),
                    StoreLocation::Sqlite("/etc/spindle/data/app.db".into())
                ),
            ])
        );
    }

    #[test]
    fn what_the_host_cannot_carry_out_is_refused_with_the_field_at_fault() {
        let cases = [
            (
                "[key_value_store.x]\ntype = \"redis\"\nurl = \"redis://localhost\"",
                "key_value_store.x.type",
                "\"redis\"",
            ),
            (
                "[key_value_store.x]\npath = \"a.db\"",
                "key_value_store.x.type",
                "missing",
            ),
            (
                "[key_value_store.x]\ntype = 3",
                "key_value_store.x.type",
                "string",
            ),
            (
                "[key_value_store.x]\ntype = \"spin\"\npaht = \"a.db\"",
                "key_value_store.x.paht",
                "not a field",
            ),
            (
                "[key_value_store.x]\ntype = \"spin\"\npath = \"\"",
                "key_value_store.x.path",
                "non-empty",
            ),
            (
                "[key_value_store.Bad]\ntype = \"spin\"",
                "key_value_store.Bad",
                "label",
            ),
            ("[key_value_store]\nx = 1", "key_value_store.x", "table"),
            ("key_value_store = 1", "key_value_store", "table of labels"),
            (
                "[variables_provider]\ntype = \"vault\"",
                "variables_provider",
                "only [key_value_store",
            ),
            (
                "[sqlite_database.default]\ntype = \"spin\"",
                "sqlite_database",
                "only [key_value_store",
            ),
        ];
        for (text, field, words) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("/etc/spindle/rc.toml: {field}: ")),
                "{text}: {err}"
            );
            assert!(err.contains(words), "{text}: {err}");
        }
        let err = parse("[key_value_store.x\n").unwrap_err().to_string();
        assert!(err.starts_with("/etc/spindle/rc.toml: "), "{err}");
    }

    proptest::proptest! {
        /// Whatever the file holds, parsing answers (a store set or an
        /// error), never panics.
        #[test]
        fn hostile_files_never_panic(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn hostile_tables_never_panic(label in "\\PC{0,12}", kind in "\\PC{0,8}", path in "\\PC{0,20}") {
            let text = format!("[key_value_store.{label:?}]\ntype = {kind:?}\npath = {path:?}\n");
            let _ = parse(&text);
        }
    }
}
