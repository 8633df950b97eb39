//! `spin.toml` (manifest version 2): the subset Spindle's host runs, parsed and
//! validated as a whole before anything starts.
//!
//! Every rejection is one [`ManifestError`] whose message names the manifest
//! field at fault, e.g. `component.api.source: ...`, so start-up fails with one
//! clear line and nothing half-starts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::outbound::AllowedHosts;
use crate::routes::{Route, Router};
use crate::variables::{Template, Variables};

/// A manifest that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has the wrong shape.
    #[error("{path}: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value the host cannot accept.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// Dotted path of the field, e.g. `component.api.source`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    authors: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Debug, Deserialize)]
struct RawHttpTrigger {
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
    route: RawRoute,
    component: toml::Value,
    #[serde(default)]
    executor: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    build: Option<toml::Value>,
    #[serde(default)]
    files: Option<toml::Value>,
}

/// A validated, runnable application.
#[derive(Debug)]
pub struct App {
    /// `application.name`.
    pub name: String,
    /// `application.version`.
    pub version: Option<String>,
    /// Directory the manifest lives in; relative paths resolve against it.
    pub base_dir: PathBuf,
    /// Components by id, in manifest order of their ids.
    pub components: BTreeMap<String, Component>,
    /// HTTP routes.
    pub router: Router,
    /// Resolved application variables.
    pub variables: Variables,
}

/// One component, ready to compile.
#[derive(Debug)]
pub struct Component {
    /// Its id in the manifest.
    pub id: String,
    /// Absolute path of the `.wasm` file.
    pub source: PathBuf,
    /// Store labels it may open.
    pub key_value_stores: HashSet<String>,
    /// Where it may send HTTP requests.
    pub allowed_hosts: AllowedHosts,
    /// Its variables (name -> template over application variables).
    pub variables: BTreeMap<String, Template>,
    /// Environment variables for the guest.
    pub environment: BTreeMap<String, String>,
}

