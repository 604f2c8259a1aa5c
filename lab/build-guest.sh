#!/usr/bin/env bash
# Build the lab guest from Debian packages: the cloud kernel plus a busybox initramfs
# whose /init prints "kopfvirt-heartbeat N" on the serial console once a second.
# Cached under $HOME; a second run builds nothing.
set -euo pipefail

CACHE="${KOPFVIRT_CACHE:-$HOME/.cache/kopfvirt}"
OUT="$CACHE/guest"
[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && { echo "lab guest: cached in $OUT"; exit 0; }

WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
KPKG="$(apt-cache depends linux-image-cloud-amd64 | sed -nE 's/^ *Depends: (linux-image-[0-9].*)$/\1/p' | head -1)"
[ -n "$KPKG" ] || { echo "error: no linux-image-cloud-amd64 in the apt lists (run apt-get update)" >&2; exit 2; }
apt-get download -qq "$KPKG" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

mkdir -p root/bin root/proc root/sys root/dev
cp bb/bin/busybox root/bin/busybox
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "kopfvirt lab guest up: $(uname -r)"
i=0
while true; do
  i=$((i + 1))
  echo "kopfvirt-heartbeat $i"
  sleep 1
done
INIT
chmod +x root/init
mkdir -p "$OUT.tmp"
(cd root && find . | cpio -o -H newc --quiet | gzip -9) > "$OUT.tmp/initrd.img"
cp kernel/boot/vmlinuz-* "$OUT.tmp/vmlinuz"
echo "$KPKG" > "$OUT.tmp/kernel-package"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
echo "lab guest: built into $OUT ($KPKG)"
