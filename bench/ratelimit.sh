#!/usr/bin/env bash
# Rate-limit accuracy under wrk: a public route limited by address to RATE per second with a
# burst of BURST, hammered by wrk (32 connections, one address) for DURATION seconds. The
# allowed count should be BURST + RATE × DURATION (±10 %); everything else is a 429.
#
#   bench/ratelimit.sh                 # RATE=1000 BURST=100 DURATION=10
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
BURST=${BURST:-100}
DURATION=${DURATION:-10}
command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
cargo build --release --quiet -p portcullis-gateway --example upstream
tmp=$(mktemp -d /tmp/portcullis-rlbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port)
"$target/release/examples/upstream" "127.0.0.1:$up_port" & pids+=($!)
pc_port=$(free_port)
cat > "$tmp/p.toml" <<TOML
data_dir = "$tmp/data"
[gateway]
access_log = false
[[routes]]
path = "/public/**"
kind = "public"
upstream = "http://127.0.0.1:$up_port"
[[routes.rate_limits]]
key = "address"
rate = $RATE
per = "1s"
burst = $BURST
TOML
"$target/release/portcullis" --config "$tmp/p.toml" --log-level warn serve --listen "127.0.0.1:$pc_port" > "$tmp/serve.out" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$pc_port/readyz" >/dev/null && break; sleep 0.1; done
wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$pc_port/public/x" > "$tmp/wrk.out"
total=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$tmp/wrk.out")
elapsed=$(grep -oP 'requests in \K[0-9.]+(?=s)' "$tmp/wrk.out")
refused=$(grep -oP 'Non-2xx or 3xx responses: \K[0-9]+' "$tmp/wrk.out" || echo 0)
allowed=$((total - refused))
awk -v a="$allowed" -v t="$total" -v e="$elapsed" -v r="$RATE" -v b="$BURST" 'BEGIN {
    expected = b + r * e
    printf "rate limit %d/s, burst %d, wrk -t1 -c32 for %.2f s: %d requests, %d allowed, expected %.0f: %.3f of expected (%.0f allowed/s)\n", r, b, e, t, a, expected, a / expected, a / e
}'
