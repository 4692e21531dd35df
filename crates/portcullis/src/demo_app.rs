//! The demo's backend and the "external application" it talks to, each on its own loopback port.
//!
//! The backend trusts only the gateway: every request must carry an `X-Auth-Assertion` that
//! verifies against portcullis' keys (audience `demo-backend`). It turns each request into a call
//! to the external application, which has a different API — its own field names and an API key —
//! as real back-office systems do. A new order's body is validated and mapped by the gateway
//! (the demo's `[[routes.validation]]` and `[routes.transform]`), not here.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_gateway::issuers::{ExternalIssuer, IssuerConfig};
use portcullis_token::jwt::{self, Expect};
use serde_json::{Value, json};

/// One order in the external application's own vocabulary.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct ExternalOrder {
    #[serde(rename = "orderRef")]
    order_ref: u64,
    #[serde(rename = "customerRef")]
    customer_ref: String,
    #[serde(rename = "customerName")]
    customer_name: String,
    sku: String,
    qty: u32,
    state: String,
}

#[derive(Clone)]
struct External {
    key: String,
    orders: Arc<Mutex<Vec<ExternalOrder>>>,
}

fn external_router(key: String) -> Router {
    let state = External {
        key,
        orders: Arc::default(),
    };
    Router::new()
        .route("/v1/purchase-orders", get(ext_list).post(ext_create))
        .route("/v1/purchase-orders/{order_ref}/release", post(ext_release))
        .with_state(state)
}

fn ext_authorized(s: &External, h: &HeaderMap) -> bool {
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| portcullis_token::constant_time_eq(k.as_bytes(), s.key.as_bytes()))
}

async fn ext_list(State(s): State<External>, h: HeaderMap) -> Response {
    if !ext_authorized(&s, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let orders = s.orders.lock().map(|o| o.clone()).unwrap_or_default();
    axum::Json(json!({ "purchaseOrders": orders })).into_response()
}

async fn ext_create(
    State(s): State<External>,
    h: HeaderMap,
    axum::Json(mut o): axum::Json<ExternalOrder>,
) -> Response {
    if !ext_authorized(&s, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(mut orders) = s.orders.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    o.order_ref = 1000 + orders.len() as u64 + 1;
    o.state = "AWAITING_RELEASE".into();
    orders.push(o.clone());
    (StatusCode::CREATED, axum::Json(o)).into_response()
}

async fn ext_release(
    State(s): State<External>,
    h: HeaderMap,
    Path(order_ref): Path<u64>,
) -> Response {
    if !ext_authorized(&s, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(mut orders) = s.orders.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match orders.iter_mut().find(|o| o.order_ref == order_ref) {
        Some(o) => {
            o.state = "RELEASED".into();
            axum::Json(o.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Clone)]
struct Backend {
    issuer: String,
    /// portcullis' keys, from its JWKS, like any backend would fetch them.
    keys: Arc<ExternalIssuer>,
    external: String,
    key: String,
    http: reqwest::Client,
}

/// Who the gateway says the caller is, from the verified assertion.
struct Caller {
    sub: String,
    admin: bool,
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": status.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_"), "message": message }))).into_response()
}

impl Backend {
    async fn caller(&self, h: &HeaderMap) -> Result<Caller, Response> {
        let token = h
            .get("x-auth-assertion")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                problem(
                    StatusCode::UNAUTHORIZED,
                    "requests must come through the gateway",
                )
            })?;
        let aud = ["demo-backend".to_owned()];
        let now = i64::try_from(
            std::time::UNIX_EPOCH
                .elapsed()
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .unwrap_or(0);
        let expect = Expect {
            issuer: &self.issuer,
            audiences: &aud,
            token_use: None,
            leeway: 5,
            exp_leeway: 5,
            now,
        };
        let claims = match jwt::verify(token, &self.keys.keys(), &expect) {
            Err(jwt::VerifyError::UnknownKey) if self.keys.refresh().await => {
                jwt::verify(token, &self.keys.keys(), &expect)
            }
            other => other,
        }
        .map_err(|_| {
            problem(
                StatusCode::UNAUTHORIZED,
                "the gateway assertion does not verify",
            )
        })?;
        if claims.string("token_use") != Some("assertion") {
            return Err(problem(StatusCode::UNAUTHORIZED, "not a gateway assertion"));
        }
        let groups = claims.string_list("groups").unwrap_or_default();
        Ok(Caller {
            sub: claims.sub.clone().unwrap_or_default(),
            admin: groups.iter().any(|g| g == "admin"),
        })
    }

    async fn external(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Response> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.external))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|_| problem(StatusCode::BAD_GATEWAY, "the order system is unavailable"))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(problem(StatusCode::NOT_FOUND, "no such order"));
        }
        if !resp.status().is_success() {
            return Err(problem(
                StatusCode::BAD_GATEWAY,
                "the order system refused the request",
            ));
        }
        resp.json().await.map_err(|_| {
            problem(
                StatusCode::BAD_GATEWAY,
                "the order system answered nonsense",
            )
        })
    }
}

/// The external application's order in the shop's vocabulary.
fn to_shop(o: &ExternalOrder) -> Value {
    json!({
        "id": o.order_ref,
        "customer": o.customer_name,
        "item": o.sku,
        "quantity": o.qty,
        "status": if o.state == "RELEASED" { "approved" } else { "pending" },
    })
}

