"""The node agent's side of StoragePools: define the pools the admin offers on this node
in its libvirtd, report each one's state there, and resolve a VM's pools and volumes to
the paths its domain opens.

Pools are few and cluster-scoped, so every agent watches all of them; it writes only its
own node's entry of a pool's status, and only when that entry changes.
"""

from __future__ import annotations

import logging
import os
import threading

import libvirt

from ..clients import kube, nfs
from ..clients.libvirt import Hypervisor
from ..core import disks, pools
from ..core.vmspec import VM
from ..reconciling import now

log = logging.getLogger("kopfvirt.agent")
ENTRY_KEYS = ("state", "message", "capacityBytes", "allocationBytes", "availableBytes")


def _mount_answers(path: str, entry: dict) -> dict:
    """A network filesystem whose server is gone still looks mounted; asking it tells."""
    try:
        os.statvfs(path)
        return entry
    except OSError as e:
        return {"state": "Failed", "message": f"{path}: {e.strerror}"}


def _nfs_state(location: str) -> dict:
    """An nfs pool has no libvirt pool: asking the server (libnfs) is its state."""
    try:
        return {"state": "Active", **nfs.usage(location)}
    except OSError as e:
        return {"state": "Failed", "message": str(e)}


class PoolNotReady(Exception):
    """A pool or volume a VM needs is not usable on this node; the message says which and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Pools:
    def __init__(self, node: str, hv: Hypervisor, lease_dir: str | None = None):
        self.node, self.hv, self.lease_dir = node, hv, lease_dir
        self.objects: dict[str, dict] = {}
        self.node_labels: dict[str, str] = {}
        self.reported: dict[str, dict] = {}      # pool -> the node entry last written
        self.lock = threading.Lock()

    def observe(self, obj: dict, deleted: bool = False) -> None:
        name = obj["metadata"]["name"]
        if deleted:
            self.objects.pop(name, None)
            self.reported.pop(name, None)
        else:
            self.objects[name] = obj

    def specs(self) -> dict[str, pools.StoragePoolSpec]:
        return pools.specs_of(self.objects)

    def sync(self) -> None:
        """Bring every pool offered here up in libvirt and report its state (resync too:
        a pool whose server was down comes back, and its status says so)."""
        with self.lock:
            for name, spec in self.specs().items():
                if not pools.offered_on(spec, self.node_labels):
                    continue
                if not pools.in_libvirt(spec):
                    entry = _nfs_state(pools.target_path(name, spec))
                else:
                    entry = self.hv.ensure_pool(name, pools.pool_xml(name, spec),
                                                probe=spec.type in pools.BLOCK_POOL_TYPES)
                if spec.type == "netfs" and entry.get("state") == "Active":
                    entry = _mount_answers(pools.target_path(name, spec), entry)
                if entry.get("state") != "Active":
                    log.warning("storage pool %s on %s: %s", name, self.node, entry.get("message"))
                reported = self.reported.get(name)
                if reported is None:
                    reported = ((self.objects[name].get("status") or {}).get("nodes") or {}).get(self.node) or {}
                if {k: v for k, v in reported.items() if k != "lastUpdateTime"} != entry:
                    # A merge patch: keys the new entry lacks (a cleared message) are nulled.
                    cleared = {k: None for k in ENTRY_KEYS if k not in entry}
                    kube.patch_status(None, name, {"nodes": {self.node: {**cleared, **entry, "lastUpdateTime": now()}}},
                                      plural=pools.PLURAL)
                self.reported[name] = entry

    def active_outside_libvirt(self) -> list[str]:
        """The nfs pools active here: as last probed, or before the first probe as this
        node last reported them (a restarted agent does not drop its labels for a moment)."""
        out = []
        for name, spec in self.specs().items():
            entry = self.reported.get(name)
            if entry is None:
                entry = ((self.objects[name].get("status") or {}).get("nodes") or {}).get(self.node) or {}
            if not pools.in_libvirt(spec) and entry.get("state") == "Active":
                out.append(name)
        return out

    def forget(self, name: str) -> None:
        """A deleted StoragePool (the webhook let it go: no VM uses it) leaves libvirt too
        (an nfs pool was never there: removing finds nothing)."""
        with self.lock:
            try:
                self.hv.remove_pool(name)
            except libvirt.libvirtError as e:  # e.g. still busy: it stays defined, unlabelled
                log.warning("storage pool %s stays defined on %s: %s", name, self.node, e)

    # -- a VM's storage -----------------------------------------------------------------
    def trouble(self, vm: VM) -> str | None:
        """Why a pool the running VM uses is not active on this node (libvirt's words), or None."""
        specs = self.specs()
        for name in sorted(pools.vm_pools(vm.spec, pools.default_pool(specs))):
            entry = self.reported.get(name)
            if entry is not None and entry.get("state") != "Active":
                return f"StoragePool {name} on {self.node}: {entry.get('message') or entry.get('state')}"
        return None

    def _usable(self, name: str, specs: dict, namespace: str, field: str) -> pools.StoragePoolSpec:
        spec = specs.get(name)
        if spec is None:
            raise PoolNotReady("StoragePoolNotFound", f"{field}: StoragePool {name} does not exist")
        if not pools.allowed_for(spec, namespace):
            raise PoolNotReady("StoragePoolNotAllowed", f"{field}: StoragePool {name} is not offered to "
                                                        f"namespace {namespace}")
        entry = self.reported.get(name) or {}
        if entry.get("state") != "Active":
            why = entry.get("message") or "not offered on this node"
            raise PoolNotReady("StoragePoolNotReady", f"{field}: StoragePool {name} is not active on "
                                                      f"{self.node}: {why}")
        return spec

    def own_pool(self, vm: VM, specs: dict[str, pools.StoragePoolSpec]) -> tuple[str, pools.StoragePoolSpec] | None:
        """The pool that keeps the VM's own disks, or None when it has none to keep."""
        if not any(pools.keeps_own(d) for d in vm.spec.disks):
            return None
        name = pools.own_pool(vm.spec, specs)
        if name is None:
            raise PoolNotReady("StoragePoolNotFound", "spec.storagePool: empty, and no StoragePool is default")
        spec = self._usable(name, specs, vm.namespace, "spec.storagePool")
        if not pools.holds_files(spec):
            raise PoolNotReady("StoragePoolNotFound", f"spec.storagePool: StoragePool {name} cannot hold files")
        return name, spec

    @staticmethod
    def _own_dir(vm: VM, own: tuple[str, pools.StoragePoolSpec] | None) -> str | None:
        return None if own is None else disks.vm_dir(pools.target_path(*own), vm.namespace, vm.name, vm.uid)

    def own_dir(self, vm: VM) -> str | None:
        return self._own_dir(vm, self.own_pool(vm, self.specs()))

    def plan(self, vm: VM) -> disks.Plan:
        """The VM's disks and boot files as paths on this node, or PoolNotReady naming what
        is missing. Each pool is refreshed once (on shared storage another node may have
        made a volume), not once per volume."""
        specs = self.specs()
        own = self.own_pool(vm, specs)
        refreshed: set[str] = set()

        def path_of(pool: str, volume: str) -> str:
            spec = self._usable(pool, specs, vm.namespace, f"pool {pool}")
            if pools.in_libvirt(spec):
                path = self.hv.volume_path(pool, volume, refresh=pool not in refreshed)
                refreshed.add(pool)
            else:
                path = os.path.join(pools.target_path(pool, spec), volume)
                try:
                    path = path if nfs.exists(path) else None
                except OSError as e:
                    raise PoolNotReady("StoragePoolNotReady", f"StoragePool {pool}: {e}") from None
            if path is None:
                raise PoolNotReady("VolumeNotFound", f"volume {volume} is not in StoragePool {pool}")
            return path

        volumes = {(pool, volume): path_of(pool, volume) for pool, volume in disks.named_volumes(vm)}
        return disks.plan(vm, self._own_dir(vm, own), volumes,
                          own_pool_shared=own is not None and pools.is_shared(own[1]), lease_dir=self.lease_dir)
