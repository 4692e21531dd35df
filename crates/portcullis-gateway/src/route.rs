//! The route table: the most specific matching route wins; no route is a 404.

use std::sync::Arc;

use portcullis_policy::{PathPattern, path_segments};

use crate::settings::{RouteConfig, RouteKind, TokenSource};

/// What a route leads to.
/// The services a `builtin` route may name.
pub const BUILTINS: &[&str] = &["admin-api", "admin-console"];

#[derive(Clone, Debug)]
pub enum Target {
    /// Reverse proxy to this base (scheme://authority[/base-path], no trailing slash).
    Upstream {
        base: String,
        /// `base`'s scheme and authority, parsed once.
        origin: Box<crate::forward::Origin>,
        /// `base`'s path (`""` or `/prefix`, no trailing slash).
        base_path: String,
        /// Forward the client's `Host` instead of the upstream's own authority.
        preserve_host: bool,
        /// This route's own timeouts, where it sets them (else the gateway's).
        upstream_timeout: Option<std::time::Duration>,
        total_timeout: Option<std::time::Duration>,
    },
    /// One of portcullis' own services (`admin-api`), called in process with the identity.
    Builtin { name: String },
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
    /// WebSocket upgrades may pass (upstream routes only).
    pub websocket: bool,
    /// Answers may carry `Cache-Control: public` / `s-maxage` although the route needs sign-in.
    pub shared_cache: bool,
    /// Cross-origin calls from browsers.
    pub cors: Option<Arc<crate::cors::Cors>>,
    /// Rate limits, in the order written (shared: the route is cloned, its counts are not).
    pub rate_limits: Arc<[crate::limits::RateLimit]>,
    /// Quotas per client.
    pub quotas: Arc<[crate::limits::QuotaRule]>,
    /// Request validation rules; the first that covers the method applies.
    pub validations: Arc<[crate::validate::Validation]>,
    /// What the upstream receives and the answer, reshaped.
    pub transform: Option<Arc<crate::transform::Transform>>,
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

/// A route the configuration declares but the gateway cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("routes[{index}] ({path}): {problem}")]
pub struct RouteError {
    /// Its position in `[[routes]]`.
    pub index: usize,
    pub path: String,
    pub problem: RouteProblem,
}

/// What is wrong with a route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    #[error(transparent)]
    Pattern(#[from] portcullis_policy::PatternError),
    #[error("upstream {url:?}: {reason}")]
    UpstreamUrl { url: String, reason: String },
    #[error("upstream {0:?} must be http(s)://host[:port][/base] without a query or user name")]
    UpstreamShape(String),
    #[error("{name} {value:?} must be a duration of at least 10ms, such as \"30s\" or \"1h\"")]
    Timeout { name: &'static str, value: String },
    #[error("static_dir {0} is not a directory")]
    NotADirectory(String),
    #[error("builtin {0:?} is not one of portcullis' services: admin-api, admin-console")]
    UnknownBuiltin(String),
    #[error("a builtin service needs a signed-in caller: use kind = \"api\" (or \"page\")")]
    PublicBuiltin,
    #[error("give exactly one of upstream, static_dir or builtin")]
    Target,
    #[error("an api route forwards to an upstream")]
    ApiNeedsUpstream,
    #[error("upstream_timeout, total_timeout and preserve_host apply to upstream routes only")]
    UpstreamOnly,
    #[error("token_sources must name header, cookie or both")]
    NoTokenSources,
    #[error("assertion needs an upstream")]
    AssertionNeedsUpstream,
    #[error("websocket needs an upstream")]
    WebSocketNeedsUpstream,
    #[error("{0}")]
    Cors(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Validation(String),
    #[error("validation applies to upstream routes")]
    ValidationNeedsUpstream,
    #[error("{0}")]
    Transform(String),
    #[error("transform applies to upstream routes")]
    TransformNeedsUpstream,
    #[error(
        "a public route has no caller to count: rate limits by sub, client or group and quotas need kind = \"api\" or \"page\""
    )]
    PublicLimit,
}

impl RouteTable {
    /// Validates and orders the configured routes.
    pub fn new(configs: &[RouteConfig]) -> Result<RouteTable, RouteError> {
        let mut routes = Vec::new();
        for (n, c) in configs.iter().enumerate() {
            let at = |problem: RouteProblem| RouteError {
                index: n,
                path: c.path.clone(),
                problem,
            };
            let pattern = PathPattern::parse(&c.path).map_err(|e| at(RouteProblem::Pattern(e)))?;
            let target = match (&c.upstream, &c.static_dir) {
                (None, None) if c.builtin.is_some() => {
                    let name = c.builtin.clone().unwrap_or_default();
                    if !BUILTINS.contains(&name.as_str()) {
                        return Err(at(RouteProblem::UnknownBuiltin(name)));
                    }
                    Target::Builtin { name }
                }
                _ if c.builtin.is_some() => return Err(at(RouteProblem::Target)),
                (Some(u), None) => {
                    let url = url::Url::parse(u).map_err(|e| {
                        at(RouteProblem::UpstreamUrl {
                            url: u.clone(),
                            reason: e.to_string(),
                        })
                    })?;
                    if !matches!(url.scheme(), "http" | "https")
                        || url.host_str().is_none()
                        || url.query().is_some()
                        || !url.username().is_empty()
                        || url.password().is_some()
                    {
                        return Err(at(RouteProblem::UpstreamShape(u.clone())));
                    }
                    let timeout = |name: &'static str, v: &Option<String>| match v {
                        None => Ok(None),
                        Some(text) => match humantime::parse_duration(text) {
                            Ok(d) if d >= std::time::Duration::from_millis(10) => Ok(Some(d)),
                            _ => Err(at(RouteProblem::Timeout {
                                name,
                                value: text.clone(),
                            })),
                        },
                    };
                    let base = u.trim_end_matches('/').to_owned();
                    let parsed = base.parse::<axum::http::Uri>().ok();
                    let origin = parsed
                        .as_ref()
                        .and_then(|uri| crate::forward::Origin::of(uri).ok())
                        .map(Box::new)
                        .ok_or_else(|| at(RouteProblem::UpstreamShape(u.clone())))?;
                    let base_path = parsed
                        .as_ref()
                        .map(|uri| uri.path().trim_end_matches('/').to_owned())
                        .unwrap_or_default();
                    Target::Upstream {
                        base,
                        origin,
                        base_path,
                        preserve_host: c.preserve_host,
                        upstream_timeout: timeout("upstream_timeout", &c.upstream_timeout)?,
                        total_timeout: timeout("total_timeout", &c.total_timeout)?,
                    }
                }
                (None, Some(d)) => {
                    if !d.is_dir() {
                        return Err(at(RouteProblem::NotADirectory(d.display().to_string())));
                    }
                    Target::Static {
                        dir: d.clone(),
                        spa_fallback: c.spa_fallback,
                    }
                }
                _ => return Err(at(RouteProblem::Target)),
            };
            if matches!(target, Target::Builtin { .. }) && c.kind == RouteKind::Public {
                return Err(at(RouteProblem::PublicBuiltin));
            }
            if c.kind == RouteKind::Api && matches!(target, Target::Static { .. }) {
                return Err(at(RouteProblem::ApiNeedsUpstream));
            }
            if matches!(target, Target::Static { .. })
                && (c.upstream_timeout.is_some() || c.total_timeout.is_some() || c.preserve_host)
            {
                return Err(at(RouteProblem::UpstreamOnly));
            }
            let methods: Vec<String> = c
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .filter(|m| m != "*")
                .collect();
            if c.token_sources.is_empty() && c.kind != RouteKind::Public {
                return Err(at(RouteProblem::NoTokenSources));
            }
            let assertion = match (&target, c.assertion) {
                (Target::Upstream { base, .. }, true) => {
                    Some(c.audience.clone().unwrap_or_else(|| base.clone()))
                }
                (_, true) => return Err(at(RouteProblem::AssertionNeedsUpstream)),
                (_, false) => None,
            };
            if c.websocket && !matches!(target, Target::Upstream { .. }) {
                return Err(at(RouteProblem::WebSocketNeedsUpstream));
            }
            let cors = match &c.cors {
                None => None,
                Some(cfg) => Some(Arc::new(
                    crate::cors::Cors::new(cfg, &methods).map_err(|e| at(RouteProblem::Cors(e)))?,
                )),
            };
            let rate_limits = c
                .rate_limits
                .iter()
                .enumerate()
                .map(|(i, l)| crate::limits::RateLimit::new(l, i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| at(RouteProblem::Limit(e)))?;
            let quotas = c
                .quotas
                .iter()
                .map(crate::limits::QuotaRule::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| at(RouteProblem::Limit(e)))?;
            if c.kind == RouteKind::Public
                && (!quotas.is_empty() || rate_limits.iter().any(|l| !l.by_address()))
            {
                return Err(at(RouteProblem::PublicLimit));
            }
            let validations = c
                .validation
                .iter()
                .map(crate::validate::Validation::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| at(RouteProblem::Validation(e)))?;
            if !validations.is_empty() && !matches!(target, Target::Upstream { .. }) {
                return Err(at(RouteProblem::ValidationNeedsUpstream));
            }
            let transform = match &c.transform {
                None => None,
                Some(_) if !matches!(target, Target::Upstream { .. }) => {
                    return Err(at(RouteProblem::TransformNeedsUpstream));
                }
                Some(t) => Some(Arc::new(
                    crate::transform::Transform::new(t)
                        .map_err(|e| at(RouteProblem::Transform(e)))?,
                )),
            };
            routes.push(Arc::new(Route {
                label: Arc::from(pattern.as_str()),
                pattern,
                methods,
                kind: c.kind,
                target,
                sources: c.token_sources.clone(),
                assertion,
                websocket: c.websocket,
                shared_cache: c.shared_cache,
                cors,
                rate_limits: rate_limits.into(),
                quotas: quotas.into(),
                validations: validations.into(),
                transform,
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
            builtin: None,
            spa_fallback: false,
            preserve_host: false,
            upstream_timeout: None,
            websocket: false,
            shared_cache: false,
            cors: None,
            rate_limits: vec![],
            quotas: vec![],
            validation: vec![],
            transform: None,
            total_timeout: None,
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
        for bad in [
            "ftp://x",
            "https://x/?q=1",
            "x:9000",
            "https://",
            "http://user:secret@x:8080",
        ] {
            let mut c = cfg("/api/**", RouteKind::Api);
            c.upstream = Some(bad.into());
            assert!(RouteTable::new(&[c]).is_err(), "{bad}");
        }
        // https upstreams are allowed (verified when connecting).
        let mut c = cfg("/api/**", RouteKind::Api);
        c.upstream = Some("https://x".into());
        assert!(RouteTable::new(&[c]).is_ok());
        let mut c = cfg("/api/**", RouteKind::Api);
        c.upstream = None;
        assert!(RouteTable::new(&[c]).is_err());
        assert!(RouteTable::new(&[cfg("api", RouteKind::Api)]).is_err());
    }

    #[test]
    fn route_timeouts_are_durations_on_upstream_routes_only() {
        let mut c = cfg("/api/**", RouteKind::Api);
        c.total_timeout = Some("1h".into());
        c.upstream_timeout = Some("45s".into());
        let t = RouteTable::new(&[c.clone()]).expect("valid");
        let r = t.find("GET", "/api/x").expect("route");
        assert!(matches!(
            r.target,
            Target::Upstream { total_timeout: Some(d), upstream_timeout: Some(u), .. }
                if d.as_secs() == 3600 && u.as_secs() == 45
        ));
        c.total_timeout = Some("soon".into());
        let e = RouteTable::new(&[c]).expect_err("bad duration");
        assert_eq!(
            e.problem,
            RouteProblem::Timeout {
                name: "total_timeout",
                value: "soon".into()
            }
        );
        assert!(
            e.to_string().contains("total_timeout") && e.to_string().contains("soon"),
            "{e}"
        );
        let mut s = cfg("/files/**", RouteKind::Public);
        s.upstream = None;
        s.static_dir = Some(std::env::temp_dir());
        s.total_timeout = Some("1s".into());
        let e = RouteTable::new(&[s]).expect_err("static route with a timeout");
        assert_eq!(e.problem, RouteProblem::UpstreamOnly);
        assert!(e.to_string().contains("upstream routes only"), "{e}");
    }
}
