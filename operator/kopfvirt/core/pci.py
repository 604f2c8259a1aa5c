"""PCI functions as sysfs shows them, and whether one can be handed to a VM (pure).

VFIO isolates by IOMMU group, not by function: every function of a group goes to vfio-pci
together (bridges aside), so a device is only as assignable as its group's other members
are free. The rules here say which, with a reason a user can act on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

VFIO_DRIVER = "vfio-pci"
HOST_FREE_DRIVERS = (None, VFIO_DRIVER, "pci-stub")  # drivers under which the host does not use a device


@dataclasses.dataclass(frozen=True)
class Function:
    """One PCI function of a node, as read from sysfs."""

    address: str                        # 0000:01:00.0
    vendor_id: str                      # 10de (lowercase hex, no 0x)
    device_id: str                      # 2330
    class_id: str                       # 030200
    driver: str | None = None           # bound driver, None if unbound
    numa_node: int | None = None        # None: the platform does not say
    iommu_group: int | None = None      # None: no IOMMU (or it is off)
    physical_function: str | None = None        # an SR-IOV VF's PF
    virtual_functions: tuple[str, ...] = ()     # an SR-IOV PF's enabled VFs
    interfaces_up: tuple[str, ...] = ()         # host network interfaces of it that are up
    driver_override: str | None = None          # the driver the next probe must bind
    boot_vga: bool = False                      # the VGA device the firmware booted on (the host's console)

    @property
    def is_bridge(self) -> bool:
        return self.class_id.startswith("06")  # host, ISA, PCI-to-PCI ... bridges


@dataclasses.dataclass(frozen=True)
class Host:
    """What the host uses beyond what a Function shows, read from the host (core/hostuse.py):
    these refuse a device whatever permits it (spec.permitted or a rule)."""

    uses: Mapping[str, str] = dataclasses.field(default_factory=dict)  # address -> how (mounts, swap, route)
    drivers: frozenset[str] = frozenset()   # the admin's hostDrivers: devices bound to them stay with the host
    unknown: str | None = None              # why the host's use could not be read: then nothing may go


@dataclasses.dataclass(frozen=True)
class Verdict:
    assignable: bool
    reason: str
    message: str


def object_name(node: str, address: str) -> str:
    """The PassthroughDevice's name: node and address, e.g. node-1-0000-01-00-0."""
    return f"{node}-{address.replace(':', '-').replace('.', '-')}".lower()


def group_of(fn: Function, functions: dict[str, Function]) -> list[Function]:
    """The functions VFIO must own for `fn` to be assigned: its IOMMU group, bridges aside."""
    if fn.iommu_group is None:
        return [fn]
    return sorted((f for f in functions.values() if f.iommu_group == fn.iommu_group and not f.is_bridge),
                  key=lambda f: f.address)


def _host_uses(fn: Function, permitted: bool, host: Host) -> str | None:
    """How the host uses `fn`, or None if it may be taken from the host."""
    if host.unknown:
        return f"what the host uses cannot be told ({host.unknown})"
    if fn.address in host.uses:
        return host.uses[fn.address]
    if fn.interfaces_up:
        return f"its network interface {', '.join(fn.interfaces_up)} is up on the host"
    if fn.boot_vga:
        return "it is the boot VGA device (the host's console)"
    if fn.driver in host.drivers:
        return f"it is bound to {fn.driver}, one of the host's drivers (hostDrivers of ConfigMap kopfvirt-passthrough)"
    if fn.driver not in HOST_FREE_DRIVERS and not permitted:
        return f"it is bound to {fn.driver} and not permitted for VMs"
    return None


def assess(fn: Function, functions: dict[str, Function], permitted: set[str], vfio_loaded: bool,
           node: str, host: Host = Host()) -> Verdict:
    """Whether `fn` can be passed through on `node`. `permitted`: addresses the admin lets
    VMs have (a group mate with a host driver must be among them); `host`: what the host
    uses, which no permit overrides (for `fn` and for every group mate)."""
    if fn.is_bridge:
        return Verdict(False, "Bridge", "a PCI bridge stays with the host")
    if fn.iommu_group is None:
        return Verdict(False, "NoIOMMU", f"{node} has no IOMMU groups: enable VT-d or AMD-Vi in firmware and "
                                         f"intel_iommu=on or amd_iommu=on on the kernel command line")
    if not vfio_loaded:
        return Verdict(False, "NoVFIO", f"the vfio-pci module is not loaded on {node} (modprobe vfio-pci)")
    if fn.virtual_functions:
        return Verdict(False, "SRIOVPhysicalFunction", f"its {len(fn.virtual_functions)} virtual functions depend on "
                                                       f"its host driver {fn.driver}; pass a virtual function instead")
    use = _host_uses(fn, True, host)
    if use:
        return Verdict(False, "InUseByHost", use)
    for mate in group_of(fn, functions):
        if mate.address == fn.address:
            continue
        use = _host_uses(mate, mate.address in permitted, host)
        if use:
            return Verdict(False, "GroupShared", f"IOMMU group {fn.iommu_group} also holds {mate.address}: {use}")
    return Verdict(True, "Assignable", f"IOMMU group {fn.iommu_group} can go to {VFIO_DRIVER}")
