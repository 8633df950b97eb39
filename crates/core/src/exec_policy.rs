//! The execution policy: which agents may be registered at all.
//!
//! An agent is code a worker will run, so registering one is the moment to
//! refuse what the operator has not allowed: images from registries off the
//! list (or not pinned by digest, if required), and programs the process
//! executor would run on the worker's own machine. The API applies
//! [`ExecPolicy::check`] on every create and update; the worker applies
//! [`AllowedCommands`] once more to each job, as a second line.
//!
//! The rules read the three variables' text, passed in by the caller; this
//! module reads nothing itself.
//!
//! Which rule covers which agent:
//!
//! - An agent **with an image** runs in a container (podman, docker); its
//!   `command` only overrides the entrypoint inside that image, so it is the
//!   image that must be allowed (`allowed_images`, `require_image_digest`).
//! - An agent **without an image** can only run under the process executor,
//!   as a process of the worker's machine; its program, `command[0]`, must be
//!   allowed (`allowed_commands`).
//!
//! The process executor ignores images: sent an agent that has one, it runs
//! the command on the worker's machine all the same. That case is the
//! worker's to refuse (`--allow-command` applies to every job it runs).

use std::fmt;

use crate::agent::AgentSpec;
use crate::error::{FieldError, ValidationError};

/// The variable listing allowed image prefixes (comma-separated).
pub const ALLOWED_IMAGES: &str = "allowed_images";
/// The variable saying whether images must be pinned by digest.
pub const REQUIRE_IMAGE_DIGEST: &str = "require_image_digest";
/// The variable listing the programs agents without an image may run.
pub const ALLOWED_COMMANDS: &str = "allowed_commands";
/// Every variable [`ExecPolicy::from_vars`] reads.
pub const VARIABLES: [&str; 3] = [ALLOWED_IMAGES, REQUIRE_IMAGE_DIGEST, ALLOWED_COMMANDS];

/// Longest image name (without tag and digest) the container engines take.
const MAX_IMAGE_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// Which agents may be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPolicy {
    /// Image patterns, each checked by [`image_allowed`]: a prefix ending in
    /// `/` (a registry or a namespace: `localhost/`, `ghcr.io/acme/`), or a
    /// repository, optionally with a tag or digest (`docker.io/library/busybox`).
    /// Empty: no image is allowed.
    pub allowed_images: Vec<String>,
    /// Whether an image must end in `@sha256:<64 hex digits>`.
    pub require_digest: bool,
    /// Programs agents without an image may run.
    pub allowed_commands: AllowedCommands,
}

/// Programs the process executor may run: `command[0]`, compared whole.
///
/// An entry without `/` (`spindle-agents`) is a program looked up on the
/// worker's `PATH`, and matches only a `command[0]` written the same way; an
/// entry with `/` is an absolute path and matches only itself. So
/// `spindle-agents` admits neither `/tmp/spindle-agents` nor
/// `./spindle-agents`: a path names a different file than the worker's
/// `PATH` would find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedCommands {
    /// `*`: any program. For tests, and for workers whose agents are trusted.
    Any,
    /// Only these (empty: none).
    Only(Vec<String>),
}

/// A policy setting that is missing or malformed: a configuration fault, not
/// the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The variable is not given to the component.
    #[error("variable {0} is not set (give the component `{0} = \"{{{{ {0} }}}}\"` in spin.toml)")]
    Missing(&'static str),
    /// `a,,b`, `a,` or `,a`.
    #[error("{setting}: entry {position} is empty (a leading, trailing or doubled comma?)")]
    EmptyEntry {
        /// The variable or flag.
        setting: &'static str,
        /// 1-based position of the entry.
        position: usize,
    },
    /// Entries hold no whitespace, and none is trimmed away.
    #[error("{setting}: entry {entry:?} contains whitespace; separate entries with commas only")]
    Whitespace {
        /// The variable or flag.
        setting: &'static str,
        /// The entry as given.
        entry: String,
    },
    /// Not an image prefix or repository.
    #[error(
        "{setting}: {entry:?} is neither an image prefix ending in '/' nor an image name: {reason}"
    )]
    BadImage {
        /// The variable or flag.
        setting: &'static str,
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a program name or an absolute path.
    #[error("{setting}: {entry:?} is neither a program name nor an absolute path: {reason}")]
    BadCommand {
        /// The variable or flag.
        setting: &'static str,
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `*` among other entries: either everything is allowed or a list is.
    #[error("{setting}: `*` allows any program and must be the only entry")]
    StarNotAlone {
        /// The variable or flag.
        setting: &'static str,
    },
    /// Not `true` or `false`.
    #[error("{setting}: {value:?} is neither \"true\" nor \"false\"")]
    NotABool {
        /// The variable.
        setting: &'static str,
        /// The value as given.
        value: String,
    },
}

/// Splits a comma-separated setting into its entries, refusing empty
/// entries and whitespace. The empty string is no entries.
fn entries(setting: &'static str, value: &str) -> Result<Vec<String>, PolicyError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    checked_entries(setting, value.split(','))
}

fn checked_entries<S: AsRef<str>>(
    setting: &'static str,
    items: impl IntoIterator<Item = S>,
) -> Result<Vec<String>, PolicyError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.as_ref();
            if e.is_empty() {
                Err(PolicyError::EmptyEntry {
                    setting,
                    position: i + 1,
                })
            } else if e.chars().any(char::is_whitespace) {
                Err(PolicyError::Whitespace {
                    setting,
                    entry: e.to_owned(),
                })
            } else {
                Ok(e.to_owned())
            }
        })
        .collect()
}

