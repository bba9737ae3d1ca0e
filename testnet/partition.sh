#!/usr/bin/env bash
# Drop all traffic between two groups of nodes: testnet/partition.sh "n1 n2" "n3".
# Rules live inside the node namespaces, in a dedicated nftables table (inet shoal_partition)
# or, without nft, a dedicated iptables chain (SHOAL-PARTITION), so heal.sh removes exactly them.
# Partitions add up: a second call adds more drops. The host can still reach every node.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 2 ] || die 'usage: testnet/partition.sh "n1 n2" "n3"'
need_root
group_a="$1"; group_b="$2"
[ -n "$group_a" ] && [ -n "$group_b" ] || die "both groups must name at least one node"

ips_of() { local n out=""; for n in $1; do out="$out${out:+, }$(node_ip "$n")"; done; echo "$out"; }

drop_from_to() { # NODE "ip, ip"
  local node="$1" ips="$2"
  ip netns list | awk '{print $1}' | grep -qx "$(node_ns "$node")" || die "no such node: $node"
  if command -v nft >/dev/null 2>&1; then
    in_ns "$node" nft -f - <<NFT
table inet $NFT_TABLE {
  chain input { type filter hook input priority -10; policy accept; }
  chain output { type filter hook output priority -10; policy accept; }
}
add rule inet $NFT_TABLE input ip saddr { $ips } drop
add rule inet $NFT_TABLE output ip daddr { $ips } drop
NFT
  else
    in_ns "$node" iptables -w -N "$IPT_CHAIN" 2>/dev/null || true
    in_ns "$node" iptables -w -C INPUT -j "$IPT_CHAIN" 2>/dev/null || in_ns "$node" iptables -w -I INPUT -j "$IPT_CHAIN"
    in_ns "$node" iptables -w -C OUTPUT -j "$IPT_CHAIN" 2>/dev/null || in_ns "$node" iptables -w -I OUTPUT -j "$IPT_CHAIN"
    local ip
    for ip in ${ips//,/ }; do
      in_ns "$node" iptables -w -A "$IPT_CHAIN" -s "$ip" -j DROP
      in_ns "$node" iptables -w -A "$IPT_CHAIN" -d "$ip" -j DROP
    done
  fi
}

for n in $group_a; do node_index "$n" >/dev/null; drop_from_to "$n" "$(ips_of "$group_b")"; done
for n in $group_b; do node_index "$n" >/dev/null; drop_from_to "$n" "$(ips_of "$group_a")"; done
log "partitioned [$group_a] | [$group_b]"
