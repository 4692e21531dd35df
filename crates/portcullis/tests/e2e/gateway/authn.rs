//! Stage 4 over the wire: answers per route kind when the credential is missing or bad, token
//! attacks, trusted external issuers, revocation within a second, client-credentials tokens.

use super::*;

#[tokio::test]
async fn apis_answer_401_json_and_pages_redirect() {
    let e = env().await;
    let resp = e.get("/api/orders", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    let resp = e.get("/api/orders", Some("not.a.token")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"invalid_token\"")
    );
    let body = resp.text().await.expect("body");
    assert!(!body.contains("not.a.token"), "errors never echo the token");

    let resp = e.get("/admin/settings?tab=2", None).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "/auth/login?return_to=%2Fadmin%2Fsettings%3Ftab%3D2"
    );
    let resp = e.get("/admin/settings", Some(&e.ada)).await;
    assert_eq!(
        (
            resp.status(),
            resp.headers()["location"].to_str().expect("ascii")
        ),
        (StatusCode::FOUND, "/")
    );
    assert_eq!(
        e.get("/app/home", Some(&e.ada)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.get("/public/logo.png", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.get("/nowhere", Some(&e.root)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        e.upstream.count(),
        2,
        "only the allowed page and the public file were forwarded"
    );
}

#[tokio::test]
async fn token_attacks_are_401() {
    let e = env().await;
    let before = e.upstream.count();
    // An ID token is not an access token.
    let mut idp = e.idp;
    idp.cookies.clear();
    let q = idp.sign_in("spa", "root").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    let id_token = tokens["id_token"].as_str().expect("id").to_owned();
    let e = Env { idp, ..e };
    assert_eq!(
        e.get("/api/orders", Some(&id_token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // alg none, stripped signature, tampered payload.
    let parts: Vec<&str> = e.root.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for alg in ["none", "NONE", "nOnE"] {
        let h = b64.encode(format!(r#"{{"alg":"{alg}","kid":"x"}}"#));
        assert_eq!(
            e.get("/api/orders", Some(&format!("{h}.{}.", parts[1])))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        e.get("/api/orders", Some(&format!("{}.{}.", parts[0], parts[1])))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let mut claims = crate::oidc::claims(&e.ada);
    claims["groups"] = json!(["admin"]);
    let forged = format!(
        "{}.{}.{}",
        e.ada.split('.').next().expect("h"),
        b64.encode(claims.to_string()),
        e.ada.rsplit('.').next().expect("s")
    );
    assert_eq!(
        e.get("/api/admin/x", Some(&forged)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Two Authorization headers, or two access cookies: refused, not one picked.
    let two = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("authorization", format!("Bearer {}", e.ada))
        .header("authorization", format!("Bearer {}", e.root))
        .send()
        .await
        .expect("send");
    assert_eq!(two.status(), StatusCode::UNAUTHORIZED);
    let cookies = format!(
        "__Host-portcullis-access={}; __Host-portcullis-access={}",
        e.ada, e.root
    );
    let two = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("cookie", cookies)
        .send()
        .await
        .expect("send");
    assert_eq!(two.status(), StatusCode::UNAUTHORIZED);
    // Oversized token.
    let huge = e
        .get("/api/orders", Some(&"a".repeat(20_000)))
        .await
        .status();
    assert!(
        huge == StatusCode::UNAUTHORIZED || huge == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{huge}"
    );
    assert_eq!(e.upstream.count(), before);
}

#[tokio::test]
async fn revocation_and_policy_changes_take_effect_within_a_second() {
    let e = env().await;
    assert_eq!(
        e.get("/api/orders", Some(&e.ada)).await.status(),
        StatusCode::OK
    );
    e.idp._instance.run(&["user", "disable", "ada"]).ok();
    let started = Instant::now();
    within_a_second("revocation not enforced within a second", || async {
        e.get("/api/orders", Some(&e.ada)).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("revocation enforced after {:?}", started.elapsed());

    // A new policy version denying root's admin access reaches the running gateway.
    assert_eq!(
        e.get("/api/admin/x", Some(&e.root)).await.status(),
        StatusCode::OK
    );
    let file = e.idp._instance.dir.path().join("policy.toml");
    std::fs::write(&file, "[[policy]]\nprincipal = \"group:admin\"\nstatements = [{ effect = \"deny\", paths = [\"/api/admin/**\"] }]\n").expect("write");
    e.idp
        ._instance
        .run(&["policy", "set", file.to_str().expect("utf-8")])
        .ok();
    within_a_second("policy change not applied within a second", || async {
        e.get("/api/admin/x", Some(&e.root)).await.status() == StatusCode::FORBIDDEN
    })
    .await;
    let explain = e
        .idp
        ._instance
        .run(&[
            "policy",
            "explain",
            "--group",
            "admin",
            "GET",
            "/api/admin/x",
        ])
        .ok();
    assert!(
        explain.contains("denied by statement 1 of group:admin, version 2"),
        "{explain}"
    );
    e.idp._instance.run(&["policy", "rollback", "1"]).ok();
    let history = e.idp._instance.run(&["policy", "history"]).ok();
    assert!(history.contains("rollback to version 1"), "{history}");
    let matrix = e.idp._instance.run(&["policy", "matrix"]).ok();
    let row = matrix
        .lines()
        .find(|l| l.starts_with("DELETE /api/**"))
        .unwrap_or_else(|| panic!("no row for the API route:\n{matrix}"));
    assert_eq!(
        row.split_whitespace().skip(2).collect::<Vec<_>>(),
        ["deny", "allow", "deny"],
        "{matrix}"
    );
}

#[tokio::test]
async fn client_credentials_tokens_are_authorized_by_scope() {
    let e = env().await;
    let secret = e.idp.backend_secret.clone();
    let (_, body) = e
        .idp
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders/read"),
            ],
            Some(("backend", &secret)),
        )
        .await;
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        e.get("/api/orders/1", Some(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.upstream.last()["headers"]["x-auth-client-id"],
        json!(["backend"])
    );
    let post = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tokens_of_a_trusted_external_issuer_are_verified_with_its_jwks() {
    // B: another portcullis acting as the external identity provider (as a Cognito pool would).
    let mut b = setup("");
    let issuer = b.server.base.replace("127.0.0.1", "localhost");
    let upstream = Upstream::start().await;
    // A: a gateway that trusts B for client `spa`, with B's groups claim.
    let a = trusting_gateway(&issuer, "groups_claim = \"groups\"", &upstream);
    let gateway = a.serve();
    let http = reqwest::Client::new();
    let first = token_for(&mut b, "ada").await;
    let second = token_for(&mut b, "ada").await;
    let resp = http
        .get(gateway.url("/api/orders/1"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        upstream.last()["headers"]["x-auth-username"],
        json!(["ada"])
    );
    let denied = http
        .get(gateway.url("/api/admin/x"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("send");
    assert_eq!(
        denied.status(),
        StatusCode::FORBIDDEN,
        "policies apply to external identities too"
    );

    // A token B issued to another client is not for us.
    let secret = b.backend_secret.clone();
    let (_, cc) = b
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders/read"),
            ],
            Some(("backend", &secret)),
        )
        .await;
    let other = cc["access_token"].as_str().expect("token").to_owned();
    let resp = http
        .get(gateway.url("/api/orders/1"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "wrong audience");

    // B goes away: A keeps verifying with the keys it has.
    drop(b);
    let resp = http
        .get(gateway.url("/api/orders/2"))
        .bearer_auth(&second)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "cached keys keep working while the issuer is unreachable"
    );
}

/// A trusted issuer whose signing key the test holds, so it can sign tokens that break one rule
/// each; and an attacker's key server, which must never be asked for anything. (Two workers:
/// the key servers run in this process and must answer while the test waits on the gateway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_by_a_trusted_key_but_breaking_a_rule_reach_nothing() {
    use base64::Engine;
    use portcullis_token::{Algorithm, SigningKey};
    use std::sync::atomic::Ordering;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let trusted = SigningKey::generate(Algorithm::ES256, "trusted-1").expect("key");
    let attacker = SigningKey::generate(Algorithm::ES256, "attacker-1").expect("key");
    use crate::gateway_upstream::key_server;
    let (issuer, issuer_hits) = key_server(portcullis_token::jwks([trusted.verifying_key()])).await;
    let (evil, evil_hits) = key_server(portcullis_token::jwks([attacker.verifying_key()])).await;

    let upstream = Upstream::start().await;
    let a = trusting_gateway(
        &issuer,
        &format!("jwks_uri = \"{issuer}/jwks.json\"\ngroups_claim = \"cognito:groups\""),
        &upstream,
    );
    let gateway = a.serve();
    let now = portcullis_token::Clock::system().now();
    // Cognito's access-token shape: `client_id`, no `aud`, `token_use`, `cognito:groups`.
    let good = json!({
        "iss": issuer, "sub": "u-1", "username": "ada", "client_id": "spa",
        "token_use": "access", "scope": "openid", "cognito:groups": ["user"],
        "iat": now - 5, "exp": now + 600, "jti": "j-1",
    });
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        c
    };
    let jws = |key: &SigningKey, header: Value, claims: &Value| {
        crate::gateway_upstream::sign_jws(key, &header.to_string(), &claims.to_string())
    };
    let es256 = |kid: &str| json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
    let url = gateway.url("/api/orders/1");
    let get = |token: String| {
        let url = url.clone();
        async move { crate::gateway_upstream::bearer_status(&url, &token).await }
    };

    // The control: the well-formed token is accepted and reaches the upstream.
    assert_eq!(
        get(jws(&trusted, es256("trusted-1"), &good)).await,
        StatusCode::OK
    );
    let before = upstream.count();
    assert_eq!(before, 1);

    let good_token = jws(&trusted, es256("trusted-1"), &good);
    let (signing_input, _) = good_token.rsplit_once('.').expect("jws");
    // HS256 with the issuer's public key (its JWK, as a confused verifier would use it) as the
    // HMAC secret.
    let public_jwk = trusted.verifying_key().jwk().to_string();
    let hs_input = format!(
        "{}.{}",
        b64.encode(json!({ "alg": "HS256", "kid": "trusted-1" }).to_string()),
        b64.encode(good.to_string())
    );
    let hmac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public_jwk.as_bytes()),
        hs_input.as_bytes(),
    );
    let attacker_jwk = attacker.verifying_key().jwk().clone();
    let attacks: Vec<(&str, String)> = vec![
        (
            "expired",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["exp"] = json!(now - 3600)),
            ),
        ),
        (
            "not valid yet",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["nbf"] = json!(now + 3600)),
            ),
        ),
        (
            "string-typed exp",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["exp"] = json!((now + 600).to_string())),
            ),
        ),
        (
            "wrong issuer",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["iss"] = json!("https://other.example")),
            ),
        ),
        (
            "wrong client",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["client_id"] = json!("other")),
            ),
        ),
        (
            "an ID token",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["token_use"] = json!("id")),
            ),
        ),
        (
            "crit header",
            jws(
                &trusted,
                json!({ "alg": "ES256", "kid": "trusted-1", "crit": ["exp-v2"], "exp-v2": 1 }),
                &good,
            ),
        ),
        ("HS256 keyed with the public key", {
            format!("{hs_input}.{}", b64.encode(hmac.as_ref()))
        }),
        ("alg none", {
            format!(
                "{}.{}.",
                b64.encode(json!({ "alg": "none", "kid": "trusted-1" }).to_string()),
                b64.encode(good.to_string())
            )
        }),
        ("ECDSA r = s = 0", {
            format!("{signing_input}.{}", b64.encode([0u8; 64]))
        }),
        (
            "ES256 relabelled RS256",
            format!(
                "{}.{}.{}",
                b64.encode(json!({ "alg": "RS256", "kid": "trusted-1" }).to_string()),
                b64.encode(good.to_string()),
                good_token.rsplit('.').next().expect("sig")
            ),
        ),
        (
            "kid with path traversal",
            jws(&attacker, es256("../../../../etc/passwd"), &good),
        ),
        ("kid with SQL", jws(&attacker, es256("x' OR '1'='1"), &good)),
        (
            "jku to the attacker's keys",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "attacker-1", "jku": format!("{evil}/jwks.json") }),
                &good,
            ),
        ),
        (
            "x5u to the attacker's keys",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "attacker-1", "x5u": format!("{evil}/cert.pem") }),
                &good,
            ),
        ),
        (
            "embedded jwk, the attacker's, under the trusted kid",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "trusted-1", "jwk": attacker_jwk }),
                &good,
            ),
        ),
        (
            "signed by the attacker under the trusted kid",
            jws(&attacker, es256("trusted-1"), &good),
        ),
    ];
    for (what, token) in attacks {
        assert_eq!(get(token).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(upstream.count(), before, "no attack reached the upstream");
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "the attacker's key URLs were never fetched"
    );
    // Unknown kids make the gateway look for new keys at most once per 30 s, not per token.
    assert!(
        issuer_hits.load(Ordering::SeqCst) <= 2,
        "the issuer's JWKS was fetched {} times",
        issuer_hits.load(Ordering::SeqCst)
    );
    // And the good token still works.
    assert_eq!(get(good_token).await, StatusCode::OK);
}
