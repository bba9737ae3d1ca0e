#!/usr/bin/env bash
# Cluster benchmarks: change propagation, failure detection after kill -9 (with Serf side by side),
# false deaths at idle, idle cost of an agent. Loopback agents first, then the netns testnet, where
# the workload benchmarks follow: pod start (beside bare runc), failover of a Deployment after
# kill -9 of a node, a burst of pods, probe overhead (100 pods on one agent), Job throughput beside
# bare pods, a DaemonSet roll-out, local volume I/O beside the host directory; then the image
# benchmarks: pull + unpack from a loopback registry beside skopeo + umoci, and the registry egress
# when 5 testnet nodes start a new image;
# Service load balancing: ClusterIP vs pod IP (wrk, iperf3) and rule update cost with 10/100/1,000
# Services in namespaces of its own, endpoint change → rules on every testnet node. Last, the cost
# of one exec into a container (exec probes): runc exec, nsenter and shoal's direct join.
#
#   benches/run.sh [quick|full]      quick ≤ 10 min (default), full ≤ 40 min
#
# Environment:
#   TESTNET=auto|0|force   auto (default): use the netns testnet when root and no testnet is up
#                          (never tears down somebody else's); 0: loopback only; force: take it over
#   FALSE_DEATH_MIN=N      minutes of idle watching for false deaths (quick 2, full 10)
#   RECORD=0|1             append the report to docs/benchmarks.md (full: 1, quick: 0)
#   KEEP=1                 keep the scratch dir (data dirs, agent logs) for inspection
#   WORKLOADS_ONLY=1       only issue 3's benchmarks (testnet: pod start, failover, burst; scheduler core)
#   IMAGES_ONLY=1          only issue 4's benchmarks (loopback registry: pull + unpack beside skopeo +
#                          umoci; testnet: registry egress when 5 nodes start the same new image)
#
# Every process it starts is tracked by pid (the bench writes a pid file per cluster) and killed
# by pid on exit; the testnet, when this script brought it up, is torn down with testnet/down.sh.
set -euo pipefail

MODE="${1:-quick}"
case "$MODE" in quick | full) ;; *) echo "usage: benches/run.sh [quick|full]" >&2; exit 64 ;; esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ "$MODE" = quick ]; then
  PROP_WRITES=100; KILLS=5; TN_KILLS=3; IDLE_SECS=20; FALSE_DEATH_MIN="${FALSE_DEATH_MIN:-2}"; RECORD="${RECORD:-0}"
  POD_STARTS=20; FAILOVER_ROUNDS=3; BURST_PODS=100; JOB_COMPLETIONS=100; JOB_ROUNDS=1; DS_ROUNDS=2; IO_RUNS=3
  PULL_RUNS=5; EGRESS_ROUNDS=1; PROXY_ROUNDS=10; PROBE_SECS=10
else
  PROP_WRITES=200; KILLS=20; TN_KILLS=10; IDLE_SECS=60; FALSE_DEATH_MIN="${FALSE_DEATH_MIN:-10}"; RECORD="${RECORD:-1}"
  POD_STARTS=50; FAILOVER_ROUNDS=8; BURST_PODS=300; JOB_COMPLETIONS=500; JOB_ROUNDS=3; DS_ROUNDS=5; IO_RUNS=5
  PULL_RUNS=9; EGRESS_ROUNDS=3; PROXY_ROUNDS=30; PROBE_SECS=20
fi
TESTNET="${TESTNET:-auto}"

WORK="$(mktemp -d /tmp/shoal-bench.XXXXXX)"
REPORT="$WORK/report.md"
BENCH_PID=""
TESTNET_OURS=0

# docker-registry processes whose config is in our scratch dir (the images bench's), by pid.
kill_registries() {
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q "^docker-registry serve $WORK/"; then kill -9 "${p#/proc/}" 2>/dev/null; fi
  done
  return 0
}

