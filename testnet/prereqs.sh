#!/usr/bin/env bash
# Install what the testnet and the end-to-end tests need (apt-get, only when missing) and fail
# loudly when something cannot be had: root, iproute2, nftables, iptables, runc, busybox-static,
# util-linux (nsenter), curl, docker-registry, skopeo, umoci, apache2-utils (htpasswd),
# containernetworking-plugins (/usr/lib/cni: the pod network), prometheus (promtool: checks the
# agents' /metrics), pkg-config and libseccomp-dev (building shoal), and kubectl at /usr/bin/kubectl
# (not installed here).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_prereqs
log "prerequisites present: $(for p in $PREREQS $PREREQ_FILES; do printf '%s ' "${p%%:*}"; done)kubectl"
