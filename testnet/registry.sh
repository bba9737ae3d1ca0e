#!/usr/bin/env bash
# An OCI registry for the testnet: Debian's docker-registry (CNCF distribution) on the bridge
# address, plain HTTP, filesystem storage. Agents reach it as 10.77.0.1:5000 (list it with
# --insecure-registry). State lives in testnet/run/registry/ (config.yml, storage/,
# registry.log, registry.pid; testnet/run/registry-PORT/ for another port), so
# testnet/down.sh's cleanup removes it once it is stopped.
#
#   testnet/registry.sh start                 start it (idempotent); needs the bridge
#   testnet/registry.sh stop                  stop it (idempotent)
#   testnet/registry.sh status                exit 0 when it answers
#   testnet/registry.sh push SRC REPO:TAG [SRC_TAG]
#                                             push an OCI layout dir (or an OCI layout .tar)
#                                             as 10.77.0.1:5000/REPO:TAG, every platform
#   testnet/registry.sh seed                  build the busybox image (busybox-image.sh) and
#                                             push it as 10.77.0.1:5000/shoal/busybox:1
#
# REGISTRY_PORT overrides the port (default 5000; one registry per port, each with its own
# dir). REGISTRY_AUTH=user:password makes `start` require that user (htpasswd, bcrypt) and
# `push` use it. Needs root (like the rest of the testnet), docker-registry, skopeo, curl and,
# with REGISTRY_AUTH, htpasswd (apache2-utils).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REGISTRY_PORT="${REGISTRY_PORT:-5000}"
REGISTRY_ADDR="$HOST_IP:$REGISTRY_PORT"
REGISTRY_AUTH="${REGISTRY_AUTH:-}"
if [ "$REGISTRY_PORT" = 5000 ]; then
  REGISTRY_DIR="$RUN_DIR/registry"
else
  REGISTRY_DIR="$RUN_DIR/registry-$REGISTRY_PORT"
fi
REGISTRY_PIDFILE="$REGISTRY_DIR/registry.pid"
REGISTRY_LOG="$REGISTRY_DIR/registry.log"
REGISTRY_CONFIG="$REGISTRY_DIR/config.yml"
BUSYBOX_REF="shoal/busybox:1"

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "missing '$1' (Debian package $2): apt-get install $2 (or run testnet/prereqs.sh)"
}

# The registry's pid, if it runs (a pid whose command line is not our registry does not count).
registry_pid() {
  [ -f "$REGISTRY_PIDFILE" ] || return 1
  local pid; pid="$(cat "$REGISTRY_PIDFILE")"
  [ -n "$pid" ] && pid_alive "$pid" || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "serve $REGISTRY_CONFIG" || return 1
  echo "$pid"
}

answers() {
  curl -s -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"
}

cmd_start() {
  need_root
  need_cmd docker-registry docker-registry
  need_cmd curl curl
  if registry_pid >/dev/null; then
    log "registry already running at $REGISTRY_ADDR (pid $(registry_pid))"
    return 0
  fi
  ensure_bridge
  if ss -Hltn "sport = :$REGISTRY_PORT" 2>/dev/null | grep -q .; then
    die "port $REGISTRY_PORT is already taken ($(ss -Hltnp "sport = :$REGISTRY_PORT" | head -1)); \
a system docker-registry service? stop it (systemctl disable --now docker-registry) or set REGISTRY_PORT"
  fi
  mkdir -p "$REGISTRY_DIR/storage"
  local auth=""
  if [ -n "$REGISTRY_AUTH" ]; then
    need_cmd htpasswd apache2-utils
    case "$REGISTRY_AUTH" in *:*) ;; *) die "REGISTRY_AUTH must be user:password" ;; esac
    htpasswd -Bbn "${REGISTRY_AUTH%%:*}" "${REGISTRY_AUTH#*:}" > "$REGISTRY_DIR/htpasswd" \
      || die "htpasswd failed"
    auth="auth:
  htpasswd:
    realm: shoal-testnet
    path: $REGISTRY_DIR/htpasswd"
  fi
  cat > "$REGISTRY_CONFIG" <<EOF
