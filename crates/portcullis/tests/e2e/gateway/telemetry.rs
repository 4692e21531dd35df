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
    http.get(server.url("/api/orders/1?secret=hunter2"))
        .bearer_auth("header.payload.signature-not-to-be-logged")
        .send()
        .await
        .expect("send");
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
    assert!(
        !text.contains("hunter2") && !text.contains("signature-not-to-be-logged"),
        "no query or token in logs:\n{text}"
    );
}
