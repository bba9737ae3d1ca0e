#!/usr/bin/env bash
# Boot NODE (again): same netns, address, data dir and runc root. The first start of a node
# other than n1 joins the cluster through n1 with testnet/run/join-token; later starts only
# pass --data-dir (the agent persisted its settings).
#
# Environment (for tests that add foreign nodes):
#   JOIN_TOKEN   token for a first start (default: testnet/run/join-token)
#   JOIN_ADDR    join address for a first start (default: n1's p2p address)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 1 ] || die "usage: testnet/start.sh NODE"
node="$1"
node_index "$node" >/dev/null
need_root
[ -x "$SHOAL_BIN" ] || ensure_binary

if pid="$(agent_pid "$node")"; then
  die "agent of $node is already running (pid $pid)"
fi
mkdir -p "$(node_dir "$node")"
ensure_node_net "$node"
data="$(node_data "$node")"
ip="$(node_ip "$node")"
listen=(--listen-p2p "$ip:$P2P_PORT" --listen-api "$ip:$API_PORT" --advertise "$ip")
# The testnet registries (testnet/registry.sh) speak plain HTTP on the bridge address.
insecure=(--insecure-registry "$HOST_IP:5000" --insecure-registry "$HOST_IP:5001")
# No resolver is reachable from the node namespaces: pods' DNS answers other names NXDOMAIN.
dns=(--dns-upstream none)

if [ -d "$data" ]; then
  spawn_agent "$node" --data-dir "$data" "${insecure[@]}" "${dns[@]}"
else
  fresh=1
  token="${JOIN_TOKEN:-$(cat "$RUN_DIR/join-token" 2>/dev/null || true)}"
  [ -n "$token" ] || die "no join token (testnet/run/join-token missing; run testnet/up.sh)"
  join="${JOIN_ADDR:-$(node_ip n1):$P2P_PORT}"
  spawn_agent "$node" --data-dir "$data" --name "$node" --join "$join" --token "$token" "${listen[@]}" "${insecure[@]}" "${dns[@]}"
fi
log "$node started (pid $(agent_pid "$node"), $ip)"

# A node started on a wiped data dir gets the testnet image again (once the API answers).
if [ "${fresh:-0}" = 1 ] && [ -f "$RUN_DIR/kubeconfig" ] \
   && grep -qx -- "- name: $node" "$RUN_DIR/kubeconfig" && ! has_busybox_image "$node"; then
  import_busybox_image "$node" || log "warning: $node runs without $BUSYBOX_IMAGE (testnet/run/busybox-image.tar; shoal image import)"
fi
