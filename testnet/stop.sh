#!/usr/bin/env bash
# The host NODE hangs: SIGSTOP every process in its cgroup. testnet/cont.sh NODE resumes it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 1 ] || die "usage: testnet/stop.sh NODE"
node_index "$1" >/dev/null
need_root
cg_signal_all "$1" STOP
log "$1 stopped (SIGSTOP)"
