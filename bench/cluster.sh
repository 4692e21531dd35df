#!/usr/bin/env bash
# Cluster benchmark: one node, then three nodes behind HAProxy, all on one private PostgreSQL on
# this machine, side by side in one run:
#   client_credentials      POST /oauth2/token (bench/cc.lua)
#   refresh_token rotation  POST /oauth2/token, every answer's new token used next (bench/refresh.lua)
#   gateway full auth       GET /api/admin/x with an ES256 Bearer token and a policy check
# Each row: req/s, the CPU the portcullis processes and the PostgreSQL processes spent per request
# (µs, user + system from /proc), and the errors wrk saw.
#
#   bench/cluster.sh                   # 10 s per row;  DURATION=30s for steadier numbers
#   bench/cluster.sh --install         # also apt-get install haproxy postgresql wrk first
#
# On a 2-core machine the three nodes, HAProxy, PostgreSQL, the upstream and wrk share two
# cores: "scaling" here says what a cluster costs, not what three machines would gain.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
if [[ "${1:-}" == "--install" ]]; then
    apt-get install -y -qq haproxy postgresql wrk >/dev/null
fi
for tool in wrk haproxy; do
    command -v "$tool" >/dev/null || { echo "install $tool: bench/cluster.sh --install" >&2; exit 1; }
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[[ -x "$pg_bin/initdb" ]] || { echo "install postgresql: bench/cluster.sh --install" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
cargo build --release --quiet -p portcullis-gateway --example upstream
BIN="$target/release/portcullis"

tmp=$(mktemp -d /tmp/portcullis-cluster.XXXXXX)
chmod 755 "$tmp"
pids=()
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    as_pg "$pg_bin/pg_ctl" -D "$tmp/pg" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PostgreSQL with its defaults (fsync on), on a free loopback port.
pg_port=$(free_port)
mkdir -p "$tmp/pg" && [[ $(id -u) -eq 0 ]] && chown postgres "$tmp" "$tmp/pg"
as_pg "$pg_bin/initdb" -D "$tmp/pg" -A trust -U portcullis -E UTF8 >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $tmp -c max_connections=200" start >/dev/null
pg_pids() { pgrep -d, -f "postgres.*$tmp/pg" || true; pgrep -d, -P "$(head -1 "$tmp/pg/postmaster.pid")" || true; }

up_port=$(free_port)
"$target/release/examples/upstream" "127.0.0.1:$up_port" & pids+=($!)
front=$(free_port)
cat > "$tmp/p.toml" <<TOML
data_dir = "$tmp/data"
[store]
url = "postgres://portcullis@127.0.0.1:$pg_port/postgres"
max_connections = 16
[idp]
issuer = "http://localhost:$front"
signin_rate_per_address = 1000000
refresh_grace = "0s"
[gateway]
access_log = false
[[routes]]
path = "/api/**"
kind = "api"
upstream = "http://127.0.0.1:$up_port"
[[policy]]
principal = "scope:orders/read"
statements = [{ effect = "allow", methods = ["GET"], paths = ["/api/admin/**"] }]
TOML
P() { "$BIN" --config "$tmp/p.toml" "$@"; }
PW=bench-passphrase-that-is-long
P group add user >/dev/null
printf '%s' "$PW" | P user add bench --group user --password-stdin >/dev/null
P resource-server add orders --scope read >/dev/null
secret=$(P --json client add Backend --id backend --confidential --scope orders/read | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
P client add "SPA" --id spa --redirect-uri http://localhost:3000/callback --scope openid >/dev/null
basic=$(printf 'backend:%s' "$secret" | base64 -w0)

start_node() { # port → pid
    "$BIN" --config "$tmp/p.toml" --log-level warn serve --listen "127.0.0.1:$1" >> "$tmp/nodes.out" 2>&1 &
    pids+=($!)
    echo $! > "$tmp/node-$1.pid"
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done
    echo "node on $1 did not start: $(tail -5 "$tmp/nodes.out")" >&2; exit 1
}
ports=("$(free_port)" "$(free_port)" "$(free_port)")
for p in "${ports[@]}"; do start_node "$p"; done
cat > "$tmp/haproxy.cfg" <<HAPROXY
global
    nbthread $(nproc)
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$front
    default_backend nodes
backend nodes
    balance roundrobin
    http-reuse always
    option httpchk GET /readyz
    default-server inter 1s fall 2 rise 2
    server n0 127.0.0.1:${ports[0]} check
    server n1 127.0.0.1:${ports[1]} check
    server n2 127.0.0.1:${ports[2]} check
HAPROXY
haproxy -f "$tmp/haproxy.cfg" -db > "$tmp/haproxy.out" 2>&1 & pids+=($!)
hp_pid=$!
sleep 2.5

ticks() { # pids separated by commas → CPU ticks
    local total=0 p
    for p in ${1//,/ }; do [[ -r "/proc/$p/stat" ]] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
    echo "$total"
}
hz=$(getconf CLK_TCK)
row() { # name base-url nodes(pids) wrk-args...
    local name=$1 base=$2 nodes=$3; shift 3
    local n0 g0 n1 g1 reqs
    n0=$(ticks "$nodes"); g0=$(ticks "$(pg_pids | paste -sd, -)")
    "$@" "$base" > "$tmp/wrk.out"
    n1=$(ticks "$nodes"); g1=$(ticks "$(pg_pids | paste -sd, -)")
    reqs=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$tmp/wrk.out")
    awk -v n="$name" -v r="$reqs" -v rate="$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$tmp/wrk.out")" \
        -v nc=$((n1 - n0)) -v gc=$((g1 - g0)) -v hz="$hz" -v e="$(grep -oP 'Non-2xx or 3xx responses: \K[0-9]+' "$tmp/wrk.out" || echo 0)" \
        'BEGIN { printf "| %-44s | %8.0f | %8.1f | %8.1f | %6d |\n", n, rate, nc * 1e6 / hz / r, gc * 1e6 / hz / r, e }'
}
token=$(curl -fs -u "backend:$secret" -d grant_type=client_credentials -d scope=orders/read "http://127.0.0.1:$front/oauth2/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
W=(wrk -t1 -c"$CONNS" -d"$DURATION" --latency)

echo "portcullis cluster, $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $("$pg_bin/pg_ctl" --version | grep -oP '[0-9.]+$'), wrk -t1 -c$CONNS -d$DURATION"
echo
echo "| row | req/s | portcullis CPU µs/req | PostgreSQL CPU µs/req | errors |"
echo "|---|---:|---:|---:|---:|"
one="http://127.0.0.1:${ports[0]}"
all="$(cat "$tmp"/node-*.pid | paste -sd, -)"
first="$(cat "$tmp/node-${ports[0]}.pid")"
for setup in one three; do
    if [[ $setup == one ]]; then base=$one nodes=$first label="1 node"; else base="http://127.0.0.1:$front" nodes=$all label="3 nodes + HAProxy"; fi
    BASIC="$basic" row "$label: client_credentials" "$base/oauth2/token" "$nodes" env BASIC="$basic" "${W[@]}" -s bench/cc.lua
    python3 bench/idp_setup.py tokens "$one" spa bench "$PW" $((CONNS * 2)) > "$tmp/tokens"
    row "$label: refresh_token rotation" "$base/oauth2/token" "$nodes" env TOKENS_FILE="$tmp/tokens" THREADS=1 CLIENT_ID=spa "${W[@]}" -s bench/refresh.lua
    row "$label: gateway Bearer ES256 + policy" "$base/api/admin/x" "$nodes" "${W[@]}" -H "Authorization: Bearer $token"
done
echo
echo "HAProxy CPU is not in the portcullis column (pid $hp_pid)."
