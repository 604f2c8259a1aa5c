"""VirtualMachine, kopfvirt.io/v1alpha1: the spec a user writes and the status we report."""

from __future__ import annotations

import dataclasses
from typing import Any

from .schema import field

QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # with max_length=63
RUN_STRATEGIES = ["Always", "RerunOnFailure", "Once", "Manual", "Halted"]
PHASES = ["Pending", "Scheduling", "Starting", "Running", "Paused", "Stopping", "Stopped",
          "Migrating", "Failed"]


@dataclasses.dataclass(kw_only=True)
class CPUFeature:
    name: str = field(description="A CPU feature flag as libvirt names it, e.g. avx2 or sse4.2.",
                      pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=63)  # a node label's name
    policy: str = field("require", enum=["require", "disable"],
                        description="require: the node's CPU must offer it (placement and migration check this); "
                                    "disable: hide it from the guest.")


@dataclasses.dataclass(kw_only=True)
class CPU:
    """The virtual CPU: topology and model."""

    sockets: int = field(1, minimum=1, maximum=16, description="CPU sockets.")
    cores: int = field(1, minimum=1, maximum=64, description="Cores per socket.")
    threads: int = field(1, minimum=1, maximum=8, description="Threads per core.")
    model: str | None = field(None, min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$", description=(
        "host-model (the node's CPU as a migratable model), host-passthrough (the node's CPU exactly; "
        "not migratable between unlike nodes) or a named libvirt model such as Skylake-Client or EPYC. "
        "Empty: the hypervisor's default model."))
    features: list[CPUFeature] = field([], max_items=64, list_map_keys=("name",),
                                       description="CPU features to require or disable on top of the model.")


@dataclasses.dataclass(kw_only=True)
class Hugepages:
    page_size: str = field(enum=["2Mi", "1Gi"], description="Hugepage size backing guest memory.")


@dataclasses.dataclass(kw_only=True)
class Memory:
    """Guest memory."""

    size: str = field(pattern=QUANTITY, description="Guest memory, e.g. 128Mi or 4Gi; at least 16Mi.",
                      rules=(("quantity(self).compareTo(quantity('16Mi')) >= 0", "must be at least 16Mi"),))
    hugepages: Hugepages | None = field(None, description="Back guest memory with hugepages of the node.")


@dataclasses.dataclass(kw_only=True)
class Firmware:
    type: str = field("BIOS", enum=["BIOS", "UEFI"], description="BIOS (SeaBIOS) or UEFI (OVMF).")


VOLUME = r"^[A-Za-z0-9][-A-Za-z0-9_.:]*$"  # a name inside a pool: never a path (no /)


def _pool_field(what: str):
    return field(pattern=DNS_LABEL, max_length=63, description=f"The StoragePool {what}.")


def _volume_field(what: str):
    return field(pattern=VOLUME, max_length=255, description=f"The volume {what}: a name in the pool, not a path.")


@dataclasses.dataclass(kw_only=True)
class KernelBoot:
    """Boot a kernel and initrd directly, without a bootloader; both are volumes of a pool."""

    pool: str = _pool_field("that holds the kernel and the initrd")
    kernel: str = _volume_field("holding the kernel image")
    initrd: str | None = field(None, pattern=VOLUME, max_length=255,
                               description="The volume holding the initrd: a name in the pool, not a path.")
    cmdline: str | None = field(None, max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$",  # no control characters
                                description="Kernel command line, e.g. console=ttyS0.")


@dataclasses.dataclass(kw_only=True)
class ImageSource:
    """A read-only base image (a volume of a pool); the VM writes to its own copy-on-write
    qcow2 overlay, kept in the VM's storage pool."""

    pool: str = _pool_field("that holds the base image")
    volume: str = _volume_field("of the base image (qcow2 or raw, without a backing file of its own)")


@dataclasses.dataclass(kw_only=True)
class PoolSource:
    """A volume of a StoragePool, used as it is (an iSCSI LUN, a disk image made by an admin)."""

    pool: str = _pool_field("that holds the volume")
    volume: str = _volume_field("to attach")


@dataclasses.dataclass(kw_only=True)
class EmptySource:
    """A new empty disk, created with the VM and removed with it."""

    size: str = field(pattern=QUANTITY, description="Size of the disk, e.g. 1Gi.")


@dataclasses.dataclass(kw_only=True)
class SecretRef:
    name: str = field(min_length=1, description="Name of a Secret in the VM's namespace.")


@dataclasses.dataclass(kw_only=True)
class CloudInit:
    """cloud-init NoCloud data, given to the guest on a small ISO (volume label cidata)."""

    user_data: str | None = field(None, description="user-data, inline (e.g. #cloud-config ...).")
    network_data: str | None = field(None, description="network-config, inline.")
    secret_ref: SecretRef | None = field(None, description=(
        "A Secret whose keys userdata and networkdata (optional) hold the data; instead of inline data."))

    __schema__ = {"rules": [("has(self.userData) || has(self.secretRef)", "needs userData or secretRef"),
                            ("!(has(self.userData) && has(self.secretRef))",
                             "userData and secretRef exclude each other")]}


