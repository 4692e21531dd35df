#!/usr/bin/env bash
# Gateway benchmark: the same request, side by side in one run, through
#   direct            wrk → upstream
#   nginx plain       wrk → nginx, `proxy_pass` with its defaults → upstream      [if installed]
#   nginx keep-alive  wrk → nginx, upstream keep-alive (tuned) → upstream         [if installed]
#   hyper floor       wrk → the same hyper server + pooled client, no logic → upstream
#   portcullis-public wrk → portcullis, public route (no auth) → upstream
#   portcullis-bearer wrk → portcullis, api route, ES256 Bearer token, policy check → upstream
#   portcullis-cookie the same with the token in the access cookie
#   portcullis-post   the Bearer row as a POST with a 1 KB JSON body
#   portcullis-managed  that POST on a route with CORS + a rate limit + JSON Schema validation
#
#   bench/gateway.sh                # 10 s per target;  DURATION=30s for steadier numbers
#   bench/gateway.sh --install      # also apt-get install nginx haproxy first
#   BASELINE_BIN=old/portcullis bench/gateway.sh   # adds rows for another build, same run
#   PORTCULLIS_BIN=path bench/gateway.sh    # measures that build (e.g. scripts/build-pgo's)
#   PINGORA=1 bench/gateway.sh      # adds pingora's floor (bench/pingora-floor: the same no-logic
#                                   # proxy on pingora-proxy; needs cmake, built on first use)
#   ONLY='floor|nginx' bench/gateway.sh   # only the targets whose name matches (grep -E)
#
# With HAProxy installed, rows for HAProxy `jwt_verify` on every request: the same ES256 token
# against portcullis' published key (converted from the JWKS to PEM), and an RS256 token (its
# cheapest check; key and token made with openssl, as HAProxy checks only the signature).
#
#   UPSTREAM=hyper (default)  `examples/upstream.rs` (hyper, "200 ok")
#   UPSTREAM=nginx            an nginx serving a 1 KB JSON body, one worker
#
# Then the latency at half of portcullis' saturation rate (hey, constant rate, keep-alive):
# direct, nginx keep-alive and portcullis full auth, p50/p99, and p99 over direct
# (LATENCY=0 skips it). Loopback only, bounded in time. LATENCY_TOOL=oha uses `oha` instead
# (`cargo install oha`): one pacer for all connections, so requests arrive evenly spaced rather
# than in hey's bursts (each hey connection ticks on its own, all started together), and
# latencies counted from when each request was due (`--latency-correction`).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}   # targets run interleaved, ROUNDS times; the table shows each one's median
PEER_THREADS=${PEER_THREADS:-$(nproc)}   # nginx workers / HAProxy threads: peers at their best
UPSTREAM=${UPSTREAM:-hyper}
LATENCY=${LATENCY:-1}
LATENCY_ROUNDS=${LATENCY_ROUNDS:-$ROUNDS}   # interleaved rounds of the latency runs
LATENCY_TOOL=${LATENCY_TOOL:-hey}   # hey, or oha
if [[ "${1:-}" == "--install" ]]; then
    apt-get install -y -qq nginx haproxy wrk hey nghttp2-client >/dev/null
fi
command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
if [[ -z "${PORTCULLIS_BIN:-}" ]]; then
    cargo build --release --quiet
fi
cargo build --release --quiet -p portcullis-gateway --example upstream --example minproxy
BIN=${PORTCULLIS_BIN:-$target/release/portcullis}

tmp=$(mktemp -d /tmp/portcullis-gwbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

up_port=$(free_port)
if [[ "$UPSTREAM" == nginx ]]; then
    command -v nginx >/dev/null || { echo "UPSTREAM=nginx needs nginx: bench/gateway.sh --install" >&2; exit 1; }
    mkdir -p "$tmp/upstream"
    # About 1 KB of JSON: as many orders as fit.
    body=$(python3 -c '
import json
orders = []
while len(json.dumps({"orders": orders})) < 940:
    i = len(orders)
    orders.append({"id": i, "item": "widget-%03d" % i, "quantity": i % 7 + 1, "status": "shipped"})
print(json.dumps({"orders": orders}))')
    cat > "$tmp/upstream/nginx.conf" <<NGINX
worker_processes 1;
pid $tmp/upstream/nginx.pid;
error_log $tmp/upstream/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$up_port;
        location / { default_type application/json; return 200 '$body'; }
    }
}
NGINX
    nginx -c "$tmp/upstream/nginx.conf" -p "$tmp/upstream" -g 'daemon off;' & pids+=($!)
    sleep 0.5
    up_pid=$(pgrep -P $! | paste -sd, -)
    [[ $(curl -s "http://127.0.0.1:$up_port/x" | wc -c) -gt 900 ]] || { echo "upstream nginx did not start" >&2; exit 1; }