impl AllowedCommands {
    /// Parses a comma-separated list (the `allowed_commands` variable).
    /// `*` alone allows any program; the empty string allows none.
    pub fn parse(setting: &'static str, value: &str) -> Result<Self, PolicyError> {
        Self::from_list(setting, entries(setting, value)?)
    }

    /// Builds the list from entries given one by one (a repeated flag).
    pub fn from_entries<S: AsRef<str>>(
        setting: &'static str,
        items: impl IntoIterator<Item = S>,
    ) -> Result<Self, PolicyError> {
        Self::from_list(setting, checked_entries(setting, items)?)
    }

    fn from_list(setting: &'static str, list: Vec<String>) -> Result<Self, PolicyError> {
        if list.iter().any(|e| e == "*") {
            return if list.len() == 1 {
                Ok(Self::Any)
            } else {
                Err(PolicyError::StarNotAlone { setting })
            };
        }
        for entry in &list {
            if let Err(reason) = check_program_entry(entry) {
                return Err(PolicyError::BadCommand {
                    setting,
                    entry: entry.clone(),
                    reason,
                });
            }
        }
        Ok(Self::Only(list))
    }

    /// Whether `program` (an agent's `command[0]`) may run.
    pub fn allows(&self, program: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => list.iter().any(|e| e == program),
        }
    }
}

/// The list as the setting writes it: `*`, or the entries joined by commas.
impl fmt::Display for AllowedCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Only(list) => f.write_str(&list.join(",")),
        }
    }
}

/// An allow-list entry names one program: a bare name, or an absolute path
/// with nothing to resolve (a relative path would depend on the worker's
/// working directory; `..` and `//` on how the reader counts).
fn check_program_entry(entry: &str) -> Result<(), String> {
    if entry.chars().any(char::is_control) {
        return Err("control characters".into());
    }
    if entry.contains('*') {
        return Err("patterns are not supported: list each program, or `*` alone".into());
    }
    if !entry.contains('/') {
        return Ok(());
    }
    let Some(rest) = entry.strip_prefix('/') else {
        return Err("a path must be absolute".into());
    };
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("a path must not hold empty, `.` or `..` components".into());
    }
    Ok(())
}

impl ExecPolicy {
    /// Parses the three variables' values.
    pub fn parse(
        allowed_images: &str,
        require_digest: &str,
        allowed_commands: &str,
    ) -> Result<Self, PolicyError> {
        let images = entries(ALLOWED_IMAGES, allowed_images)?;
        for entry in &images {
            if let Err(reason) = check_image_entry(entry) {
                return Err(PolicyError::BadImage {
                    setting: ALLOWED_IMAGES,
                    entry: entry.clone(),
                    reason,
                });
            }
        }
        let require_digest = match require_digest {
            "true" => true,
            "false" => false,
            other => {
                return Err(PolicyError::NotABool {
                    setting: REQUIRE_IMAGE_DIGEST,
                    value: other.to_owned(),
                });
            }
        };
        Ok(Self {
            allowed_images: images,
            require_digest,
            allowed_commands: AllowedCommands::parse(ALLOWED_COMMANDS, allowed_commands)?,
        })
    }

