#!/usr/bin/env bash
# Restart only the agent of NODE, as in an upgrade: SIGKILL the agent process (pid file) and
# start it again. Whatever it started (container monitors, containers) keeps running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 1 ] || die "usage: testnet/restart.sh NODE"
node="$1"
node_index "$node" >/dev/null
need_root
if pid="$(agent_pid "$node")"; then
  kill -KILL "$pid"
  for _ in $(seq 1 500); do pid_alive "$pid" || break; sleep 0.01; done
  pid_alive "$pid" && die "agent $pid of $node survives SIGKILL"
  rm -f "$(node_pidfile "$node")"
else
  log "agent of $node was not running"
fi
"$TESTNET_DIR/start.sh" "$node"