@dataclasses.dataclass(kw_only=True)
class Disk:
    """One disk of the VM: exactly one of image, pool, empty or cloudInit."""

    name: str = field(pattern=DNS_LABEL, max_length=63, description="Name of the disk, unique in the VM.")
    bus: str = field("virtio", enum=["virtio", "sata", "scsi", "usb"],
                     description="Bus the guest sees the disk on; virtio is fastest.")
    target: str | None = field(None, pattern=r"^(vd|sd|hd)[a-z]{1,2}$", max_length=4,
                               description="Device name the guest sees (vda, sdb, ...); assigned in order if empty.")
    boot_order: int | None = field(None, minimum=1, description="Boot priority among disks, 1 first.")
    read_only: bool = field(False, description="Attach read-only.")
    image: ImageSource | None = field(None, description="A base image with a per-VM copy-on-write overlay.")
    pool: PoolSource | None = field(None, description="A volume of a StoragePool, attached as it is.")
    empty: EmptySource | None = field(None, description="A new empty disk of a size.")
    cloud_init: CloudInit | None = field(None, description="cloud-init NoCloud data (a read-only CD-ROM).")
    deletion_policy: str | None = field(None, enum=["Delete", "Retain"], description=(
        "What deleting the VM does with this disk, over spec.diskDeletionPolicy: Delete or Retain. Only for "
        "image and empty disks (the VM's own files); a pool volume is never deleted, cloud-init media always are."))

    __schema__ = {"rules": [(
        "[has(self.image), has(self.pool), has(self.empty), has(self.cloudInit)].filter(x, x).size() == 1",
        "must have exactly one of image, pool, empty or cloudInit"), (
        "!has(self.deletionPolicy) || has(self.image) || has(self.empty)",
        "deletionPolicy applies to image and empty disks only")]}


@dataclasses.dataclass(kw_only=True)
class Interface:
    """A network interface on the node's VM network."""

    name: str = field(pattern=DNS_LABEL, max_length=63, description="Name of the interface, unique in the VM.")
    model: str = field("virtio", enum=["virtio", "e1000e", "e1000", "rtl8139"],
                       description="NIC model the guest sees; virtio is fastest.")
    network: str = field("default", min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
                         description="The node's VM network to attach to (default: the node's VM network).")
    mac_address: str | None = field(None, pattern=r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$", description=(
        "MAC address, a unicast one (as libvirt requires); derived from the VM and interface name if empty."))


@dataclasses.dataclass(kw_only=True)
class HostDevice:
    """A PCI device passed through to the guest (VFIO): one of a resource, or a named one."""

    name: str = field(pattern=DNS_LABEL, max_length=63, description="Name of the request, unique in the VM.")
    resource_name: str | None = field(None, min_length=1, max_length=253, description=(
        "Any free PassthroughDevices of this resource name (e.g. nvidia.com/H100), `count` of them."))
    count: int = field(1, minimum=1, maximum=16, description="How many devices of resourceName.")
    device: str | None = field(None, min_length=1, max_length=253, description=(
        "One specific PassthroughDevice, by its name (node and PCI address)."))

    __schema__ = {"rules": [("has(self.resourceName) != has(self.device)", "needs exactly one of resourceName or device"),
                            ("!has(self.device) || self.count == 1", "count applies to resourceName only")]}


@dataclasses.dataclass(kw_only=True)
class Console:
    """How a human reaches the guest."""

    vnc: bool = field(False, description="Add a VNC display, reached only through the API (`kubectl kopfvirt vnc`).")