cleanup() {
  set +e
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then kill -9 "$BENCH_PID"; wait "$BENCH_PID" 2>/dev/null; fi
  kill_registries
  # Agents the bench started, by pid, only if the pid still runs something from our scratch dir.
  for f in $(find "$WORK" -name pids 2>/dev/null); do
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$WORK"; then kill -9 "$pid"; fi
    done <"$f"
  done
  # Containers of the bare-runc baseline (pod-start), in private runc roots under the scratch dir.
  for root in "$WORK"/*/pod-start/bundle/runc-root; do
    [ -d "$root" ] || continue
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      runc --root "$root" kill "$id" KILL 2>/dev/null; runc --root "$root" delete --force "$id" 2>/dev/null
    done
  done
  if [ "$TESTNET_OURS" = 1 ]; then testnet/down.sh >/dev/null 2>&1; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "scratch kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "[bench $(date +%T)] $*" >&2; }

# --- build (release only; the target dir is shared, cargo waits for its lock) -------------------
if ! command -v jq >/dev/null 2>&1; then
  say "installing jq (apt-get)"
  apt-get install -y jq >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y jq >/dev/null 2>&1; } || { echo "jq is needed (apt-get install jq)" >&2; exit 1; }
fi
say "building (cargo build --release)"
cargo build --release
CLUSTER_EXE="$(cargo build --release --bench cluster --message-format=json 2>"$WORK/build.log" |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "cluster") | .executable' | tail -1)" || true
[ -x "$CLUSTER_EXE" ] || { tail -n 30 "$WORK/build.log" >&2; echo "could not build the cluster bench" >&2; exit 1; }
IMAGES_EXE="$(cargo build --release --bench images --message-format=json 2>"$WORK/build-images.log" |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "images") | .executable' | tail -1)" || true
[ -x "$IMAGES_EXE" ] || { tail -n 30 "$WORK/build-images.log" >&2; echo "could not build the images bench" >&2; exit 1; }
PROXY_EXE="$(cargo build --release --bench proxy --message-format=json 2>"$WORK/build-proxy.log" |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "proxy" and .target.kind[0] == "bench") | .executable' | tail -1)" || true
[ -x "$PROXY_EXE" ] || { tail -n 30 "$WORK/build-proxy.log" >&2; echo "could not build the proxy bench" >&2; exit 1; }
# Private copies: another build swapping target/release/shoal mid-run would skew the figures.
mkdir -p "$WORK/bin"
cp target/release/shoal "$WORK/bin/shoal"
cp "$CLUSTER_EXE" "$WORK/bin/cluster"
cp "$IMAGES_EXE" "$WORK/bin/images"
cp "$PROXY_EXE" "$WORK/bin/proxy"
BIN="$WORK/bin/shoal"
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty')"

# Run one benchmark: bench NAME ARGS... (the cluster bench) or ibench NAME ARGS... (the images
# bench); its markdown goes to the report, its log to $WORK/NAME.log.
FAILED=()
bench() { local name="$1"; shift; run_step "$name" "$WORK/bin/cluster" --bin "$BIN" --work "$WORK/$name" "$@"; }
# The images bench's loopback registry lives in a temporary dir under $WORK/NAME/tmp (TMPDIR), so
# kill_registries finds it by its command line if the bench dies without stopping it.
ibench() {
  local name="$1"; shift
  mkdir -p "$WORK/$name/tmp"
  TMPDIR="$WORK/$name/tmp" run_step "$name" "$WORK/bin/images" --work "$WORK/$name" "$@"
  kill_registries
}
run_step() {
  local name="$1" exe="$2"; shift 2
  say "$name: $*"
  set +e
  RUST_BACKTRACE=0 "$exe" "$@" >"$WORK/$name.md" 2>"$WORK/$name.log" &
  BENCH_PID=$!
  wait "$BENCH_PID"
  local rc=$?
  BENCH_PID=""
  set -e
  if [ $rc -ne 0 ]; then
    FAILED+=("$name")
    { echo "### $name: FAILED (exit $rc)"; echo; echo '```'; tail -n 15 "$WORK/$name.log"; echo '```'; echo; } >>"$REPORT"
    say "$name failed (exit $rc); see the report"
  else
    cat "$WORK/$name.md" >>"$REPORT"
  fi
  # Agents of this step are gone with the bench (it kills its children on exit); make sure.
  for f in $(find "$WORK/$name" -name pids 2>/dev/null); do
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$WORK"; then kill -9 "$pid" 2>/dev/null || true; fi
    done <"$f"
  done
}

{
  echo "## Run $(date -u '+%Y-%m-%d %H:%M UTC') — \`benches/run.sh $MODE\`"
  echo
  echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
  echo "- shoal commit: $COMMIT; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} >"$REPORT"

WORKLOADS_ONLY="${WORKLOADS_ONLY:-0}"
IMAGES_ONLY="${IMAGES_ONLY:-0}"
[ "$WORKLOADS_ONLY" = 1 ] && [ "$IMAGES_ONLY" = 1 ] && { echo "WORKLOADS_ONLY and IMAGES_ONLY exclude each other" >&2; exit 64; }
if [ "$WORKLOADS_ONLY" != 1 ] && [ "$IMAGES_ONLY" != 1 ]; then
# --- loopback --------------------------------------------------------------------------------
bench propagation-lo50 propagation --agents 50 --writes "$PROP_WRITES" --rate 5
bench detection-lo5 detection --agents 5 --kills "$KILLS"
bench false-deaths-lo5 false-deaths --agents 5 --secs $((FALSE_DEATH_MIN * 60))
bench idle-lo5 idle --agents 5 --secs "$IDLE_SECS" --rate 20
bench api-flood-lo1 api-flood --agents 1 --idle 1000 --secs 10

# --- Serf, same procedure ----------------------------------------------------------------------
if ! command -v serf >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "installing serf (apt-get)"
  (apt-get install -y serf >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y serf >/dev/null 2>&1; }) || true
fi
if command -v serf >/dev/null 2>&1; then
  bench serf-lo5 serf --agents 5 --kills "$KILLS" --serf-bin "$(command -v serf)"
else
  echo "### Serf: skipped (not installed, apt-get failed)" >>"$REPORT"
fi
fi # WORKLOADS_ONLY / IMAGES_ONLY

# --- image pull + unpack from a loopback registry, beside skopeo copy + umoci unpack ------------
if [ "$WORKLOADS_ONLY" != 1 ]; then
  ibench pull-lo pull --size-mib 50 --layers 6 --runs "$PULL_RUNS"
  ibench pull-files-lo pull --content files --size-mib 50 --layers 6 --runs "$PULL_RUNS"
fi

# --- Service load balancing in namespaces of its own: data path (wrk, iperf3), rule update cost ---
if [ "$WORKLOADS_ONLY" != 1 ] && [ "$IMAGES_ONLY" != 1 ] && [ "$(id -u)" = 0 ]; then
  for tool in wrk iperf3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      say "installing $tool (apt-get)"
      apt-get install -y "$tool" >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y "$tool" >/dev/null 2>&1; } || true
    fi
  done
  if [ "$MODE" = quick ]; then run_step proxy-ns "$WORK/bin/proxy" QUICK; else run_step proxy-ns "$WORK/bin/proxy"; fi
fi

# --- netns testnet -----------------------------------------------------------------------------
use_testnet=0
if [ "$TESTNET" != 0 ] && [ "$(id -u)" = 0 ]; then
  # One testnet per machine: wait for the machine-wide lock the e2e tests take as well (held
  # by this shell until it exits).
  mkdir -p /run/lock
  exec 9>/run/lock/shoal-testnet.lock
  say "waiting for the testnet lock (/run/lock/shoal-testnet.lock)"
  flock 9
  if [ -n "$(ls -A testnet/run 2>/dev/null)" ] && [ "$TESTNET" != force ]; then
    echo "### Testnet: skipped (a testnet is already up in testnet/run — somebody else's; TESTNET=force takes it over)" >>"$REPORT"
  else
    use_testnet=1
  fi
fi
if [ "$use_testnet" = 1 ]; then
  say "testnet/up.sh 5"
  TESTNET_OURS=1
  if SHOAL_BIN="$BIN" testnet/up.sh 5 >"$WORK/testnet-up.log" 2>&1; then
    if [ "$WORKLOADS_ONLY" != 1 ] && [ "$IMAGES_ONLY" != 1 ]; then
      bench propagation-tn5 propagation --testnet testnet --nodes 5 --writes "$PROP_WRITES" --rate 5
      bench detection-tn5 detection --testnet testnet --nodes 5 --kills "$TN_KILLS"
      bench idle-tn5 idle --testnet testnet --nodes 5 --secs "$IDLE_SECS" --rate 20
      # Endpoint change → rules on every node (nft list chain in each node's namespace).
      run_step proxy-propagation-tn5 "$WORK/bin/proxy" propagation "$PROXY_ROUNDS"
    fi
    if [ "$IMAGES_ONLY" != 1 ]; then
      # Workloads (image shoal.test/busybox:1 imported by up.sh on every node).
      bench pod-start-tn5 pod-start --testnet testnet --nodes 5 --pods "$POD_STARTS"
      bench failover-tn5 failover --testnet testnet --nodes 5 --replicas 6 --rounds "$FAILOVER_ROUNDS"
      bench burst-tn5 burst --testnet testnet --nodes 5 --pods "$BURST_PODS"
      # Probe overhead: CPU of n1's agent with 100 pods, no probes / 1 s http / 1 s exec + http.
      bench probes-tn5 probes --testnet testnet --nodes 5 --pods 100 --secs "$PROBE_SECS"
      # Rolling update of 30 replicas (issue 6): rollout status wall time, least ready count.
      bench rollout-tn5 rollout --testnet testnet --nodes 5 --replicas 30 --rounds 3
      # Issue 18: Job throughput beside bare pods, a DaemonSet roll-out, local volume I/O.
      bench jobs-tn5 jobs --testnet testnet --nodes 5 --completions "$JOB_COMPLETIONS" --rounds "$JOB_ROUNDS"
      bench daemonset-tn5 daemonset --testnet testnet --nodes 5 --rounds "$DS_ROUNDS"
      bench volume-io-tn5 volume-io --testnet testnet --nodes 5 --size-mib 1024 --runs "$IO_RUNS"
    fi
    if [ "$WORKLOADS_ONLY" != 1 ]; then
      # Images: a fresh image per round pushed to the testnet registry (10.77.0.1:5000).
      ibench egress-tn5 egress --testnet testnet --nodes 5 --rounds "$EGRESS_ROUNDS" --size-mib 50 --layers 6
    fi
  else
    FAILED+=(testnet-up)
    { echo "### Testnet: up.sh failed"; echo; echo '```'; tail -n 15 "$WORK/testnet-up.log"; echo '```'; } >>"$REPORT"
  fi
  testnet/down.sh >/dev/null 2>&1 || true
  TESTNET_OURS=0
fi

# --- state under churn (in-process, no network) --------------------------------------------------
if [ "$WORKLOADS_ONLY" != 1 ] && [ "$IMAGES_ONLY" != 1 ]; then
say "state_churn: 10,000 pods + 100,000 status transitions"
{
  echo "### State under churn: 10,000 pods' objects + 100,000 status transitions (\`cargo bench --bench state_churn\`)"
  echo
} >>"$REPORT"
if cargo bench --bench state_churn >"$WORK/state_churn.md" 2>"$WORK/state_churn.log"; then
  cat "$WORK/state_churn.md" >>"$REPORT"
  echo >>"$REPORT"
else
  FAILED+=(state_churn)
  { echo '```'; tail -n 15 "$WORK/state_churn.log"; echo '```'; } >>"$REPORT"
fi
fi # WORKLOADS_ONLY

# --- scheduler throughput (pure core, in-process) -------------------------------------------------
if [ "$IMAGES_ONLY" != 1 ]; then
say "scheduler: placements/s, 50,000 pods on 5,000 nodes"
{
  echo "### Scheduler throughput: 50,000 pods on 5,000 nodes, pure core, one thread (\`cargo bench --bench scheduler\`)"
  echo
} >>"$REPORT"
if cargo bench --bench scheduler >"$WORK/scheduler.md" 2>"$WORK/scheduler.log"; then
  cat "$WORK/scheduler.md" >>"$REPORT"
  echo >>"$REPORT"
else
  FAILED+=(scheduler)
  { echo '```'; tail -n 15 "$WORK/scheduler.log"; echo '```'; } >>"$REPORT"
fi

# --- exec into a container: runc exec, nsenter, shoal's direct join (real runc, root) ----------
say "exec: CPU per exec into a container (runc exec / nsenter / shoal direct)"
{
  echo "### Exec into a running container: CPU per call, runc exec vs nsenter vs shoal's direct join (\`cargo bench --bench exec\`)"
  echo
} >>"$REPORT"
if [ "$(id -u)" != 0 ]; then
  FAILED+=(exec)
  echo "exec: needs root (runc containers)" >>"$REPORT"
elif cargo bench --bench exec >"$WORK/exec.md" 2>"$WORK/exec.log"; then
  cat "$WORK/exec.md" >>"$REPORT"
  echo >>"$REPORT"
else
  FAILED+=(exec)
  { echo '```'; tail -n 15 "$WORK/exec.log"; echo '```'; } >>"$REPORT"
fi
fi # IMAGES_ONLY

# --- summary -----------------------------------------------------------------------------------
{
  echo
  echo "#### Summary"
  echo
  echo '```'
  grep -h "^RESULT" "$REPORT" | sed 's/^RESULT //' || true
  [ ${#FAILED[@]} -eq 0 ] || echo "failed steps: ${FAILED[*]}"
  echo '```'
  echo
} >>"$REPORT"

cat "$REPORT"
if [ "$RECORD" = 1 ]; then
  cat "$REPORT" >>docs/benchmarks.md
  say "appended to docs/benchmarks.md"
fi
[ ${#FAILED[@]} -eq 0 ]
