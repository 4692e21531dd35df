//! The web console: a `builtin = "admin-console"` page route serving three embedded files (no
//! CDN) that drive the admin API from the browser with the session cookie. The gateway has
//! already authenticated and authorized the visitor with the ordinary policies; every API call
//! the page makes is authorized again, and writes are CSRF-checked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use portcullis_gateway::authn::Identity;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

pub struct Console {
    prefix: String,
    index: String,
}

impl Console {
    /// The console at `prefix`, talking to the admin API at `api`.
    pub fn new(prefix: &str, api: &str) -> Console {
        let api: String = api
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
            .collect();
        Console {
            prefix: prefix.to_owned(),
            index: INDEX.replace("{{API}}", &api),
        }
    }

    fn answer(&self, path: &str) -> Response<Body> {
        let rest = path.strip_prefix(&self.prefix).unwrap_or("");
        let (body, content_type) = match rest {
            "" => {
                // The page's relative asset links need the trailing slash.
                return portcullis_http::redirect(StatusCode::FOUND, &format!("{}/", self.prefix));
            }
            "/" | "/index.html" => (self.index.clone(), "text/html; charset=utf-8"),
            "/console.js" => (SCRIPT.to_owned(), "text/javascript; charset=utf-8"),
            "/console.css" => (STYLE.to_owned(), "text/css; charset=utf-8"),
            _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
        };
        let mut r = (StatusCode::OK, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        r
    }
}

impl portcullis_gateway::Builtin for Console {
    fn call(
        &self,
        req: Request<Body>,
        _identity: Option<Arc<Identity>>,
        _peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
        let r = self.answer(req.uri().path());
        Box::pin(async move { r })
    }
}

/// The console's prefix: the path of the `builtin = "admin-console"` route without its `/**`.
pub fn prefix(routes: &portcullis_gateway::route::RouteTable) -> Option<String> {
    routes.routes().iter().find_map(|r| match &r.target {
        portcullis_gateway::route::Target::Builtin { name } if name == "admin-console" => Some(
            r.pattern
                .as_str()
                .trim_end_matches("/**")
                .trim_end_matches('/')
                .to_owned(),
        ),
        _ => None,
    })
}
