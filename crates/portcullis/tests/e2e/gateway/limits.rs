//! Rate limits and quotas over real sockets: a limit holds its rate under load (±10 %), answers
//! carry the `RateLimit` headers and refusals `Retry-After`; limits by network act before
//! authentication; a quota counted in the store survives a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::gateway_upstream::Upstream;
use crate::oidc::setup;

fn config(upstream: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[routes.rate_limits]]
key = "client"
rate = 50
per = "1s"
burst = 10

[[routes]]
path = "/metered/**"
kind = "api"
upstream = "{upstream}"

[[routes.quotas]]
limit = 5
period = "day"

[[routes]]
path = "/public/**"
kind = "public"
upstream = "{upstream}"

[[routes.rate_limits]]
key = "address"
rate = 3
per = "1h"

[[policy]]
principal = "scope:orders/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**", "/metered/**"] }}]
"#
    )
}

async fn machine_token(http: &reqwest::Client, base: &str, secret: &str) -> String {
    let tokens: Value = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth("backend", Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders/read"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    tokens["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_its_rate_under_load_and_says_so() {
    let upstream = Upstream::start().await;
    let idp = setup(&config(&upstream.base));
    let base = idp.url("");
    let base = base.trim_end_matches('/').to_owned();
    let token = machine_token(&idp.http, &base, &idp.backend_secret).await;

    // The headers, on an answer and on a refusal.
    let first = idp
        .http
        .get(format!("{base}/api/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"client\";q=10;w=1");
    assert!(
        first.headers()["ratelimit"]
            .to_str()
            .expect("ascii")
            .starts_with("\"client\";r=9;"),
        "{:?}",
        first.headers()["ratelimit"]
    );

    // 16 callers as fast as they can for three seconds: a burst of 10, then 50 a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run = Duration::from_secs(3);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, token) = (
                idp.http.clone(),
                format!("{base}/api/orders"),
                token.clone(),
            );
            let (ok, limited) = (ok.clone(), limited.clone());
            tokio::spawn(async move {
                while started.elapsed() < run {
                    let r = http
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("get");
                    match r.status() {
                        StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        StatusCode::TOO_MANY_REQUESTS => {
                            let retry: u64 = r.headers()["retry-after"]
                                .to_str()
                                .expect("ascii")
                                .parse()
                                .expect("seconds");
                            assert!(retry >= 1);
                            assert!(r.headers().contains_key("ratelimit"));
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("{other}"),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed) as f64;
    let expected = 10.0 + 50.0 * elapsed;
    eprintln!(
        "{ok} allowed in {elapsed:.2} s (expected {expected:.0}), {} refused",
        limited.load(Ordering::Relaxed)
    );
    assert!(
        (ok - expected).abs() <= expected * 0.10,
        "{ok} allowed, expected {expected:.0} ± 10 %"
    );
    assert!(
        limited.load(Ordering::Relaxed) > 0,
        "the load exceeded the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_by_network_refuses_before_authentication() {
    let upstream = Upstream::start().await;
    let idp = setup(&config(&upstream.base));
    for n in 0..3 {
        let r = idp
            .http
            .get(idp.url("/public/page"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "request {n}");
    }
    let r = idp
        .http
        .get(idp.url("/public/page"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (1..=1200).contains(&retry),
        "one more in 20 minutes: {retry}"
    );
    assert_eq!(r.headers()["ratelimit-policy"], "\"address\";q=3;w=3600");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        upstream.count(),
        3,
        "the refused request did not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_counted_in_the_store_and_survives_a_restart() {
    let upstream = Upstream::start().await;
    let idp = setup(&config(&upstream.base));
    let http = idp.http.clone();
    let secret = idp.backend_secret.clone();
    let base = idp.url("").trim_end_matches('/').to_owned();
    let token = machine_token(&http, &base, &secret).await;
    for n in 0..5 {
        let r = http
            .get(format!("{base}/metered/report"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "request {n}");
    }
    let over = http
        .get(format!("{base}/metered/report"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = over.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=86400).contains(&retry), "until the day ends: {retry}");
    let body: Value = over.json().await.expect("json");
    assert_eq!(body["error"], "quota_exceeded");
    // The server stops at once (SIGTERM): what it counted since its last sync with the store
    // is added on the way out, so the restarted one still knows the quota is used up.
    let crate::oidc::Idp {
        _instance: instance,
        server,
        ..
    } = idp;
    assert!(server.terminate().success());
    let server = instance.serve();
    let base = server.base.trim_end_matches('/').to_owned();
    let token = machine_token(&http, &base, &secret).await;
    let after = http
        .get(format!("{base}/metered/report"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(
        after.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the quota is still used up after the restart"
    );
    assert_eq!(upstream.count(), 5);
}
