#!/usr/bin/env bash
# TLS benchmark: portcullis and nginx with the same ECDSA P-256 certificate, side by side.
#   handshakes   wrk with `Connection: close`: every request is a new TCP connection and a full
#                TLS handshake (wrk does not resume sessions), GET of a tiny answer
#   keep-alive   HTTPS keep-alive through each proxy to the same upstream: nginx plain proxying
#                (upstream keep-alive, 2 workers), portcullis with full authorization (ES256
#                Bearer token, policy)
#   http2        the same over HTTP/2 with h2load (-c CONNS, -m H2_STREAMS streams each); nginx
#                terminates HTTP/2 and proxies HTTP/1.1 with upstream keep-alive, as portcullis does
#
#   bench/tls.sh                 # 10 s per target; DURATION=30s ROUNDS=3 for steadier numbers
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
PEER_THREADS=${PEER_THREADS:-$(nproc)}
H2_STREAMS=${H2_STREAMS:-4}
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v h2load >/dev/null \
    || { echo "needs wrk, nginx and h2load: bench/gateway.sh --install" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
cargo build --release --quiet -p portcullis-gateway --example upstream
BIN="$target/release/portcullis"

tmp=$(mktemp -d /tmp/portcullis-tlsbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One ECDSA P-256 certificate for both, for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

up_port=$(free_port)
"$target/release/examples/upstream" "127.0.0.1:$up_port" & pids+=($!)

pc_port=$(free_port)
cat > "$tmp/p.toml" <<TOML
data_dir = "$tmp/data"
[gateway]
access_log = false
[[server.certificates]]
chain = "$tmp/cert.pem"
key = "$tmp/key.pem"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "http://127.0.0.1:$up_port"
[[policy]]
principal = "scope:bench/admin"
statements = [{ effect = "allow", methods = ["GET"], paths = ["/api/admin/**"] }]
TOML
P() { "$BIN" --config "$tmp/p.toml" "$@"; }
P resource-server add bench --scope admin >/dev/null
secret=$(P --json client add Bench --id bench --confidential --scope bench/admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
"$BIN" --config "$tmp/p.toml" --log-level warn serve --listen "127.0.0.1:$pc_port" > "$tmp/serve.out" 2>&1 & pids+=($!)
pc_pid=$!
base="https://localhost:$pc_port"
for _ in $(seq 50); do curl -fsk "$base/readyz" >/dev/null && break; sleep 0.1; done
token=$(curl -fsk -u "bench:$secret" -d grant_type=client_credentials -d scope=bench/admin "$base/oauth2/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
[[ $(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$base/api/admin/x") == 200 ]] || { echo "setup failed" >&2; exit 1; }

ng_port=$(free_port)
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<NGINX
worker_processes $PEER_THREADS;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    # At its best: no cap on requests per connection (the default 1000 ends h2load's
    # connections, which it does not reopen).
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$up_port; keepalive 64; }
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    server {
        listen 127.0.0.1:$ng_port ssl http2;
        ssl_certificate $tmp/cert.pem;
        ssl_certificate_key $tmp/key.pem;
        location = /healthz { return 200 'ok'; }
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
NGINX
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" -g 'daemon off;' & pids+=($!)
ng_master=$!
sleep 0.5
ng_pid=$(pgrep -P "$ng_master" | paste -sd, -)

cpu_ticks() { local total=0 p; for p in ${1//,/ }; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$total"; }
targets=(
    "nginx: new TLS handshake per request (2 workers)|https://localhost:$ng_port/healthz|close|$ng_pid"
    "portcullis: new TLS handshake per request|https://localhost:$pc_port/healthz|close|$pc_pid"
    "nginx: HTTPS keep-alive, plain proxy (2 workers)|https://localhost:$ng_port/api/admin/x||$ng_pid"
    "portcullis: HTTPS keep-alive, full auth|https://localhost:$pc_port/api/admin/x|bearer|$pc_pid"
    "nginx: HTTP/2, plain proxy (2 workers)|https://localhost:$ng_port/api/admin/x|h2|$ng_pid"
    "portcullis: HTTP/2, full auth|https://localhost:$pc_port/api/admin/x|h2 bearer|$pc_pid"
)
declare -A rates cpus
for _ in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
        IFS='|' read -r name url mode pid <<<"$t"
        hdr=()
        [[ "$mode" == close ]] && hdr=(-H "Connection: close")
        [[ "$mode" == bearer ]] && hdr=(-H "Authorization: Bearer $token")
        [[ "$mode" == "h2 bearer" ]] && hdr=(-H "Authorization: Bearer $token")
        before=$(cpu_ticks "$pid")
        if [[ "$mode" == h2* ]]; then
            h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"${DURATION%s}" "${hdr[@]}" "$url" > "$tmp/h2.out"
            grep -q 'Application protocol: h2' "$tmp/h2.out" || { cat "$tmp/h2.out" >&2; exit 1; }
            requests=$(grep -oP 'requests: \d+ total, \d+ started, \K\d+(?= done)' "$tmp/h2.out")
            rate=$(grep -oP 'finished in [0-9.]+s, \K[0-9.]+(?= req/s)' "$tmp/h2.out")
            ok=$(grep -oP 'status codes: \K\d+(?= 2xx)' "$tmp/h2.out")
            # Requests cut off by the end of the run are not answered; any other non-2xx is reported.
            (( requests - ok <= requests / 1000 )) || { echo "$name: only $ok of $requests answered 2xx" >&2; cat "$tmp/h2.out" >&2; exit 1; }
            (( requests == ok )) || echo "note: $name: $((requests - ok)) of $requests not answered 2xx" >&2
        else
            wrk -t1 -c"$CONNS" -d"$DURATION" "${hdr[@]}" "$url" > "$tmp/wrk.out"
            requests=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$tmp/wrk.out")
            rate=$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$tmp/wrk.out")
        fi
        after=$(cpu_ticks "$pid")
        rates[$name]+="$rate "
        cpus[$name]+="$(awk -v t=$((after - before)) -v n="$requests" 'BEGIN { printf "%.1f", t * 10000 / n }') "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "TLS benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, ECDSA P-256, wrk -t1 -c$CONNS -d$DURATION (HTTP/2: h2load -t1 -c$CONNS -m$H2_STREAMS), median of $ROUNDS rounds"
echo
echo "| target | req/s (median) | all rounds | CPU µs/request |"
echo "|---|---:|---|---:|"
declare -A rate
for t in "${targets[@]}"; do
    IFS='|' read -r name _ _ _ <<<"$t"
    rate[$name]=$(echo "${rates[$name]}" | median)
    printf '| %s | %.0f | %s | %s |\n' "$name" "${rate[$name]}" "$(echo ${rates[$name]} | tr ' ' '/')" "$(echo "${cpus[$name]}" | median)"
done
echo
ratio() { awk -v a="${rate[$1]}" -v b="${rate[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
echo "handshakes, portcullis / nginx: $(ratio "portcullis: new TLS handshake per request" "nginx: new TLS handshake per request (2 workers)")"
echo "HTTPS keep-alive, portcullis full auth / nginx plain proxy: $(ratio "portcullis: HTTPS keep-alive, full auth" "nginx: HTTPS keep-alive, plain proxy (2 workers)")"
echo "HTTP/2, portcullis full auth / nginx plain proxy: $(ratio "portcullis: HTTP/2, full auth" "nginx: HTTP/2, plain proxy (2 workers)")"
