"""StoragePools (pure): their libvirt pool XML, who may use them, where they are offered,
and whether live migration can leave their data in place."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

from .. import names
from ..api.schema import SpecError, from_dict
from ..api.storagepool import FILE_POOL_TYPES, NETWORK_POOL_TYPES, StoragePoolSpec
from .disks import nfs_location

BLOCK_POOL_TYPES = ("iscsi-direct", "rbd")  # volumes on a server, no mount to look at

PLURAL = names.STORAGE_POOLS
MOUNT_ROOT = PurePosixPath("/var/lib/kopfvirt/pools")


def parse(spec: dict) -> StoragePoolSpec:
    return from_dict(StoragePoolSpec, spec)


def specs_of(objects: dict[str, dict]) -> dict[str, StoragePoolSpec]:
    """Name -> spec of StoragePool objects; one the schema let through but that does not
    parse is left out (as if absent: nothing is defined from it)."""
    out = {}
    for name, obj in list(objects.items()):
        try:
            out[name] = parse(obj.get("spec") or {})
        except SpecError:
            pass
    return out


def is_shared(spec: StoragePoolSpec) -> bool:
    return spec.shared if spec.shared is not None else spec.type in NETWORK_POOL_TYPES


def holds_files(spec: StoragePoolSpec) -> bool:
    """Whether the agent can create a VM's own disks (files) in it."""
    return spec.type in FILE_POOL_TYPES


def in_libvirt(spec: StoragePoolSpec) -> bool:
    """Whether nodes define it as a libvirt pool. libvirt has no pool that reaches NFS
    without the kernel's client: an nfs pool's files are QEMU's network disks."""
    return spec.type != "nfs"


def target_path(name: str, spec: StoragePoolSpec) -> str | None:
    """Where a node finds the pool's files: a directory, or an nfs:// URL (None: no
    files, e.g. LUNs)."""
    if spec.type == "dir":
        return spec.source.path
    if spec.type == "netfs":
        return spec.mount_path or str(MOUNT_ROOT / name)
    if spec.type == "nfs":
        return nfs_location(spec.source.host, spec.source.path)
    return None


def offered_on(spec: StoragePoolSpec, node_labels: dict[str, str]) -> bool:
    return all(node_labels.get(k) == v for k, v in spec.node_selector.items())


def allowed_for(spec: StoragePoolSpec, namespace: str) -> bool:
    return not spec.namespaces or namespace in spec.namespaces


def default_pool(pools: dict[str, StoragePoolSpec]) -> str | None:
    """The pool marked default (the first by name if an admin marked several)."""
    return next((name for name in sorted(pools) if pools[name].default), None)


def keeps_own(disk) -> bool:
    """A disk the VM keeps in its own storage pool: an overlay, an empty disk, cloud-init media."""
    return bool(disk.image or disk.empty or disk.cloud_init)


def own_pool(spec, pools: dict[str, StoragePoolSpec]) -> str | None:
    """The pool that keeps the VM's own disks: spec.storagePool, else the default; None when
    it has no such disk (or no pool is named and none is default)."""
    if not any(keeps_own(d) for d in spec.disks):
        return None
    return spec.storage_pool or default_pool(pools)


def pool_xml(name: str, spec: StoragePoolSpec) -> str:
    pool = ET.Element("pool", type=spec.type)
    ET.SubElement(pool, "name").text = name
    source = ET.SubElement(pool, "source")
    s = spec.source
    if spec.type == "netfs":
        ET.SubElement(source, "host", name=s.host)
        ET.SubElement(source, "dir", path=s.path)
        ET.SubElement(source, "format", type=s.format)
    elif spec.type == "iscsi-direct":
        ET.SubElement(source, "host", name=s.host)
        ET.SubElement(source, "device", path=s.target)
        ET.SubElement(ET.SubElement(source, "initiator"), "iqn", name=s.initiator)
    elif spec.type == "rbd":
        ET.SubElement(source, "host", name=s.host)
        ET.SubElement(source, "name").text = s.name
    path = target_path(name, spec)
    if path:
        ET.SubElement(ET.SubElement(pool, "target"), "path").text = path
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"


