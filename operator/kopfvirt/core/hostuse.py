"""What the host itself uses of its PCI functions (pure): the disks under its mounted
filesystems, swap and md/LVM/dm volumes, and the NIC of its default route.

A permit names a model (vendor:device) or a class, and a server's boot disk or management
port is often the very model of the data disk or NIC meant for VMs; so what the host uses
is read from the host itself and refuses a device whatever the permits say. The facts come
from text the kernel writes (the host's /proc/1/mountinfo, /proc/swaps, /proc/1/net/route)
and from sysfs paths, which name every device on the way from a block device or interface
to its PCI function (.../0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1): the deepest PCI
address in a path is the function. Stacked block devices (dm, md) are followed down their
slaves/ links, as the kernel records them for LVM, dm-crypt, multipath and RAID alike.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")
_OCTAL = re.compile(r"\\([0-7]{3})")
RTF_UP = 0x1


def _unescape(text: str) -> str:
    """The kernel writes a space in a path as \\040 (tab \\011, newline \\012, backslash \\134)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def pci_address_in(path: str) -> str | None:
    """The PCI function a sysfs device path leads through last (bridges come before it)."""
    return next((p for p in reversed(path.split("/")) if _PCI_ADDRESS.match(p)), None)


@dataclasses.dataclass(frozen=True)
class Mount:
    devnum: str         # MAJ:MIN of its filesystem; major 0: no block device says so (tmpfs, btrfs, nfs)
    mount_point: str
    fstype: str
    source: str         # /dev/nvme0n1p2, /dev/mapper/vg-root, tmpfs, server:/export ...


def parse_mountinfo(text: str) -> list[Mount]:
    """proc(5) mountinfo: ID, parent ID, MAJ:MIN, root, mount point, options, optional
    fields up to a lone "-", then type, source, super options. Broken lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(Mount(fields[2], _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
        except (ValueError, IndexError):
            continue
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The swap partitions of /proc/swaps (Filename Type Size Used Priority); a swap file
    is on a mounted filesystem, which the mounts already cover."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "partition":
            out.append(_unescape(fields[0]))
    return out


def default_route_interfaces(text: str) -> list[str]:
    """The interfaces of /proc/net/route's default routes (destination and mask 0, up)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        try:
            default = fields[1] == "00000000" and fields[7] == "00000000" and int(fields[3], 16) & RTF_UP
        except (IndexError, ValueError):
            continue
        if default and fields[0] not in out:
            out.append(fields[0])
    return out


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    """One entry of sysfs's dev/block, as the client reads it."""

    name: str                   # nvme0n1p3, dm-0, md127
    devnum: str                 # 259:3
    paths: tuple[str, ...]      # its resolved sysfs path; for an NVMe multipath head also its controllers'
    slaves: tuple[str, ...] = ()    # what a dm or md device is built on, by name
    dm_name: str | None = None      # vg-root (dm/name)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.dm_name})" if self.dm_name else self.name

    @property
    def addresses(self) -> set[str]:
        return {a for p in self.paths if (a := pci_address_in(p))}


def _down(dev: BlockDevice, by_name: dict[str, BlockDevice], seen: set[str]) -> Iterator[BlockDevice]:
    """`dev` and everything below it: through slaves/, and from a partition to its disk
    (the directory it is in: a partition of an md or dm device has no slaves/ of its own)."""
    if dev.name in seen:
        return
    seen.add(dev.name)
    yield dev
    disk = dev.paths[0].rstrip("/").split("/")[-2] if dev.paths else ""
    for name in (*dev.slaves, disk):
        if name in by_name:
            yield from _down(by_name[name], by_name, seen)


def _by_source(source: str, by_name: dict[str, BlockDevice], by_dm: dict[str, BlockDevice]) -> BlockDevice | None:
    """A device by its /dev name: /dev/dm-1, /dev/sdb3, /dev/mapper/vg-swap."""
    if source.startswith("/dev/mapper/"):
        return by_dm.get(source.removeprefix("/dev/mapper/"))
    if source.startswith("/dev/"):
        return by_name.get(source.removeprefix("/dev/"))
    return None


def block_uses(devices: list[BlockDevice], mounts: list[Mount], swaps: list[str]) -> tuple[dict[str, str], list[str]]:
    """PCI address -> how the host uses it through its block devices, and the swap
    partitions no device was found for. Mounts first (shortest mount point first: "/"
    names a disk better than a bind mount of one of its directories), then swap, then
    membership of any dm or md device, mounted or not (an LVM volume group, a RAID)."""
    by_name = {d.name: d for d in devices}
    by_devnum = {d.devnum: d for d in devices}
    by_dm = {d.dm_name: d for d in devices if d.dm_name}
    uses: dict[str, str] = {}

    def mark(top: BlockDevice, what: str) -> None:
        for dev in _down(top, by_name, set()):
            via = f" via {top.label}" if dev is not top else ""
            for address in sorted(dev.addresses):
                uses.setdefault(address, f"{dev.name} holds {what}{via}")

    for m in sorted(mounts, key=lambda m: (len(m.mount_point), m.mount_point)):
        # Major 0: no block device in the MAJ:MIN (btrfs reports an anonymous one), so the source.
        dev = _by_source(m.source, by_name, by_dm) if m.devnum.startswith("0:") else by_devnum.get(m.devnum)
        if dev:
            mark(dev, f"the filesystem mounted at {m.mount_point}")
    unresolved = []
    for name in swaps:
        dev = _by_source(name, by_name, by_dm)
        if dev:
            mark(dev, f"swap ({name})")
        else:
            unresolved.append(name)
    for holder in devices:
        for name in holder.slaves:
            if name in by_name:
                mark(by_name[name], f"part of {holder.label}")
    return uses, unresolved


def route_uses(interfaces: dict[str, set[str]]) -> dict[str, str]:
    """PCI address -> use, for the default route's interfaces and the functions under each
    (a bond's or bridge's lower devices included)."""
    uses: dict[str, str] = {}
    for interface, addresses in interfaces.items():
        for address in sorted(addresses):
            uses.setdefault(address, f"it carries the host's default route ({interface})")
    return uses
