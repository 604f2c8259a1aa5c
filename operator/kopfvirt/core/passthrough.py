"""Which PassthroughDevices a VM may have, and which it gets (pure).

Permission: a device's own spec.permitted wins; otherwise the first cluster rule (the
ConfigMap kopfvirt-passthrough, Helm `.Values.passthrough.rules`) that matches its
vendor:device, class or address decides: it permits (and may name the resource) or, with
`exclude: true`, refuses. Whatever permits a device, the host's own use refuses it
(core/pci.py, core/hostuse.py), and so does a driver in the ConfigMap's `hostDrivers`.
Allocation takes free, permitted, assignable devices on one node and holds their IOMMU
group mates with them: VFIO hands a group to one guest.
"""

from __future__ import annotations

import dataclasses
import re

import yaml

from ..api.schema import SpecError
from .pci import HOST_FREE_DRIVERS
from .vmspec import VM

CONFIG_MAP = "kopfvirt-passthrough"
_VENDOR_DEVICE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_CLASS = re.compile(r"^[0-9a-f]{2}([0-9a-f]{2}([0-9a-f]{2})?)?$")
_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")   # domain:bus:slot.function
_DRIVER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")                     # as modules and drivers are named
_RULE_KEYS = ("vendorDevice", "class", "addresses", "exclude", "resourceName")


@dataclasses.dataclass(frozen=True)
class Rule:
    vendor_device: str | None = None   # "10de:2330"
    class_prefix: str | None = None    # "03", "0302" or "030200"
    resource_name: str | None = None
    addresses: tuple[str, ...] = ()    # only these functions ("0000:3b:00.0"), when given
    exclude: bool = False              # a match refuses instead of permitting

    def matches(self, vendor_id: str, device_id: str, class_id: str, address: str = "") -> bool:
        if self.addresses and address not in self.addresses:
            return False
        if self.vendor_device and self.vendor_device != f"{vendor_id}:{device_id}":
            return False
        return not self.class_prefix or class_id.startswith(self.class_prefix)