def vm_pools(spec, default: str | None) -> dict[str, list[str]]:
    """Every pool a VM spec uses -> the fields that name it (for field-named refusals)."""
    out: dict[str, list[str]] = {}
    own = spec.storage_pool or default
    if spec.kernel_boot:
        out.setdefault(spec.kernel_boot.pool, []).append("spec.kernelBoot.pool")
    for i, d in enumerate(spec.disks):
        if d.image:
            out.setdefault(d.image.pool, []).append(f"spec.disks[{i}].image.pool")
        if d.pool:
            out.setdefault(d.pool.pool, []).append(f"spec.disks[{i}].pool.pool")
        if keeps_own(d) and own:
            out.setdefault(own, []).append("spec.storagePool")
    return out


def refusal(spec, namespace: str, pools: dict[str, StoragePoolSpec]) -> SpecError | None:
    """Why a VM spec may not use the pools it names: unknown, not for its namespace, or a
    pool that cannot hold its own disks. None when all is well."""
    default = default_pool(pools)
    if any(keeps_own(d) for d in spec.disks) and own_pool(spec, pools) is None:
        return SpecError("spec.storagePool", "is empty and no StoragePool is marked default: name one for the "
                                             "VM's overlays, empty disks and cloud-init media")
    for name, fields in vm_pools(spec, default).items():
        where = fields[0]
        if name not in pools:
            return SpecError(where, f"StoragePool {name} does not exist")
        if not allowed_for(pools[name], namespace):
            return SpecError(where, f"StoragePool {name} is not offered to namespace {namespace}")
        if "spec.storagePool" in fields and not holds_files(pools[name]):
            return SpecError("spec.storagePool", f"StoragePool {name} is of type {pools[name].type}, which "
                                                 f"cannot hold the VM's own disks (needs dir, netfs or nfs)")
        if "spec.storagePool" in fields and pools[name].read_only:
            return SpecError("spec.storagePool", f"StoragePool {name} is read-only: it cannot hold the VM's "
                                                 f"own disks")
    for i, d in enumerate(spec.disks):
        if d.pool and d.pool.pool in pools and pools[d.pool.pool].read_only and not d.read_only:
            return SpecError(f"spec.disks[{i}].readOnly", f"StoragePool {d.pool.pool} is read-only: attach its "
                                                          f"volume with readOnly: true, or as an image")
    return None


def unshared_disks(spec, pools: dict[str, StoragePoolSpec]) -> list[tuple[str, str]]:
    """(disk, pool) of each writable disk whose data stays on its node: what a live
    migration would have to copy. A pool not (or no longer) defined counts as local."""
    own = own_pool(spec, pools)
    out = []
    for d in spec.disks:
        if d.cloud_init or d.read_only:  # libvirt lets read-only media migrate where they are
            continue
        name = d.pool.pool if d.pool else own
        if name not in pools or not is_shared(pools[name]):
            out.append((d.name, name))
    return out


def writable_volumes(spec) -> dict[tuple[str, str], str]:
    """(pool, volume) -> the field of each volume the VM attaches writable: two VMs must
    never write one (nothing on a LUN stops a second QEMU; it would tear the first's data)."""
    return {(d.pool.pool, d.pool.volume): f"spec.disks[{i}].pool" for i, d in enumerate(spec.disks)
            if d.pool and not d.read_only}


def readiness(spec: StoragePoolSpec, node_states: dict[str, dict], nodes: dict[str, dict[str, str]]
              ) -> tuple[bool, str, str]:
    """(ready, reason, message) of a pool: `node_states` is its status.nodes, `nodes` the
    labels of the Ready nodes. Ready when every one of them that the pool is offered on
    reports it Active."""
    offered = sorted(n for n, labels in nodes.items() if offered_on(spec, labels))
    if not offered:
        return False, "NoNodes", "no Ready node matches spec.nodeSelector"
    bad = []
    for n in offered:
        entry = node_states.get(n) or {}
        if entry.get("state") != "Active":
            bad.append(f"{n}: {entry.get('message') or entry.get('state') or 'not reported yet'}")
    if bad:
        return False, "NotActive", "; ".join(bad)
    return True, "Active", f"active on {len(offered)} node(s): {', '.join(offered)}"
