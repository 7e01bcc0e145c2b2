#!/usr/bin/env bash
# Builds the image the Docker driver's tests run: `berth-test/busybox:latest`, a rootfs with
# busybox-static's /bin/busybox plus symlinks for its applets (sh, sleep, httpd, cat, ...).
# No registry is needed (`docker import` of a tarball). Idempotent: does nothing when the image
# already exists. Needs `docker` (a running engine) and /bin/busybox (Debian busybox-static).
set -euo pipefail

IMAGE="${BERTH_TEST_IMAGE:-berth-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "test image $IMAGE already present"
  exit 0
fi
if [ ! -x "$BUSYBOX" ]; then
  echo "error: $BUSYBOX not found (apt-get install busybox-static)" >&2
  exit 1
fi
if ! file_out="$(LC_ALL=C od -An -c -N4 "$BUSYBOX" | tr -d ' ')" || [ "$file_out" != '177ELF' ]; then
  echo "error: $BUSYBOX is not an ELF binary" >&2
  exit 1
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,var/www}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
# Every applet this busybox build has, as a symlink in /bin.
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo 'berth test' >"$root/var/www/index.html"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/sh"]' \
  - "$IMAGE" >/dev/null
echo "built test image $IMAGE"
