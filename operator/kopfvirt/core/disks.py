"""Where each disk of a VM lives and what the node must create for it (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

from . import quantity
from .vmspec import VM


@dataclasses.dataclass(frozen=True)
class PlannedDisk:
    name: str
    target: str
    bus: str
    device: str                      # disk | cdrom
    kind: str                        # overlay | empty | cloudinit | volume
    path: str | None = None          # file the domain opens (overlay, empty, ISO)
    backing: str | None = None       # base image of an overlay
    size_bytes: int | None = None    # empty disks
    pool: str | None = None          # pool volumes
    volume: str | None = None
    read_only: bool = False
    boot_order: int | None = None


def vm_dir(storage_root: str, namespace: str, name: str, uid: str) -> str:
    """Per VM (the UID's head keeps a re-created VM of the same name off stale files)."""
    return str(PurePosixPath(storage_root) / "vms" / namespace / f"{name}-{uid[:8]}")


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


def plan(vm: VM, storage_root: str) -> list[PlannedDisk]:
    base = PurePosixPath(vm_dir(storage_root, vm.namespace, vm.name, vm.uid))
    out = []
    for d in vm.spec.disks:
        common = dict(name=d.name, target=vm.targets[d.name], read_only=d.read_only, boot_order=d.boot_order)
        if d.image:
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="overlay",
                                   path=str(base / f"{d.name}.qcow2"), backing=d.image.path))
        elif d.empty:
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="empty",
                                   path=str(base / f"{d.name}.qcow2"), size_bytes=quantity.to_bytes(d.empty.size)))
        elif d.pool:
            out.append(PlannedDisk(**common, bus=d.bus, device="disk", kind="volume",
                                   pool=d.pool.pool, volume=d.pool.volume))
        else:
            out.append(PlannedDisk(**{**common, "read_only": True}, bus="sata", device="cdrom", kind="cloudinit",
                                   path=str(base / f"{d.name}-cidata.iso")))
    return out
