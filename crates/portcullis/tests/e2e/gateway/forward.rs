//! Stage 7 over the wire: header hygiene, upstream faults and timeouts, the signed assertion,
//! static files, WebSocket upgrades, X-Forwarded-For behind trusted proxies.

use super::*;

#[tokio::test]
async fn client_sent_identity_and_forwarding_headers_never_reach_the_upstream() {
    let e = env().await;
    let resp = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .bearer_auth(&e.ada)
        .header("X-Auth-Username", "root")
        .header("x_auth_groups", "admin")
        .header("X.Auth.Subject", "someone")
        .header("X-Auth-Groups", "admin")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("Forwarded", "for=10.0.0.1")
        .header("X-Real-IP", "10.0.0.1")
        .header("X-Original-URL", "/api/admin")
        .header("X-Rewrite-URL", "/api/admin")
        .header("X-Forwarded-Prefix", "/api/admin")
        .header("X-Forwarded-Host", "admin.internal")
        .header("X_Forwarded_Host", "admin.internal")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("Connection", "close, X-Custom")
        .header("X-Custom", "hop")
        .header("Cookie", "__Host-portcullis-access=stolen; theme=dark")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = &e.upstream.last()["headers"];
    assert_eq!(h["x-auth-username"], json!(["ada"]));
    assert_eq!(h["x-auth-groups"], json!(["user"]));
    for name in [
        "x_auth_groups",
        "x.auth.subject",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x_forwarded_host",
        "x-http-method-override",
        "x-custom",
    ] {
        assert!(h.get(name).is_none(), "{name} was forwarded: {h}");
    }
    // The upstream sees its own authority as Host, and the Host the client used (not the
    // X-Forwarded-Host it sent) as X-Forwarded-Host.
    let client_host = e
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let upstream_host = e.upstream.base.trim_start_matches("http://").to_owned();
    assert_eq!(h["host"], json!([upstream_host]));
    assert_eq!(h["x-forwarded-host"], json!([client_host]));
    assert_eq!(
        h["x-forwarded-for"],
        json!(["127.0.0.1"]),
        "set, not appended"
    );
    assert_eq!(
        h["cookie"],
        json!(["theme=dark"]),
        "portcullis cookies are not forwarded"
    );
    assert_eq!(e.upstream.last()["method"], "GET");
}

