#!/usr/bin/env bash
# Stop everything the testnet made and leave nothing behind: processes (by cgroup), runc
# containers, mounts under testnet/run, partition rules, namespaces, links, the bridge, cgroups
# and testnet/run itself. Safe to run twice.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# The testnet registries (testnet/registry.sh), before their run dir goes.
"$TESTNET_DIR/registry.sh" stop >/dev/null 2>&1 || true
REGISTRY_PORT=5001 "$TESTNET_DIR/registry.sh" stop >/dev/null 2>&1 || true

nodes="$(known_nodes)"
# Namespaces named shoal-nK whose run dir is already gone still belong to us.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}n[0-9]+$" || true); do
  nodes="$nodes ${ns#"$NS_PREFIX"}"
done
cg_root="$(cg_mode_and_root)"; cg_root="${cg_root#* }"
if [ -d "$cg_root" ]; then
  for cg in "$cg_root"/n*/; do [ -d "$cg" ] && nodes="$nodes $(basename "$cg")"; done
fi
nodes="$(echo $nodes | tr ' ' '\n' | grep -E '^n[0-9]+$' | sort -uV | tr '\n' ' ' || true)"

for node in $nodes; do
  cg_signal_all "$node" CONT   # a stopped node must be able to die
  cg_kill_all "$node"
  kill_node_containers "$node"
done
# Mounts left under testnet/run (container rootfs, bind mounts), deepest first.
if [ -d "$RUN_DIR" ]; then
  mounts="$(awk '{print $2}' /proc/mounts | grep -E "^$RUN_DIR(/|$)" | sort -r || true)"
  for m in $mounts; do umount -l "$m" 2>/dev/null || true; done
fi
for node in $nodes; do
  remove_node_net "$node"
  rmdir "$(node_cgroup "$node")" 2>/dev/null || true
done
# Nested cgroups (e.g. containers placed under a node's cgroup) before their parents.
if [ -d "$cg_root" ]; then
  find "$cg_root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
fi
ip link del "$BRIDGE" 2>/dev/null || true
rm -rf "$RUN_DIR"
log "testnet down"
