//! The gateway over HTTP/2: chosen by ALPN next to HTTP/1.1, every request through the same
//! path as HTTP/1.1 and forwarded as HTTP/1.1; what HTTP/2 allows but an HTTP/1.1 hop could
//! misread refused; the hostile requests of the HTTP/1.1 tests sent again; floods that neither
//! stall other clients nor grow memory without bound.

use std::net::SocketAddr;

use super::paths::{SEED, assert_nothing_ambiguous_forwarded, generated};
use super::*;
use crate::h2wire::{
    Answer, CANCEL, CONTINUATION, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, H2, HEADERS,
    RST_STREAM, pseudo,
};

fn address(e: &Env) -> SocketAddr {
    crate::tls::address(&e.idp.server)
}

/// `curl` with `version` (`--http2`, `--http1.1`): "<http_version> <status>".
fn curl(e: &Env, ca: &std::path::Path, version: &str, path: &str) -> String {
    let addr = address(e);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(version)
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .output()
        .expect("curl (Debian package curl)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    match answer {
        Answer::Response { headers, .. } => headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_take_the_http1_path_and_reach_upstreams_as_http1() {
    let (e, ca) = env_tls().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write CA");
    // A real client picks HTTP/2 by ALPN; HTTP/1.1 stays on the same port.
    assert_eq!(curl(&e, &ca_file, "--http2", "/healthz"), "2 200");
    assert_eq!(curl(&e, &ca_file, "--http1.1", "/healthz"), "1.1 200");

    let addr = address(&e);
    let authority = format!("localhost:{}", addr.port());
    let mut h2 = H2::connect(addr, &ca).await;
    // The same answer as HTTP/1.1, request by request: routes, authentication, authorization,
    // the page redirects, the identity provider's own endpoints.
    let bearer = format!("Bearer {}", e.ada);
    for (path, token) in [
        ("/api/orders/1", Some(e.ada.as_str())),
        ("/api/orders/1", None),
        ("/api/admin/x", Some(e.ada.as_str())),
        ("/admin/x", Some(e.ada.as_str())),
        ("/admin/x", None),
        ("/app/home", None),
        ("/static/app.js", None),
        ("/spa/deep/link", Some(e.ada.as_str())),
        ("/nowhere", None),
        ("/.well-known/openid-configuration", None),
        ("/oauth2/userinfo", Some(e.ada.as_str())),
    ] {
        let mut fields = pseudo("GET", path, &authority);
        if token.is_some() {
            fields.push(("authorization", &bearer));
        }
        let over_h2 = h2.request(&fields, None).await;
        let over_h1 = e.get(path, token).await;
        assert_eq!(
            over_h2.status(),
            Some(over_h1.status().as_u16()),
            "{path} {over_h2:?}"
        );
        assert_eq!(
            header(&over_h2, "location"),
            over_h1
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok()),
            "{path}"
        );
    }

    // Forwarded as HTTP/1.1, with the upstream's own Host and the client's :authority as
    // X-Forwarded-Host, the identity from the token and nothing the client made up.
    let fields = [
        pseudo("GET", "/api/orders/7?x=1", &authority),
        vec![
            ("authorization", bearer.as_str()),
            ("x-auth-username", "root"),
        ],
    ]
    .concat();
    let answer = h2.request(&fields, None).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    let seen = e.upstream.last();
    let echoed: Value = serde_json::from_slice(answer.body()).expect("the upstream's JSON");
    assert_eq!(echoed, seen, "the upstream's answer comes back whole");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["uri"], "/api/orders/7?x=1");
    let upstream_host = e.upstream.base.trim_start_matches("http://").to_owned();
    assert_eq!(seen["headers"]["host"], json!([upstream_host]));
    assert_eq!(seen["headers"]["x-forwarded-host"], json!([authority]));
    assert_eq!(seen["headers"]["x-forwarded-proto"], json!(["https"]));
    assert_eq!(seen["headers"]["x-auth-username"], json!(["ada"]));

    // Cookie crumbs (RFC 9113 §8.2.3) reach the upstream as one header.
    let fields = [
        pseudo("GET", "/public/x", &authority),
        vec![("cookie", "a=1"), ("cookie", "b=2")],
    ]
    .concat();
    assert_eq!(h2.request(&fields, None).await.status(), Some(200));
    assert_eq!(e.upstream.last()["headers"]["cookie"], json!(["a=1; b=2"]));

    // A body, with and without content-length: framed for HTTP/1.1 by the proxy.
    let fields = [
        pseudo("POST", "/public/x", &authority),
        vec![("content-length", "5")],
    ]
    .concat();
    let answer = h2.request(&fields, Some(b"hello")).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    let seen = e.upstream.last();
    assert_eq!(seen["body"], "hello");
    assert_eq!(seen["headers"]["content-length"], json!(["5"]));
    let answer = h2
        .request(&pseudo("POST", "/public/x", &authority), Some(b"streamed"))
        .await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(e.upstream.last()["body"], "streamed");

    // Host alone stands for :authority; both must agree.
    let fields = [
        vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/public/h"),
        ],
        vec![("host", "shop.example")],
    ]
    .concat();
    assert_eq!(h2.request(&fields, None).await.status(), Some(200));
    assert_eq!(
        e.upstream.last()["headers"]["x-forwarded-host"],
        json!(["shop.example"])
    );
}

