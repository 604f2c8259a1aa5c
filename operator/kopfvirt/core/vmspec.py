"""A VirtualMachine as the core sees it: the typed spec plus what follows from it.

The CRD schema refuses most bad input at admission; `parse` adds the checks that need
more than one field (disk targets, hugepage sizes, CPU totals) and repeats the few the
core relies on, so a spec that slipped past fails with a field-named message instead of
producing a broken domain.
"""

from __future__ import annotations

import dataclasses
import hashlib

from ..api.schema import SpecError, from_dict
from ..api.virtualmachine import Disk, VirtualMachineSpec
from . import quantity

__all__ = ["SpecError", "VM", "domain_name", "parse"]

MIN_MEMORY = 16 * 2**20
MAX_MEMORY = 16 * 2**40  # beyond any host's, and libvirt's KiB count stays an unsigned long
MAX_VCPUS = 256
_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd"}


def domain_name(namespace: str, name: str) -> str:
    """namespace_name: unique per node, and a name an admin recognises in virsh."""
    return f"{namespace}_{name}"


@dataclasses.dataclass(frozen=True)
class VM:
    namespace: str
    name: str
    uid: str
    spec: VirtualMachineSpec
    memory_bytes: int
    targets: dict[str, str]  # disk name -> device name (vda, sdb, ...)

    @property
    def domain_name(self) -> str:
        return domain_name(self.namespace, self.name)

    @property
    def vcpus(self) -> int:
        c = self.spec.cpu
        return c.sockets * c.cores * c.threads

    @property
    def run_strategy(self) -> str:
        return self.spec.run_strategy

    def mac_address(self, interface: str) -> str:
        """Stable across restarts and nodes: derived from the VM's UID and the interface."""
        explicit = next((i.mac_address for i in self.spec.interfaces if i.name == interface), None)
        if explicit:
            return explicit
        digest = hashlib.sha256(f"{self.uid}/{interface}".encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _device_names(prefix: str):
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        yield prefix + a
    for a in letters:
        for b in letters:
            yield prefix + a + b


def _assign_targets(disks: list[Disk]) -> dict[str, str]:
    targets: dict[str, str] = {}
    used: dict[str, str] = {}
    for i, d in enumerate(disks):
        if d.target:
            if d.target in used:
                raise SpecError(f"spec.disks[{i}].target", f"{d.target} is already the target of disk {used[d.target]}")
            used[d.target] = d.name
            targets[d.name] = d.target
    for d in disks:
        if d.name in targets:
            continue
        bus = "sata" if d.cloud_init else d.bus
        target = next(t for t in _device_names(_PREFIX[bus]) if t not in used)
        used[target] = d.name
        targets[d.name] = target
    return targets


def parse(namespace: str, name: str, uid: str, spec: dict) -> VM:
    typed = from_dict(VirtualMachineSpec, spec)
    try:
        memory = quantity.to_bytes(typed.memory.size)
    except ValueError as e:
        raise SpecError("spec.memory.size", str(e)) from None
    if memory < MIN_MEMORY:
        raise SpecError("spec.memory.size", f"must be at least 16Mi, not {typed.memory.size}")
    if memory > MAX_MEMORY:
        raise SpecError("spec.memory.size", f"must be at most 16Ti, not {typed.memory.size}")
    if typed.memory.hugepages:
        page = quantity.to_bytes(typed.memory.hugepages.page_size)
        if memory % page:
            raise SpecError("spec.memory.size", f"{typed.memory.size} is not a multiple of the "
                                                f"{typed.memory.hugepages.page_size} hugepage size")
    vcpus = typed.cpu.sockets * typed.cpu.cores * typed.cpu.threads
    if vcpus > MAX_VCPUS:
        raise SpecError("spec.cpu", f"sockets x cores x threads is {vcpus}, more than {MAX_VCPUS}")
    for i, d in enumerate(typed.disks):
        sources = [s for s in ("image", "pool", "empty", "cloud_init") if getattr(d, s) is not None]
        if len(sources) != 1:
            raise SpecError(f"spec.disks[{i}]", "must have exactly one of image, pool, empty or cloudInit")
        if d.empty:
            try:
                quantity.to_bytes(d.empty.size)
            except ValueError as e:
                raise SpecError(f"spec.disks[{i}].empty.size", str(e)) from None
    if len({d.name for d in typed.disks}) != len(typed.disks):
        raise SpecError("spec.disks", "two disks have the same name")
    named: set[str] = set()
    for i, h in enumerate(typed.host_devices):
        if (h.resource_name is None) == (h.device is None):
            raise SpecError(f"spec.hostDevices[{i}]", "needs exactly one of resourceName or device")
        if h.device and h.device in named:
            raise SpecError(f"spec.hostDevices[{i}].device", f"{h.device} is asked for twice")
        named.add(h.device)
    if len({h.name for h in typed.host_devices}) != len(typed.host_devices):
        raise SpecError("spec.hostDevices", "two host devices have the same name")
    return VM(namespace=namespace, name=name, uid=uid, spec=typed, memory_bytes=memory,
              targets=_assign_targets(typed.disks))
