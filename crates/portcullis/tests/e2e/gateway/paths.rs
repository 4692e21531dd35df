//! Stages 0–1 over the wire: framing (smuggling, Host, Connection, body limits) and the
//! canonical path — ambiguous and generated hostile targets reach nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_400_and_reach_nothing() {
    let e = env().await;
    let before = e.upstream.count();
    for path in [
        "/api/orders/../admin/x",
        "/api/orders/%2e%2e/admin",
        "/api/orders/%2E%2E/admin",
        "/api/orders%2fadmin",
        "/api/orders%2Fadmin",
        "/api//admin",
        "/api/orders/./x",
        "/api/orders;x=1/admin",
        "/api/orders%5cadmin",
        "/api/orders%00",
        "/api/admin./x",
        "/api/admin%20/x",
        "/api/%252e%252e/admin",
    ] {
        let resp = raw_request(
            &e,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                e.root
            ),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    for target in ["http://evil.example/api/orders", "*"] {
        let resp = raw_request(
            &e,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
    }
    assert_eq!(e.upstream.count(), before);
}

// Blocking socket reads in the test: a second worker keeps the in-process upstream running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused() {
    let e = env().await;
    // A plain chunked body is forwarded intact.
    let ok = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(e.upstream.last()["body"], "abc");
    let before = e.upstream.count();
    for attack in [
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ] {
        let resp = raw_request(&e, attack);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 501"),
            "{attack:?} -> {resp}"
        );
        assert_eq!(
            resp.matches("HTTP/1.1 ").count().min(1),
            usize::from(!resp.is_empty()),
            "one answer, then the connection is closed"
        );
    }
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Content-Length with Transfer-Encoding: hyper drops the Content-Length (RFC 9112 §6.3),
    // decodes the chunked body and closes the connection after answering, so the request that
    // was hidden behind it is never read, let alone forwarded.
    let resp = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response, then close: {resp}"
    );
    let seen = e.upstream.seen.lock().expect("log").clone();
    assert!(
        seen.iter().all(|r| r["uri"] != "/api/admin/x"),
        "the smuggled request never reached the upstream"
    );
}

// Blocking socket reads in the test: a second worker keeps the in-process upstream running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_connection_header_tricks_are_400_or_neutralized() {
    let e = env().await;
    let before = e.upstream.count();
    for (what, host_lines) in [
        (
            "two Host headers",
            "Host: shop.example\r\nHost: admin.internal\r\n",
        ),
        ("no Host in HTTP/1.1", ""),
        ("userinfo in Host", "Host: shop.example@admin.internal\r\n"),
        ("a path in Host", "Host: admin.internal/x\r\n"),
        ("an empty Host", "Host: \r\n"),
    ] {
        let resp = raw_request(
            &e,
            &format!("GET /public/x HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n"),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
    }
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Thousands of Connection options (each header would be checked against each): refused.
    let many: Vec<String> = (0..2000).map(|i| format!("x{i}")).collect();
    let resp = raw_request(
        &e,
        &format!(
            "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: {}\r\n\r\n",
            many.join(",")
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Another Host reaches the upstream only as X-Forwarded-Host: the upstream's virtual host
    // is its own authority, unless the route preserves the client's Host.
    let resp = raw_request(
        &e,
        "GET /public/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let upstream_host = e.upstream.base.trim_start_matches("http://").to_owned();
    let h = e.upstream.last()["headers"].clone();
    assert_eq!(h["host"], json!([upstream_host]));
    assert_eq!(h["x-forwarded-host"], json!(["admin.internal"]));
    let resp = raw_request(
        &e,
        "GET /vhost/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        e.upstream.last()["headers"]["host"],
        json!(["shop.example"]),
        "preserve_host = true forwards the client's Host"
    );
    // HTTP/1.0 may omit Host.
    let resp = raw_request(&e, "GET /public/x HTTP/1.0\r\n\r\n");
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
}

/// `gateway.max_body`: a declared length over it is refused before anything is forwarded; a
/// chunked body that grows past it is cut off and answered 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_refused() {
    let upstream = Upstream::start().await;
    let i = crate::harness::Instance::with_config(&format!(
        "[gateway]\nmax_body = 1024\n\n[[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let server = i.serve();
    let raw = |request: String| raw_to(&server.base, &request);
    let small = "a".repeat(1000);
    let ok = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{small}"
    ));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(upstream.count(), 1);
    let big = "a".repeat(2000);
    let resp = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{big}"
    ));
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert_eq!(upstream.count(), 1, "nothing was forwarded");
    let resp = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n"
    ));
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let seen = upstream.seen.lock().expect("log").clone();
    assert!(
        seen.iter().skip(1).all(|r| r["body"] != big.as_str()),
        "the oversized body never reached the upstream whole"
    );
}

