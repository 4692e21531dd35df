//! Static files for routes with a `static_dir`: the route's literal prefix maps to the directory,
//! with `Last-Modified`/304, precompressed `.br`/`.gz` variants and an optional single-page-app
//! fallback. The canonicalizer has already refused every way of naming a file outside it.

use axum::body::Body;
use axum::http::{Request, Response};
use tower::ServiceExt;

use crate::reject::Reject;
use crate::route::Route;

/// Serves the file the canonical path names below the route's directory.
pub(crate) async fn serve(
    req: Request<Body>,
    route: &Route,
    dir: &std::path::Path,
    spa_fallback: bool,
    encoded: &str,
) -> Result<Response<Body>, Reject> {
    // `/static/**` serves `/static/app.js` from `DIR/app.js`.
    let skip = route.pattern.literal_prefix_len();
    let rest: Vec<&str> = encoded.split('/').skip(1 + skip).collect();
    let local = format!("/{}", rest.join("/"));
    let (mut parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = format!("{local}{query}")
        .parse()
        .map_err(|_| Reject::Target {
            reason: "the path cannot be served".into(),
            path: local.clone(),
        })?;
    let req = Request::from_parts(parts, body);
    let serve = tower_http::services::ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .precompressed_gzip()
        .precompressed_br();
    let result = if spa_fallback {
        serve
            .fallback(tower_http::services::ServeFile::new(dir.join("index.html")))
            .oneshot(req)
            .await
            .map(|r| r.map(Body::new))
    } else {
        serve.oneshot(req).await.map(|r| r.map(Body::new))
    };
    result.map_err(|e| {
        tracing::error!(error = %e, "static file error");
        Reject::Internal("static file error")
    })
}