#[tokio::test]
async fn upstream_faults_are_502_and_504() {
    let e = env().await;
    let resp = e.get("/down/x", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["error"],
        "bad_gateway"
    );
    let resp = e.get("/api/slow", Some(&e.root)).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn the_upstream_can_verify_a_signed_assertion() {
    let e = env().await;
    let forged = e
        .idp
        .http
        .get(e.url("/verified/x"))
        .bearer_auth(&e.ada)
        .header("X-Auth-Assertion", "forged")
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), StatusCode::OK);
    let assertion = e.upstream.last()["headers"]["x-auth-assertion"][0]
        .as_str()
        .expect("assertion")
        .to_owned();
    assert_ne!(assertion, "forged", "a client-sent assertion is replaced");
    let jwks: Value = e
        .idp
        .http
        .get(e.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let keys = portcullis_token::jwt::KeySet::new(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| portcullis_token::VerifyingKey::from_jwk(k).expect("jwk")),
    );
    let issuer = e.idp.server.base.replace("127.0.0.1", "localhost");
    let now =
        i64::try_from(std::time::UNIX_EPOCH.elapsed().expect("clock").as_secs()).expect("i64");
    let aud = ["orders-api".to_owned()];
    let expect = portcullis_token::jwt::Expect {
        issuer: &issuer,
        audiences: &aud,
        token_use: None,
        leeway: 5,
        exp_leeway: 5,
        now,
    };
    let claims = portcullis_token::jwt::verify(&assertion, &keys, &expect)
        .expect("the upstream can verify it");
    assert_eq!(claims.string("token_use"), Some("assertion"));
    assert_eq!(claims.string("username"), Some("ada"));
    assert!(claims.exp - now <= 60);
    // And an assertion is not an access token.
    assert_eq!(
        e.get("/api/orders", Some(&assertion)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_with_caching_headers_precompression_and_spa_fallback() {
    let e = env().await;
    let resp = e.get("/static/app.js", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let modified = resp.headers()["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let again = e
        .idp
        .http
        .get(e.url("/static/app.js"))
        .header("if-modified-since", &modified)
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let gz = e
        .idp
        .http
        .get(e.url("/static/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("send");
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap_or("")),
        Some("gzip")
    );
    assert_eq!(
        e.get("/static/missing.js", None).await.status(),
        StatusCode::NOT_FOUND
    );
    for escape in [
        "/static/../index.html",
        "/static/%2e%2e/index.html",
        "/static/..%2findex.html",
    ] {
        let resp = raw_get(&e, escape).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{escape}: {resp}");
    }
    let spa = e.get("/spa/orders/42", Some(&e.ada)).await;
    assert_eq!(spa.status(), StatusCode::OK);
    assert!(
        spa.text()
            .await
            .expect("html")
            .contains("<title>spa</title>"),
        "unknown paths get index.html"
    );
    let signed_out = e.get("/spa/orders/42", None).await;
    assert_eq!(
        signed_out.status(),
        StatusCode::FOUND,
        "a page route still asks to sign in first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_on_routes_that_allow_them_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upgrading_upstream().await;
    let mut idp = setup(&format!(
        "[[routes]]\npath = \"/ws/**\"\nkind = \"api\"\nupstream = \"{upstream}\"\nwebsocket = true\n\
         [[routes]]\npath = \"/plain/**\"\nkind = \"api\"\nupstream = \"{upstream}\"\n\
         [[policy]]\nprincipal = \"group:user\"\nstatements = [{{ effect = \"allow\", methods = [\"GET\"], paths = [\"/ws/**\", \"/plain/**\"] }}]\n"
    ));
    let ada = token_for(&mut idp, "ada").await;
    let addr = idp.server.base.trim_start_matches("http://").to_owned();
    let handshake = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let open = |path: &'static str, headers: String| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
                .await
                .expect("write");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            (s, String::from_utf8_lossy(&head).into_owned())
        }
    };
    let bearer = format!("Authorization: Bearer {ada}\r\n");
    let (_, refused) = open("/ws/chat", handshake.to_owned()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let (_, refused) = open("/plain/chat", format!("{handshake}{bearer}")).await;
    assert!(
        refused.starts_with("HTTP/1.1 400"),
        "WebSocket is off unless the route allows it: {refused}"
    );
    let (_, refused) = open(
        "/ws/chat",
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{bearer}"
        ),
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 400"),
        "a handshake without a key: {refused}"
    );
    // With the access cookie, a handshake from another site is cross-site WebSocket hijacking.
    let cookie = format!("Cookie: __Host-portcullis-access={ada}\r\n");
    let (_, refused) = open(
        "/ws/chat",
        format!("{handshake}{cookie}Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let (mut s, head) = open("/ws/chat", format!("{handshake}{bearer}")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
}

/// The third upstream timeout, `gateway.total_timeout`: a response body still trickling past it
/// is cut off. (Connect and response-header timeouts: `upstream_faults_are_502_and_504`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_outlasts_the_total_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends its headers and half the body at once, the rest 3 s later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let trickle = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = s.write_all(b"-last").await;
            });
        }
    });
    let i = crate::harness::Instance::with_config(&format!(
        "[gateway]\nupstream_timeout = \"1s\"\ntotal_timeout = \"1s\"\n\n[[routes]]\npath = \"/slow/**\"\nkind = \"public\"\nupstream = \"{trickle}\"\n\n[[routes]]\npath = \"/stream/**\"\nkind = \"public\"\nupstream = \"{trickle}\"\ntotal_timeout = \"10s\"\n"
    ));
    let server = i.serve();
    let started = Instant::now();
    let resp = reqwest::get(server.url("/slow/x")).await.expect("headers");
    assert_eq!(resp.status(), StatusCode::OK, "the headers came in time");
    let body = resp.bytes().await;
    let took = started.elapsed();
    assert!(
        body.is_err(),
        "the body is cut off, not completed: {body:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "cut off after {took:?}"
    );
    // A route with its own, longer total_timeout gets the whole body.
    let resp = reqwest::get(server.url("/stream/x"))
        .await
        .expect("headers");
    assert_eq!(
        resp.bytes().await.expect("the whole body").as_ref(),
        b"first-last"
    );
}

