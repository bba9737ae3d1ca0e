#!/usr/bin/env bash
# Roll a new `shoal` binary over every running node of the testnet, one node at a time, without
# failing pods over (docs/operations.md, "Upgrading"): for each node, SIGTERM its agent (the
# agent announces a planned restart, so its peers hold its pods), wait for it to exit, start it
# again with the new binary, and wait until every node's API reports every node Ready and all
# nodes hold the same cluster-document heads before the next node. Containers keep running
# throughout (their monitors outlive the agent); the restarted kubelet adopts them.
#
# Usage: testnet/upgrade.sh [NODE...]   (default: every node of the testnet, in order)
#
# Environment:
#   NEW_BIN          the binary to roll out (default: SHOAL_BIN, i.e. target/release/shoal,
#                    built first when stale). Copied to testnet/run/bin/shoal-<sha256 prefix>,
#                    so a later build cannot change what the nodes run.
#   UPGRADE_DOWN     seconds each agent stays down before it starts again (default 0; the
#                    e2e test uses 20, longer than failure detection)
#   UPGRADE_TIMEOUT  seconds to wait for Ready and in sync after each start (default 120)
#   STOP_TIMEOUT     seconds to wait for an agent to exit after SIGTERM (default 30)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

UPGRADE_DOWN="${UPGRADE_DOWN:-0}"
UPGRADE_TIMEOUT="${UPGRADE_TIMEOUT:-120}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
for v in UPGRADE_DOWN UPGRADE_TIMEOUT STOP_TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a number of seconds, got '${!v}'"
done

all_nodes="$(known_nodes)"
[ -n "$all_nodes" ] || die "no testnet (testnet/run has no nodes; run testnet/up.sh)"
nodes="${*:-$all_nodes}"
for node in $nodes; do
  node_index "$node" >/dev/null
  [ -d "$(node_dir "$node")" ] || die "no such node: $node"
done

if [ -z "${NEW_BIN:-}" ]; then
  ensure_binary
  NEW_BIN="$SHOAL_BIN"
fi
[ -x "$NEW_BIN" ] || die "NEW_BIN=$NEW_BIN is not executable"
sum="$(sha256sum "$NEW_BIN" | cut -c1-12)"
mkdir -p "$RUN_DIR/bin"
bin="$RUN_DIR/bin/shoal-$sum"
[ -x "$bin" ] || { cp "$NEW_BIN" "$bin.tmp" && chmod 755 "$bin.tmp" && mv "$bin.tmp" "$bin"; }
log "rolling $bin ($("$bin" --version 2>/dev/null || echo shoal)) over: $nodes"

# The sorted cluster-document heads NODE's API reports (empty when it does not answer).
heads_via() {
  "$bin" status -o json --kubeconfig "$RUN_DIR/kubeconfig" --context "$1" 2>/dev/null \
    | tr -d ' \n' | grep -o '"heads":\[[^]]*\]' | tr ',' '\n' | sort | tr '\n' ','
}

# Every running node's API reports every running node Ready and the same heads.
settled() {
  local running=() node first="" h
  for node in $all_nodes; do agent_pid "$node" >/dev/null && running+=("$node"); done
  for node in "${running[@]}"; do
    [ "$(ready_count_via "$node")" -ge "${#running[@]}" ] || return 1
    h="$(heads_via "$node")"
    [ -n "$h" ] || return 1
    [ -z "$first" ] && first="$h"
    [ "$h" = "$first" ] || return 1
  done
}

for node in $nodes; do
  started=$SECONDS
  if pid="$(agent_pid "$node")"; then
    log "$node: SIGTERM to agent $pid (planned restart: peers hold its pods)"
    kill -TERM "$pid"
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid"; do
      [ "$SECONDS" -lt "$deadline" ] || die "agent $pid of $node still runs ${STOP_TIMEOUT}s after SIGTERM (see $(node_dir "$node")/agent.log)"
      sleep 0.1
    done
    rm -f "$(node_pidfile "$node")"
  else
    log "$node: agent was not running"
  fi
  if [ "$UPGRADE_DOWN" -gt 0 ]; then
    log "$node: staying down ${UPGRADE_DOWN}s"
    sleep "$UPGRADE_DOWN"
  fi
  SHOAL_BIN="$bin" "$TESTNET_DIR/start.sh" "$node"
  deadline=$((SECONDS + UPGRADE_TIMEOUT))
  until settled; do
    agent_pid "$node" >/dev/null || { tail -n 40 "$(node_dir "$node")/agent.log" >&2; die "agent of $node exited after the upgrade"; }
    [ "$SECONDS" -lt "$deadline" ] || die "$node not Ready and in sync ${UPGRADE_TIMEOUT}s after its start"
    sleep 0.5
  done
  log "$node: upgraded, every node Ready and in sync ($((SECONDS - started))s)"
done
log "upgrade done: $nodes run $bin"
