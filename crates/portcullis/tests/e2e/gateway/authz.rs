//! Stages 5–6 over the wire: group policies decide (and the upstream gets a trusted identity);
//! cookie credentials need a same origin for unsafe methods.

use super::*;

#[tokio::test]
async fn group_policies_decide_and_the_upstream_gets_a_trusted_identity() {
    let e = env().await;
    let resp = e.get("/api/orders/7?x=1", Some(&e.ada)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = e.upstream.last();
    assert_eq!(seen["uri"], "/api/orders/7?x=1");
    assert_eq!(seen["headers"]["x-auth-username"], json!(["ada"]));
    assert_eq!(seen["headers"]["x-auth-groups"], json!(["user"]));
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the bearer token is not forwarded"
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], json!(["127.0.0.1"]));

    let before = e.upstream.count();
    for path in ["/api/admin/users", "/API/Admin", "/api/admin", "/api/other"] {
        let resp = e.get(path, Some(&e.ada)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["error"],
            "forbidden"
        );
    }
    let delete = e
        .idp
        .http
        .delete(e.url("/api/orders/7"))
        .bearer_auth(&e.ada)
        .send()
        .await
        .expect("delete");
    assert_eq!(
        delete.status(),
        StatusCode::FORBIDDEN,
        "methods are part of the rule"
    );
    assert_eq!(
        e.upstream.count(),
        before,
        "nothing denied reached the upstream"
    );
    assert_eq!(
        e.get("/api/admin/users", Some(&e.root)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn cookie_credentials_need_a_same_origin_for_unsafe_methods() {
    let e = env().await;
    let cookie = format!("__Host-portcullis-access={}", e.ada);
    let origin = e.idp.server.base.replace("127.0.0.1", "localhost");
    let before = e.upstream.count();
    for bad in [Some("https://evil.example"), Some("null"), None] {
        let mut req = e
            .idp
            .http
            .post(e.url("/api/orders"))
            .header("cookie", &cookie)
            .body("{}");
        if let Some(o) = bad {
            req = req.header("origin", o);
        }
        assert_eq!(
            req.send().await.expect("send").status(),
            StatusCode::FORBIDDEN,
            "{bad:?}"
        );
    }
    assert_eq!(e.upstream.count(), before, "nothing forwarded");
    let ok = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let fetch_meta = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(fetch_meta.status(), StatusCode::OK);
    let bearer = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .bearer_auth(&e.ada)
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(
        bearer.status(),
        StatusCode::OK,
        "Bearer requests are exempt"
    );
    let get = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(get.status(), StatusCode::OK, "safe methods are exempt");
}