    /// Reads the three variables through `var` (`None`: not set) and parses
    /// them.
    pub fn from_vars(mut var: impl FnMut(&str) -> Option<String>) -> Result<Self, PolicyError> {
        let mut get = |name: &'static str| var(name).ok_or(PolicyError::Missing(name));
        let images = get(ALLOWED_IMAGES)?;
        let digest = get(REQUIRE_IMAGE_DIGEST)?;
        let commands = get(ALLOWED_COMMANDS)?;
        Self::parse(&images, &digest, &commands)
    }

    /// Whether `spec` may be registered; every field at fault is named, with
    /// the variable that would have to change.
    pub fn check(&self, spec: &AgentSpec) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        match &spec.image {
            Some(image) => self.check_image(image, &mut errors),
            None => {
                if let Some(program) = spec.command.first()
                    && !self.allowed_commands.allows(program)
                {
                    let allowed = match &self.allowed_commands {
                        AllowedCommands::Only(list) if list.is_empty() => {
                            format!(
                                "{ALLOWED_COMMANDS} is empty: no agent may run without an image"
                            )
                        }
                        list => format!("{ALLOWED_COMMANDS}: {list}"),
                    };
                    errors.push(FieldError::new(
                        "/command/0",
                        format!(
                            "program {program:?} is not allowed for an agent without an image ({allowed})"
                        ),
                    ));
                }
            }
        }
        ValidationError::check(errors)
    }

    fn check_image(&self, image: &str, errors: &mut Vec<FieldError>) {
        let parsed = match ImageRef::parse(image) {
            Ok(r) => r,
            Err(why) => {
                errors.push(FieldError::new(
                    "/image",
                    format!("image {image:?} is not a valid image reference: {why}"),
                ));
                return;
            }
        };
        if !self
            .allowed_images
            .iter()
            .any(|entry| image_allowed(entry, &parsed))
        {
            let allowed = if self.allowed_images.is_empty() {
                format!("{ALLOWED_IMAGES} is empty: no image is allowed")
            } else {
                format!("{ALLOWED_IMAGES}: {}", self.allowed_images.join(","))
            };
            errors.push(FieldError::new(
                "/image",
                format!("image {image:?} is not from an allowed registry ({allowed})"),
            ));
        }
        if self.require_digest && !parsed.digest.is_some_and(is_sha256_digest) {
            errors.push(FieldError::new(
                "/image",
                format!(
                    "image {image:?} is not pinned by digest: it must end in @sha256:<64 hex digits> ({REQUIRE_IMAGE_DIGEST}: true)"
                ),
            ));
        }
    }
}

/// Whether the allow-list entry `entry` admits `image`.
///
/// Both sides are compared as written, after the image has been parsed
/// strictly: a prefix entry (`localhost/`) must match whole leading
/// components of the image's name, which the trailing `/` guarantees, so
/// `localhost/` admits neither `localhost.evil.com/x` nor `localhost:5000/x`;
/// a name entry must equal the image's name, and its tag or digest, if it
/// has one, the image's. Names are not normalised: `busybox` is not
/// `docker.io/library/busybox` (podman may resolve a short name through any
/// of its search registries), so allow-lists should name registries.
pub fn image_allowed(entry: &str, image: &ImageRef<'_>) -> bool {
    if entry.ends_with('/') {
        return image.name.starts_with(entry);
    }
    let Ok(e) = ImageRef::parse(entry) else {
        return false;
    };
    e.name == image.name
        && e.tag.is_none_or(|t| image.tag == Some(t))
        && e.digest.is_none_or(|d| image.digest == Some(d))
}

fn check_image_entry(entry: &str) -> Result<(), String> {
    match entry.strip_suffix('/') {
        Some(prefix) => check_name(prefix, true),
        None => ImageRef::parse(entry).map(|_| ()),
    }
}

fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// An image reference, `name[:tag][@digest]`, checked against the grammar
/// the container engines share (the distribution project's `reference`):
/// lowercase path components joined by single separators, so nothing like
/// `..`, `//` or a stray `@` gets through to be read differently by the
/// engine than by the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// `[registry[:port]/]path`.
    pub name: &'a str,
    /// The tag, if any.
    pub tag: Option<&'a str>,
    /// `algorithm:hex`, if any.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Parses `reference` strictly; `Err` says what is wrong.
    pub fn parse(reference: &'a str) -> Result<Self, String> {
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)?;
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        // A colon after the last `/` starts the tag; one before it is a
        // registry's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        check_name(name, false)?;
        Ok(Self { name, tag, digest })
    }
}