@dataclasses.dataclass(kw_only=True)
class VirtualMachineSpec:
    """What the VM is and how it should run."""

    run_strategy: str = field("Always", enum=RUN_STRATEGIES, description=(
        "Always: keep it running (restart after any stop). RerunOnFailure: restart after a crash, "
        "not after a clean guest shutdown. Once: run once, never restart. Manual: start and stop "
        "only through the plugin. Halted: keep it stopped."))
    paused: bool = field(False, description="Pause the running guest (its vCPUs stop; memory is kept).")
    cpu: CPU = field(CPU, description="The virtual CPU.")
    memory: Memory = field(description="Guest memory.")
    firmware: Firmware = field(Firmware, description="BIOS or UEFI.")
    kernel_boot: KernelBoot | None = field(None, description="Boot a kernel directly (as the lab guest does).")
    storage_pool: str | None = field(None, pattern=DNS_LABEL, max_length=63, description=(
        "The StoragePool (dir, netfs or nfs) that keeps the VM's own disks: overlays, empty disks and cloud-init "
        "media. Empty: the pool the admin marks default. On a shared pool the VM can live-migrate."))
    disks: list[Disk] = field([], max_items=16, list_map_keys=("name",), description="The VM's disks.", rules=((
        "self.all(a, !has(a.target) || self.exists_one(b, has(b.target) && b.target == a.target))",
        "two disks have the same target"),))
    interfaces: list[Interface] = field([], max_items=8, list_map_keys=("name",),
                                        description="Network interfaces.")
    host_devices: list[HostDevice] = field([], max_items=16, list_map_keys=("name",), description=(
        "PCI devices passed through to the guest; the VM runs where the controller finds them free. "
        "A VM with host devices cannot migrate."))
    console: Console = field(Console, description="Serial console (always) and VNC.")
    guest_agent: bool = field(False, description="Add the QEMU guest agent channel.")
    node_selector: dict[str, str] = field({}, description="Node labels the VM's node must have.")
    affinity: dict[str, Any] | None = field(None, description="Pod affinity rules (core/v1 Affinity) for placement.")
    tolerations: list[dict[str, Any]] = field([], description="Pod tolerations (core/v1 Toleration) for placement.")
    priority_class_name: str | None = field(None, description="PriorityClass of the VM's reservation pod.")
    eviction_strategy: str = field("Stop", enum=["LiveMigrate", "Stop", "None"], description=(
        "What happens when the VM's node is drained or its reservation pod is evicted: LiveMigrate, "
        "Stop, or None (refuse the eviction)."))
    termination_grace_period_seconds: int = field(30, minimum=0, maximum=3600, description=(
        "Seconds an ACPI shutdown may take before the domain is destroyed."))
    disk_deletion_policy: str = field("Delete", enum=["Delete", "Retain"], description=(
        "What deleting the VM does with its own disks (image overlays and empty disks): Delete them, or "
        "Retain them in their StoragePool (an Event names where). A disk's deletionPolicy overrides it."))


@dataclasses.dataclass(kw_only=True)
class Condition:
    type: str = field(description="Ready, Scheduled, Reconciling, Stalled, Paused, ...")
    status: str = field(enum=["True", "False", "Unknown"], description="True, False or Unknown.")
    reason: str | None = field(None, description="A CamelCase word for machines.")
    message: str | None = field(None, description="A sentence for humans.")
    last_transition_time: str | None = field(None, fmt="date-time", description="When status last changed.")
    observed_generation: int | None = field(None, description="The spec generation this condition reflects.")


@dataclasses.dataclass(kw_only=True)
class InterfaceStatus:
    name: str = field(description="The interface's name in the spec.")
    mac_address: str | None = field(None, description="Its MAC address.")
    ip_addresses: list[str] = field([], description="Addresses the guest uses, when known.")


@dataclasses.dataclass(kw_only=True)
class HostDeviceStatus:
    """A device the controller gave the VM (held while the VM should run)."""

    name: str = field(description="The spec.hostDevices request it answers.")
    device: str = field(description="The PassthroughDevice.")
    node: str = field(description="Its node.")
    address: str = field(description="Its PCI address on that node.")


@dataclasses.dataclass(kw_only=True)
class MigrationResult:
    """libvirt's measurements of a finished move; the controller copies them into the
    Migration as it closes it, so a Succeeded Migration always carries them."""

    total_time_ms: int | None = field(None, description="libvirt's time for the move, in ms.")
    downtime_ms: int | None = field(None, description="How long the guest was paused at the switch-over, in ms.")
    data_transferred_bytes: int | None = field(None, description="Data sent in all.")


@dataclasses.dataclass(kw_only=True)
class MigrationState:
    """The migration the VM is in, as its source agent records it (it survives an agent restart)."""

    name: str = field(description="The Migration object.")
    mode: str = field(enum=["Live", "Offline"], description="Live or Offline.")
    source_node: str = field(description="The node the VM leaves.")
    target_node: str = field(description="The node the VM moves to.")
    target_pod: str = field(description="The reservation pod held on the target.")
    start_time: str | None = field(None, fmt="date-time", description="When the move began.")
    result: MigrationResult | None = field(None, description="How the move went, once it succeeded.")


@dataclasses.dataclass(kw_only=True)
class VirtualMachineStatus:
    """What the VM is doing, as observed by the controller and the node agent."""

    phase: str | None = field(None, enum=PHASES, description="Where the VM is in its life: " + ", ".join(PHASES) + ".")
    node_name: str | None = field(None, description="The node the VM runs on (its reservation pod's node).")
    domain_uuid: str | None = field(None, json="domainUUID",
                                    description="The libvirt domain's UUID (the VM object's UID).")
    start_time: str | None = field(None, fmt="date-time", description="When the guest last started.")
    observed_generation: int | None = field(None, description="The spec generation the status reflects.")
    stop_reason: str | None = field(None, description=(
        "How the guest last stopped: GuestShutdown, GuestCrashed, Evicted or Requested."))
    stop_time: str | None = field(None, fmt="date-time", description="When the guest last stopped.")
    conditions: list[Condition] = field([], list_map_keys=("type",), description="Kubernetes-style conditions.")
    interfaces: list[InterfaceStatus] = field([], description="The guest's interfaces and their addresses.")
    migration: MigrationState | None = field(None, description="The migration in progress, while one runs.")
    host_devices: list[HostDeviceStatus] = field([], description="The PassthroughDevices allocated to the VM.")
