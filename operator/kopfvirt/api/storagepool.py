"""StoragePool, kopfvirt.io/v1alpha1 (cluster-scoped): storage an admin defines once and
VMs name. A namespaced VM never carries a path; it names a pool and a volume, and the
node agents define the pool in their libvirtd and report it here.
"""

from __future__ import annotations

import dataclasses

from .schema import field
from .virtualmachine import Condition

POOL_TYPES = ["dir", "netfs", "nfs", "iscsi-direct", "rbd"]
# Types whose files the agent can create (overlays, empty disks, cloud-init media).
FILE_POOL_TYPES = ("dir", "netfs", "nfs")
# Reached over the network, so every node opens the same data: live migration needs no copy.
NETWORK_POOL_TYPES = ("netfs", "nfs", "iscsi-direct", "rbd")


@dataclasses.dataclass(kw_only=True)
class StoragePoolSource:
    """Where the data is, as libvirt's pool <source> says it."""

    host: str | None = field(None, min_length=1, max_length=253, description=(
        "netfs, nfs: the file server (GlusterFS or NFS); iscsi-direct: the portal; rbd: a Ceph monitor."))
    path: str | None = field(None, pattern=r"^[^\s]+$", max_length=1024, description=(
        "dir: the directory on every node; netfs: the export (NFS) or the volume name (GlusterFS); nfs: the "
        "export, or a directory in it."))
    format: str | None = field(None, enum=["glusterfs", "nfs"], description="netfs: the protocol.")
    target: str | None = field(None, pattern=r"^iqn\.[0-9]{4}-[0-9]{2}\..+", max_length=223,
                               description="iscsi-direct: the target's IQN.")
    initiator: str | None = field(None, pattern=r"^iqn\.[0-9]{4}-[0-9]{2}\..+", max_length=223,
                                  description="iscsi-direct: the IQN the nodes log in as.")
    name: str | None = field(None, min_length=1, max_length=253, description="rbd: the Ceph pool.")


@dataclasses.dataclass(kw_only=True)
class StoragePoolSpec:
    """What the pool is, where it is offered and to whom."""

    type: str = field(enum=POOL_TYPES, immutable=True, description=(
        "dir (a directory of each node), netfs (a GlusterFS volume or NFS export the node mounts), nfs (an "
        "NFS export QEMU opens itself, with no mount on the node: its files are network disks), iscsi-direct "
        "(LUNs of an iSCSI target, reached from user space), rbd (Ceph). All but nfs are libvirt pool types."))
    source: StoragePoolSource = field(StoragePoolSource, description="Where the data is.")
    mount_path: str | None = field(None, pattern=r"^/[^\s]*$", max_length=1024, description=(
        "netfs: where nodes mount it (default /var/lib/kopfvirt/pools/<name>)."))
    shared: bool | None = field(None, description=(
        "Every node sees the same data, so live migration moves no disk. Default: true for netfs, "
        "nfs, iscsi-direct and rbd; false for dir."))
    read_only: bool = field(False, description=(
        "VMs may only read it: kernels, initrds and base images under an overlay, or volumes attached with "
        "readOnly. A pool of golden images shared by every VM."))
    default: bool = field(False, description=(
        "VMs that name no spec.storagePool keep their overlays, empty disks and cloud-init media here. "
        "Needs a file pool (dir, netfs or nfs)."))
    node_selector: dict[str, str] = field({}, description="Labels of the nodes that offer the pool (all if empty).")
    namespaces: list[str] = field([], max_items=256, description=(
        "Namespaces whose VMs may use the pool (all if empty)."))

    __schema__ = {"rules": [
        ("self.type != 'dir' || has(self.source.path)", "dir needs source.path"),
        ("self.type != 'netfs' || (has(self.source.host) && has(self.source.path) && has(self.source.format))",
         "netfs needs source.host, source.path and source.format"),
        ("self.type != 'nfs' || (has(self.source.host) && has(self.source.path) && self.source.path.startsWith('/'))",
         "nfs needs source.host and source.path, an absolute path on the server"),
        ("self.type != 'iscsi-direct' || (has(self.source.host) && has(self.source.target) && "
         "has(self.source.initiator))", "iscsi-direct needs source.host, source.target and source.initiator"),
        ("self.type != 'rbd' || (has(self.source.host) && has(self.source.name))",
         "rbd needs source.host and source.name"),
        ("!self.default || self.type in ['dir', 'netfs', 'nfs']", "only a dir, netfs or nfs pool can be the default"),
        ("!(self.default && self.readOnly)", "a read-only pool cannot be the default"),
    ]}


@dataclasses.dataclass(kw_only=True)
class StoragePoolNodeStatus:
    """The pool on one node, as that node's agent last saw it."""

    state: str = field(enum=["Active", "Inactive", "Failed"], description="Active, Inactive or Failed.")
    message: str | None = field(None, description="libvirt's error when it is not Active.")
    capacity_bytes: int | None = field(None, description="Size of the pool.")
    allocation_bytes: int | None = field(None, description="Bytes in use.")
    available_bytes: int | None = field(None, description="Bytes free.")
    last_update_time: str | None = field(None, fmt="date-time", description="When the agent last looked.")


@dataclasses.dataclass(kw_only=True)
class StoragePoolStatus:
    """Each node's view of the pool, and the controller's summary of them."""

    nodes: dict[str, StoragePoolNodeStatus] = field({}, description="Per node name: the pool's state there.")
    observed_generation: int | None = field(None, description="The spec generation the conditions reflect.")
    conditions: list[Condition] = field([], list_map_keys=("type",), description=(
        "Ready: every Ready node the pool is offered on reports it Active."))
