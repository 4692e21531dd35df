//! Request validation in isolation: what checking the gateway benchmark's 1 KB order body costs,
//! through the same `Validation::check` a route runs (the body already received, as a small
//! one is), by the plan that reads while it parses and by the full path (a flat parse, then
//! `jsonschema`), and `serde_json`'s own parser skipping the body as the floor of any parse.
//!
//!     cargo run --release -p portcullis-gateway --example validate [-- ITERATIONS [ORDERS]]
//!
//! ORDERS (default: as many as fit in ~1 KB, the benchmark's body) sets the body's size.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Request;
use portcullis_gateway::validate::{Validation, ValidationConfig};
use serde_json::{Value, json};

/// The benchmarks' schema for the managed route (`bench/order.schema.json`).
fn schema() -> Value {
    serde_json::from_str(include_str!("../../../bench/order.schema.json"))
        .expect("bench/order.schema.json")
}

/// `bench/gateway.sh`'s body: as many orders as fit in ~1 KB (or `count` of them).
fn body(count: Option<usize>) -> String {
    let mut orders = Vec::new();
    loop {
        let i = orders.len();
        let order = json!({"id": i, "item": format!("widget-{i:03}"),
            "quantity": i % 7 + 1, "status": "shipped"});
        orders.push(order);
        // Python's json.dumps spacing, as the benchmark sends it.
        let text = serde_json::to_string(&json!({ "orders": orders }))
            .expect("JSON")
            .replace(',', ", ")
            .replace(':', ": ");
        let done = match count {
            Some(n) => orders.len() >= n,
            None => text.len() >= 940,
        };
        if done {
            return text;
        }
    }
}

fn validation(dir: &std::path::Path, name: &str, schema: &Value) -> Validation {
    let path = dir.join(name);
    std::fs::write(&path, schema.to_string()).expect("schema file");
    let config: ValidationConfig =
        serde_json::from_value(json!({ "body_schema": path })).expect("config");
    Validation::new(&config).expect("schema")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u32 = args
        .next()
        .map_or(200_000, |n| n.parse().expect("ITERATIONS"));
    let orders = args.next().map(|n| n.parse().expect("ORDERS"));
    let dir = std::env::temp_dir().join(format!("portcullis-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let plan = validation(&dir, "plan.json", &schema());
    // The same schema with a keyword a plan does not read on the array (it changes nothing
    // here): validated by the full path.
    let mut wide = schema();
    wide["properties"]["orders"]["uniqueItems"] = json!(false);
    let full = validation(&dir, "full.json", &wide);
    let _ = std::fs::remove_dir_all(&dir);
    let text = Bytes::from(body(orders));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let check = |v: &Validation| {
        let started = Instant::now();
        for _ in 0..iterations {
            let req = Request::post("/orders")
                .header("content-type", "application/json")
                .body(Body::from(text.clone()))
                .expect("request");
            let checked = runtime.block_on(v.check(req, 1 << 20, Duration::from_secs(5)));
            assert!(checked.is_ok(), "the benchmark's body is valid");
        }
        started.elapsed().as_nanos() as f64 / f64::from(iterations)
    };
    let skip = || {
        let started = Instant::now();
        for _ in 0..iterations {
            let parsed: Result<serde::de::IgnoredAny, _> =
                serde_json::from_slice(std::hint::black_box(&text));
            assert!(parsed.is_ok());
        }
        started.elapsed().as_nanos() as f64 / f64::from(iterations)
    };
    println!(
        "{} bytes, {iterations} iterations; ns per body (three rounds)",
        text.len()
    );
    for round in 1..=3 {
        println!(
            "round {round}: plan {:.0}  full path {:.0}  serde_json skipping it {:.0}",
            check(&plan),
            check(&full),
            skip()
        );
    }
}
