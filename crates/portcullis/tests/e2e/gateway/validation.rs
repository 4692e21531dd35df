//! Request validation over real sockets: every way a request can be invalid gets a 400 (or 415,
//! 413) problem naming what failed, and none reaches the upstream; a valid body arrives byte
//! for byte, however it was framed.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::token_for;
use crate::gateway_upstream::Upstream;
use crate::oidc::{Idp, setup};

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["sku", "quantity"],
  "additionalProperties": false,
  "properties": {
    "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$" },
    "quantity": { "type": "integer", "minimum": 1, "maximum": 100 },
    "note": { "type": "string", "maxLength": 140 },
    "ship_by": { "type": "string", "format": "date" }
  }
}"#;

/// A schema with references: no validation-while-parsing plan, every body takes the full path.
const REFS_SCHEMA: &str = r##"{
  "$defs": { "qty": { "type": "integer", "minimum": 1 } },
  "type": "object",
  "required": ["quantity"],
  "properties": { "quantity": { "$ref": "#/$defs/qty" } }
}"##;

async fn env() -> (Idp, Upstream, String, tempfile::TempDir) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let schema = dir.path().join("order.json");
    std::fs::write(&schema, SCHEMA).expect("write");
    let refs = dir.path().join("refs.json");
    std::fs::write(&refs, REFS_SCHEMA).expect("write");
    let mut idp = setup(&format!(
        r#"
[gateway]
max_body = 4096
upstream_timeout = "2s"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"

[[routes.validation]]
methods = ["POST"]
body_schema = "{schema}"
max_depth = 4
query = {{ dry_run = "boolean" }}
headers = {{ "x-tenant" = {{ type = "uuid", required = true }} }}

[[routes.validation]]
methods = ["GET"]
query = {{ page = {{ type = "integer", required = true }}, q = {{ type = "string", max_length = 20 }} }}
strict_query = true

[[routes]]
path = "/refs/**"
kind = "api"
upstream = "{up}"

[[routes.validation]]
methods = ["POST"]
body_schema = "{refs}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/**", "/refs/**"] }}]
"#,
        up = upstream.base,
        schema = schema.display(),
        refs = refs.display()
    ));
    let ada = token_for(&mut idp, "ada").await;
    (idp, upstream, ada, dir)
}

/// (body, content type, x-tenant, query) → status, where it failed, what the message says.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    u16,
    &'a str,
    &'a str,
);