/// What a refusal test sends: its name, the header fields, the body.
type Case<'a> = (&'a str, Vec<(String, String)>, Option<&'a [u8]>);

fn own(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// One request on a fresh connection (a refusal may close it).
async fn once(addr: SocketAddr, ca: &str, fields: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let mut h2 = H2::connect(addr, ca).await;
    h2.request(fields, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_http2_allows_but_an_http1_hop_could_misread_is_refused() {
    let (e, ca) = env_tls().await;
    let addr = address(&e);
    let authority = format!("localhost:{}", addr.port());
    let a = authority.as_str();
    let get =
        |extra: &[(&str, &str)]| own(&[pseudo("GET", "/public/x", a), extra.to_vec()].concat());
    let m = |method: &str, path: &str| own(&pseudo(method, path, a));
    let before = e.upstream.count();
    let cases: Vec<Case> = vec![
        ("an uppercase header name", get(&[("X-Evil", "1")]), None),
        ("a space in a header name", get(&[("x evil", "1")]), None),
        (
            "CR LF in a value",
            get(&[("x-a", "1\r\nx-injected: 1")]),
            None,
        ),
        ("LF in a value", get(&[("x-a", "1\nx-injected: 1")]), None),
        ("NUL in a value", get(&[("x-a", "1\0")]), None),
        (
            "Transfer-Encoding",
            get(&[("transfer-encoding", "chunked")]),
            None,
        ),
        ("Connection", get(&[("connection", "keep-alive")]), None),
        ("Keep-Alive", get(&[("keep-alive", "timeout=5")]), None),
        ("Upgrade", get(&[("upgrade", "websocket")]), None),
        ("Proxy-Connection", get(&[("proxy-connection", "x")]), None),
        ("TE other than trailers", get(&[("te", "gzip")]), None),
        ("a second :path", get(&[(":path", "/api/admin/x")]), None),
        ("a second :method", get(&[(":method", "DELETE")]), None),
        (
            "a pseudo-header after a regular one",
            own(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/public/x"),
                ("x-a", "1"),
                (":authority", a),
            ]),
            None,
        ),
        ("an unknown pseudo-header", get(&[(":evil", "1")]), None),
        ("a :path without its slash", m("GET", "public/x"), None),
        (
            "an absolute :path",
            m("GET", "https://evil.example/public/x"),
            None,
        ),
        ("the asterisk", m("OPTIONS", "*"), None),
        ("an empty :path", m("GET", ""), None),
        (
            "CONNECT",
            own(&[(":method", "CONNECT"), (":authority", "evil.example:443")]),
            None,
        ),
        (
            "a body longer than its content-length",
            own(&[
                pseudo("POST", "/public/x", a),
                vec![("content-length", "2")],
            ]
            .concat()),
            Some(b"abcd".as_slice()),
        ),
        (
            "a body shorter than its content-length",
            own(&[
                pseudo("POST", "/public/x", a),
                vec![("content-length", "10")],
            ]
            .concat()),
            Some(b"abcd".as_slice()),
        ),
        (
            "two Host headers",
            get(&[("host", a), ("host", "admin.internal")]),
            None,
        ),
        (
            ":authority and Host that disagree",
            get(&[("host", "admin.internal")]),
            None,
        ),
        (
            "userinfo in :authority",
            own(&pseudo("GET", "/public/x", "shop.example@admin.internal")),
            None,
        ),
        (
            "no :authority and no Host",
            own(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/public/x"),
            ]),
            None,
        ),
    ];
    for (what, fields, body) in &cases {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let answer = once(addr, &ca, &fields, *body).await;
        eprintln!("{what}: {}", answer.summary());
        assert!(answer.refused(), "{what}: {answer:?}");
        assert_eq!(e.upstream.count(), before, "{what}: nothing was forwarded");
    }
    // The ambiguous paths of the HTTP/1.1 test, with an administrator's token: 400 each.
    let bearer = format!("Bearer {}", e.root);
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
        "/api/orders\\admin",
    ] {
        let fields = [
            pseudo("GET", path, a),
            vec![("authorization", bearer.as_str())],
        ]
        .concat();
        let answer = once(addr, &ca, &fields, None).await;
        assert_eq!(answer.status(), Some(400), "{path}: {answer:?}");
    }
    // Thousands of Connection options cannot even be sent: the header itself is refused above.
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // A body promised and never sent: the client's delay (408), not the upstream's (504).
    let mut h2 = H2::connect(addr, &ca).await;
    let id = h2.stream();
    let block = h2.block(&pseudo("POST", "/public/x", a));
    h2.send(HEADERS, END_HEADERS, id, &block).await;
    let answer = h2.answer(id).await;
    assert_eq!(answer.status(), Some(408), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_hostile_requests_over_http2_get_no_500_and_reach_nothing_ambiguous() {
    let (e, ca) = env_tls().await;
    let addr = address(&e);
    let authority = format!("localhost:{}", addr.port());
    let bearer = format!("Bearer {}", e.ada);
    let before = e.upstream.count();
    let mut h2 = H2::connect(addr, &ca).await;
    for (n, g) in generated(300).into_iter().enumerate() {
        let mut fields = pseudo(g.method, &g.path, &authority);
        // The header line as HTTP/2 carries it: a lowercase name.
        let line = g.head.trim_end_matches("\r\n");
        let extra = line
            .split_once(':')
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()));
        if let Some((name, value)) = &extra {
            fields.push((name, value));
        }
        if g.token {
            fields.push(("authorization", &bearer));
        }
        let answer = h2.request(&fields, None).await;
        assert!(
            answer.status().is_none_or(|s| s < 500),
            "request {n} (seed {SEED:#x}) {fields:?} -> {answer:?}"
        );
        if matches!(answer, Answer::GoAway(_) | Answer::Closed) {
            h2 = H2::connect(addr, &ca).await;
        }
    }
    let forwarded = assert_nothing_ambiguous_forwarded(&e.upstream, before);
    eprintln!("{forwarded} of 300 generated HTTP/2 requests were forwarded");
    assert!(
        forwarded > 10,
        "the generator should also make requests that pass"
    );
    assert_eq!(e.get("/public/x", None).await.status(), StatusCode::OK);
}