async fn list_all(b: &Backend) -> Result<Vec<ExternalOrder>, Response> {
    let v = b
        .external(reqwest::Method::GET, "/v1/purchase-orders", None)
        .await?;
    serde_json::from_value(v["purchaseOrders"].clone()).map_err(|_| {
        problem(
            StatusCode::BAD_GATEWAY,
            "the order system answered nonsense",
        )
    })
}

async fn my_orders(State(b): State<Backend>, h: HeaderMap) -> Response {
    let caller = match b.caller(&h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match list_all(&b).await {
        Ok(all) => axum::Json(
            all.iter()
                .filter(|o| o.customer_ref == caller.sub)
                .map(to_shop)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => r,
    }
}

/// A new order as the gateway hands it over: the shop's body, validated against
/// `examples/demo/gateway/order.schema.json` and rewritten by `order.json.j2` into the order
/// system's vocabulary, the customer taken from the verified token.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    #[serde(rename = "customerRef")]
    customer_ref: String,
    #[serde(rename = "customerName")]
    customer_name: String,
    sku: String,
    qty: u32,
}

async fn create_order(State(b): State<Backend>, h: HeaderMap, body: axum::body::Bytes) -> Response {
    let caller = match b.caller(&h).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(new) = serde_json::from_slice::<NewOrder>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the gateway's order route maps the shop's body; this one is not an order",
        );
    };
    // Defence in depth: the gateway fills the customer in from the token the assertion also
    // describes; an order for someone else is refused all the same.
    if new.customer_ref != caller.sub {
        return problem(StatusCode::FORBIDDEN, "an order must be the caller's own");
    }
    let order = ExternalOrder {
        order_ref: 0,
        customer_ref: new.customer_ref,
        customer_name: new.customer_name,
        sku: new.sku,
        qty: new.qty,
        state: String::new(),
    };
    let body = serde_json::to_value(&order).unwrap_or_default();
    match b
        .external(reqwest::Method::POST, "/v1/purchase-orders", Some(body))
        .await
    {
        Ok(v) => match serde_json::from_value::<ExternalOrder>(v) {
            Ok(o) => (StatusCode::CREATED, axum::Json(to_shop(&o))).into_response(),
            Err(_) => problem(
                StatusCode::BAD_GATEWAY,
                "the order system answered nonsense",
            ),
        },
        Err(r) => r,
    }
}

async fn all_orders(State(b): State<Backend>, h: HeaderMap) -> Response {
    match b.caller(&h).await {
        // The gateway's policy already requires admin here; the backend checks again.
        Ok(c) if c.admin => {}
        Ok(_) => return problem(StatusCode::FORBIDDEN, "administrators only"),
        Err(r) => return r,
    }
    match list_all(&b).await {
        Ok(all) => axum::Json(all.iter().map(to_shop).collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}

async fn approve(State(b): State<Backend>, h: HeaderMap, Path(id): Path<String>) -> Response {
    match b.caller(&h).await {
        Ok(c) if c.admin => {}
        Ok(_) => return problem(StatusCode::FORBIDDEN, "administrators only"),
        Err(r) => return r,
    }
    let Ok(id) = id.parse::<u64>() else {
        return problem(StatusCode::BAD_REQUEST, "the order id must be a number");
    };
    match b
        .external(
            reqwest::Method::POST,
            &format!("/v1/purchase-orders/{id}/release"),
            None,
        )
        .await
    {
        Ok(v) => match serde_json::from_value::<ExternalOrder>(v) {
            Ok(o) => axum::Json(to_shop(&o)).into_response(),
            Err(_) => problem(
                StatusCode::BAD_GATEWAY,
                "the order system answered nonsense",
            ),
        },
        Err(r) => r,
    }
}

/// Starts the external application and the backend on loopback ports; returns the backend's URL.
/// The backend verifies assertions from `issuer` with the keys published at `jwks_uri`.
pub async fn start(issuer: &str, jwks_uri: &str) -> std::io::Result<String> {
    serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        issuer,
        jwks_uri,
    )
    .await
}

/// [`start`] on a chosen address.
pub async fn serve(
    listen: std::net::SocketAddr,
    issuer: &str,
    jwks_uri: &str,
) -> std::io::Result<String> {
    let key = portcullis_idp::random_token().expose().clone();
    let ext = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let external = format!("http://{}", ext.local_addr()?);
    let ext_app = external_router(key.clone());
    tokio::spawn(async move { axum::serve(ext, ext_app).await });
    let keys = portcullis_gateway::issuers::external(&IssuerConfig {
        issuer: issuer.to_owned(),
        jwks_uri: Some(jwks_uri.to_owned()),
        audiences: vec!["demo-backend".into()],
        groups_claim: None,
        token_use: Some("any".into()),
        leeway: None,
        fold_group_case: false,
    })
    .map_err(std::io::Error::other)?;
    let backend = Backend {
        issuer: issuer.to_owned(),
        keys: Arc::new(keys),
        external,
        key,
        http: reqwest::Client::new(),
    };
    let app = Router::new()
        .route("/api/orders", get(my_orders).post(create_order))
        .route("/api/admin/orders", get(all_orders))
        .route("/api/admin/orders/{id}/approve", post(approve))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(backend);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}