const TENANT: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_with_the_failing_pointer_and_go_nowhere() {
    let (idp, upstream, ada, _dir) = env().await;
    let post = |body: &str, content_type: &str, tenant: Option<&str>, query: &str| {
        let mut r = idp
            .http
            .post(idp.url(&format!("/api/orders{query}")))
            .bearer_auth(&ada)
            .header("content-type", content_type)
            .body(body.to_owned());
        if let Some(t) = tenant {
            r = r.header("x-tenant", t);
        }
        r.send()
    };
    let valid = r#"{"sku":"ABC-1234","quantity":2,"ship_by":"2026-12-24"}"#;
    let ok = post(valid, "application/json", Some(TENANT), "?dry_run=true")
        .await
        .expect("post");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(upstream.last()["body"], valid, "forwarded byte for byte");
    // Valid, but not what validation while parsing is sure of (an integer written as a
    // fraction): the full path decides, and forwards it as it came.
    let fraction = r#"{"sku":"ABC-1234","quantity":2.0}"#;
    let ok = post(fraction, "application/json", Some(TENANT), "")
        .await
        .expect("post");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(upstream.last()["body"], fraction);

    let big = "x".repeat(5000);
    // (body, content type, tenant, query) → status, where, what it says
    let cases: Vec<Case> = vec![
        (
            r#"{"sku":"ABC-1234","quantity":"2"}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "/quantity",
            "is not of type \"integer\"",
        ),
        (
            r#"{"sku":"ABC-1234","quantity":0}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "/quantity",
            "minimum",
        ),
        (
            r#"{"sku":"abc","quantity":1}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "/sku",
            "does not match",
        ),
        (
            r#"{"quantity":1}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "",
            "\"sku\" is a required property",
        ),
        (
            r#"{"sku":"ABC-1234","quantity":1,"admin":true}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "",
            "admin",
        ),
        (
            r#"{"sku":"ABC-1234","quantity":1,"ship_by":"tomorrow"}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "/ship_by",
            "date",
        ),
        (
            r#"{"sku":"ABC-1234","quantity":1"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "",
            "is not JSON",
        ),
        (
            r#"{"a":[[[[1]]]]}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "/a/0/0/0",
            "nests deeper than 4 levels",
        ),
        (
            // Parsers differ on which of two equal names counts: refused, never guessed.
            r#"{"sku":"ABC-1234","quantity":1,"quantity":1000}"#,
            "application/json",
            Some(TENANT),
            "",
            400,
            "",
            "has the member \"quantity\" more than once",
        ),
        (
            valid,
            "text/plain",
            Some(TENANT),
            "",
            415,
            "header content-type",
            "application/json",
        ),
        (
            valid,
            "application/json",
            None,
            "",
            400,
            "header x-tenant",
            "is required",
        ),
        (
            valid,
            "application/json",
            Some("not-a-uuid"),
            "",
            400,
            "header x-tenant",
            "must be a UUID",
        ),
        (
            valid,
            "application/json",
            Some(TENANT),
            "?dry_run=maybe",
            400,
            "query dry_run",
            "true or false",
        ),
        (&big, "application/json", Some(TENANT), "", 413, "", ""),
    ];
    for (body, ct, tenant, query, status, at, says) in cases {
        let r = post(body, ct, tenant, query).await.expect("post");
        assert_eq!(
            r.status().as_u16(),
            status,
            "{body:.60} {ct} {tenant:?} {query}"
        );
        if status == 413 {
            continue;
        }
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.expect("json");
        let first = &problem["errors"][0];
        let place = first["pointer"].as_str().or(first["parameter"].as_str());
        assert_eq!(place, Some(at), "{problem}");
        assert!(
            first["message"].as_str().unwrap_or_default().contains(says),
            "{says:?} in {problem}"
        );
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty());
    }
    assert_eq!(
        upstream.count(),
        2,
        "no invalid request reached the upstream"
    );

    // A schema with references takes the full path for every body, valid or not.
    let refs = |body: &'static str| {
        idp.http
            .post(idp.url("/refs/x"))
            .bearer_auth(&ada)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = refs(r#"{"quantity": 3}"#).await.expect("post");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(upstream.last()["body"], r#"{"quantity": 3}"#);
    let bad = refs(r#"{"quantity": 0}"#).await.expect("post");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bad.json().await.expect("json");
    assert_eq!(problem["errors"][0]["pointer"], "/quantity", "{problem}");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_rules_apply_per_method_and_a_chunked_body_arrives_whole() {
    let (idp, upstream, ada, _dir) = env().await;
    let get = |q: &str| {
        idp.http
            .get(idp.url(&format!("/api/orders{q}")))
            .bearer_auth(&ada)
            .send()
    };
    assert_eq!(
        get("?page=2&q=red").await.expect("get").status(),
        StatusCode::OK
    );
    for (q, at) in [
        ("", "query page"),
        ("?page=two", "query page"),
        ("?page=1&page=2", "query page"),
        ("?page=1&q=aaaaaaaaaaaaaaaaaaaaaaaaa", "query q"),
        ("?page=1&debug=1", "query debug"),
    ] {
        let r = get(q).await.expect("get");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let problem: Value = r.json().await.expect("json");
        assert_eq!(problem["errors"][0]["parameter"], at, "{q}: {problem}");
    }
    // A chunked body is read whole, checked, and forwarded.
    let body = r#"{"sku":"ABC-1234","quantity":3}"#;
    let (a, b) = body.split_at(12);
    let server = idp.url("");
    let host = server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let answer = super::raw_async(
        server.trim_end_matches('/'),
        &format!(
            "POST /api/orders HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ada}\r\nContent-Type: application/json\r\nX-Tenant: {TENANT}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.last();
    assert_eq!(seen["body"], body);
    assert_eq!(json!(seen["method"]), json!("POST"));
    assert_eq!(upstream.count(), 2);
}

/// A validated body is read whole before it is checked: what arrives in pieces, with a pause
/// between them, is put together (the first piece taken as it came, the rest read within the
/// timeout); a chunked body growing past `max_body` is refused 413, one that stops arriving 408,
/// and neither reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_pieces_is_read_whole_within_the_limit_and_the_time() {
    use std::io::{Read, Write};
    let (idp, upstream, ada, _dir) = env().await;
    let server = idp.url("");
    let addr = server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Sends `pieces` with `pause` between them, then reads the answer.
    let send = move |pieces: Vec<String>, pause: std::time::Duration| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                let _ = s.write_all(piece.as_bytes());
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let head = |framing: &str| {
        format!(
            "POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ada}\r\nContent-Type: application/json\r\nX-Tenant: {TENANT}\r\n{framing}\r\nConnection: close\r\n\r\n"
        )
    };
    let body = r#"{"sku":"ABC-1234","quantity":3,"note":"left at the door"}"#;
    let (a, b) = body.split_at(20);
    // A declared length, the body in two writes 300 ms apart.
    let answer = send(
        vec![
            format!("{}{a}", head(&format!("Content-Length: {}", body.len()))),
            b.to_owned(),
        ],
        std::time::Duration::from_millis(300),
    )
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last()["body"], body);
    // Chunked, the same way.
    let answer = send(
        vec![
            format!(
                "{}{:x}\r\n{a}\r\n",
                head("Transfer-Encoding: chunked"),
                a.len()
            ),
            format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()),
        ],
        std::time::Duration::from_millis(300),
    )
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.last()["body"], body);
    assert_eq!(upstream.count(), 2);
    // Chunked past max_body (4096), the second chunk over it: 413, nothing forwarded.
    let note = "n".repeat(3000);
    let answer = send(
        vec![
            format!("{}bb8\r\n{note}\r\n", head("Transfer-Encoding: chunked")),
            format!("bb8\r\n{note}\r\n0\r\n\r\n"),
        ],
        std::time::Duration::from_millis(100),
    )
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A first piece and then nothing: 408 once upstream_timeout (2 s) has passed.
    let answer = send(
        vec![format!(
            "{}{a}",
            head(&format!("Content-Length: {}", body.len()))
        )],
        std::time::Duration::ZERO,
    );
    let answer = tokio::time::timeout(std::time::Duration::from_secs(8), answer)
        .await
        .expect("answered within the timeout")
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        upstream.count(),
        2,
        "neither refused body reached the upstream"
    );
    // A body read whole and then an upstream slower than upstream_timeout: 504, the upstream's
    // delay — not 408, the client finished its body before anything went upstream.
    let slow = head(&format!("Content-Length: {}", body.len()))
        .replace("POST /api/orders", "POST /api/slow");
    let answer = send(
        vec![format!("{slow}{a}"), b.to_owned()],
        std::time::Duration::from_millis(300),
    );
    let answer = tokio::time::timeout(std::time::Duration::from_secs(8), answer)
        .await
        .expect("answered within the timeout")
        .expect("join");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
}
