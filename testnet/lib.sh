# shellcheck shell=bash
# Shared helpers for the local testnet scripts. Sourced, never executed.
#
# Layout (see docs/testnet.md):
#   bridge  shoal-br0   10.77.0.1/24 in the host namespace (kubectl from the host goes here)
#   node nK netns shoal-nK, veth shl-nK <-> eth0, address 10.77.0.(10+K)/24
#           data dir testnet/run/nK/data, runc root testnet/run/nK/runc,
#           log testnet/run/nK/agent.log, pid file testnet/run/nK/agent.pid,
#           cgroup <cgroup2 mount>/shoal-testnet/nK (or v1 freezer/pids fallback)
set -euo pipefail

TESTNET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$TESTNET_DIR/.." && pwd)"
RUN_DIR="$TESTNET_DIR/run"
BRIDGE="shoal-br0"
SUBNET_PREFIX="10.77.0"
HOST_IP="$SUBNET_PREFIX.1"
P2P_PORT=7946
API_PORT=6443
NS_PREFIX="shoal-"
CG_NAME="shoal-testnet"
NFT_TABLE="shoal_partition"
IPT_CHAIN="SHOAL-PARTITION"
SHOAL_BIN="${SHOAL_BIN:-$REPO_DIR/target/release/shoal}"
export RUST_LOG="${RUST_LOG:-info}"

