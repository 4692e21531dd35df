#!/usr/bin/env bash
# Two builds side by side: an instance of each behind the same upstream, ROUNDS interleaved 3 s
# rounds of `wrk -t1 -c32` (the order alternating), req/s and the instance's CPU µs per request
# each round, then the medians and B/A. For a before/after of one change on this noisy machine.
#
#   bench/ab.sh BIN_A BIN_B [ROUNDS (10)] [bearer|public]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p portcullis-gateway --example upstream
A=$1; B=$2; R=${3:-10}; KIND=${4:-bearer}
tmp=$(mktemp -d /tmp/ab.XXXX); pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up=$(fp); "$target/release/examples/upstream" 127.0.0.1:$up & pids+=($!)
start() { # $1 bin $2 name -> sets port pid token
  local d="$tmp/$2"; mkdir -p "$d"
  cat > "$d/p.toml" <<T
data_dir = "$d/data"
[gateway]
access_log = false
[[routes]]
path = "/api/**"
kind = "api"
upstream = "http://127.0.0.1:$up"
[[routes]]
path = "/public/**"
kind = "public"
upstream = "http://127.0.0.1:$up"
[[policy]]
principal = "scope:bench/admin"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/admin/**"] }]
T
  "$1" --config "$d/p.toml" resource-server add bench --scope admin >/dev/null
  local s; s=$("$1" --config "$d/p.toml" --json client add B --id bench --confidential --scope bench/admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
  port=$(fp); "$1" --config "$d/p.toml" --log-level warn serve --listen "127.0.0.1:$port" > "$d/out" 2>&1 & pids+=($!); pid=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
  token=$(curl -fs -u "bench:$s" -d grant_type=client_credentials -d scope=bench/admin http://127.0.0.1:$port/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}
start "$A" a; pa=$port; ida=$pid; ta=$token
start "$B" b; pb=$port; idb=$pid; tb=$token
cpu() { awk '{ print $14 + $15 }' /proc/$1/stat; }
run() { # port pid token
  local url=http://127.0.0.1:$1/api/admin/x h=(-H "Authorization: Bearer $3")
  [[ $KIND == public ]] && { url=http://127.0.0.1:$1/public/x; h=(); }
  local c0=$(cpu $2); wrk -t1 -c32 -d3s "${h[@]}" "$url" > "$tmp/w"; local c1=$(cpu $2)
  local n=$(grep -oP '^\s*\K[0-9]+(?= requests in)' $tmp/w); local rps=$(grep -oP 'Requests/sec:\s*\K[0-9.]+' $tmp/w)
  python3 -c "print('%.0f %.2f' % ($rps, ($c1-$c0)*10000/$n))"
}
for i in $(seq $R); do
  if (( i % 2 )); then a=$(run $pa $ida $ta); b=$(run $pb $idb $tb); else b=$(run $pb $idb $tb); a=$(run $pa $ida $ta); fi
  echo "A $a  B $b"
done | tee "$tmp/res"
python3 - "$tmp/res" <<'P'
import sys,statistics as st
A=[];B=[]
for l in open(sys.argv[1]):
    p=l.split(); A.append((float(p[1]),float(p[2]))); B.append((float(p[4]),float(p[5])))
print('median req/s A %.0f B %.0f  B/A %.3f' % (st.median(x[0] for x in A), st.median(x[0] for x in B), st.median(x[0] for x in B)/st.median(x[0] for x in A)))
print('median CPU us A %.2f B %.2f  B/A %.3f' % (st.median(x[1] for x in A), st.median(x[1] for x in B), st.median(x[1] for x in B)/st.median(x[1] for x in A)))
print('ratio per round B/A req/s median %.3f' % st.median(b[0]/a[0] for a,b in zip(A,B)))
P
