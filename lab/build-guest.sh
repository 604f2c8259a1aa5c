#!/usr/bin/env bash
# Build the lab guest from Debian packages: the cloud kernel plus a busybox initramfs
# whose /init prints "kopfvirt-heartbeat N" on the serial console once a second and
# powers off on ACPI power button (so graceful shutdown works), or by itself after N
# heartbeats when the kernel command line says kopfvirt.poweroff_after=N, and rewrites
# N MiB of memory with non-zero data every second with kopfvirt.dirty_mibps=N (a load
# that live migration must keep re-sending; zeros would be sent cheaply); with
# kopfvirt.shutdown_delay=N it powers off N seconds after the power button.
# With kopfvirt.disk_writer=vdX it first verifies the log on that disk ("kopfvirt-disk-verify
# ok N" or "... bad N"), then appends one record every 100 ms (block i: "kvw i <md5 of
# 'kvw i'>", written with fsync) and prints "kopfvirt-disk i" for every tenth: a record
# printed is on the disk, so a later verify that ends below it means a write was lost.
# Cached under $HOME; a second run builds nothing. Bump GUEST_VERSION when /init changes.
set -euo pipefail

CACHE="${KOPFVIRT_CACHE:-$HOME/.cache/kopfvirt}"
GUEST_VERSION=6
OUT="$CACHE/guest-v$GUEST_VERSION"
[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && { echo "lab guest: cached in $OUT"; exit 0; }

WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
KPKG="$(apt-cache depends linux-image-cloud-amd64 | sed -nE 's/^ *Depends: (linux-image-[0-9].*)$/\1/p' | head -1)"
[ -n "$KPKG" ] || { echo "error: no linux-image-cloud-amd64 in the apt lists (run apt-get update)" >&2; exit 2; }
apt-get download -qq "$KPKG" busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

mkdir -p root/bin root/proc root/sys root/dev root/etc root/lib/modules
cp bb/bin/busybox root/bin/busybox
for m in drivers/input/evdev.ko drivers/acpi/button.ko drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko \
         drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko \
         drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko; do
  cp kernel/lib/modules/*/kernel/$m root/lib/modules/
done
# busybox acpid runs /etc/acpi/PWRF/00000080 on the ACPI power button.
mkdir -p root/etc/acpi/PWRF
# With kopfvirt.shutdown_delay=N it takes N seconds to power off, as a real guest shutting
# down its services would.
cat > root/etc/acpi/PWRF/00000080 <<'PWRF'
#!/bin/sh
echo "kopfvirt lab guest: ACPI power button, powering off"
delay=$(sed -n 's/.*kopfvirt.shutdown_delay=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$delay" ] && sleep "$delay"
poweroff -f
PWRF
chmod +x root/etc/acpi/PWRF/00000080
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
insmod /lib/modules/evdev.ko 2>/dev/null
insmod /lib/modules/button.ko 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
acpid -c /etc/acpi -l /dev/null
echo "kopfvirt lab guest up: $(uname -r)"
limit=$(sed -n 's/.*kopfvirt.poweroff_after=\([0-9]*\).*/\1/p' /proc/cmdline)
dirty=$(sed -n 's/.*kopfvirt.dirty_mibps=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$dirty" ] && [ "$dirty" -gt 0 ]; then
  mkdir -p /run/dirty && mount -t tmpfs tmpfs /run/dirty
  dd if=/dev/urandom of=/run/dirty/seed bs=1M count="$dirty" 2>/dev/null
  echo "kopfvirt lab guest: dirtying $dirty MiB/s"
  (while true; do
     dd if=/run/dirty/seed of=/run/dirty/target bs=1M count="$dirty" conv=notrunc 2>/dev/null
     sleep 1
   done) &
fi
disk=$(sed -n 's/.*kopfvirt.disk_writer=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ -n "$disk" ]; then
  dev=/dev/$disk
  for t in 1 2 3 4 5 6 7 8 9 10; do [ -b "$dev" ] && break; sleep 1; done
  record() { printf 'kvw %d %s' "$1" "$(echo "kvw $1" | md5sum | cut -d' ' -f1)"; }
  n=0; bad=
  while true; do
    got=$(dd if="$dev" bs=512 skip=$((n + 1)) count=1 2>/dev/null | tr -d '\000')
    [ -z "$got" ] && break
    if [ "$got" != "$(record $((n + 1)))" ]; then bad=$((n + 1)); break; fi
    n=$((n + 1))
  done
  if [ -n "$bad" ]; then echo "kopfvirt-disk-verify bad $bad after $n"; else echo "kopfvirt-disk-verify ok $n"; fi
  (i=$n
   while true; do
     i=$((i + 1))
     record $i | dd of="$dev" bs=512 seek=$i conv=sync,fsync 2>/dev/null || { echo "kopfvirt-disk error $i"; i=$((i - 1)); sleep 1; continue; }
     [ $((i % 10)) = 0 ] && echo "kopfvirt-disk $i"
     sleep 0.1
   done) &
fi
i=0
while true; do
  i=$((i + 1))
  echo "kopfvirt-heartbeat $i"
  if [ -n "$limit" ] && [ "$i" -ge "$limit" ]; then
    echo "kopfvirt lab guest: powering off"
    poweroff -f
  fi
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
