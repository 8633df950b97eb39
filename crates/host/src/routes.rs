//! HTTP routing with Spin's rules.
//!
//! A route is an exact path (`/health/live`), may contain named segments
//! (`/api/agents/:name`) and may end in a trailing wildcard (`/api/...`). When
//! several routes match, the most specific wins, segment by segment: a literal
//! segment beats a named one, which beats the wildcard; so an exact route
//! beats a wildcard, and among wildcards the longest prefix wins.
//!
//! Unlike Spin, which logs duplicate routes and keeps the last, two routes
//! that match exactly the same paths are a start-up error here.

use std::collections::HashMap;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Named(String),
}

/// One `[[trigger.http]]` route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The pattern as written in the manifest.
    pub raw: String,
    /// The component it maps to.
    pub component: String,
    segments: Vec<Segment>,
    wildcard: bool,
    trigger_index: usize,
}

/// Component ids: Spin allows letters, digits, `-` and `_`.
pub fn is_valid_component_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Route {
    /// Parses a manifest route for `component`; `trigger_index` is kept for
    /// error messages.
    pub fn parse(raw: &str, component: &str, trigger_index: usize) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("route {raw:?} must start with '/'"));
        }
        let (body, wildcard) = match raw.strip_suffix("/...") {
            Some(prefix) => (prefix, true),
            None => (raw, false),
        };
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for seg in body.split('/').skip(1) {
            if seg.is_empty() {
                // Tolerate a trailing slash (`/api/`) as Spin does; reject `//`.
                continue;
            }
            if seg == "..." || seg.contains('*') {
                return Err(format!(
                    "route {raw:?}: a wildcard is allowed only as a trailing '/...'"
                ));
            }
            if let Some(name) = seg.strip_prefix(':') {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!("route {raw:?}: invalid segment name {seg:?}"));
                }
                if names.contains(&name) {
                    return Err(format!(
                        "route {raw:?}: segment name {name:?} is used twice"
                    ));
                }
                names.push(name);
                segments.push(Segment::Named(name.to_owned()));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            component: component.to_owned(),
            segments,
            wildcard,
            trigger_index,
        })
    }

    /// The route with any trailing wildcard removed (`/api/...` -> `/api`),
    /// `/` for the root: Spin's `spin-component-route`.
    pub fn prefix(&self) -> &str {
        let p = self.raw.strip_suffix("/...").unwrap_or(&self.raw);
        if p.is_empty() { "/" } else { p }
    }

    /// Whether the route ends in a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Specificity of the pattern: compared lexicographically, larger wins.
    /// Literal = 3, named = 2, and the wildcard position = 1.
    fn rank(&self) -> Vec<u8> {
        let mut r: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 3,
                Segment::Named(_) => 2,
            })
            .collect();
        if self.wildcard {
            r.push(1);
        }
        r
    }

    /// A key equal for two patterns exactly when they match the same paths.
    fn shape(&self) -> (Vec<Option<&str>>, bool) {
        (
            self.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => Some(l.as_str()),
                    Segment::Named(_) => None,
                })
                .collect(),
            self.wildcard,
        )
    }

    fn matches(&self, path_segments: &[&str]) -> Option<(HashMap<String, String>, String)> {
        if path_segments.len() < self.segments.len()
            || (!self.wildcard && path_segments.len() != self.segments.len())
        {
            return None;
        }
        let mut captures = HashMap::new();
        for (seg, got) in self.segments.iter().zip(path_segments) {
            match seg {
                Segment::Literal(l) if l == got => {}
                Segment::Literal(_) => return None,
                Segment::Named(name) => {
                    captures.insert(name.clone(), (*got).to_owned());
                }
            }
        }
        let rest = &path_segments[self.segments.len()..];
        let trailing = if rest.is_empty() {
            String::new()
        } else {
            format!("/{}", rest.join("/"))
        };
        Some((captures, trailing))
    }
}

/// The result of routing one request path.
#[derive(Debug, Clone)]
pub struct RouteMatch<'r> {
    /// The winning route.
    pub route: &'r Route,
    /// Named segments captured, by name.
    pub captures: HashMap<String, String>,
    /// The part of the path matched by the trailing wildcard (`spin-path-info`),
    /// empty or starting with `/`.
    pub path_info: String,
}

