"""Where each disk of a VM lives and what the node must create for it (pure).

A VM names pools and volumes only. The agent resolves them on its node (libvirt knows
each volume's path there) and hands this module the results: the directory of the VM's
own disks in its storage pool, and the path of every volume the spec names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from urllib.parse import urlsplit

from . import quantity
from .vmspec import VM


@dataclasses.dataclass(frozen=True)
class PlannedDisk:
    name: str
    target: str
    bus: str
    device: str                      # disk | cdrom
    kind: str                        # overlay | empty | cloudinit | volume
    path: str | None = None          # file (or nfs:// URL) the domain opens: overlay, empty, ISO, nfs volume
    backing: str | None = None       # base image of an overlay
    size_bytes: int | None = None    # empty disks
    pool: str | None = None          # pool volumes
    volume: str | None = None
    read_only: bool = False
    boot_order: int | None = None
    cache: str | None = None         # "none" on shared file pools: what live migration requires
    lease: str | None = None         # key of its lease in Plan.lease_dir (a writable network disk)


Volumes = dict[tuple[str, str], str]   # (pool, volume) -> its path (or nfs:// URL) on the node
NFS = "nfs://"


def nfs_location(server: str, path: str) -> str:
    """The URL of a file or directory QEMU opens with its own NFS client."""
    return f"{NFS}{server}/{path.strip('/')}"


def nfs_parts(location: str | None) -> tuple[str, str] | None:
    """(server, absolute path) of an nfs:// URL; None for a path on the node."""
    if not location or not location.startswith(NFS):
        return None
    parts = urlsplit(location)
    return parts.hostname, posixpath.normpath("/" + parts.path.lstrip("/"))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the domain opens from storage."""

    disks: list[PlannedDisk]
    own_dir: str | None = None       # where the VM's own disks are made (None: it has none)
    lease_dir: str | None = None     # libvirt's lockd lockspace on shared storage (None: no leases)
    kernel: str | None = None
    initrd: str | None = None


def vm_dir(pool_root: str, namespace: str, name: str, uid: str) -> str:
    """Per VM, inside its storage pool (the UID's head keeps a re-created VM of the same
    name off stale files). `pool_root` may be an nfs:// URL."""
    return posixpath.join(pool_root, "vms", namespace, f"{name}-{uid[:8]}")


def cloud_init_iso(own_dir: str, disk_name: str) -> str:
    """Where a cloud-init disk's NoCloud ISO lives, among the VM's own disks."""
    return posixpath.join(own_dir, f"{disk_name}-cidata.iso")


def own_file(disk_name: str) -> str:
    """The file of an image or empty disk among the VM's own disks."""
    return f"{disk_name}.qcow2"


def kept_on_delete(vm: VM) -> list[str]:
    """The files of the VM's own disks that deleting it keeps (diskDeletionPolicy Retain,
    or a disk's own deletionPolicy); cloud-init media always go."""
    return [own_file(d.name) for d in vm.spec.disks
            if (d.image or d.empty) and (d.deletion_policy or vm.spec.disk_deletion_policy) == "Retain"]


def named_volumes(vm: VM) -> list[tuple[str, str]]:
    """The (pool, volume) pairs the spec names, which the node must resolve to paths."""
    out = []
    kb = vm.spec.kernel_boot
    if kb:
        out += [(kb.pool, kb.kernel)] + ([(kb.pool, kb.initrd)] if kb.initrd else [])
    out += [(d.image.pool, d.image.volume) for d in vm.spec.disks if d.image]
    out += [(d.pool.pool, d.pool.volume) for d in vm.spec.disks if d.pool]
    return out


CLOUD_INIT_KEYS = ("userdata", "networkdata")  # what a cloud-init disk takes of its Secret


def cloud_init_files(vm: VM, disk_name: str, secret: dict[str, str] | None) -> dict[str, str]:
    """The NoCloud files of a cloud-init disk; `secret` holds the Secret's data when referenced."""
    ci = next(d.cloud_init for d in vm.spec.disks if d.name == disk_name)
    files = {"meta-data": f"instance-id: {vm.uid}\nlocal-hostname: {vm.name}\n"}
    user, network = (ci.user_data, ci.network_data) if secret is None else \
        (secret.get("userdata"), secret.get("networkdata"))
    files["user-data"] = user or ""
    if network:
        files["network-config"] = network
    return files


def lease_key(location: str) -> str:
    """The lease of a disk that is no file on the node (an nfs:// URL, a LUN's path):
    one name on every node, as libvirt names the leases of files (sha256 of the path)."""
    return hashlib.sha256(location.encode()).hexdigest()


def _leased(disks: list[PlannedDisk], volumes: Volumes) -> list[PlannedDisk]:
    """libvirt's lock manager leases files itself; a writable network disk gets one here."""
    out = []
    for d in disks:
        location = d.path or volumes.get((d.pool, d.volume))
        if location and not d.read_only and not location.startswith("/"):
            d = dataclasses.replace(d, lease=lease_key(location))
        out.append(d)
    return out


def plan(vm: VM, own_dir: str | None, volumes: Volumes, own_pool_shared: bool = False,
         lease_dir: str | None = None) -> Plan:
    """`own_dir`: vm_dir() in the VM's storage pool (None: no disk of its own); `volumes`:
    named_volumes() resolved.
    libvirt lets a writable file on a shared filesystem migrate only without the host's
    page cache (cache=none), so the VM's own disks on a shared pool bypass it. A volume
    of a libvirt pool stays a pool volume in the domain; one of an nfs pool (no libvirt
    pool) carries its URL. With `lease_dir` (the lockspace libvirt's lockd keeps on shared
    storage), each writable network disk gets a lease there: no second domain, on any
    node, opens it while this one runs."""
    def own(file: str) -> str:
        return posixpath.join(own_dir, file)

    cache = "none" if own_pool_shared else None
    out = []
    for d in vm.spec.disks:
        common = dict(name=d.name, target=vm.targets[d.name], read_only=d.read_only, boot_order=d.boot_order)
        if d.image:
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="overlay",
                                   path=own(own_file(d.name)), backing=volumes[d.image.pool, d.image.volume],
                                   cache=cache))
        elif d.empty:
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="empty",
                                   path=own(own_file(d.name)), size_bytes=quantity.to_bytes(d.empty.size),
                                   cache=cache))
        elif d.pool:
            location = volumes.get((d.pool.pool, d.pool.volume))
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="volume", pool=d.pool.pool,
                                   volume=d.pool.volume, path=location if nfs_parts(location) else None))
        else:
            out.append(PlannedDisk(**{**common, "read_only": True}, bus="sata", device="cdrom", kind="cloudinit",
                                   path=cloud_init_iso(own_dir, d.name)))
    if lease_dir:
        out = _leased(out, volumes)
    kb = vm.spec.kernel_boot
    if kb is None:
        return Plan(out, own_dir, lease_dir)
    return Plan(out, own_dir, lease_dir, kernel=volumes[kb.pool, kb.kernel],
                initrd=volumes[kb.pool, kb.initrd] if kb.initrd else None)