/// Behind a trusted load balancer the client is the address it forwards for; from anyone
/// else `X-Forwarded-For` is ignored (see client_sent_identity_and_forwarding_headers…).
#[tokio::test]
async fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let upstream = Upstream::start().await;
    let instance = |trusted: &str| {
        crate::harness::Instance::with_config(&format!(
            "[server]\ntrusted_proxies = \"{trusted}\"\n\n[[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
            upstream.base
        ))
    };
    let http = reqwest::Client::new();
    let forwarded_for = |server: String| {
        let http = http.clone();
        let upstream = &upstream;
        async move {
            let resp = http
                .get(format!("{server}/public/x"))
                .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
                .header("x-forwarded-for", "198.51.100.4")
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            upstream.last()["headers"]["x-forwarded-for"].clone()
        }
    };
    // The test connects from 127.0.0.1: trusted, so its nearest untrusted hop is the client.
    let one = instance("127.0.0.1");
    let s = one.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["198.51.100.4"]));
    // A chain of trusted proxies: the first hop outside them.
    let chain = instance("127.0.0.0/8, 198.51.100.0/24");
    let s = chain.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["203.0.113.7"]));
    // Not trusted: the header is the client's word and is ignored.
    let other = instance("10.0.0.0/8");
    let s = other.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["127.0.0.1"]));
    // A bad entry is a configuration error that names it.
    let bad = instance("10.0.0.0/8, 10.0.0.300");
    let err = bad.run(&["config", "check"]).user_error();
    assert!(
        err.contains("server.trusted_proxies") && err.contains("10.0.0.300"),
        "{err}"
    );
}

/// `server.threads = 1`: one serving thread still serves many connections at once (a slow
/// upstream answer holds up no one else), and the upstream connections it drives are reused
/// from its pool once their answers are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_serving_thread_serves_connections_concurrently_and_reuses_upstream_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream: `/slow/…` answers after 2 s, anything else at once; counts connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                    let head: Vec<u8> = buf.drain(..end).collect();
                    if head.starts_with(b"GET /slow/") {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let i = crate::harness::Instance::with_config(&format!(
        "[server]\nthreads = 1\n\n[[routes]]\npath = \"/**\"\nkind = \"public\"\nupstream = \"{upstream}\"\n"
    ));
    let server = i.serve();
    // The serving threads start right after the listening line is printed.
    let mut serving = Vec::new();
    for _ in 0..50 {
        serving = server
            .thread_names()
            .into_iter()
            .filter(|n| n.starts_with("portcullis-io-"))
            .collect();
        if !serving.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serving, ["portcullis-io-0"], "server.threads = 1");
    let slow_url = server.url("/slow/x");
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let resp = reqwest::get(slow_url).await.expect("slow answer");
        (resp.status(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Twenty other clients, each on its own connection, while the slow answer is pending.
    let started = Instant::now();
    let fast: Vec<_> = (0..20)
        .map(|n| {
            let url = server.url(&format!("/fast/{n}"));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                client.get(url).send().await.expect("fast answer").status()
            })
        })
        .collect();
    for f in fast {
        assert_eq!(f.await.expect("task"), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the slow answer held up the others: {:?}",
        started.elapsed()
    );
    let (status, took) = slow.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    // Answers read to the end leave their upstream connections in the thread's pool: ten more
    // requests in a row open none.
    let before = connections.load(Ordering::SeqCst);
    let client = reqwest::Client::new();
    for n in 0..10 {
        let resp = client
            .get(server.url(&format!("/again/{n}")))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.expect("body"), "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), before);
}
