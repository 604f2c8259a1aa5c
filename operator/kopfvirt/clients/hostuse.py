"""Read what the host uses of its PCI functions: its mounts, swap and default route from
a proc root, its block devices and interfaces from a sysfs root (core/hostuse.py judges).

The proc root must show the host's PID 1 (normally /proc of a pod with the host's /proc
mounted, or hostPID): <proc>/1/mountinfo is the host's mount namespace, <proc>/1/net/route
its network namespace, whatever namespaces the agent itself runs in. Interfaces are looked
up in <sysfs>/class/net, which lists the namespace sysfs was mounted in: the host's /sys.
A file that cannot be read makes every device unassignable rather than free.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..core import hostuse
from ..core.pci import Host

log = logging.getLogger("kopfvirt.clients.hostuse")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _listdir(path: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def block_devices(sysfs_root: str | Path) -> list[hostuse.BlockDevice]:
    """Every entry of <sysfs>/dev/block (MAJ:MIN -> the device's directory), with its
    slaves and device-mapper name. An NVMe multipath head lives under
    devices/virtual/nvme-subsystem/nvme-subsysN, whose nvmeN links lead to its controllers."""
    out = []
    for link in sorted((Path(sysfs_root) / "dev" / "block").glob("*:*")):
        path = Path(os.path.realpath(link))
        paths = [str(path)]
        if hostuse.pci_address_in(str(path)) is None:
            for parent in list(path.parents)[:2]:
                if parent.name.startswith("nvme-subsys"):
                    paths += sorted(os.path.realpath(c) for c in parent.glob("nvme[0-9]*") if c.is_symlink())
        try:
            dm_name = (path / "dm" / "name").read_text().strip() or None
        except OSError:
            dm_name = None
        out.append(hostuse.BlockDevice(path.name, link.name, tuple(paths), _listdir(path / "slaves"), dm_name))
    return out


def _interface_functions(net: Path, seen: set[str]) -> set[str]:
    """The PCI functions under an interface: its device's, or (a bond, bridge or VLAN)
    those of its lower_* interfaces."""
    path = os.path.realpath(net)
    if path in seen:
        return set()
    seen.add(path)
    device = os.path.realpath(os.path.join(path, "device"))
    found = {a for a in (hostuse.pci_address_in(device), hostuse.pci_address_in(path)) if a}
    if found:
        return found
    return set().union(*(_interface_functions(lower, seen) for lower in sorted(Path(path).glob("lower_*"))))


def read(sysfs_root: str | Path, proc_root: str | Path, drivers: frozenset[str] = frozenset()) -> Host:
    proc = Path(proc_root)
    try:
        mounts = hostuse.parse_mountinfo((proc / "1" / "mountinfo").read_text())
        swaps = hostuse.parse_swaps((proc / "swaps").read_text())
        routes = hostuse.default_route_interfaces((proc / "1" / "net" / "route").read_text())
    except OSError as e:
        _warn_once(f"what the host uses cannot be read: {e.filename}: {e.strerror}; no device is assignable")
        return Host(drivers=drivers, unknown=f"{e.filename}: {e.strerror}")
    uses, unresolved = hostuse.block_uses(block_devices(sysfs_root), mounts, swaps)
    for name in unresolved:
        _warn_once(f"swap partition {name} was not found in {sysfs_root}/dev/block: its disk is not known")
    net = Path(sysfs_root) / "class" / "net"
    interfaces = {i: _interface_functions(net / i, set()) for i in routes}
    for interface, functions in interfaces.items():
        if not functions and not (net / interface).exists():
            _warn_once(f"the default route's interface {interface} is not in {net} (is it the host's sysfs?)")
    return Host(uses={**hostuse.route_uses(interfaces), **uses}, drivers=drivers)
