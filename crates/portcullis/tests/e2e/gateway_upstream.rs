//! A trivial upstream for the gateway tests: records what reaches it and echoes it back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use serde_json::{Value, json};

/// A trivial upstream that records what reaches it and echoes it back.
pub(crate) struct Upstream {
    pub(crate) base: String,
    pub(crate) seen: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let log = log.clone();
            async move {
                if req.uri().path() == "/api/slow" {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in req.headers() {
                    headers.entry(k.as_str().to_owned()).or_default().push(v.to_str().unwrap_or("?").to_owned());
                }
                // A test can ask for the answer's Cache-Control.
                let cache_control = req.headers().get("x-test-cache-control").cloned();
                // ... and a CORS header of its own (which a CORS route must drop).
                let own_cors = req.headers().contains_key("x-test-own-cors");
                let method = req.method().to_string();
                let version = format!("{:?}", req.version());
                let uri = req.uri().to_string();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
                let record = json!({ "method": method, "version": version, "uri": uri, "headers": headers, "body": String::from_utf8_lossy(&body) });
                log.lock().expect("log").push(record.clone());
                let mut resp = axum::response::IntoResponse::into_response(axum::Json(record));
                if let Some(cc) = cache_control {
                    resp.headers_mut().insert("cache-control", cc);
                }
                if own_cors {
                    resp.headers_mut().insert("access-control-allow-origin", axum::http::HeaderValue::from_static("*"));
                }
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { base, seen }
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().expect("log").len()
    }

    pub(crate) fn last(&self) -> Value {
        self.seen
            .lock()
            .expect("log")
            .last()
            .cloned()
            .expect("something reached the upstream")
    }
}

/// A key server (an issuer's JWKS at any path) that counts how often it is asked.
pub(crate) async fn key_server(jwks: Value) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        let jwks = jwks.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(jwks)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://localhost:{port}"), hits)
}

/// A compact JWS of `header` and `payload` exactly as written (so a test can repeat a member or
/// break a rule), signed with `key`.
pub(crate) fn sign_jws(key: &portcullis_token::SigningKey, header: &str, payload: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let sig = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64.encode(sig))
}

/// The status of `GET url` with `token` as a Bearer credential.
pub(crate) async fn bearer_status(url: &str, token: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .status()
}