else
    "$target/release/examples/upstream" "127.0.0.1:$up_port" & pids+=($!)
    up_pid=$!
fi

# The 1 KB JSON body of the POST rows, and the schema the managed route checks it against.
post_body=$(python3 -c '
import json
orders = []
while len(json.dumps({"orders": orders})) < 940:
    i = len(orders)
    orders.append({"id": i, "item": "widget-%03d" % i, "quantity": i % 7 + 1, "status": "shipped"})
print(json.dumps({"orders": orders}))')
# The schema the managed route checks the POST body against (one file for the benchmarks, the
# PGO training and the validation tests).
cp bench/order.schema.json "$tmp/order.schema.json"
# Starts a portcullis from binary $1 with its own data in $tmp/$2; sets pc_port, pc_pid, token.
# $3 = managed: also the API-management route (settings an older build may not know).
start_portcullis() {
    local bin=$1 dir="$tmp/$2"
    mkdir -p "$dir"
    local managed=""
    [[ "${3:-}" == managed ]] && managed="
[[routes]]
path = \"/managed/**\"
kind = \"api\"
upstream = \"http://127.0.0.1:$up_port\"
[routes.cors]
origins = [\"https://app.example.com\"]
credentials = true
[[routes.rate_limits]]
key = \"client\"
rate = 10000000
per = \"1s\"
[[routes.validation]]
methods = [\"POST\"]
body_schema = \"$tmp/order.schema.json\"
"
    cat > "$dir/p.toml" <<TOML
data_dir = "$dir/data"
[gateway]
access_log = false          # nginx runs with access_log off too
[[routes]]
path = "/api/**"
kind = "api"
upstream = "http://127.0.0.1:$up_port"
[[routes]]
path = "/public/**"
kind = "public"
upstream = "http://127.0.0.1:$up_port"
$managed
[[policy]]
principal = "scope:bench/admin"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/admin/**", "/managed/**"] }]
TOML
    P() { "$bin" --config "$dir/p.toml" "$@"; }
    P resource-server add bench --scope admin >/dev/null
    local secret
    secret=$(P --json client add Bench --id bench --confidential --scope bench/admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
    pc_port=$(free_port)
    "$bin" --config "$dir/p.toml" --log-level warn serve --listen "127.0.0.1:$pc_port" > "$dir/serve.out" 2>&1 & pids+=($!)
    pc_pid=$!
    local base="http://localhost:$pc_port"
    for _ in $(seq 50); do curl -fs "$base/readyz" >/dev/null && break; sleep 0.1; done
    token=$(curl -fs -u "bench:$secret" -d grant_type=client_credentials -d scope=bench/admin "$base/oauth2/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$base/api/admin/x") == 200 ]] || { echo "setup failed: the token is not accepted" >&2; exit 1; }
}
# BASELINE_BIN=path/to/an/older/portcullis adds its rows to the same run (a before/after check).
if [[ -n "${BASELINE_BIN:-}" ]]; then
    start_portcullis "$BASELINE_BIN" baseline
    bl_port=$pc_port bl_pid=$pc_pid bl_token=$token
fi
start_portcullis "$BIN" current managed
base="http://localhost:$pc_port"
post() { # $1: url → status of the benchmark's POST
    curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -H 'Origin: https://app.example.com' --data-binary "$post_body" "$1"
}
[[ $(post "$base/managed/orders") == 200 ]] || { echo "setup failed: the managed route refuses the benchmark's POST" >&2; exit 1; }
[[ $(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data-binary '{"orders": 1}' "$base/managed/orders") == 400 ]] || { echo "setup failed: the managed route does not validate" >&2; exit 1; }
python3 - "$post_body" > "$tmp/post.lua" <<'PY'
import json, sys
print('wrk.method = "POST"')
print('wrk.body = ' + json.dumps(sys.argv[1]))
print('wrk.headers["Content-Type"] = "application/json"')
print('wrk.headers["Origin"] = "https://app.example.com"')
PY

HYPER_FLOOR="hyper floor: bare hyper proxy, no logic (examples/minproxy)"
NGINX_PLAIN="nginx plain proxy (defaults, $PEER_THREADS workers)"
NGINX_KEEPALIVE="nginx proxy + upstream keep-alive ($PEER_THREADS workers)"
HAPROXY="haproxy jwt_verify ES256 ($PEER_THREADS threads)"
HAPROXY_RS="haproxy jwt_verify RS256 ($PEER_THREADS threads)"
targets=("direct|http://127.0.0.1:$up_port/api/admin/x||$up_pid")
if command -v nginx >/dev/null; then
    # Two nginx configurations, PEER_THREADS workers each (all cores by default, access log off):
    #   plain      `proxy_pass` and nothing else, nginx's defaults (HTTP/1.0 to the upstream, a new
    #              connection per request). The gateway issue's reference: "nginx plain proxy
    #              ~16k req/s" on this machine class is this configuration.
    #   keep-alive the tuned form: an upstream block with `keepalive 64`, HTTP/1.1, `Connection ""`.
    ng_port=$(free_port)
    nk_port=$(free_port)
    mkdir -p "$tmp/nginx"
    cat > "$tmp/nginx/nginx.conf" <<NGINX
worker_processes $PEER_THREADS;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    upstream up { server 127.0.0.1:$up_port; keepalive 64; }
    server {
        listen 127.0.0.1:$ng_port;
        location / { proxy_pass http://127.0.0.1:$up_port; }
    }
    server {
        listen 127.0.0.1:$nk_port;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGINX
    nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" -g 'daemon off;' & pids+=($!)
    ng_master=$!
    sleep 0.5
    ng_pid=$(pgrep -P "$ng_master" | paste -sd, -)  # every worker (CPU is summed over them)
    targets+=("$NGINX_PLAIN|http://127.0.0.1:$ng_port/api/admin/x||$ng_pid")
    targets+=("$NGINX_KEEPALIVE|http://127.0.0.1:$nk_port/api/admin/x||$ng_pid")
fi
if command -v haproxy >/dev/null; then
    # The access-token key from the JWKS, as a PEM public key: SPKI prefix for P-256 + 04||X||Y.
    curl -fs "$base/.well-known/jwks.json" | python3 -c '
import base64, json, sys, textwrap
kid = sys.argv[1]
k = next(k for k in json.load(sys.stdin)["keys"] if k["kid"] == kid)
d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
der = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + d(k["x"]) + d(k["y"])
print("-----BEGIN PUBLIC KEY-----\n" + "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64)) + "\n-----END PUBLIC KEY-----")
' "$(python3 -c 'import base64,json,sys; h=sys.argv[1].split(".")[0]; print(json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["kid"])' "$token")" > "$tmp/es256.pem"
    # RS256: a 2048-bit key and a token signed with it (HAProxy checks the signature only).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rs256.key" 2>/dev/null
    openssl pkey -in "$tmp/rs256.key" -pubout -out "$tmp/rs256.pem"
    b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
    rs_signing_input="$(printf '{"alg":"RS256","typ":"JWT"}' | b64url).$(python3 -c 'import base64,sys; p=sys.argv[1].split(".")[1]; sys.stdout.write(p)' "$token")"
    rs_token="$rs_signing_input.$(printf '%s' "$rs_signing_input" | openssl dgst -sha256 -sign "$tmp/rs256.key" -binary | b64url)"
    hp_port=$(free_port)
    hr_port=$(free_port)
    cat > "$tmp/haproxy.cfg" <<HAPROXY
global
    nbthread $PEER_THREADS
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$hp_port
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny unless { var(txn.alg) -m str ES256 }
    http-request deny unless { var(txn.bearer),jwt_verify(txn.alg,"$tmp/es256.pem") -m int 1 }
    default_backend up
frontend fe_rs
    bind 127.0.0.1:$hr_port
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny unless { var(txn.alg) -m str RS256 }
    http-request deny unless { var(txn.bearer),jwt_verify(txn.alg,"$tmp/rs256.pem") -m int 1 }
    default_backend up
backend up
    http-reuse always
    server s1 127.0.0.1:$up_port
HAPROXY
    haproxy -f "$tmp/haproxy.cfg" -db > "$tmp/haproxy.log" 2>&1 & pids+=($!)
    hp_pid=$!
    sleep 0.5
    if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$hp_port/api/admin/x") == 200 ]]; then
        targets+=("$HAPROXY|http://127.0.0.1:$hp_port/api/admin/x|bearer|$hp_pid")
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $rs_token" "http://127.0.0.1:$hr_port/api/admin/x") == 200 ]] \
            && targets+=("$HAPROXY_RS|http://127.0.0.1:$hr_port/api/admin/x|bearer-rs|$hp_pid")
    else
        echo "haproxy: setup check failed; see $tmp/haproxy.log" >&2
    fi
fi
mp_port=$(free_port)
"$target/release/examples/minproxy" "127.0.0.1:$mp_port" "http://127.0.0.1:$up_port" & pids+=($!)
mp_pid=$!
targets+=("$HYPER_FLOOR|http://127.0.0.1:$mp_port/api/admin/x||$mp_pid")
PINGORA_FLOOR="pingora floor: bare pingora-proxy, no logic (bench/pingora-floor)"
if [[ "${PINGORA:-0}" != 0 ]]; then
    command -v cmake >/dev/null || { echo "PINGORA=1 needs cmake (pingora's zlib-ng): apt-get install cmake" >&2; exit 1; }
    CARGO_TARGET_DIR="$target/pingora-floor" cargo build --release --quiet --manifest-path bench/pingora-floor/Cargo.toml
    pf_port=$(free_port)
    "$target/pingora-floor/release/pingora-floor" "127.0.0.1:$pf_port" "127.0.0.1:$up_port" "$PEER_THREADS" > "$tmp/pingora.log" 2>&1 & pids+=($!)
    pf_pid=$!
    for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$pf_port/api/admin/x" && break; sleep 0.1; done
    targets+=("$PINGORA_FLOOR|http://127.0.0.1:$pf_port/api/admin/x||$pf_pid")
fi
targets+=("portcullis public route (no auth)|http://127.0.0.1:$pc_port/public/x||$pc_pid")
targets+=("portcullis Bearer ES256 + policy|http://127.0.0.1:$pc_port/api/admin/x|bearer|$pc_pid")
targets+=("portcullis cookie ES256 + policy|http://127.0.0.1:$pc_port/api/admin/x|cookie|$pc_pid")
targets+=("portcullis Bearer + policy, 1 KB POST|http://127.0.0.1:$pc_port/api/admin/x|post|$pc_pid")
targets+=("portcullis CORS + rate limit + validation, 1 KB POST|http://127.0.0.1:$pc_port/managed/orders|post|$pc_pid")
if [[ -n "${BASELINE_BIN:-}" ]]; then
    targets+=("baseline public route (no auth)|http://127.0.0.1:$bl_port/public/x||$bl_pid")
    targets+=("baseline Bearer ES256 + policy|http://127.0.0.1:$bl_port/api/admin/x|bearer-baseline|$bl_pid")
    targets+=("baseline cookie ES256 + policy|http://127.0.0.1:$bl_port/api/admin/x|cookie-baseline|$bl_pid")
fi

if [[ -n "${ONLY:-}" ]]; then
    kept=()
    for t in "${targets[@]}"; do [[ "${t%%|*}" =~ $ONLY ]] && kept+=("$t"); done
    targets=("${kept[@]}")
fi
echo "gateway benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, upstream $UPSTREAM, wrk -t1 -c$CONNS -d$DURATION, GET /api/admin/x, median of $ROUNDS interleaved rounds"
echo
declare -A rates p50s p99s bads cpus
# CPU time (user + system, in clock ticks of 10 ms) of the process doing the proxying: per
# request it depends far less on what else the machine runs than req/s does.
cpu_ticks() { # $1: pids separated by commas
    local total=0 p
    for p in ${1//,/ }; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
    echo "$total"
}
for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        IFS='|' read -r name url auth pid <<<"$t"
        hdr=()
        [[ "$auth" == bearer ]] && hdr=(-H "Authorization: Bearer $token")
        [[ "$auth" == cookie ]] && hdr=(-H "Cookie: __Host-portcullis-access=$token")
        [[ "$auth" == bearer-rs ]] && hdr=(-H "Authorization: Bearer $rs_token")
        [[ "$auth" == bearer-baseline ]] && hdr=(-H "Authorization: Bearer $bl_token")
        [[ "$auth" == cookie-baseline ]] && hdr=(-H "Cookie: __Host-portcullis-access=$bl_token")
        [[ "$auth" == post ]] && hdr=(-H "Authorization: Bearer $token" -s "$tmp/post.lua")
        before=$(cpu_ticks "$pid")
        wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "$url" > "$tmp/wrk.out"
        after=$(cpu_ticks "$pid")
        requests=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$tmp/wrk.out")
        cpus[$name]+="$(awk -v t=$((after - before)) -v n="$requests" 'BEGIN { printf "%.1f", t * 10000 / n }') "
        rates[$name]+="$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$tmp/wrk.out") "
        p50s[$name]+="$(grep -oP '^\s+50%\s+\K\S+' "$tmp/wrk.out") "
        p99s[$name]+="$(grep -oP '^\s+99%\s+\K\S+' "$tmp/wrk.out") "
        bads[$name]=$(( ${bads[$name]:-0} + $(grep -oP 'Non-2xx or 3xx responses: \K[0-9]+' "$tmp/wrk.out" || echo 0) ))
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "| target | req/s (median) | all rounds | p99 (median) | proxy CPU µs/request (median) | non-2xx |"
echo "|---|---:|---|---:|---:|---:|"
declare -A rate
for t in "${targets[@]}"; do
    IFS='|' read -r name _ _ _ <<<"$t"
    rate[$name]=$(echo "${rates[$name]}" | median)
    p99=$(echo "${p99s[$name]}" | sed 's/ms/e-3/g; s/us/e-6/g' | median)
    cpu=$(echo "${cpus[$name]}" | median)
    printf '| %s | %.0f | %s | %.2fms | %s | %s |\n' "$name" "${rate[$name]}" "$(echo ${rates[$name]} | tr ' ' '/')" "$(awk -v x="$p99" 'BEGIN { print x * 1000 }')" "$cpu" "${bads[$name]}"
done
echo
ratio() { # "n/a" when ONLY left either row out
    if [[ -z "${rate[$1]:-}" || -z "${rate[$2]:-}" ]]; then echo n/a; return; fi
    awk -v a="${rate[$1]}" -v b="${rate[$2]}" 'BEGIN { printf "%.2f", a / b }'
}
echo "full auth (Bearer) / no-auth route: $(ratio 'portcullis Bearer ES256 + policy' 'portcullis public route (no auth)')"
echo "full auth (Bearer) / hyper floor: $(ratio 'portcullis Bearer ES256 + policy' "$HYPER_FLOOR")"
echo "cookie / Bearer: $(ratio 'portcullis cookie ES256 + policy' 'portcullis Bearer ES256 + policy')"
echo "CORS + rate limit + validation (1 KB POST) / full auth GET: $(ratio 'portcullis CORS + rate limit + validation, 1 KB POST' 'portcullis Bearer ES256 + policy'), / full auth 1 KB POST: $(ratio 'portcullis CORS + rate limit + validation, 1 KB POST' 'portcullis Bearer + policy, 1 KB POST')"
if [[ -n "${BASELINE_BIN:-}" ]]; then
    echo "current / baseline, public: $(ratio 'portcullis public route (no auth)' 'baseline public route (no auth)'), Bearer: $(ratio 'portcullis Bearer ES256 + policy' 'baseline Bearer ES256 + policy'), cookie: $(ratio 'portcullis cookie ES256 + policy' 'baseline cookie ES256 + policy')"
fi
if [[ -n "${rate[$HAPROXY]:-}" ]]; then
    echo "full auth (Bearer) / HAProxy jwt_verify ES256: $(ratio 'portcullis Bearer ES256 + policy' "$HAPROXY")"
fi
if [[ -n "${rate[$HAPROXY_RS]:-}" ]]; then
    echo "full auth (Bearer) / HAProxy jwt_verify RS256: $(ratio 'portcullis Bearer ES256 + policy' "$HAPROXY_RS")"
fi
if [[ -n "${rate[$NGINX_PLAIN]:-}" ]]; then
    echo "full auth (Bearer) / nginx plain proxy: $(ratio 'portcullis Bearer ES256 + policy' "$NGINX_PLAIN")"
    echo "full auth (Bearer) / nginx with upstream keep-alive: $(ratio 'portcullis Bearer ES256 + policy' "$NGINX_KEEPALIVE")"
    echo "hyper floor / nginx with upstream keep-alive: $(ratio "$HYPER_FLOOR" "$NGINX_KEEPALIVE")"
fi
if [[ -n "${rate[$PINGORA_FLOOR]:-}" ]]; then
    echo "pingora floor / hyper floor: $(ratio "$PINGORA_FLOOR" "$HYPER_FLOOR"), / nginx with upstream keep-alive: $(ratio "$PINGORA_FLOOR" "$NGINX_KEEPALIVE")"
fi

# Latency at half of portcullis' saturation rate (constant rate with hey, keep-alive, CONNS
# connections): what a request pays for passing through, when the proxy is not the bottleneck.
if [[ "$LATENCY" != 0 && -n "${rate['portcullis Bearer ES256 + policy']:-}" ]] && command -v "$LATENCY_TOOL" >/dev/null; then
    half=$(awk -v r="${rate['portcullis Bearer ES256 + policy']}" 'BEGIN { printf "%d", r / 2 }')
    per_conn=$(awk -v r="$half" -v c="$CONNS" 'BEGIN { printf "%.1f", r / c }')
    if [[ "$LATENCY_TOOL" == oha ]]; then
        how="oha -c $CONNS -q $half -z $DURATION --latency-correction"
    else
        how="hey -c $CONNS -q $per_conn -z $DURATION"
    fi
    echo
    echo "latency at $half req/s (half of portcullis full auth's median), $how, median of $LATENCY_ROUNDS interleaved rounds (over direct: the median of each round's difference):"
    echo
    echo "| target | req/s | p50 | p99 | p99 over direct | p99 of each round |"
    echo "|---|---:|---:|---:|---:|---|"
    lat_targets=("direct|http://127.0.0.1:$up_port/api/admin/x|")
    [[ -n "${rate[$NGINX_KEEPALIVE]:-}" ]] && lat_targets+=("$NGINX_KEEPALIVE|http://127.0.0.1:$nk_port/api/admin/x|")
    lat_targets+=("portcullis Bearer ES256 + policy|http://127.0.0.1:$pc_port/api/admin/x|Authorization: Bearer $token")
    declare -A l_rate l_p50 l_p99 l_over
    for round in $(seq "$LATENCY_ROUNDS"); do
        direct_p99=""
        for t in "${lat_targets[@]}"; do
            IFS='|' read -r name url header <<<"$t"
            if [[ "$LATENCY_TOOL" == oha ]]; then
                args=(-c "$CONNS" -q "$half" -z "$DURATION" --latency-correction --no-tui --output-format json)
                [[ -n "$header" ]] && args+=(-H "$header")
                # Written in hey's words, so one parser reads either.
                oha "${args[@]}" "$url" | python3 -c '
import json, sys
d = json.load(sys.stdin); p = d["latencyPercentiles"]
print("Requests/sec: %f" % d["summary"]["requestsPerSec"])
print("50%% in %f secs" % p["p50"]); print("99%% in %f secs" % p["p99"])
if "200" in d.get("statusCodeDistribution", {}): print("[200]")' > "$tmp/hey.out"
            else
                args=(-c "$CONNS" -q "$per_conn" -z "$DURATION")
                [[ -n "$header" ]] && args+=(-H "$header")
                hey "${args[@]}" "$url" > "$tmp/hey.out"
            fi
            grep -q '\[200\]' "$tmp/hey.out" || { echo "  (no 200 answers from $name)"; }
            p99=$(grep -oP '99% in \K[0-9.]+' "$tmp/hey.out")
            [[ -z "$direct_p99" ]] && direct_p99=$p99
            l_rate[$name]+="$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$tmp/hey.out") "
            l_p50[$name]+="$(grep -oP '50% in \K[0-9.]+' "$tmp/hey.out") "
            l_p99[$name]+="$p99 "
            l_over[$name]+="$(awk -v b="$p99" -v d="$direct_p99" 'BEGIN { print b - d }') "
        done
    done
    for t in "${lat_targets[@]}"; do
        IFS='|' read -r name _ _ <<<"$t"
        awk -v n="$name" -v g="$(echo "${l_rate[$name]}" | median)" -v a="$(echo "${l_p50[$name]}" | median)" \
            -v b="$(echo "${l_p99[$name]}" | median)" -v o="$(echo "${l_over[$name]}" | median)" \
            -v all="$(for x in ${l_p99[$name]}; do awk -v x="$x" 'BEGIN { printf "%.2f ", x * 1000 }'; done)" \
            'BEGIN { sub(/ $/, "", all); gsub(/ /, "/", all); printf "| %s | %.0f | %.2fms | %.2fms | %+.2fms | %s |\n", n, g, a * 1000, b * 1000, o * 1000, all }'
    done
fi