/// `gateway.max_body` over HTTP/2: a declared length over it is refused before anything is
/// forwarded, a body that grows past it is cut off with 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_bodies_over_the_limit_are_refused() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "server", &["localhost"]);
    let i = crate::harness::Instance::with_config(&format!(
        "[gateway]\nmax_body = 1024\n\n[[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n\n{}",
        upstream.base,
        crate::tls::certificates(&[(&chain, &key)])
    ));
    let server = i.serve();
    let addr = crate::tls::address(&server);
    let authority = format!("localhost:{}", addr.port());
    let post = pseudo("POST", "/public/x", &authority);
    let small = vec![b'a'; 1000];
    let answer = once(addr, &ca.pem, &post, Some(&small)).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(upstream.count(), 1);
    let big = vec![b'a'; 2000];
    let declared = [post.clone(), vec![("content-length", "2000")]].concat();
    let answer = once(addr, &ca.pem, &declared, Some(&big)).await;
    assert_eq!(answer.status(), Some(413), "{answer:?}");
    assert_eq!(upstream.count(), 1, "nothing was forwarded");
    let answer = once(addr, &ca.pem, &post, Some(&big)).await;
    assert_eq!(answer.status(), Some(413), "{answer:?}");
    let seen = upstream.seen.lock().expect("log").clone();
    assert!(
        seen.iter()
            .skip(1)
            .all(|r| r["body"].as_str().map(str::len) != Some(2000)),
        "the oversized body never reached the upstream whole"
    );
}

