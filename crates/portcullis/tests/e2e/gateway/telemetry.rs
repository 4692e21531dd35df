//! Metrics and the access log.

use super::*;

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_decision() {
    let e = env().await;
    e.get("/api/orders/1", Some(&e.ada)).await;
    e.get("/api/admin/x", Some(&e.ada)).await;
    e.get("/api/orders/1", None).await;
    let admin = e
        .idp
        .server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("admin listening on "))
        .expect("the admin listener is announced")
        .to_owned();
    let text = e
        .idp
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        r#"portcullis_gateway_requests_total{route="/api/**",status="200",decision="allowed"} 1"#,
        r#"portcullis_gateway_requests_total{route="/api/**",status="403",decision="denied"} 1"#,
        r#"portcullis_gateway_requests_total{route="/api/**",status="401",decision="unauthenticated"} 1"#,
        "portcullis_gateway_upstream_seconds",
        r#"portcullis_gateway_token_cache_total{result="miss"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let main = e
        .idp
        .http
        .get(e.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        main.status(),
        StatusCode::NOT_FOUND,
        "metrics are not on the public listener"
    );
}

#[tokio::test]
async fn one_json_access_log_line_per_request_without_tokens_or_queries() {
    let upstream = Upstream::start().await;
    let files = tempfile::tempdir().expect("dir");
    std::fs::create_dir(files.path().join("static")).expect("mkdir");
    let i = crate::harness::Instance::with_config(&config(&upstream.base, files.path()));
    let log = files.path().join("server.log");
    let cmd = i.command(&["--log-format", "json", "serve", "--listen", "127.0.0.1:0"]);
    let server = crate::harness::Server::start_with_stderr(
        cmd,
        std::process::Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let http = reqwest::Client::new();
    let answer = http
        .get(server.url("/api/orders/1?secret=hunter2"))
        .bearer_auth("header.payload.signature-not-to-be-logged")
        .send()
        .await
        .expect("send");
    let request_id = answer.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    drop(server);
    let text = std::fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "portcullis::access")
        .unwrap_or_else(|| panic!("no access log line in:\n{text}"));
    assert_eq!(line["fields"]["path"], "/api/orders/1");
    assert_eq!(line["fields"]["decision"], "unauthenticated");
    assert_eq!(line["fields"]["status"], 401);
    assert_eq!(line["fields"]["route"], "/api/**");
    assert_eq!(line["fields"]["client"], "127.0.0.1");
    assert_eq!(
        line["span"]["id"], request_id,
        "the log line names the request id the answer carries"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("signature-not-to-be-logged"),
        "no query or token in logs:\n{text}"
    );
}

/// Every request has an id (a client's own is replaced: it is not a trusted proxy) and a trace:
/// the upstream gets both, the answer returns the id, a valid `traceparent` is continued.
#[tokio::test]
async fn request_ids_and_traces_reach_the_upstream_and_come_back() {
    let e = super::env().await;
    let r = e
        .idp
        .http
        .get(e.url("/api/orders/7"))
        .bearer_auth(&e.ada)
        .header("x-request-id", "chosen-by-the-client")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(id, "chosen-by-the-client");
    let seen = e.upstream.last();
    assert_eq!(seen["headers"]["x-request-id"], serde_json::json!([id]));
    let parent = seen["headers"]["traceparent"][0]
        .as_str()
        .expect("a traceparent");
    assert!(
        parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && parent.ends_with("-01"),
        "{parent}"
    );
    assert!(!parent.contains("b7ad6b7169203331"));
    // Refusals carry an id too; without a traceparent a trace starts here.
    let refused = e
        .idp
        .http
        .get(e.url("/api/orders/7"))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let other = refused.headers()["x-request-id"].to_str().expect("ascii");
    assert_eq!(other.len(), 32);
    assert_ne!(other, id);
    let _ = e
        .idp
        .http
        .get(e.url("/public/x"))
        .send()
        .await
        .expect("send");
    let started = e.upstream.last();
    let fresh = started["headers"]["traceparent"][0]
        .as_str()
        .expect("traceparent");
    assert!(
        !fresh.contains("0af7651916cd43dd8448eb211c80319c"),
        "{fresh}"
    );
}

/// A stand-in OpenTelemetry collector: records the bodies of `POST /v1/traces`.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                log.lock().expect("log").push(body.to_vec());
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// With `telemetry.otlp_endpoint`, each request is exported as a span continuing the caller's
/// trace, with spans for authentication, authorization and the upstream call; the upstream's
/// `traceparent` names the request's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_with_a_span_per_stage() {
    let (endpoint, exported) = collector().await;
    let upstream = Upstream::start().await;
    let mut idp = crate::oidc::setup(&format!(
        r#"
[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "shop-gateway"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**"] }}]
"#,
        up = upstream.base
    ));
    let ada = super::token_for(&mut idp, "ada").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = idp
        .http
        .get(idp.url("/api/orders/1"))
        .bearer_auth(&ada)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let sent = upstream.last()["headers"]["traceparent"][0]
        .as_str()
        .expect("a traceparent upstream")
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], trace, "the caller's trace continues: {sent}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "under this hop's own span");
    assert_eq!(parts[3], "01", "sampled");
    let started = std::time::Instant::now();
    loop {
        let all: Vec<u8> = exported.lock().expect("log").concat();
        let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
        if [
            &b"authenticate"[..],
            b"authorize",
            b"upstream",
            b"request",
            b"shop-gateway",
            &unhex(trace),
            &unhex(parts[2]),
        ]
        .iter()
        .all(|n| has(n))
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the spans were not exported ({} bytes so far)",
            all.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