/// One generated hostile request: method, target, one extra header line (`Name: value\r\n`
/// or empty), and whether it carries a valid token.
pub(super) struct Generated {
    pub(super) method: &'static str,
    pub(super) path: String,
    pub(super) head: &'static str,
    pub(super) token: bool,
}

/// The seed of [`generated`], printed with a failure so it can be replayed.
pub(super) const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hostile request targets and headers, generated deterministically from [`SEED`] (the same
/// list for HTTP/1.1 and HTTP/2).
pub(super) fn generated(count: usize) -> Vec<Generated> {
    // xorshift64*: deterministic, so a failure can be replayed from the seed it prints.
    let mut state = SEED;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let first = [
        "api", "API", "public", "Public", "app", "static", "spa", "admin",
    ];
    let plain = [
        "orders", "Orders", "admin", "x", "1", "a.b", "~u", "%41", "é",
    ];
    let hostile = [
        "..",
        ".",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "%00",
        "%25",
        "%252e",
        "%20",
        ";",
        ";a=b",
        "\\",
        "%c0%ae",
        "%e2%80%ae",
        "%ff",
        "*",
        "?",
        "#",
        "%3f",
        "a.",
        "a%20",
        "%0d%0a",
        "",
    ];
    let heads = [
        "",
        "",
        "",
        "Authorization: Bearer x\r\n",
        "Authorization: Basic Zm9vOmJhcg==\r\n",
        "Authorization: Bearer\r\n",
        "X-Original-URL: /api/admin/x\r\n",
        "X-HTTP-Method-Override: DELETE\r\n",
        "Cookie: __Host-portcullis-access=\r\n",
        "Cookie: ;;;=;\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
    ];
    let methods = [
        "GET", "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH",
    ];
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let mut pick = |list: &[&'static str]| list[(next() % list.len() as u64) as usize];
        let mut path = format!("/{}", pick(&first));
        for _ in 0..(pick(&["0", "1", "2", "3"]).len() + n % 3) {
            path.push(if n % 10 == 7 { '\\' } else { '/' });
            let list: &[&'static str] = if pick(&["h", "p", "p", "p"]) == "h" {
                &hostile
            } else {
                &plain
            };
            path.push_str(pick(list));
        }
        let method = pick(&methods);
        let head = pick(&heads);
        let token = pick(&["t", "-"]) == "t";
        out.push(Generated {
            method,
            path,
            head,
            token,
        });
    }
    out
}

/// Fails if a request the upstream saw since `before` has a path that means more than one
/// thing.
pub(super) fn assert_nothing_ambiguous_forwarded(upstream: &Upstream, before: usize) -> usize {
    let seen = upstream.seen.lock().expect("log").clone();
    for r in &seen[before..] {
        let uri = r["uri"].as_str().unwrap_or_default().to_ascii_lowercase();
        let path = uri.split('?').next().unwrap_or_default();
        for bad in ["/../", "/./", "//", "%2e", "%2f", "%5c", "\\", "%00", ";"] {
            assert!(
                !path.contains(bad) && !path.ends_with("/.."),
                "{uri} reached the upstream ({bad})"
            );
        }
    }
    seen.len() - before
}

/// Hostile request targets and headers, generated: none gets a 500 or takes the server down,
/// and nothing ambiguous reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_hostile_requests_get_no_500_and_reach_nothing_ambiguous() {
    let e = env().await;
    let before = e.upstream.count();
    for (n, g) in generated(300).into_iter().enumerate() {
        let token = if g.token {
            format!("Authorization: Bearer {}\r\n", e.ada)
        } else {
            String::new()
        };
        // A chunked request carries its (empty) body; one that never sends it is below.
        let body = if g.head.contains("chunked") {
            "0\r\n\r\n"
        } else {
            ""
        };
        let request = format!(
            "{} {} HTTP/1.1\r\nHost: x\r\n{}{token}Connection: close\r\n\r\n{body}",
            g.method, g.path, g.head
        );
        let resp = raw_request(&e, &request);
        assert!(
            !resp.starts_with("HTTP/1.1 5"),
            "request {n} (seed {SEED:#x}) {request:?} -> {resp}"
        );
    }
    let forwarded = assert_nothing_ambiguous_forwarded(&e.upstream, before);
    eprintln!("{forwarded} of 300 generated requests were forwarded");
    assert!(
        forwarded > 10,
        "the generator should also make requests that pass"
    );
    // A body promised and never sent: the client's delay (408), not the upstream's (504).
    let resp = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(e.get("/public/x", None).await.status(), StatusCode::OK);
}
