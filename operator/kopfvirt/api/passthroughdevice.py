"""PassthroughDevice, kopfvirt.io/v1alpha1 (cluster-scoped): one PCI function of a node.

The node agent creates one per function it finds in sysfs and keeps its status current;
the admin's part is the spec (or the cluster rules in the ConfigMap kopfvirt-passthrough).
"""

from __future__ import annotations

import dataclasses

from .schema import field
from .virtualmachine import Condition


@dataclasses.dataclass(kw_only=True)
class PassthroughDeviceSpec:
    """What the admin allows; empty: the cluster's passthrough rules decide."""

    permitted: bool | None = field(None, description=(
        "true: VMs may have this device; false: never. Unset: permitted if a passthrough rule matches "
        "(nothing is passed through unless permitted)."))
    resource_name: str | None = field(None, min_length=1, max_length=253, description=(
        "The name VMs ask for like devices by (e.g. nvidia.com/H100); unset: a matching rule's, "
        "else vendor:device (e.g. 10de:2330)."))


@dataclasses.dataclass(kw_only=True)
class Holder:
    namespace: str = field(description="The VM's namespace.")
    name: str = field(description="The VM's name.")
    uid: str = field(description="The VM's UID.")


@dataclasses.dataclass(kw_only=True)
class PassthroughDeviceStatus:
    """The function as its node's agent sees it in sysfs, and who holds it."""

    node: str | None = field(None, description="The node the device is in.")
    address: str | None = field(None, description="PCI address: domain:bus:slot.function, e.g. 0000:01:00.0.")
    vendor_id: str | None = field(None, json="vendorID", description="PCI vendor ID (hex), e.g. 10de.")
    vendor_name: str | None = field(None, description="The vendor's name from the pci.ids database.")
    device_id: str | None = field(None, json="deviceID", description="PCI device ID (hex), e.g. 2330.")
    device_name: str | None = field(None, description="The device's name from the pci.ids database.")
    class_id: str | None = field(None, json="classID", description="PCI class code (hex), e.g. 030200.")
    class_name: str | None = field(None, description="The class's name from the pci.ids database.")
    driver: str | None = field(None, description="The driver bound now (none: unbound).")
    host_driver: str | None = field(None, description=(
        "While the agent has it on vfio-pci for a VM: the host driver it took it from, given back "
        "when no running domain uses its group."))
    numa_node: int | None = field(None, description="The NUMA node it is attached to, when the platform says.")
    iommu_group: int | None = field(None, description="Its IOMMU group; none when the node has no IOMMU.")
    iommu_group_members: list[str] = field([], description="The other functions of its IOMMU group.")
    physical_function: str | None = field(None, description="SR-IOV: the physical function of this virtual one.")
    virtual_functions: list[str] = field([], description="SR-IOV: the enabled virtual functions of this one.")
    permitted: bool | None = field(None, description="Whether VMs may have it (spec, else the rules).")
    permitted_by: str | None = field(None, description="What decided: spec, rules[i], or default (not permitted).")
    resource_name: str | None = field(None, description="The resource name VMs ask for it by.")
    assignable: bool | None = field(None, description="Whether it can be passed through on its node now.")
    reason: str | None = field(None, description=(
        "Why (not) assignable: Assignable, NoIOMMU, NoVFIO, Bridge, SRIOVPhysicalFunction, InUseByHost, "
        "GroupShared."))
    message: str | None = field(None, description="Why (not) assignable, for a human.")
    holder: Holder | None = field(None, description="The VM it is allocated to (also for IOMMU group mates).")
    observed_generation: int | None = field(None, description="The spec generation the agent has applied.")
    conditions: list[Condition] = field([], list_map_keys=("type",), description=(
        "Ready: the agent has published the device for its spec (reason and message: whether it is "
        "assignable and why). Assignable: whether a VM could have it now, as reason and message say."))