/// Latency of a normal client's request while something else goes on.
async fn timed_get(addr: SocketAddr, ca: &str, authority: &str) -> Duration {
    let started = Instant::now();
    let answer = once(addr, ca, &pseudo("GET", "/public/ping", authority), None).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    started.elapsed()
}

/// A rapid-reset flood (CVE-2023-44487) and a CONTINUATION flood: other clients keep being
/// answered promptly, the flooding connections are closed, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reset_and_continuation_floods_neither_stall_others_nor_grow_memory() {
    let (e, ca) = env_tls().await;
    let addr = address(&e);
    let authority = format!("localhost:{}", addr.port());
    let quiet = timed_get(addr, &ca, &authority).await;
    let rss_before = e.idp.server.rss_kb();

    // Rapid reset: open a stream and cancel it at once, thousands of times.
    let flood = {
        let (ca, authority) = (ca.clone(), authority.clone());
        tokio::spawn(async move {
            let mut sent = 0u32;
            let mut h2 = H2::connect(addr, &ca).await;
            let block = h2.block(&pseudo("GET", "/public/flood", &authority));
            for _ in 0..20_000 {
                let id = h2.stream();
                if !h2.send(HEADERS, END_HEADERS | END_STREAM, id, &block).await
                    || !h2.send(RST_STREAM, 0, id, &CANCEL.to_be_bytes()).await
                {
                    break;
                }
                sent += 1;
            }
            // What the server said before it closed: frames queued up while we only wrote.
            let mut goaway = None;
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_secs(2), h2.read_frame()).await
            {
                if frame.kind == GOAWAY {
                    goaway = frame
                        .payload
                        .get(4..8)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    break;
                }
            }
            (sent, goaway)
        })
    };
    let mut worst = Duration::ZERO;
    while !flood.is_finished() {
        worst = worst.max(timed_get(addr, &ca, &authority).await);
    }
    let (sent, goaway) = flood.await.expect("flood");
    eprintln!(
        "rapid reset: {sent} streams opened and reset, then GOAWAY {goaway:?}; others answered within {worst:?} (quiet: {quiet:?})"
    );
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "the flooding connection is closed with ENHANCE_YOUR_CALM"
    );
    assert!(
        worst < Duration::from_secs(2),
        "a normal client waited {worst:?} during the reset flood"
    );

    // CONTINUATION flood: one header block that never ends. The server must give up on it once
    // it is past the header-size limit, not buffer it.
    let mut h2 = H2::connect(addr, &ca).await;
    let id = h2.stream();
    let block = h2.block(&pseudo("GET", "/public/x", &authority));
    assert!(h2.send(HEADERS, 0, id, &block).await);
    let crumb = vec![0x40u8; 16_384];
    let mut sent_bytes = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while sent_bytes < 64 << 20 {
            if !h2.send(CONTINUATION, 0, id, &crumb).await {
                return true;
            }
            sent_bytes += crumb.len();
        }
        false
    })
    .await
    .unwrap_or(false);
    eprintln!(
        "CONTINUATION flood: connection closed after {} KiB",
        sent_bytes / 1024
    );
    assert!(
        closed,
        "the server closed the connection ({} KiB of header block sent)",
        sent_bytes / 1024
    );
    assert!(
        sent_bytes < 4 << 20,
        "the server took {} KiB of one header block before closing",
        sent_bytes / 1024
    );

    let rss_after = e.idp.server.rss_kb();
    eprintln!("resident memory: {rss_before} KiB before the floods, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let after = timed_get(addr, &ca, &authority).await;
    assert!(after < Duration::from_secs(2), "{after:?} after the floods");
}

