#!/usr/bin/env bash
# Resume a host stopped by testnet/stop.sh: SIGCONT every process in its cgroup.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 1 ] || die "usage: testnet/cont.sh NODE"
node_index "$1" >/dev/null
need_root
cg_signal_all "$1" CONT
log "$1 continued (SIGCONT)"