def _addresses(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(where, "must be a non-empty list of PCI addresses (dddd:bb:dd.f)")
    out = []
    for j, a in enumerate(value):
        a = str(a).lower()
        if not _ADDRESS.match(a):
            raise SpecError(f"{where}[{j}]", f"{a!r} is not a PCI address dddd:bb:dd.f (hex; slot up to 1f, "
                                             f"function up to 7), e.g. 0000:3b:00.0")
        out.append(a)
    return tuple(out)


def parse_rules(text: str | None) -> list[Rule]:
    """The `rules` key of the ConfigMap: a YAML list of {vendorDevice, class, addresses,
    exclude, resourceName}; a rule needs vendorDevice, class or addresses, and all it
    names must match."""
    data = yaml.safe_load(text or "") or []
    if not isinstance(data, list):
        raise SpecError("rules", "must be a list")
    out = []
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not set(r) <= set(_RULE_KEYS):
            raise SpecError(f"rules[{i}]", f"must be an object of {', '.join(_RULE_KEYS)}")
        vd, cls = str(r.get("vendorDevice") or "").lower() or None, str(r.get("class") or "").lower() or None
        addresses = _addresses(r["addresses"], f"rules[{i}].addresses") if "addresses" in r else ()
        if not vd and not cls and not addresses:
            raise SpecError(f"rules[{i}]", "needs vendorDevice, class or addresses")
        if vd and not _VENDOR_DEVICE.match(vd):
            raise SpecError(f"rules[{i}].vendorDevice", f"{vd!r} is not vvvv:dddd (hex)")
        if cls and not _CLASS.match(cls):
            raise SpecError(f"rules[{i}].class", f"{cls!r} is not 2, 4 or 6 hex digits")
        exclude = r.get("exclude", False)
        if not isinstance(exclude, bool):
            raise SpecError(f"rules[{i}].exclude", f"{exclude!r} is not true or false")
        if exclude and r.get("resourceName"):
            raise SpecError(f"rules[{i}].resourceName", "an exclude rule permits nothing to name")
        out.append(Rule(vd, cls, r.get("resourceName"), addresses, exclude))
    return out


def parse_host_drivers(text: str | None) -> frozenset[str]:
    """The `hostDrivers` key of the ConfigMap: a YAML list of driver names (nvme, ahci,
    megaraid_sas): a device bound to one stays with the host whatever permits it."""
    data = yaml.safe_load(text or "") or []
    if not isinstance(data, list):
        raise SpecError("hostDrivers", "must be a list of driver names, e.g. [nvme, ahci, megaraid_sas]")
    out = set()
    for i, d in enumerate(data):
        if not isinstance(d, str) or not _DRIVER.match(d):
            raise SpecError(f"hostDrivers[{i}]", f"{d!r} is not a driver name (as in /sys/bus/pci/drivers)")
        if d in HOST_FREE_DRIVERS:
            raise SpecError(f"hostDrivers[{i}]", f"{d} is the driver passthrough binds devices to, not a host's")
        out.add(d)
    return frozenset(out)


def effective(spec: dict, vendor_id: str, device_id: str, class_id: str,
              rules: list[Rule], address: str = "") -> tuple[bool, str, str]:
    """(permitted, by what, resource name) of a device; the resource name defaults to
    vvvv:dddd. The spec wins; else the first matching rule: it permits, or refuses if it
    excludes."""
    rule = next(((i, r) for i, r in enumerate(rules) if r.matches(vendor_id, device_id, class_id, address)), None)
    resource = spec.get("resourceName") or (rule and rule[1].resource_name) or f"{vendor_id}:{device_id}"
    if spec.get("permitted") is not None:
        return bool(spec["permitted"]), "spec", resource
    if rule:
        return not rule[1].exclude, f"rules[{rule[0]}]", resource
    return False, "default", resource


@dataclasses.dataclass(frozen=True)
class Device:
    """What allocation needs of a PassthroughDevice object."""

    name: str
    node: str
    address: str
    resource_name: str
    permitted: bool
    assignable: bool
    reason: str                          # why (not) assignable: "Reason: message"
    iommu_group: int | None
    holder: tuple[str, str, str] | None    # (namespace, name, uid)

    @classmethod
    def of(cls, obj: dict) -> Device:
        s = obj.get("status") or {}
        h = s.get("holder")
        why = ": ".join(filter(None, (s.get("reason"), s.get("message"))))
        return cls(obj["metadata"]["name"], s.get("node", ""), s.get("address", ""), s.get("resourceName", ""),
                   bool(s.get("permitted")), bool(s.get("assignable")), why,
                   s.get("iommuGroup"), (h["namespace"], h["name"], h["uid"]) if h else None)


@dataclasses.dataclass(frozen=True)
class Allocation:
    node: str
    assignments: list[tuple[str, str]]   # (request name, device name), in spec order
    hold: list[str]                      # the assigned devices and their IOMMU group mates


class Refusal(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _group(d: Device, devices: list[Device]) -> list[Device]:
    if d.iommu_group is None:
        return [d]
    return [m for m in devices if m.node == d.node and m.iommu_group == d.iommu_group]


def _why_not(d: Device, devices: list[Device], uid: str) -> tuple[str, str] | None:
    """Why `d` cannot go to the VM `uid` now."""
    if not d.permitted:
        return "DeviceNotPermitted", f"{d.name} is not permitted for VMs (spec.permitted or a passthrough rule)"
    if not d.assignable:
        return "DeviceNotAssignable", f"{d.name} cannot be passed through: {d.reason}"
    for m in sorted(_group(d, devices), key=lambda m: m.name != d.name):  # itself first
        if m.holder and m.holder[2] != uid:
            whose = f"VM {m.holder[0]}/{m.holder[1]}"
            if m.name == d.name:
                return "DeviceHeld", f"{d.name} is held by {whose}"
            return "DeviceHeld", f"{d.name} shares IOMMU group {d.iommu_group} with {m.name}, held by {whose}"
    return None


def allocate(vm: VM, devices: list[Device], nodes: list[str]) -> Allocation:
    """Devices for every spec.hostDevices request, all on one of `nodes` (those the VM may
    run on); the ones the VM already holds first. Raises Refusal naming the request."""
    by_name = {d.name: d for d in devices}
    candidates = sorted(nodes)
    for i, r in enumerate(vm.spec.host_devices):
        if r.device:
            d = by_name.get(r.device)
            if d is None:
                raise Refusal("DeviceNotFound", f"spec.hostDevices[{i}].device: PassthroughDevice {r.device} "
                                                f"does not exist")
            problem = _why_not(d, devices, vm.uid)
            if problem:
                raise Refusal(problem[0], f"spec.hostDevices[{i}].device: {problem[1]}")
            if d.node not in candidates:
                raise Refusal("DeviceNodeUnavailable", f"spec.hostDevices[{i}].device: {d.name} is on {d.node}, "
                                                       f"where the VM cannot run (not Ready, cordoned or not selected)")
            candidates = [d.node]
    wanted = {r.resource_name for r in vm.spec.host_devices if r.resource_name}
    # Nodes with the most devices of the wanted kinds first: the likeliest fit, and the
    # refusal a user learns most from when none fits.
    candidates.sort(key=lambda n: -sum(d.node == n and d.resource_name in wanted for d in devices))
    best: tuple[str, str] | None = None
    for node in candidates:
        try:
            return _on_node(vm, devices, node)
        except Refusal as e:
            best = best or (e.reason, str(e))
    if best is None:
        raise Refusal("NoNode", "no Ready node the VM may run on has PassthroughDevices")
    raise Refusal(*best)


def _on_node(vm: VM, devices: list[Device], node: str) -> Allocation:
    # Named devices first, so a resource request never picks one of them as well.
    taken: list[Device] = [d for r in vm.spec.host_devices if r.device for d in devices if d.name == r.device]
    assignments = []
    for i, r in enumerate(vm.spec.host_devices):
        if r.device:
            assignments.append((r.name, r.device))
            continue
        like = [d for d in devices if d.resource_name == r.resource_name]
        if not like:
            raise Refusal("ResourceNotFound", f"spec.hostDevices[{i}].resourceName: no PassthroughDevice has "
                                              f"resource name {r.resource_name}")
        here = [d for d in like if d.node == node and d not in taken]
        free = [d for d in here if _why_not(d, devices, vm.uid) is None]
        free.sort(key=lambda d: (not (d.holder and d.holder[2] == vm.uid), d.address))
        if len(free) < r.count:
            reasons = sorted({(_why_not(d, devices, vm.uid) or ("", "taken by another request"))[1] for d in here
                              if d not in free})
            raise Refusal("InsufficientDevices", f"spec.hostDevices[{i}].resourceName: {r.count} x {r.resource_name} "
                                                 f"wanted, {len(free)} free on {node}"
                                                 + (f" ({'; '.join(reasons)})" if reasons else ""))
        for d in free[:r.count]:
            taken.append(d)
            assignments.append((r.name, d.name))
    hold = sorted({m.name for d in taken for m in _group(d, devices)})
    return Allocation(node, assignments, hold)
