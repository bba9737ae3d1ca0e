#!/usr/bin/env bash
# The host NODE dies: SIGKILL its agent and everything in its cgroup, and its runc containers.
# Its network namespace, address and data dir stay, so testnet/start.sh NODE can boot it again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 1 ] || die "usage: testnet/kill.sh NODE"
node="$1"
node_index "$node" >/dev/null
need_root
[ -d "$(node_dir "$node")" ] || die "no such node: $node"
cg_kill_all "$node"
kill_node_containers "$node"
rm -f "$(node_pidfile "$node")"
log "$node killed"
