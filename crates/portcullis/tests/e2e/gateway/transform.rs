//! Transformation over real sockets: the upstream sees the rewritten path, headers from the
//! verified token (never the client's own), a body remapped by a template; the answer's
//! headers are set and removed; a claim a header needs but the token lacks refuses the request.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::token_for;
use crate::gateway_upstream::Upstream;
use crate::oidc::setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_shape_it_expects() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let template = dir.path().join("order.j2");
    std::fs::write(
        &template,
        r#"{"customerRef": {{ claims.sub | tojson }}, "sku": {{ body.item | tojson }}, "qty": {{ body.quantity | default(1) }}, "rush": {{ (query.rush == "1") | tojson }}}"#,
    )
    .expect("write");
    let mut idp = setup(&format!(
        r#"
[[routes]]
path = "/api/orders/**"
kind = "api"
upstream = "{up}"

[routes.transform]
path_prefix = {{ from = "/api/orders", to = "/v1/purchase-orders" }}
request_headers = {{ "x-customer" = "{{claims.username}}", "x-api-version" = "2024-01" }}
remove_request_headers = ["x-debug"]
response_headers = {{ "x-frame-options" = "DENY" }}
remove_response_headers = ["server"]
body_template = "{template}"

[[routes]]
path = "/api/tenants/**"
kind = "api"
upstream = "{up}"

[routes.transform]
request_headers = {{ "x-tenant" = "{{claims.custom:tenant}}" }}

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/**"] }}]
"#,
        up = upstream.base,
        template = template.display()
    ));
    let ada = token_for(&mut idp, "ada").await;
    let r = idp
        .http
        .post(idp.url("/api/orders/new?rush=1"))
        .bearer_auth(&ada)
        .header("x-customer", "someone-else")
        .header("x-debug", "1")
        .json(&json!({ "item": "Blue mug", "quantity": 3, "customerRef": "forged" }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(!r.headers().contains_key("server"));
    let seen = upstream.last();
    assert_eq!(seen["uri"], "/v1/purchase-orders/new?rush=1");
    assert_eq!(
        seen["headers"]["x-customer"],
        json!(["ada"]),
        "from the token only"
    );
    assert_eq!(seen["headers"]["x-api-version"], json!(["2024-01"]));
    assert!(seen["headers"].get("x-debug").is_none());
    assert_eq!(seen["headers"]["content-type"], json!(["application/json"]));
    let body: Value =
        serde_json::from_str(seen["body"].as_str().expect("body")).expect("JSON body");
    let sub = crate::oidc::claims(&ada)["sub"].clone();
    assert_eq!(
        body,
        json!({ "customerRef": sub, "sku": "Blue mug", "qty": 3, "rush": true }),
        "the client's own customerRef is not what the template uses"
    );
    // Authorization saw the path the client asked for: another prefix is not rewritten.
    let before = upstream.count();
    let refused = idp
        .http
        .get(idp.url("/api/tenants/1"))
        .bearer_auth(&ada)
        .send()
        .await
        .expect("get");
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "a header the token has no claim for refuses the request"
    );
    assert_eq!(upstream.count(), before);
}

#[test]
fn transformations_that_would_break_the_gateway_s_guarantees_are_refused_at_start() {
    for (transform, says) in [
        (
            r#"request_headers = { "x-auth-subject" = "admin" }"#,
            "gateway's to set",
        ),
        (
            r#"request_headers = { "host" = "evil" }"#,
            "gateway's to set",
        ),
        (r#"request_headers = { "x-a" = "{sub}" }"#, "claims.NAME"),
        (r#"path_prefix = { from = "/api/", to = "" }"#, "canonical"),
        (r#"body_template = "/nonexistent/t.j2""#, "cannot read"),
    ] {
        let i = crate::harness::Instance::with_config(&format!(
            "[[routes]]\npath = \"/api/**\"\nkind = \"api\"\nupstream = \"http://127.0.0.1:9\"\n\n[routes.transform]\n{transform}\n"
        ));
        let err = i.run(&["config", "check"]).user_error();
        assert!(err.contains(says), "{transform}: {err}");
    }
}
