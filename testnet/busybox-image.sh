#!/usr/bin/env bash
# Build the OCI image `shoal.test/busybox:1` from Debian's busybox-static, as an OCI image
# layout tar at OUT (default testnet/run/busybox-image.tar).
#
#   testnet/busybox-image.sh [OUT.tar]
#
# One layer: /bin/busybox plus a symlink in /bin for every applet it lists (sh, sleep, httpd,
# wget, nc, ...), /etc/passwd and /etc/group (root, nobody), /tmp (1777), /root, /var/www.
# Config: Cmd ["sh"], Env PATH. Deterministic: fixed mtimes, sorted entries, numeric owners
# 0:0, `gzip -n`, digests computed with sha256sum; the same busybox binary gives the same tar.
# Needs only coreutils, GNU tar, gzip and /bin/busybox (package busybox-static); no root.
set -euo pipefail

OUT="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run/busybox-image.tar}"
REF="shoal.test/busybox:1"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
EPOCH=1704067200 # 2024-01-01T00:00:00Z
CREATED="2024-01-01T00:00:00Z"

die() { printf 'busybox-image: error: %s\n' "$*" >&2; exit 1; }

[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install Debian's busybox-static (apt-get install busybox-static)"
"$BUSYBOX" --list >/dev/null 2>&1 || die "$BUSYBOX --list failed (is it busybox?)"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>/dev/null | grep -q '=>'; then
  die "$BUSYBOX is dynamically linked: the image needs busybox-static"
fi
for c in tar gzip sha256sum; do command -v "$c" >/dev/null 2>&1 || die "$c not found"; done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar needed (for --sort=name)"

case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64) ARCH=arm64 ;;
  *) ARCH="$(uname -m)" ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
umask 022
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/var/www"
cp "$BUSYBOX" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  case "$applet" in busybox|*/*|"") continue ;; esac
  ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0755 "$root" "$root/bin" "$root/etc" "$root/var" "$root/var/www"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"

# Reproducible tar: sorted names, fixed mtimes, numeric root owner, no atime/ctime.
det_tar() {
  tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
      --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@"
}

layout="$work/layout"
blobs="$layout/blobs/sha256"
mkdir -p "$blobs"
det_tar -C "$root" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"
layer_digest="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
layer_size="$(stat -c %s "$work/layer.tar.gz")"
mv "$work/layer.tar.gz" "$blobs/$layer_digest"

# blob NAME CONTENT: stores CONTENT as a blob; sets DIGEST and SIZE.
blob() {
  printf '%s' "$1" > "$work/blob"
  DIGEST="$(sha256sum "$work/blob" | cut -d' ' -f1)"
  SIZE="$(stat -c %s "$work/blob")"
  mv "$work/blob" "$blobs/$DIGEST"
}

blob "{\"created\":\"$CREATED\",\"architecture\":\"$ARCH\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"sh\"],\"WorkingDir\":\"/\"},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"$CREATED\",\"created_by\":\"testnet/busybox-image.sh\"}]}"
config_digest="$DIGEST"; config_size="$SIZE"

blob "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}"
manifest_digest="$DIGEST"; manifest_size="$SIZE"

printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$ARCH" "$REF" "$REF" > "$layout/index.json"

chmod -R u=rwX,go=rX "$layout"
mkdir -p "$(dirname "$OUT")"
det_tar -C "$layout" -cf "$OUT.tmp" oci-layout index.json blobs
mv "$OUT.tmp" "$OUT"
printf '%s sha256:%s (%s bytes compressed layer) -> %s\n' "$REF" "$manifest_digest" "$layer_size" "$OUT" >&2
