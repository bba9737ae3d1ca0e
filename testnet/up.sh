#!/usr/bin/env bash
# Bring up a local testnet of N nodes (default 3): one network namespace per node on a bridge,
# one agent per node, joined into one cluster. Returns once every node's API reports N Ready
# nodes, writes testnet/run/kubeconfig (contexts n1..nN, current n1), loads the image
# shoal.test/busybox:1 (testnet/busybox-image.sh, built into run/) into every node's store, and
# starts a registry at 10.77.0.1:5000 holding it as shoal/busybox:1 (testnet/registry.sh).
#
# Environment:
#   SHOAL_BIN            binary to run (default target/release/shoal, built if stale)
#   UP_TIMEOUT           seconds to wait for N Ready nodes (default 180)
#   RESTORE_FILE         seed n1 with `shoal init --restore FILE --token RESTORE_TOKEN`
#   RESTORE_TOKEN        the old cluster's join token (with RESTORE_FILE)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-3}"
[[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 50 ] || die "usage: testnet/up.sh [N]  (1 <= N <= 50)"
UP_TIMEOUT="${UP_TIMEOUT:-180}"

need_root
# One machine stands in for N hosts. With the kernel's autogroup scheduling on (most
# distributions' default), every session is a scheduling group with an equal share: each pod's
# sandbox, shim and container sessions would weigh as much as a whole agent, which no real host
# of the cluster sees (each agent has its own CPUs there). Niceness then works as on N hosts.
if [ -w /proc/sys/kernel/sched_autogroup_enabled ]; then echo 0 >/proc/sys/kernel/sched_autogroup_enabled; fi
install_prereqs
ensure_binary

if [ -d "$RUN_DIR" ] && [ -n "$(ls -A "$RUN_DIR" 2>/dev/null)" ] || ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "a testnet is already up (or left over): tearing it down first"
  "$TESTNET_DIR/down.sh"
fi
mkdir -p "$RUN_DIR"

nodes=""
for i in $(seq 1 "$N"); do nodes="$nodes n$i"; done
nodes="${nodes# }"

log "creating network: bridge $BRIDGE $HOST_IP/24, nodes: $nodes"
for node in $nodes; do
  mkdir -p "$(node_dir "$node")"
  ensure_node_net "$node"
done

# n1 creates the cluster.
n1_ip="$(node_ip n1)"
init_args=(init --data-dir "$(node_data n1)" --name n1 --listen-p2p "$n1_ip:$P2P_PORT"
           --listen-api "$n1_ip:$API_PORT" --advertise "$n1_ip")
if [ -n "${RESTORE_FILE:-}" ]; then
  [ -n "${RESTORE_TOKEN:-}" ] || die "RESTORE_FILE needs RESTORE_TOKEN (the old cluster's join token)"
  init_args+=(--restore "$RESTORE_FILE" --token "$RESTORE_TOKEN")
fi
log "shoal ${init_args[*]}"
if ! token="$(nsenter --net="/run/netns/$(node_ns n1)" -- "$SHOAL_BIN" "${init_args[@]}" 2>>"$(node_dir n1)/agent.log")"; then
  tail -n 30 "$(node_dir n1)/agent.log" >&2
  die "shoal init failed on n1"
fi
token="$(printf '%s\n' "$token" | tail -n 1)"
[ -n "$token" ] || token="$(cat "$(node_data n1)/join-token" 2>/dev/null || true)"
[ -n "$token" ] || die "shoal init printed no join token (and wrote no $(node_data n1)/join-token)"
printf '%s\n' "$token" > "$RUN_DIR/join-token"
chmod 600 "$RUN_DIR/join-token"

for node in $nodes; do
  "$TESTNET_DIR/start.sh" "$node"
done
write_kubeconfig $nodes

log "waiting up to ${UP_TIMEOUT}s for $N Ready nodes on every node's API"
deadline=$((SECONDS + UP_TIMEOUT))
while :; do
  all=1
  for node in $nodes; do
    agent_pid "$node" >/dev/null || { tail_logs 40; die "agent of $node exited during startup"; }
    [ "$(ready_count_via "$node")" -eq "$N" ] || { all=0; break; }
  done
  [ "$all" = 1 ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    for node in $nodes; do
      echo "---- kubectl --context $node get nodes" >&2
      kc --context "$node" get nodes >&2 || true
    done
    tail_logs 40
    die "timed out after ${UP_TIMEOUT}s waiting for $N Ready nodes"
  fi
  sleep 0.5
done

# Every node gets the testnet image (built once into run/).
ensure_busybox_image
for node in $nodes; do
  import_busybox_image "$node" || { tail_logs 20; die "could not load the testnet image into $node"; }
done

# A registry on the bridge with the same image, for pulls (10.77.0.1:5000/shoal/busybox:1).
"$TESTNET_DIR/registry.sh" start
"$TESTNET_DIR/registry.sh" seed

cat <<MSG
testnet up: $N nodes ($nodes) on bridge $BRIDGE, node nK at $SUBNET_PREFIX.(10+K)
  export KUBECONFIG=$RUN_DIR/kubeconfig
  kubectl get nodes -o wide                 # via n1 (current context)
  kubectl --context n2 get nodes            # via any other node
  shoal status --context n3                 # that agent's membership view
  shoal image pull --context n2 $HOST_IP:5000/shoal/busybox:1   # pull from the testnet registry
  testnet/kill.sh n2; testnet/start.sh n2   # faults: kill/start/restart/stop/cont/partition/heal
  testnet/down.sh                           # remove everything
logs: $RUN_DIR/<node>/agent.log
MSG