version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  secret: shoal-testnet
$auth
EOF
  printf '\n==== %s starting docker-registry on %s\n' "$(date -Is)" "$REGISTRY_ADDR" >> "$REGISTRY_LOG"
  # docker-registry reads REGISTRY_* variables as config overrides: keep ours from it.
  local unset_env=() v
  for v in $(compgen -e | grep '^REGISTRY_' || true); do unset_env+=(-u "$v"); done
  setsid env "${unset_env[@]}" docker-registry serve "$REGISTRY_CONFIG" >> "$REGISTRY_LOG" 2>&1 < /dev/null &
  echo $! > "$REGISTRY_PIDFILE"
  local i
  for i in $(seq 1 200); do
    if ! registry_pid >/dev/null; then
      tail -n 20 "$REGISTRY_LOG" >&2
      die "docker-registry exited at start (log: $REGISTRY_LOG)"
    fi
    if answers; then
      log "registry at http://$REGISTRY_ADDR (pid $(registry_pid), log $REGISTRY_LOG)"
      return 0
    fi
    sleep 0.05
  done
  tail -n 20 "$REGISTRY_LOG" >&2
  cmd_stop
  die "docker-registry did not answer on $REGISTRY_ADDR within 10s"
}

cmd_stop() {
  local pid
  if pid="$(registry_pid)"; then
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      pid_alive "$pid" || break
      sleep 0.05
    done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    log "registry stopped"
  fi
  rm -f "$REGISTRY_PIDFILE"
}

cmd_status() {
  registry_pid >/dev/null && answers || { log "registry not running"; return 1; }
  log "registry at http://$REGISTRY_ADDR (pid $(registry_pid))"
}

# push SRC REPO:TAG [SRC_TAG]: SRC is an OCI layout dir or an OCI layout tar.
cmd_push() {
  [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: testnet/registry.sh push <oci-layout-dir|oci-layout.tar> <repo:tag> [src-tag]"
  local src="$1" dest="$2" src_tag="${3:-}" transport
  need_cmd skopeo skopeo
  registry_pid >/dev/null && answers || die "the registry is not running (testnet/registry.sh start)"
  if [ -d "$src" ]; then
    [ -f "$src/index.json" ] || die "$src is not an OCI image layout (no index.json)"
    transport="oci:$src"
  elif [ -f "$src" ]; then
    transport="oci-archive:$src"
  else
    die "$src: no such OCI layout dir or archive"
  fi
  [ -n "$src_tag" ] && transport="$transport:$src_tag"
  local digest_file; digest_file="$(mktemp)"
  local creds=()
  [ -n "$REGISTRY_AUTH" ] && creds=(--dest-creds "$REGISTRY_AUTH")
  skopeo copy --all --quiet --dest-tls-verify=false --digestfile "$digest_file" "${creds[@]}" \
    "$transport" "docker://$REGISTRY_ADDR/$dest" \
    || { rm -f "$digest_file"; die "skopeo copy $transport -> $REGISTRY_ADDR/$dest failed"; }
  log "pushed $REGISTRY_ADDR/$dest $(cat "$digest_file")"
  rm -f "$digest_file"
}

cmd_seed() {
  local archive="$RUN_DIR/busybox-image.tar"
  if [ ! -f "$archive" ]; then
    "$TESTNET_DIR/busybox-image.sh" "$archive" || die "busybox-image.sh failed"
  fi
  cmd_push "$archive" "$BUSYBOX_REF" "shoal.test/busybox:1"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  push) shift; cmd_push "$@" ;;
  seed) cmd_seed ;;
  *) die "usage: testnet/registry.sh start|stop|status|push <src> <repo:tag> [src-tag]|seed" ;;
esac