/// Checks `[domain/]path-component(/path-component)*`. The first component
/// is a registry when the engines read it as one (it has `.`, `:` or an
/// uppercase letter, or is `localhost`) and something follows it; a prefix
/// entry (`prefix`) may be a registry alone.
fn check_name(name: &str, prefix: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_IMAGE_NAME {
        return Err(format!(
            "the name is longer than {MAX_IMAGE_NAME} characters"
        ));
    }
    let components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let looks_like_registry = first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase());
    let path = if looks_like_registry && (components.len() > 1 || prefix) {
        check_registry(first)?;
        &components[1..]
    } else {
        &components[..]
    };
    for c in path {
        if !is_path_component(c) {
            return Err(format!(
                "{c:?} is not a path component (lowercase letters and digits, joined by single '.', '_', '__' or dashes)"
            ));
        }
    }
    Ok(())
}

/// `host[:port]`, host being dot-separated labels of letters, digits and
/// inner dashes. (IPv6 registries are not supported.)
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("{registry:?} is not a registry host[:port]"));
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{registry:?} has a bad port"));
    }
    Ok(())
}

/// `[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = tag.len() <= MAX_TAG
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        })
        && !tag.is_empty();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not 1 to {MAX_TAG} letters, digits, '_', '.' or '-' (not first)"
        ))
    }
}