/// All routes of the application.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the router, refusing two routes that match the same paths.
    /// On error returns the trigger index of the later route and a message.
    pub fn new(routes: Vec<Route>) -> Result<Self, (usize, String)> {
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[..i] {
                if a.shape() == b.shape() {
                    return Err((
                        a.trigger_index,
                        format!(
                            "route {:?} for component {:?} clashes with route {:?} for component {:?}",
                            a.raw, a.component, b.raw, b.component
                        ),
                    ));
                }
            }
        }
        Ok(Self { routes })
    }

    /// Every route, in manifest order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route matching `path` (without query string).
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let segments: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
        self.routes
            .iter()
            .filter_map(|r| r.matches(&segments).map(|(c, t)| (r, c, t)))
            .max_by(|(a, ..), (b, ..)| a.rank().cmp(&b.rank()))
            .map(|(route, captures, path_info)| RouteMatch {
                route,
                captures,
                path_info,
            })
    }

    /// The wildcard route a service-chaining request to `component` is treated
    /// as matching (Spin routes such requests as `/...` for the component).
    pub fn chain_route(component: &str) -> Route {
        Route::parse("/...", component, usize::MAX).expect("static route parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, (r, c))| Route::parse(r, c, i).unwrap())
                .collect(),
        )
        .unwrap()
    }

    fn winner(r: &Router, path: &str) -> Option<String> {
        r.route(path).map(|m| m.route.component.clone())
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router(&[
            ("/...", "catchall"),
            ("/api/...", "api"),
            ("/api/agents/:name", "agent"),
            ("/api/agents/special", "special"),
            ("/health/live", "live"),
        ]);
        assert_eq!(winner(&r, "/").as_deref(), Some("catchall"));
        assert_eq!(winner(&r, "/other/x").as_deref(), Some("catchall"));
        assert_eq!(winner(&r, "/api").as_deref(), Some("api"));
        assert_eq!(winner(&r, "/api/runs/1").as_deref(), Some("api"));
        assert_eq!(winner(&r, "/api/agents/x").as_deref(), Some("agent"));
        assert_eq!(
            winner(&r, "/api/agents/special").as_deref(),
            Some("special")
        );
        assert_eq!(winner(&r, "/api/agents/x/y").as_deref(), Some("api"));
        assert_eq!(winner(&r, "/health/live").as_deref(), Some("live"));
    }

    /// The API's documentation routes are exact routes inside the api
    /// component's wildcard: they must win over it wherever they are
    /// written, and only for exactly their paths (Spin's rule too).
    #[test]
    fn exact_routes_beat_the_api_wildcard_in_any_order() {
        let routes = [
            ("/api/...", "api"),
            ("/api/openapi.json", "docs"),
            ("/api/docs", "docs"),
            ("/docs/...", "docs"),
        ];
        let mut reversed = routes;
        reversed.reverse();
        for r in [router(&routes), router(&reversed)] {
            assert_eq!(winner(&r, "/api/openapi.json").as_deref(), Some("docs"));
            assert_eq!(winner(&r, "/api/docs").as_deref(), Some("docs"));
            assert_eq!(winner(&r, "/docs/problems").as_deref(), Some("docs"));
            for path in [
                "/api/docs/x",
                "/api/openapi.json/x",
                "/api/openapi",
                "/api/whoami",
            ] {
                assert_eq!(winner(&r, path).as_deref(), Some("api"), "{path}");
            }
            let m = r.route("/api/docs").unwrap();
            assert_eq!(m.route.raw, "/api/docs");
            assert_eq!(m.path_info, "");
        }
    }

    /// The same, read from the application's own spin.toml.
    #[test]
    fn the_manifest_routes_api_docs_to_the_docs_component() {
        let manifest: toml::Value =
            toml::from_str(include_str!("../../../spin.toml")).expect("spin.toml parses");
        let routes = manifest["trigger"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Route::parse(
                    t["route"].as_str().unwrap(),
                    t["component"].as_str().unwrap(),
                    i,
                )
                .unwrap()
            })
            .collect();
        let r = Router::new(routes).unwrap();
        for (path, component) in [
            ("/api/openapi.json", "docs"),
            ("/api/docs", "docs"),
            ("/docs/problems", "docs"),
            ("/api/whoami", "api"),
            ("/api/docs/more", "api"),
        ] {
            assert_eq!(winner(&r, path).as_deref(), Some(component), "{path}");
        }
    }

    #[test]
    fn captures_and_path_info() {
        let r = router(&[("/api/:kind/...", "api"), ("/x/:a/:b", "x")]);
        let m = r.route("/api/agents/a/b").unwrap();
        assert_eq!(m.captures["kind"], "agents");
        assert_eq!(m.path_info, "/a/b");
        assert_eq!(m.route.prefix(), "/api/:kind");
        let m = r.route("/x/1/2").unwrap();
        assert_eq!(
            (m.captures["a"].as_str(), m.captures["b"].as_str()),
            ("1", "2")
        );
        assert_eq!(m.path_info, "");
        assert!(r.route("/x/1").is_none());
    }

    #[test]
    fn exact_route_does_not_match_longer_paths() {
        let r = router(&[("/health/live", "live")]);
        assert!(r.route("/health/live/more").is_none());
        assert!(r.route("/health").is_none());
    }

    #[test]
    fn clashes_and_bad_patterns_are_rejected() {
        let clash = Router::new(vec![
            Route::parse("/a/:x", "one", 0).unwrap(),
            Route::parse("/a/:y", "two", 1).unwrap(),
        ])
        .unwrap_err();
        assert_eq!(clash.0, 1);
        assert!(clash.1.contains("clashes"), "{}", clash.1);
        assert!(Route::parse("api", "c", 0).is_err());
        assert!(Route::parse("/a/*/b", "c", 0).is_err());
        assert!(Route::parse("/a/.../b", "c", 0).is_err());
        assert!(Route::parse("/a/:x/:x", "c", 0).is_err());
        // Different shapes do not clash.
        Router::new(vec![
            Route::parse("/a", "one", 0).unwrap(),
            Route::parse("/a/...", "two", 1).unwrap(),
        ])
        .unwrap();
    }
}
