//! The route table: the most specific matching route wins; no route is a 404.

use std::sync::Arc;

use portcullis_policy::{PathPattern, path_segments};

use crate::settings::{RouteConfig, RouteKind, TokenSource};

/// What a route leads to.
#[derive(Clone, Debug)]
pub enum Target {
    /// Reverse proxy to this base (scheme://authority[/base-path], no trailing slash).
    Upstream {
        base: String,
        /// Forward the client's `Host` instead of the upstream's own authority.
        preserve_host: bool,
    },
    /// Files from a directory.
    Static {
        dir: std::path::PathBuf,
        spa_fallback: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Route {
    pub pattern: PathPattern,
    /// The pattern as written, shared: the route label of every metric and access-log line.
    pub label: Arc<str>,
    /// Upper-case; empty means every method.
    pub methods: Vec<String>,
    pub kind: RouteKind,
    pub target: Target,
    pub sources: Vec<TokenSource>,
    /// `Some(audience)` when the upstream gets an `X-Auth-Assertion`.
    pub assertion: Option<String>,
}

impl Route {
    fn covers(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET"))
    }
}

/// Routes ordered from most to least specific.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Validates and orders the configured routes.
    pub fn new(configs: &[RouteConfig]) -> Result<RouteTable, String> {
        let mut routes = Vec::new();
        for (n, c) in configs.iter().enumerate() {
            let at = |m: String| format!("routes[{n}] ({}): {m}", c.path);
            let pattern = PathPattern::parse(&c.path).map_err(at)?;
            let target = match (&c.upstream, &c.static_dir) {
                (Some(u), None) => {
                    let url = url::Url::parse(u).map_err(|e| at(format!("upstream {u:?}: {e}")))?;
                    if !matches!(url.scheme(), "http")
                        || url.host_str().is_none()
                        || url.query().is_some()
                    {
                        return Err(at(format!(
                            "upstream {u:?} must be http://host[:port][/base] without a query"
                        )));
                    }
                    Target::Upstream {
                        base: u.trim_end_matches('/').to_owned(),
                        preserve_host: c.preserve_host,
                    }
                }
                (None, Some(d)) => {
                    if !d.is_dir() {
                        return Err(at(format!("static_dir {} is not a directory", d.display())));
                    }
                    Target::Static {
                        dir: d.clone(),
                        spa_fallback: c.spa_fallback,
                    }
                }
                _ => return Err(at("give exactly one of upstream or static_dir".into())),
            };
            if c.kind == RouteKind::Api && matches!(target, Target::Static { .. }) {
                return Err(at("an api route forwards to an upstream".into()));
            }
            let methods = c
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .filter(|m| m != "*")
                .collect();
            if c.token_sources.is_empty() && c.kind != RouteKind::Public {
                return Err(at("token_sources must name header, cookie or both".into()));
            }
            let assertion = match (&target, c.assertion) {
                (Target::Upstream { base, .. }, true) => {
                    Some(c.audience.clone().unwrap_or_else(|| base.clone()))
                }
                (_, true) => return Err(at("assertion needs an upstream".into())),
                (_, false) => None,
            };
            routes.push(Arc::new(Route {
                label: Arc::from(pattern.as_str()),
                pattern,
                methods,
                kind: c.kind,
                target,
                sources: c.token_sources.clone(),
                assertion,
            }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(RouteTable { routes })
    }

    /// The route for a request (`lower`: the canonical path in lower case).
    pub fn find(&self, method: &str, lower: &str) -> Option<Arc<Route>> {
        self.find_segments(method, &path_segments(lower))
    }

    /// [`find`](Self::find) for a path already split by `path_segments`.
    pub fn find_segments(&self, method: &str, segments: &[String]) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.pattern.matches(segments) && r.covers(method))
            .cloned()
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str, kind: RouteKind) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            methods: vec![],
            kind,
            upstream: Some("http://127.0.0.1:9".into()),
            static_dir: None,
            spa_fallback: false,
            preserve_host: false,
            token_sources: vec![TokenSource::Header],
            assertion: false,
            audience: None,
        }
    }

    #[test]
    fn most_specific_wins_and_no_route_is_none() {
        let t = RouteTable::new(&[
            cfg("/**", RouteKind::Public),
            cfg("/api/**", RouteKind::Api),
            cfg("/api/admin/**", RouteKind::Api),
            cfg("/admin/**", RouteKind::Page),
        ])
        .expect("valid");
        assert_eq!(
            t.find("GET", "/api/admin/x")
                .map(|r| r.pattern.as_str().to_owned())
                .as_deref(),
            Some("/api/admin/**")
        );
        assert_eq!(
            t.find("GET", "/api/admin")
                .map(|r| r.pattern.as_str().to_owned())
                .as_deref(),
            Some("/api/admin/**")
        );
        assert_eq!(
            t.find("GET", "/api/orders")
                .map(|r| r.pattern.as_str().to_owned())
                .as_deref(),
            Some("/api/**")
        );
        assert_eq!(
            t.find("GET", "/")
                .map(|r| r.pattern.as_str().to_owned())
                .as_deref(),
            Some("/**")
        );
        let t = RouteTable::new(&[cfg("/api/**", RouteKind::Api)]).expect("valid");
        assert!(t.find("GET", "/other").is_none());
    }

    #[test]
    fn bad_routes_are_refused() {
        let mut c = cfg("/api/**", RouteKind::Api);
        c.upstream = Some("https://x".into());
        assert!(RouteTable::new(&[c]).is_err());
        let mut c = cfg("/api/**", RouteKind::Api);
        c.upstream = None;
        assert!(RouteTable::new(&[c]).is_err());
        assert!(RouteTable::new(&[cfg("api", RouteKind::Api)]).is_err());
    }
}
