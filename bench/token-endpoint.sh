#!/usr/bin/env bash
# Token-endpoint benchmark against the real release binary on SQLite.
#
#   bench/token-endpoint.sh            # 10 s per scenario
#   DURATION=30s bench/token-endpoint.sh
#   PORTCULLIS_BIN=old/portcullis bench/token-endpoint.sh   # another build (before/after runs)
#
# Reports, per scenario, wrk's req/s and latency, and req/s per core of server CPU: requests
# divided by the CPU seconds the server process used (user + system, from /proc), so the
# figure does not depend on how much of the shared machine wrk took.
# Needs: wrk (Debian package `wrk`), python3. Loopback only; every loop is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
if [[ -n "${PORTCULLIS_BIN:-}" ]]; then
    BIN=$PORTCULLIS_BIN
else
    cargo build --release --quiet
    BIN="$target/release/portcullis"
fi

tmp=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
printf 'data_dir = "%s/data"\n[idp]\nsignin_rate_per_address = 100000\n' "$tmp" > "$tmp/p.toml"
P() { "$BIN" --config "$tmp/p.toml" "$@"; }
PW=bench-passphrase-that-is-long
P group add user >/dev/null
printf '%s' "$PW" | P user add bench --group user --password-stdin >/dev/null
P resource-server add orders --scope read >/dev/null
secret=$(P --json client add Backend --id backend --confidential --scope orders/read | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
P client add "SPA ES256" --id spa-es --redirect-uri http://localhost:3000/callback --scope openid --id-token-alg ES256 >/dev/null
P client add "SPA RS256" --id spa-rs --redirect-uri http://localhost:3000/callback --scope openid >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" --config "$tmp/p.toml" --log-level warn serve --listen "127.0.0.1:$port" > "$tmp/serve.out" 2>&1 &
pid=$!
base="http://localhost:$port"
for _ in $(seq 50); do curl -fs "$base/readyz" >/dev/null && break; sleep 0.1; done

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
report() { # name wrk-output cpu-ticks
    local reqs rate p50 p99 errors
    reqs=$(grep -oP '^\s*\K[0-9]+(?= requests in)' "$2")
    rate=$(grep -oP 'Requests/sec:\s+\K[0-9.]+' "$2")
    p50=$(grep -oP '^\s+50%\s+\K\S+' "$2")
    p99=$(grep -oP '^\s+99%\s+\K\S+' "$2")
    errors=$(grep -oP 'Non-2xx or 3xx responses: \K[0-9]+' "$2" || echo 0)
    awk -v n="$1" -v r="$reqs" -v rate="$rate" -v t="$3" -v hz="$ticks" -v p50="$p50" -v p99="$p99" -v e="$errors" \
        'BEGIN { printf "| %-34s | %8.0f | %9.0f | %7s | %7s | %6d |\n", n, rate, r / (t / hz), p50, p99, e }'
}
scenario() { # name script [env...]
    local name=$1 script=$2; shift 2
    local c0 c1
    c0=$(cpu)
    env "$@" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "bench/$script" "$base/oauth2/token" > "$tmp/wrk.out"
    c1=$(cpu)
    report "$name" "$tmp/wrk.out" $((c1 - c0))
}

echo "portcullis token endpoint, $(date -u +%Y-%m-%d), $(nproc) cores, wrk -t1 -c$CONNS -d$DURATION, SQLite"
echo
echo "| scenario                           |    req/s | req/s per core | p50 | p99 | errors |"
echo "|---|---:|---:|---:|---:|---:|"
basic=$(printf 'backend:%s' "$secret" | base64 -w0)
scenario "client_credentials" cc.lua BASIC="$basic"
for client in spa-es spa-rs; do
    python3 bench/idp_setup.py tokens "$base" "$client" bench "$PW" $((CONNS * 2)) > "$tmp/tokens-$client"
    scenario "refresh_token rotation ($client)" refresh.lua TOKENS_FILE="$tmp/tokens-$client" THREADS=1 CLIENT_ID="$client"
done

# 50 concurrent password sign-ins while client_credentials is measured.
c0=$(cpu)
BASIC="$basic" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s bench/cc.lua "$base/oauth2/token" > "$tmp/wrk.out" &
wrk_pid=$!
sleep 1
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm_before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
python3 bench/idp_setup.py burst "$base" spa-rs bench "$PW" 50 > "$tmp/burst.out"
wait $wrk_pid
c1=$(cpu)
report "client_credentials during 50 sign-ins" "$tmp/wrk.out" $((c1 - c0))
hwm_first=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
# A second and third burst show whether memory keeps growing or stays bounded.
python3 bench/idp_setup.py burst "$base" spa-rs bench "$PW" 50 >> "$tmp/burst.out"
python3 bench/idp_setup.py burst "$base" spa-rs bench "$PW" 50 >> "$tmp/burst.out"
echo
cat "$tmp/burst.out"
echo "server memory: before the bursts RSS ${rss_before} kB (peak so far ${hwm_before} kB); peak after the first burst ${hwm_first} kB, after three $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") kB"