impl App {
    /// Checks that every store label a component names is defined (by
    /// `defines`: `default`, and the labels of the runtime configuration);
    /// `path` is the manifest, for the message.
    pub fn check_stores(
        &self,
        path: &Path,
        defines: &dyn Fn(&str) -> bool,
    ) -> Result<(), ManifestError> {
        for (id, c) in &self.components {
            let mut labels: Vec<&String> = c.key_value_stores.iter().collect();
            labels.sort();
            for label in labels {
                if !defines(label) {
                    return Err(ManifestError::Invalid {
                        path: path.to_owned(),
                        field: format!("component.{id}.key_value_stores"),
                        message: format!(
                            "unknown key-value store label {label:?} (only \"default\" exists unless a runtime configuration file, --runtime-config-file, defines [key_value_store.{label}])"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads and validates the manifest at `path`, resolving variables from
    /// `env` (normally the process environment, as Spin reads it).
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_owned();
        let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
        Self::parse(&text, path, &base_dir, env)
    }

    /// Validates manifest text; `path` is only used in messages.
    pub fn parse(
        text: &str,
        path: &Path,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ManifestError> {
        let invalid = |field: String, message: String| ManifestError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if raw.spin_manifest_version.as_integer() != Some(2)
            && raw.spin_manifest_version.as_str() != Some("2")
        {
            return Err(invalid(
                "spin_manifest_version".into(),
                format!("must be 2, found {}", raw.spin_manifest_version),
            ));
        }

        let mut variables = Variables::default();
        for (name, v) in &raw.variables {
            let field = format!("variables.{name}");
            if let Err(e) = crate::variables::check_name(name) {
                return Err(invalid(field, e));
            }
            if v.required && v.default.is_some() {
                return Err(invalid(
                    field,
                    "a variable cannot be both required and have a default".into(),
                ));
            }
            if !v.required && v.default.is_none() {
                return Err(invalid(
                    field,
                    "a variable must be required or have a default".into(),
                ));
            }
            let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
            let value = env(&env_name).or_else(|| v.default.clone());
            let Some(value) = value else {
                return Err(invalid(
                    field,
                    format!("required variable has no value: set {env_name}"),
                ));
            };
            // A secret that is short or a placeholder would leave the app
            // as good as open: refuse to start rather than run on it. An
            // empty optional secret turns its feature off.
            // Checked as components read it, blanks trimmed: padding must
            // not get a short secret past the check.
            let checked = v.secret && (v.required || !value.trim().is_empty());
            if checked && let Err(e) = spindle_core::secret::check_secret(value.trim()) {
                return Err(invalid(field, format!("secret variable ({env_name}) {e}")));
            }
            variables.insert(name.clone(), value, v.secret);
        }

        let mut components = BTreeMap::new();
        for (id, c) in &raw.component {
            let field = |f: &str| format!("component.{id}.{f}");
            if !crate::routes::is_valid_component_id(id) {
                return Err(invalid(
                    format!("component.{id}"),
                    "component ids may contain only letters, digits, '-' and '_'".into(),
                ));
            }
            let source = match &c.source {
                toml::Value::String(s) => base_dir.join(s),
                other => {
                    return Err(invalid(
                        field("source"),
                        format!(
                            "only a local file path is supported by the local host, found {other}"
                        ),
                    ));
                }
            };
            if !source.is_file() {
                return Err(invalid(
                    field("source"),
                    format!(
                        "wasm file {} does not exist (build the components first: scripts/build-components)",
                        source.display()
                    ),
                ));
            }
            if c.files.is_some() {
                return Err(invalid(
                    field("files"),
                    "mounting files is not supported by the local host".into(),
                ));
            }
            let mut templates = BTreeMap::new();
            for (name, value) in &c.variables {
                let f = format!("component.{id}.variables.{name}");
                crate::variables::check_name(name).map_err(|e| invalid(f.clone(), e))?;
                let t = Template::parse(value).map_err(|e| invalid(f.clone(), e))?;
                for r in t.references() {
                    if !variables.contains(r) {
                        return Err(invalid(f, format!("unknown variable {r:?}")));
                    }
                }
                templates.insert(name.clone(), t);
            }
            let mut hosts = Vec::new();
            for (i, h) in c.allowed_outbound_hosts.iter().enumerate() {
                let f = format!("component.{id}.allowed_outbound_hosts[{i}]");
                let t = Template::parse(h).map_err(|e| invalid(f.clone(), e))?;
                for r in t.references() {
                    if !variables.contains(r) {
                        return Err(invalid(f.clone(), format!("unknown variable {r:?}")));
                    }
                }
                let resolved = variables.render(&t);
                // A template that resolves to nothing grants nothing, as in Spin.
                if resolved.trim().is_empty() && !t.references().is_empty() {
                    continue;
                }
                hosts.push(resolved);
            }
            let allowed_hosts = AllowedHosts::parse(&hosts)
                .map_err(|e| invalid(field("allowed_outbound_hosts"), e))?;
            components.insert(
                id.clone(),
                Component {
                    id: id.clone(),
                    source,
                    key_value_stores: c.key_value_stores.iter().cloned().collect(),
                    allowed_hosts,
                    variables: templates,
                    environment: c.environment.clone(),
                },
            );
        }

        let mut routes = Vec::new();
        for (i, t) in raw.trigger.http.iter().enumerate() {
            let field = format!("trigger.http[{i}]");
            if t.executor.is_some() {
                return Err(invalid(
                    format!("{field}.executor"),
                    "only the default (WASI HTTP) executor is supported".into(),
                ));
            }
            let component = match &t.component {
                toml::Value::String(s) => s.clone(),
                other => {
                    return Err(invalid(
                        format!("{field}.component"),
                        format!("must name a [component.<id>] table, found {other}"),
                    ));
                }
            };
            if !components.contains_key(&component) {
                return Err(invalid(
                    format!("{field}.component"),
                    format!("no component with id {component:?}"),
                ));
            }
            match &t.route {
                RawRoute::Private { private: true } => continue,
                RawRoute::Private { private: false } => {
                    return Err(invalid(
                        format!("{field}.route"),
                        "must be a path pattern or {{ private = true }}".into(),
                    ));
                }
                RawRoute::Path(p) => {
                    let route = Route::parse(p, &component, i)
                        .map_err(|e| invalid(format!("{field}.route"), e))?;
                    routes.push(route);
                }
            }
        }
        let router =
            Router::new(routes).map_err(|(i, e)| invalid(format!("trigger.http[{i}].route"), e))?;

        Ok(App {
            name: raw.application.name,
            version: raw.application.version,
            base_dir: base_dir.to_owned(),
            components,
            router,
            variables,
        })
    }
}