/// `sha256:<64 hex>` or `sha512:<128 hex>`, lowercase: the digests the
/// engines verify. Anything else could not be checked by them.
fn check_digest(digest: &str) -> Result<(), String> {
    let ok = digest.split_once(':').is_some_and(|(algorithm, hex)| {
        let len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return false,
        };
        hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest {digest:?} is not sha256:<64 hex digits> or sha512:<128 hex digits> (lowercase)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn policy(images: &str, digest: &str, commands: &str) -> ExecPolicy {
        ExecPolicy::parse(images, digest, commands).unwrap()
    }

    fn spec(v: serde_json::Value) -> AgentSpec {
        AgentSpec::parse(v.to_string().as_bytes()).unwrap()
    }

    fn image_errors(p: &ExecPolicy, image: &str) -> Vec<String> {
        match p.check(&spec(json!({"name": "a", "image": image}))) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .errors
                .into_iter()
                .map(|f| {
                    assert_eq!(f.pointer, "/image");
                    f.detail
                })
                .collect(),
        }
    }

    #[test]
    fn the_default_admits_local_images_only() {
        let p = policy("localhost/", "false", "spindle-agents");
        for ok in [
            "localhost/spindle/agents:latest",
            "localhost/x",
            "localhost/evil.com/x",
            &format!("localhost/x@{SHA}"),
            &format!("localhost/x:1.2@{SHA}"),
        ] {
            assert_eq!(image_errors(&p, ok), Vec::<String>::new(), "{ok}");
        }
        let off_list = [
            "docker.io/evil",
            "busybox",
            "localhost",
            "localhost.evil.com/x",
            "localhost:5000/x",
            "localhostx/y",
            "evil.com/localhost/x",
            "LOCALHOST/x",
        ];
        for bad in off_list {
            let errs = image_errors(&p, bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(
                errs[0].contains("not from an allowed registry (allowed_images: localhost/)"),
                "{bad}: {errs:?}"
            );
        }
        assert_eq!(
            image_errors(&p, "docker.io/evil"),
            [
                "image \"docker.io/evil\" is not from an allowed registry (allowed_images: localhost/)"
            ]
        );
    }

    #[test]
    fn tricky_references_are_not_references() {
        let p = policy("localhost/", "false", "spindle-agents");
        for bad in [
            "localhost/../x",
            "localhost/./x",
            "localhost//x",
            "localhost/x/",
            "localhost/X",
            "localhost/x:",
            "localhost/x@",
            "localhost/x@sha256:abc",
            "localhost/x@sha256:0123",
            "localhost/x:tag@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost/x@evil.com/y",
            "localhost/x:-tag",
            "localhost/x:a/b",
            "localhost/-x",
            "localhost/x-",
            "localhost/x..y",
            "localhost/x%2f..",
            "localhost/\u{0}x",
            "[::1]:5000/x",
            "/x",
            "localhost/x\\..\\y",
        ] {
            let errs = image_errors(&p, bad);
            assert!(
                errs.first()
                    .is_some_and(|e| e.contains("is not a valid image reference")),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn registry_and_repository_entries() {
        let p = policy(
            "ghcr.io/acme/,docker.io/library/busybox,quay.io/x/y:1,registry.example:5000/",
            "false",
            "",
        );
        for ok in [
            "ghcr.io/acme/scanner:1",
            "ghcr.io/acme/team/scanner",
            "docker.io/library/busybox",
            "docker.io/library/busybox:1.36",
            &format!("docker.io/library/busybox@{SHA}"),
            "quay.io/x/y:1",
            &format!("quay.io/x/y:1@{SHA}"),
            "registry.example:5000/x",
        ] {
            assert!(image_errors(&p, ok).is_empty(), "{ok}");
        }
        for bad in [
            "ghcr.io/acme",
            "ghcr.io/acmecorp/x",
            "ghcr.io/acme-evil/x",
            "docker.io/library/busybox-evil",
            "docker.io/library/busybox/x",
            "docker.io/library",
            "busybox",
            "quay.io/x/y",
            "quay.io/x/y:2",
            "registry.example/x",
            "registry.example:50000/x",
        ] {
            assert_eq!(image_errors(&p, bad).len(), 1, "{bad}");
        }
    }

    #[test]
    fn a_required_digest_must_be_sha256() {
        let p = policy("localhost/", "true", "spindle-agents");
        assert!(image_errors(&p, &format!("localhost/x@{SHA}")).is_empty());
        assert!(image_errors(&p, &format!("localhost/x:1@{SHA}")).is_empty());
        let errs = image_errors(&p, "localhost/x:1");
        assert_eq!(
            errs,
            [
                "image \"localhost/x:1\" is not pinned by digest: it must end in @sha256:<64 hex digits> (require_image_digest: true)"
            ]
        );
        let sha512 = format!("localhost/x@sha512:{}", "a".repeat(128));
        assert_eq!(image_errors(&p, &sha512).len(), 1);
        // Off the list and unpinned: both are said.
        assert_eq!(image_errors(&p, "docker.io/x:1").len(), 2);
    }

    #[test]
    fn commands_apply_to_agents_without_an_image() {
        let p = policy("localhost/", "false", "spindle-agents,/opt/agents/bin/run");
        let check =
            |command: serde_json::Value| p.check(&spec(json!({"name": "a", "command": command})));
        check(json!(["spindle-agents", "security-scanner"])).unwrap();
        check(json!(["/opt/agents/bin/run"])).unwrap();
        for bad in [
            "/tmp/spindle-agents",
            "./spindle-agents",
            "bin/spindle-agents",
            "spindle-agents ",
            "Spindle-agents",
            "sh",
            "/opt/agents/bin/../../../bin/sh",
            "/opt/agents/bin//run",
            "run",
        ] {
            let err = check(json!([bad, "x"])).unwrap_err();
            assert_eq!(err.errors.len(), 1, "{bad}");
            assert_eq!(err.errors[0].pointer, "/command/0", "{bad}");
            assert!(
                err.errors[0]
                    .detail
                    .ends_with("(allowed_commands: spindle-agents,/opt/agents/bin/run)"),
                "{err}"
            );
        }
        assert_eq!(
            check(json!(["sh", "-c", "rm -rf /"])).unwrap_err().errors[0].detail,
            "program \"sh\" is not allowed for an agent without an image (allowed_commands: spindle-agents,/opt/agents/bin/run)"
        );
        // In a container the command is the image's business.
        p.check(&spec(
            json!({"name": "a", "image": "localhost/x", "command": ["sh", "-c", "true"]}),
        ))
        .unwrap();
        // `*` lets anything through; an empty list nothing.
        let any = policy("localhost/", "false", "*");
        any.check(&spec(json!({"name": "a", "command": ["/tmp/x"]})))
            .unwrap();
        let none = policy("localhost/", "false", "");
        let err = none
            .check(&spec(json!({"name": "a", "command": ["spindle-agents"]})))
            .unwrap_err();
        assert!(
            err.errors[0].detail.contains("allowed_commands is empty"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_image_list_admits_no_image() {
        let p = policy("", "false", "*");
        let errs = image_errors(&p, "localhost/x");
        assert!(
            errs[0].contains("(allowed_images is empty: no image is allowed)"),
            "{errs:?}"
        );
    }

    #[test]
    fn malformed_settings_are_named() {
        let err = |images: &str, digest: &str, commands: &str| {
            ExecPolicy::parse(images, digest, commands)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("localhost/,,ghcr.io/", "false", "x"),
            "allowed_images: entry 2 is empty (a leading, trailing or doubled comma?)"
        );
        assert_eq!(
            err("localhost/,", "false", "x"),
            "allowed_images: entry 2 is empty (a leading, trailing or doubled comma?)"
        );
        assert_eq!(
            err("localhost/, ghcr.io/", "false", "x"),
            "allowed_images: entry \" ghcr.io/\" contains whitespace; separate entries with commas only"
        );
        assert!(
            err("localhost/../", "false", "x")
                .starts_with("allowed_images: \"localhost/../\" is neither")
        );
        assert!(
            err("localhost/X", "false", "x")
                .starts_with("allowed_images: \"localhost/X\" is neither")
        );
        assert_eq!(
            err("localhost/", "yes", "x"),
            "require_image_digest: \"yes\" is neither \"true\" nor \"false\""
        );
        assert_eq!(
            err("localhost/", "false", "spindle-agents,*"),
            "allowed_commands: `*` allows any program and must be the only entry"
        );
        assert_eq!(
            err("localhost/", "false", ",spindle-agents"),
            "allowed_commands: entry 1 is empty (a leading, trailing or doubled comma?)"
        );
        assert_eq!(
            err("localhost/", "false", "spindle-agents\n"),
            "allowed_commands: entry \"spindle-agents\\n\" contains whitespace; separate entries with commas only"
        );
        for bad in ["bin/x", "/opt/../x", "/opt//x", "/opt/x/", "spindle-*"] {
            assert!(
                err("localhost/", "false", bad).starts_with(&format!(
                    "allowed_commands: {bad:?} is neither a program name nor an absolute path"
                )),
                "{bad}"
            );
        }
        // Registries alone and with ports are prefixes.
        for ok in [
            "localhost/",
            "ghcr.io/",
            "registry.example:5000/",
            "ghcr.io/acme/",
        ] {
            ExecPolicy::parse(ok, "false", "x").unwrap();
        }
    }

    #[test]
    fn from_vars_names_a_missing_variable() {
        let vars = [
            ("allowed_images", "localhost/"),
            ("require_image_digest", "false"),
        ];
        let err = ExecPolicy::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap_err();
        assert_eq!(err, PolicyError::Missing("allowed_commands"));
        assert!(
            err.to_string()
                .starts_with("variable allowed_commands is not set")
        );
    }

    #[test]
    fn a_flag_list_is_checked_like_the_variable() {
        assert_eq!(
            AllowedCommands::from_entries("--allow-command", ["*"]).unwrap(),
            AllowedCommands::Any
        );
        let list =
            AllowedCommands::from_entries("--allow-command", ["spindle-agents", "cat"]).unwrap();
        assert!(list.allows("cat") && !list.allows("/bin/cat"));
        assert_eq!(list.to_string(), "spindle-agents,cat");
        assert_eq!(
            AllowedCommands::from_entries("--allow-command", ["a", ""])
                .unwrap_err()
                .to_string(),
            "--allow-command: entry 2 is empty (a leading, trailing or doubled comma?)"
        );
    }

    #[test]
    fn every_valid_reference_round_trips() {
        for (r, name, tag, digest) in [
            ("a", "a", None, None),
            ("a:b", "a", Some("b"), None),
            ("localhost:5000/a:b", "localhost:5000/a", Some("b"), None),
            ("localhost:5000/a", "localhost:5000/a", None, None),
            ("a/b__c/d-e/f.g", "a/b__c/d-e/f.g", None, None),
        ] {
            let got = ImageRef::parse(r).unwrap();
            assert_eq!((got.name, got.tag, got.digest), (name, tag, digest), "{r}");
        }
    }

    proptest::proptest! {
        /// Whatever string is offered, an image `localhost/` admits names the
        /// local registry plainly: no component that a reader could resolve
        /// elsewhere.
        #[test]
        fn what_localhost_admits_is_plainly_local(image in "[a-zA-Z0-9./:@_-]{0,40}") {
            let p = policy("localhost/", "false", "*");
            if let Ok(r) = ImageRef::parse(&image)
                && p.allowed_images.iter().any(|e| image_allowed(e, &r))
            {
                proptest::prop_assert!(image.starts_with("localhost/"));
                proptest::prop_assert!(
                    r.name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                );
            }
        }
    }
}
