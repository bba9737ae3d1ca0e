#!/usr/bin/env bash
# Remove every partition made by testnet/partition.sh (only its own table/chain, in every node).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
heal_node() {
  local node="$1"
  ip netns list | awk '{print $1}' | grep -qx "$(node_ns "$node")" || return 0
  if command -v nft >/dev/null 2>&1; then
    in_ns "$node" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  fi
  if command -v iptables >/dev/null 2>&1 && in_ns "$node" iptables -w -S "$IPT_CHAIN" >/dev/null 2>&1; then
    in_ns "$node" iptables -w -D INPUT -j "$IPT_CHAIN" 2>/dev/null || true
    in_ns "$node" iptables -w -D OUTPUT -j "$IPT_CHAIN" 2>/dev/null || true
    in_ns "$node" iptables -w -F "$IPT_CHAIN" || true
    in_ns "$node" iptables -w -X "$IPT_CHAIN" || true
  fi
}
for node in $(known_nodes); do heal_node "$node"; done
log "healed"