log() { printf '[testnet] %s\n' "$*" >&2; }
die() { printf '[testnet] error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, bridges, cgroups)"; }

# ---- prerequisites ---------------------------------------------------------------------------

# command -> Debian package that provides it
PREREQS="ip:iproute2 nft:nftables iptables:iptables runc:runc busybox:busybox-static nsenter:util-linux curl:curl tar:tar gzip:gzip sha256sum:coreutils docker-registry:docker-registry skopeo:skopeo umoci:umoci htpasswd:apache2-utils promtool:prometheus pkg-config:pkg-config"
# file -> Debian package that provides it (prerequisites that are not commands on PATH: the
# CNI plugins the agents run for the pod network)
PREREQ_FILES="/usr/lib/cni/bridge:containernetworking-plugins /usr/lib/cni/host-local:containernetworking-plugins"

install_prereqs() {
  need_root
  local missing=() pair cmd pkg
  for pair in $PREREQS; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  for pair in $PREREQ_FILES; do
    [ -x "${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  # Building shoal links libseccomp (exec probes compile seccomp profiles as runc does).
  pkg-config --exists libseccomp 2>/dev/null || missing+=(libseccomp-dev)
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "installing missing prerequisites: ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  for pair in $PREREQS; do
    cmd="${pair%%:*}"
    command -v "$cmd" >/dev/null 2>&1 || die "prerequisite '$cmd' (${pair#*:}) still missing"
  done
  for pair in $PREREQ_FILES; do
    [ -x "${pair%%:*}" ] || die "prerequisite '${pair%%:*}' (${pair#*:}) still missing"
  done
  pkg-config --exists libseccomp || die "prerequisite libseccomp (libseccomp-dev) still missing"
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found (expected at /usr/bin/kubectl)"
}

# Build the release binary if it is missing or older than the sources.
ensure_binary() {
  if [ "$SHOAL_BIN" != "$REPO_DIR/target/release/shoal" ]; then
    [ -x "$SHOAL_BIN" ] || die "SHOAL_BIN=$SHOAL_BIN is not executable"
    return
  fi
  if [ ! -x "$SHOAL_BIN" ] || [ -n "$(find "$REPO_DIR/src" "$REPO_DIR/Cargo.toml" "$REPO_DIR/Cargo.lock" \
        -newer "$SHOAL_BIN" -print -quit 2>/dev/null)" ]; then
    log "building release binary (cargo build --release)"
    (cd "$REPO_DIR" && cargo build --release) || die "cargo build --release failed"
  fi
  [ -x "$SHOAL_BIN" ] || die "no binary at $SHOAL_BIN after build"
}

# ---- naming ----------------------------------------------------------------------------------

node_index() {
  local node="$1"
  [[ "$node" =~ ^n([0-9]+)$ ]] || die "bad node name '$node' (expected n1, n2, ...)"
  local idx="${BASH_REMATCH[1]}"
  [ "$idx" -ge 1 ] && [ "$idx" -le 200 ] || die "node index out of range: $node"
  echo "$idx"
}
node_ip()   { echo "$SUBNET_PREFIX.$((10 + $(node_index "$1")))"; }
node_ns()   { echo "$NS_PREFIX$1"; }
node_veth() { echo "shl-$1"; }
node_dir()  { echo "$RUN_DIR/$1"; }
node_data() { echo "$RUN_DIR/$1/data"; }
node_pidfile() { echo "$RUN_DIR/$1/agent.pid"; }
in_ns() { local ns; ns="$(node_ns "$1")"; shift; ip netns exec "$ns" "$@"; }

# Nodes that exist in run/ (sorted by index).
known_nodes() {
  [ -d "$RUN_DIR" ] || return 0
  local d
  for d in "$RUN_DIR"/n*/; do
    [ -d "$d" ] || continue
    basename "$d"
  done | sort -V
}

# ---- network ---------------------------------------------------------------------------------

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}

ensure_node_net() {
  local node="$1" ns veth ip
  ns="$(node_ns "$node")"; veth="$(node_veth "$node")"; ip="$(node_ip "$node")"
  ensure_bridge
  if ! ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    ip netns add "$ns"
  fi
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BRIDGE" up
  in_ns "$node" ip link set lo up
  in_ns "$node" ip link set eth0 up
  if ! in_ns "$node" ip -4 addr show dev eth0 | grep -q "inet $ip/"; then
    in_ns "$node" ip addr add "$ip/24" dev eth0
  fi
  in_ns "$node" ip route replace default via "$HOST_IP" dev eth0
  in_ns "$node" sysctl -qw net.ipv4.ip_forward=1
}

remove_node_net() {
  local node="$1"
  ip netns del "$(node_ns "$node")" 2>/dev/null || true
  ip link del "$(node_veth "$node")" 2>/dev/null || true
}

# ---- cgroups ---------------------------------------------------------------------------------
# One cgroup per node holds its agent and everything the agent starts that stays in its cgroup.
# cgroup v2 (the unified hierarchy, wherever it is mounted) is preferred: cgroup.kill and
# cgroup.freeze act on the whole tree at once. Fallback: v1 freezer, then v1 pids.

cg_mode_and_root() {
  local v2
  v2="$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)"
  # TESTNET_CGROUP=v1 forces the v1 fallback (to test it on machines that have cgroup2).
  if [ -n "$v2" ] && [ -w "$v2" ] && [ "${TESTNET_CGROUP:-}" != v1 ]; then
    echo "v2 $v2/$CG_NAME"; return
  fi
  local c
  for c in freezer pids; do
    local m
    m="$(awk -v c="$c" '$3 == "cgroup" && $4 ~ ("(^|,)" c "(,|$)") {print $2; exit}' /proc/mounts)"
    if [ -n "$m" ]; then echo "v1-$c $m/$CG_NAME"; return; fi
  done
  die "no usable cgroup hierarchy (neither cgroup2 nor v1 freezer/pids mounted)"
}

node_cgroup() { local mr; mr="$(cg_mode_and_root)"; echo "${mr#* }/$1"; }
cg_mode() { local mr; mr="$(cg_mode_and_root)"; echo "${mr%% *}"; }

ensure_node_cgroup() {
  local cg; cg="$(node_cgroup "$1")"
  mkdir -p "$cg"
  echo "$cg"
}

cg_procs() {
  local cg; cg="$(node_cgroup "$1")"
  [ -f "$cg/cgroup.procs" ] && cat "$cg/cgroup.procs" || true
}

# SIGKILL every process in the node's cgroup and wait until it is empty.
cg_kill_all() {
  local node="$1" cg mode i
  cg="$(node_cgroup "$node")"; mode="$(cg_mode)"
  [ -d "$cg" ] || return 0
  if [ "$mode" = v2 ] && [ -f "$cg/cgroup.kill" ]; then
    echo 1 > "$cg/cgroup.kill"
  else
    [ "$mode" = v1-freezer ] && echo FROZEN > "$cg/freezer.state" || true
    local pid
    for pid in $(cat "$cg/cgroup.procs"); do kill -KILL "$pid" 2>/dev/null || true; done
    [ "$mode" = v1-freezer ] && echo THAWED > "$cg/freezer.state" || true
  fi
  for i in $(seq 1 100); do
    [ -z "$(cat "$cg/cgroup.procs" 2>/dev/null)" ] && return 0
    if [ "$mode" != v2 ]; then
      for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    sleep 0.05
  done
  die "processes of $node survive SIGKILL: $(cat "$cg/cgroup.procs" | tr '\n' ' ')"
}

# SIGSTOP / SIGCONT every process of the node (a hung host, not a dead one).
cg_signal_all() {
  local node="$1" sig="$2" pid
  for pid in $(cg_procs "$node"); do kill "-$sig" "$pid" 2>/dev/null || true; done
}

remove_node_cgroup() {
  local cg; cg="$(node_cgroup "$1")"
  [ -d "$cg" ] || return 0
  cg_kill_all "$1"
  rmdir "$cg" 2>/dev/null || true
}

# ---- runc containers of a node -----------------------------------------------------------------

kill_node_containers() {
  local node="$1" root id
  root="$(node_dir "$node")/runc"
  [ -d "$root" ] && command -v runc >/dev/null 2>&1 || return 0
  for id in $(runc --root "$root" list -q 2>/dev/null); do
    runc --root "$root" kill --all "$id" KILL 2>/dev/null || true
    runc --root "$root" delete --force "$id" 2>/dev/null || true
  done
}

# ---- agent processes ---------------------------------------------------------------------------

# Whether PID is a live process (a zombie is not: a killed agent whose parent has not reaped it
# yet must not delay its restart).
pid_alive() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

agent_pid() {
  local f; f="$(node_pidfile "$1")"
  [ -f "$f" ] || return 1
  local pid; pid="$(cat "$f")"
  [ -n "$pid" ] && pid_alive "$pid" || return 1
  # The pid must still be in the node's cgroup (guards against pid reuse).
  cg_procs "$1" | grep -qx "$pid" || return 1
  echo "$pid"
}

# Start the agent of NODE in its netns and cgroup, detached. Extra args go to `shoal agent`.
# The pid written to agent.pid is the agent's own pid: setsid, nsenter and env all exec in place.
spawn_agent() {
  local node="$1"; shift
  local cg dir ns
  cg="$(ensure_node_cgroup "$node")"; dir="$(node_dir "$node")"; ns="$(node_ns "$node")"
  mkdir -p "$dir/runc"
  {
    printf '\n==== %s starting agent: %s agent %s\n' "$(date -Is)" "$SHOAL_BIN" "$*"
  } >> "$dir/agent.log"
  # Image GC thresholds: the five nodes share one host's disk (with build dirs beside them), and
  # the testnet image exists only in the nodes' stores (shoal.test is no registry), so a busy
  # host would make every node drop it at the kubelet's 85 %. Raised unless set by the caller.
  local gc_high="${SHOAL_IMAGE_GC_HIGH_PERCENT:-98}" gc_low="${SHOAL_IMAGE_GC_LOW_PERCENT:-95}"
  # nsenter --net switches only the network namespace (ip netns exec would also remount /sys,
  # hiding the cgroup mounts that runc needs).
  setsid bash -c 'echo $$ > "$1/cgroup.procs" && echo $$ > "$2" && shift 2 && exec "$@"' \
    spawn "$cg" "$(node_pidfile "$node")" \
    nsenter --net="/run/netns/$ns" -- \
    env NO_COLOR=1 SHOAL_IMAGE_GC_HIGH_PERCENT="$gc_high" SHOAL_IMAGE_GC_LOW_PERCENT="$gc_low" \
    SHOAL_RUNC_ROOT="$dir/runc" SHOAL_CGROUP_PARENT="$cg" SHOAL_NODE_DIR="$dir" \
    "$SHOAL_BIN" agent "$@" \
    >> "$dir/agent.log" 2>&1 < /dev/null &
  local i
  for i in $(seq 1 100); do
    agent_pid "$node" >/dev/null && return 0
    sleep 0.05
  done
  tail -n 30 "$dir/agent.log" >&2 || true
  die "agent of $node did not start"
}

# ---- kubeconfig --------------------------------------------------------------------------------

write_kubeconfig() {
  local ca token out nodes node ca_b64
  ca="$(node_data n1)/tls/ca.crt"; token="$(cat "$(node_data n1)/admin-token")"
  [ -f "$ca" ] || die "no CA at $ca"
  ca_b64="$(base64 -w0 < "$ca")"
  out="$RUN_DIR/kubeconfig"
  nodes="$*"
  {
    echo "apiVersion: v1"
    echo "kind: Config"
    echo "clusters:"
    for node in $nodes; do
      echo "- name: $node"
      echo "  cluster:"
      echo "    server: https://$(node_ip "$node"):$API_PORT"
      echo "    certificate-authority-data: $ca_b64"
    done
    echo "users:"
    echo "- name: admin"
    echo "  user:"
    echo "    token: $token"
    echo "contexts:"
    for node in $nodes; do
      echo "- name: $node"
      echo "  context:"
      echo "    cluster: $node"
      echo "    user: admin"
    done
    echo "current-context: n1"
    echo "preferences: {}"
  } > "$out.tmp"
  chmod 600 "$out.tmp"
  mv "$out.tmp" "$out"
}

kc() { kubectl --kubeconfig "$RUN_DIR/kubeconfig" --request-timeout=5s "$@"; }

# ---- the testnet image ---------------------------------------------------------------------------

BUSYBOX_IMAGE="shoal.test/busybox:1"
BUSYBOX_TAR="$RUN_DIR/busybox-image.tar"

# Build testnet/run/busybox-image.tar (an OCI layout of shoal.test/busybox:1) unless present.
ensure_busybox_image() {
  [ -s "$BUSYBOX_TAR" ] && return 0
  mkdir -p "$RUN_DIR"
  "$TESTNET_DIR/busybox-image.sh" "$BUSYBOX_TAR" || die "building $BUSYBOX_IMAGE failed"
}

# Load the testnet image into NODE's store through its API (waits up to 60 s for the API).
# Returns non-zero (after saying why) when it could not.
import_busybox_image() {
  local node="$1" i out
  ensure_busybox_image
  for i in $(seq 1 120); do
    if out="$("$SHOAL_BIN" image import "$BUSYBOX_TAR" --kubeconfig "$RUN_DIR/kubeconfig" --context "$node" 2>&1)"; then
      log "$node: $out"
      return 0
    fi
    agent_pid "$node" >/dev/null || break
    sleep 0.5
  done
  log "importing $BUSYBOX_IMAGE into $node failed: $out"
  return 1
}

# Whether NODE's store has the testnet image.
has_busybox_image() {
  "$SHOAL_BIN" image ls --kubeconfig "$RUN_DIR/kubeconfig" --context "$1" 2>/dev/null \
    | awk 'NR > 1 {print $1}' | grep -qx "$BUSYBOX_IMAGE"
}

# Number of Ready nodes that NODE's API reports (0 when unreachable).
ready_count_via() {
  kc --context "$1" get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l
}

tail_logs() {
  local node
  for node in $(known_nodes); do
    echo "---- tail of $RUN_DIR/$node/agent.log" >&2
    tail -n "${1:-20}" "$RUN_DIR/$node/agent.log" >&2 2>/dev/null || true
  done
}