/// An HTTP/2 connection that starts no request within `server.header_timeout` — idle, or
/// trickling a header block that never ends (slowloris) — is told GOAWAY and closed; one whose
/// request is in progress is not cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_http2_connections_are_closed() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "server", &["localhost"]);
    let i = crate::harness::Instance::with_config(&format!(
        "[server]\nheader_timeout = \"1s\"\n\n[[routes]]\npath = \"/api/**\"\nkind = \"public\"\nupstream = \"{}\"\n\n{}",
        upstream.base,
        crate::tls::certificates(&[(&chain, &key)])
    ));
    let server = i.serve();
    let addr = crate::tls::address(&server);
    let authority = format!("localhost:{}", addr.port());

    // Closed within the timeout (plus a PING round trip), idle or slow.
    for slow in [false, true] {
        let started = Instant::now();
        let mut h2 = H2::connect(addr, &ca.pem).await;
        if slow {
            let id = h2.stream();
            let block = h2.block(&pseudo("GET", "/api/x", &authority));
            h2.send(HEADERS, 0, id, &block[..block.len() / 2]).await;
        }
        let mut goaway = false;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), h2.read_frame())
                .await
                .expect("closed within 10 s");
            match frame {
                None => break,
                Some(f) if f.kind == GOAWAY => goaway = true,
                Some(f) if f.kind == crate::h2wire::PING && f.flags == 0 => {
                    h2.send(crate::h2wire::PING, crate::h2wire::ACK, 0, &f.payload)
                        .await;
                }
                Some(_) => {}
            }
        }
        let took = started.elapsed();
        eprintln!("slow = {slow}: GOAWAY {goaway}, closed after {took:?}");
        assert!(goaway, "told GOAWAY first (slow = {slow})");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "closed after {took:?} (slow = {slow})"
        );
    }

    // A request that takes longer than the timeout (the upstream sleeps 3 s) completes.
    let mut h2 = H2::connect(addr, &ca.pem).await;
    let answer = h2
        .request(&pseudo("GET", "/api/slow", &authority), None)
        .await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
}

/// `server.http2 = false`: ALPN offers HTTP/1.1 only, so a client that asks for HTTP/2 speaks
/// HTTP/1.1.
#[test]
fn http2_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "server", &["localhost"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let i = crate::harness::Instance::with_config(&format!(
        "[server]\nhttp2 = false\n\n{}",
        crate::tls::certificates(&[(&chain, &key)])
    ));
    let server = i.serve();
    let port = crate::tls::address(&server).port();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2",
        ])
        .arg("--cacert")
        .arg(&ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1 200", "{out:?}");
}
