#!/usr/bin/env bash
# Memory of the serving process (VmRSS, and its anonymous and file-backed parts):
#   idle       a fresh instance, 15 s after it is ready (the allocator has returned start-up memory)
#   sessions   after SESSIONS (default 100000) distinct access tokens, each presented once in the
#              access cookie and held in the gateway's caches (bench/sessions.py)
#   soak       every 30 s during SOAK (default 10m) of wrk load through the gateway, one token per
#              connection round-robin over a set of 1000 (bench/tokens.lua)
#
#   bench/memory.sh                          # all three
#   SOAK=0 bench/memory.sh                   # no soak
#   SESSIONS=0 SOAK=0 bench/memory.sh        # idle only
#   PORTCULLIS_BIN=path bench/memory.sh      # another build
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-100000}
SOAK=${SOAK:-10m}
target=${CARGO_TARGET_DIR:-target}
if [[ -z "${PORTCULLIS_BIN:-}" ]]; then
    cargo build --release --quiet
fi
cargo build --release --quiet -p portcullis-gateway --example upstream
BIN=${PORTCULLIS_BIN:-$target/release/portcullis}

tmp=$(mktemp -d /tmp/portcullis-membench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mem() { # $1: pid → "VmRSS RssAnon RssFile" in MB
    awk '/^(VmRSS|RssAnon|RssFile):/ { printf "%.1f ", $2 / 1024 }' "/proc/$1/status"
}
row() { # $1: label, $2: pid
    read -r rss anon file <<<"$(mem "$2")"
    printf '| %s | %s | %s | %s |\n' "$1" "$rss" "$anon" "$file"
}

up_port=$(free_port)
"$target/release/examples/upstream" "127.0.0.1:$up_port" & pids+=($!)
cat > "$tmp/p.toml" <<TOML
data_dir = "$tmp/data"
[gateway]
access_log = false
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
port=$(free_port)
"$BIN" --config "$tmp/p.toml" --log-level warn serve --listen "127.0.0.1:$port" > "$tmp/serve.out" 2>&1 & pids+=($!)
pid=$!
base="http://localhost:$port"
for _ in $(seq 50); do curl -fs "$base/readyz" >/dev/null && break; sleep 0.1; done
sleep 15

echo "| state | VmRSS MB | anonymous MB | file-backed MB |"
echo "|---|---:|---:|---:|"
row "idle (15 s after ready)" "$pid"

if (( SESSIONS > 0 )); then
    start=$(date +%s)
    python3 bench/sessions.py "$base" bench "$secret" "$SESSIONS" __Host-portcullis-access
    row "after $SESSIONS sessions ($(( $(date +%s) - start )) s)" "$pid"
    sleep 15
    row "… 15 s later" "$pid"
fi

if [[ "$SOAK" != 0 ]]; then
    command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
    for _ in $(seq 1000); do
        curl -fs -u "bench:$secret" -d grant_type=client_credentials -d scope=bench/admin "$base/oauth2/token" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
    done > "$tmp/tokens"
    TOKENS="$tmp/tokens" wrk -t1 -c32 -d "$SOAK" -s bench/tokens.lua "$base/api/admin/x" > "$tmp/wrk.out" &
    wrk_pid=$!
    seconds=0
    while kill -0 "$wrk_pid" 2>/dev/null; do
        sleep 30
        seconds=$((seconds + 30))
        kill -0 "$wrk_pid" 2>/dev/null && row "soak, ${seconds} s" "$pid"
    done
    wait "$wrk_pid"
    grep -E "Requests/sec|Non-2xx|Socket errors" "$tmp/wrk.out" | sed 's/^/    /'
    row "soak done" "$pid"
fi
