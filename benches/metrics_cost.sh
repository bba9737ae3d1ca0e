#!/usr/bin/env bash
# Cost of metrics (issue 19): on one 3-node testnet, n1 is scraped (GET /metrics with the
# token, every 5 s) while n3 is not; both agents' CPU time and RSS are read from /proc over the
# same window. Holds the machine-wide testnet lock for the whole run.
#   benches/metrics_cost.sh [SECONDS]   (default 120)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-120}"
exec flock /run/lock/shoal-testnet.lock bash -c '
set -euo pipefail
secs="$1"
trap "testnet/down.sh >/dev/null 2>&1 || true" EXIT
testnet/up.sh 3 >/dev/null
run=testnet/run
token=$(cat $run/n1/data/admin-token)
pid_of() { cat "$run/$1/agent.pid"; }
ticks() { awk "{print \$14 + \$15}" "/proc/$1/stat"; }
rss_kib() { awk "/^VmRSS/ {print \$2}" "/proc/$1/status"; }
p1=$(pid_of n1); p3=$(pid_of n3)
sleep 20   # settle after start-up
a1=$(ticks "$p1"); a3=$(ticks "$p3"); start=$(date +%s.%N)
scrapes=0; bytes=0
end=$(( $(date +%s) + secs ))
while [ "$(date +%s)" -lt "$end" ]; do
  n=$(curl -sS --cacert $run/n1/data/tls/ca.crt -H "Authorization: Bearer $token" \
        "https://10.77.0.11:6443/metrics" | wc -c)
  scrapes=$((scrapes + 1)); bytes=$n
  sleep 5
done
b1=$(ticks "$p1"); b3=$(ticks "$p3"); stop=$(date +%s.%N)
wall=$(echo "$stop - $start" | bc -l)
printf "window %.0f s, %d scrapes of n1 (%d bytes each)\n" "$wall" "$scrapes" "$bytes"
printf "n1 (scraped every 5 s): CPU %.2f%% of a core, RSS %d KiB\n" "$(echo "($b1 - $a1) / $wall" | bc -l)" "$(rss_kib "$p1")"
printf "n3 (not scraped):       CPU %.2f%% of a core, RSS %d KiB\n" "$(echo "($b3 - $a3) / $wall" | bc -l)" "$(rss_kib "$p3")"
' _ "$secs"
