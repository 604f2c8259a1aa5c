"""The node agent's PCI devices: publish them as PassthroughDevices, bind a VM's IOMMU
groups to vfio-pci before its domain starts, and give every function back to its host
driver once no running domain uses it.

The give-back is level-based (`repair`): after a stop, after a failed start, on the
agent's start and on every scan, any function on vfio-pci that has a recorded host
driver and is in no running domain's XML goes back. A crash between bind and start, or
between stop and restore, is so repaired by the next pass. One lock orders binds,
starts and repairs, so a repair never takes a group from a domain being started.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from prometheus_client import Counter
from kubernetes.client.rest import ApiException

from .. import GROUP, names
from ..api.schema import SpecError
from ..clients import hostuse, kube, sysfs
from ..core import conditions, domainxml, passthrough, pci, pciids
from ..core.pci import VFIO_DRIVER

log = logging.getLogger("kopfvirt.agent.devices")
PLURAL = names.DEVICES
NODE_LABEL = names.NODE_LABEL
OPERATIONS = Counter("kopfvirt_device_operations", "Driver moves of PCI functions by the agent.",
                     ["node", "operation", "result"])


class DeviceUnavailable(Exception):
    """A device the VM was given cannot be bound here; reported on the VM, nothing bound."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_pci_ids(path: str | None) -> pciids.PciIds:
    for candidate in [path] if path else pciids.SEARCH_PATHS:
        try:
            return pciids.parse(Path(candidate).read_text(errors="replace"))
        except OSError:
            continue
    log.warning("no pci.ids database found (%s): devices are published without names",
                path or ", ".join(pciids.SEARCH_PATHS))
    return pciids.EMPTY


def published(current: list[dict] | None, status: dict, generation: int | None) -> dict:
    """observedGeneration and conditions of a device published for `generation` of its spec:
    Ready=True (kstatus: Current; the verdict is a fact, not an error) and Assignable."""
    said = (status["reason"], status["message"])
    merged = conditions.set_condition(current, "Ready", True, *said, generation)
    merged = conditions.set_condition(merged, "Assignable", status["assignable"], *said, generation)
    return {"observedGeneration": generation, "conditions": merged}


class Devices:
    def __init__(self, node: str, sysfs_root: str, ids: pciids.PciIds, namespace: str, hv, post_event,
                 proc_root: str = "/proc"):
        self.node, self.root, self.ids, self.namespace = node, sysfs_root, ids, namespace
        self.proc_root = proc_root  # the host's /proc: its PID 1's mounts and routes, and its swaps
        self.hv, self.post_event = hv, post_event
        # The ConfigMap's rules and hostDrivers as the last pass read them (bind() uses them).
        self.config: tuple[list[passthrough.Rule], frozenset[str], str | None] | None = None
        self.objects: dict[str, dict] = {}          # name -> this node's PassthroughDevice
        self.functions: dict[str, pci.Function] = {}
        # address -> the host driver we took it from, also in memory: an object deleted while
        # its function is on vfio-pci is published again with it.
        self.host_drivers: dict[str, str] = {}
        self.lock = threading.RLock()
        for operation in ("bind", "restore"):  # each series from 0: the first failure is an increase
            for result in ("ok", "failed"):
                OPERATIONS.labels(node, operation, result)

    # -- inputs -------------------------------------------------------------------------
    def observe(self, obj: dict, deleted: bool = False) -> bool:
        """Cache a watch event; True when the pass should run again (a spec edit or a deletion)."""
        name = obj["metadata"]["name"]
        if deleted:
            self.objects.pop(name, None)
            return True
        before = self.objects.get(name)
        self.objects[name] = obj  # replaced in place: a pass running meanwhile never misses it
        return before is None or before["metadata"].get("generation") != obj["metadata"].get("generation")

    def _read_config(self) -> tuple[list[passthrough.Rule], frozenset[str], str | None]:
        """(rules, hostDrivers, why hostDrivers cannot be used). Bad rules permit nothing;
        a bad hostDrivers list leaves every device with the host, as nothing says which may go."""
        where = f"ConfigMap {self.namespace}/{passthrough.CONFIG_MAP}"
        data = kube.config_map_data(self.namespace, passthrough.CONFIG_MAP) or {}
        try:
            rules = passthrough.parse_rules(data.get("rules"))
        except SpecError as e:
            log.error("%s: %s; no device is permitted by rule", where, e)
            rules = []
        try:
            return rules, passthrough.parse_host_drivers(data.get("hostDrivers")), None
        except SpecError as e:
            log.error("%s: %s; no device is assignable", where, e)
            return rules, frozenset(), f"{where}: {e}"

    def _host(self) -> pci.Host:
        """What the host uses now (mounts, swap, default route), with the admin's hostDrivers."""
        _, drivers, error = self.config or self._read_config()
        host = hostuse.read(self.root, self.proc_root, drivers)
        return pci.Host(host.uses, drivers, error) if error and not host.unknown else host

    # -- publishing ---------------------------------------------------------------------
    def publish(self) -> None:
        """One pass: scan sysfs, write what changed, remove what vanished, then repair."""
        with self.lock:
            self.functions = sysfs.scan(self.root)
            vfio = sysfs.vfio_loaded(self.root)
            self.config = self._read_config()
            rules, host = self.config[0], self._host()
            objects = {pci.object_name(self.node, a): a for a in self.functions}
            decided = {}
            for name, address in objects.items():
                fn, spec = self.functions[address], (self.objects.get(name) or {}).get("spec") or {}
                decided[address] = passthrough.effective(spec, fn.vendor_id, fn.device_id, fn.class_id, rules,
                                                         address)
            permitted = {a for a, (ok, _, _) in decided.items() if ok}
            for name, address in objects.items():
                fn = self.functions[address]
                verdict = pci.assess(fn, self.functions, permitted, vfio, self.node, host)
                self._write(name, self._status(fn, decided[address], verdict, self.objects.get(name)))
            for name, obj in list(self.objects.items()):
                if name not in objects and (obj.get("status") or {}).get("node") == self.node:
                    log.warning("PCI function %s is gone from %s", obj["status"].get("address"), self.node)
                    kube.delete_object(None, name, PLURAL)
                    self.objects.pop(name, None)
            self._give_back()  # sysfs was read at the top of this pass

    def _status(self, fn: pci.Function, decided: tuple[bool, str, str], verdict: pci.Verdict,
                obj: dict | None) -> dict:
        previous = (obj or {}).get("status") or {}
        return {
            "node": self.node, "address": fn.address,
            "vendorID": fn.vendor_id, "vendorName": self.ids.vendor(fn.vendor_id),
            "deviceID": fn.device_id, "deviceName": self.ids.device(fn.vendor_id, fn.device_id),
            "classID": fn.class_id, "className": self.ids.class_name(fn.class_id),
            "driver": fn.driver, "hostDriver": previous.get("hostDriver") or self.host_drivers.get(fn.address),
            "numaNode": fn.numa_node,
            "iommuGroup": fn.iommu_group,
            "iommuGroupMembers": [m.address for m in pci.group_of(fn, self.functions) if m.address != fn.address]
            if fn.iommu_group is not None else [],
            "physicalFunction": fn.physical_function, "virtualFunctions": list(fn.virtual_functions),
            "permitted": decided[0], "permittedBy": decided[1], "resourceName": decided[2],
            "assignable": verdict.assignable, "reason": verdict.reason, "message": verdict.message,
        }

    def _write(self, name: str, status: dict) -> None:
        obj = self.objects.get(name)
        if obj is None:
            try:
                obj = kube.create_object(None, {
                    "apiVersion": f"{GROUP}/v1alpha1", "kind": "PassthroughDevice",
                    "metadata": {"name": name, "labels": {NODE_LABEL: self.node}}, "spec": {}}, PLURAL)
            except ApiException as e:
                if e.status != 409:
                    raise
                obj = kube.get_object(None, name, PLURAL)
            log.info("published PassthroughDevice %s (%s)", name, status["address"])
        current = obj.get("status") or {}
        status = {**status, **published(current.get("conditions"), status, obj["metadata"].get("generation"))}
        changes = {k: v for k, v in status.items() if current.get(k) != v and not (v is None and k not in current)}
        if changes:
            obj = kube.patch_status(None, name, changes, plural=PLURAL)
        self.objects[name] = obj

    # -- binding ------------------------------------------------------------------------
    def _groups_in_use(self) -> set[str]:
        """Every function of the IOMMU groups running domains pass through (mates included:
        VFIO holds the whole group while QEMU runs)."""
        passed = set().union(*(domainxml.hostdev_addresses(x) for x in self.hv.active_domain_xmls()))
        return {m.address for a in passed if a in self.functions
                for m in pci.group_of(self.functions[a], self.functions)} | passed

    def repair(self) -> list[str]:
        """Give back every function the agent moved to vfio-pci (its host driver is on the
        object) that no running domain's group holds; the addresses given back."""
        with self.lock:
            self.functions = sysfs.scan(self.root)
            return self._give_back()

    def _give_back(self) -> list[str]:
        """repair() on the functions as last scanned; call with `lock` held."""
        used = self._groups_in_use()
        restored = []
        for name, obj in list(self.objects.items()):
            s = obj.get("status") or {}
            address, host_driver = s.get("address"), s.get("hostDriver")
            fn = self.functions.get(address)
            # On vfio-pci, or left unbound by a move cut short (the override still set).
            ours = fn is not None and (fn.driver == VFIO_DRIVER or
                                       (fn.driver is None and fn.driver_override == VFIO_DRIVER))
            if not ours or not host_driver or address in used:
                continue
            try:
                sysfs.to_host(self.root, address, host_driver)
            except sysfs.BindError as e:
                OPERATIONS.labels(self.node, "restore", "failed").inc()
                log.error("giving %s back to %s failed: %s", address, host_driver, e)
                self.post_event(obj, "RestoreFailed", f"giving {address} back to {host_driver} failed: {e}",
                                True)
                continue
            OPERATIONS.labels(self.node, "restore", "ok").inc()
            self.host_drivers.pop(address, None)
            restored.append(address)
            log.info("gave %s back to %s", address, host_driver)
            self.post_event(obj, "Restored", f"{address} given back to the host driver {host_driver}", False)
        if restored:
            self.functions = sysfs.scan(self.root)
            for name, obj in list(self.objects.items()):
                fn = self.functions.get((obj.get("status") or {}).get("address"))
                if fn is not None and fn.address in restored:
                    self._write(name, {**obj["status"], "driver": fn.driver, "hostDriver": None})
        return restored

    def check_held(self, vm_uid: str, allocated: list[dict]) -> None:
        """Raise DeviceUnavailable unless each device the VM's status names is this node's
        object, at that address, held by this VM (from the cache: no sysfs read)."""
        for h in allocated:
            obj = self.objects.get(h["device"])
            if obj is None:
                raise DeviceUnavailable("DeviceVanished", f"PassthroughDevice {h['device']} ({h['address']}) "
                                                          f"is gone from {self.node}")
            s = obj.get("status") or {}
            said, held = (h["address"], h.get("node", self.node)), (s.get("address"), s.get("node"))
            if said != held or held[1] != self.node:
                raise DeviceUnavailable("DeviceMismatch", f"status.hostDevices {h['name']!r} names {said[0]} on "
                                                          f"{said[1]}, but PassthroughDevice {h['device']} is "
                                                          f"{held[0]} on {held[1]}: nothing bound")
            if (s.get("holder") or {}).get("uid") != vm_uid:
                raise DeviceUnavailable("DeviceNotHeld", f"PassthroughDevice {h['device']} is not held by this VM")

    def bind(self, vm_uid: str, allocated: list[dict]) -> list[tuple[str, str]]:
        """Bind the IOMMU groups of the VM's devices on this node to vfio-pci: the
        (request name, address) pairs for the domain XML. Call with `lock` held through
        the domain's start. Raises DeviceUnavailable with nothing left bound.

        The VM's status names each device and its address; the address is bound only if it
        is the one the device object (held by this VM, on this node) stands for, which is
        checked before sysfs is read."""
        self.check_held(vm_uid, allocated)
        self.functions = sysfs.scan(self.root)
        vfio = sysfs.vfio_loaded(self.root)
        host = self._host()
        permitted = {(o.get("status") or {}).get("address") for o in list(self.objects.values())
                     if (o.get("status") or {}).get("permitted")}
        group: dict[str, pci.Function] = {}
        pairs = []
        for h in allocated:
            fn = self.functions.get(h["address"])
            if fn is None:
                raise DeviceUnavailable("DeviceVanished", f"PassthroughDevice {h['device']} ({h['address']}) "
                                                          f"is gone from {self.node}")
            verdict = pci.assess(fn, self.functions, permitted, vfio, self.node, host)
            if not verdict.assignable:
                raise DeviceUnavailable("DeviceNotAssignable", f"{h['device']}: {verdict.message}")
            group.update({m.address: m for m in pci.group_of(fn, self.functions)})
            pairs.append((h["name"], h["address"]))
        moved = []
        try:
            for address, fn in sorted(group.items()):
                if fn.driver != VFIO_DRIVER:
                    self._record_host_driver(address, fn.driver)
                    moved.append(address)
                    sysfs.to_vfio(self.root, address)
        except sysfs.BindError as e:
            OPERATIONS.labels(self.node, "bind", "failed").inc()
            for address in moved:  # the failed one too: it may be left unbound
                try:
                    sysfs.to_host(self.root, address, group[address].driver)
                except sysfs.BindError as again:
                    log.error("giving %s back after a failed bind failed: %s (repair retries)", address, again)
            raise DeviceUnavailable("DeviceBindFailed", f"binding to {VFIO_DRIVER} failed: {e}") from None
        OPERATIONS.labels(self.node, "bind", "ok").inc(len(moved))
        return pairs

    def _record_host_driver(self, address: str, driver: str | None) -> None:
        """Before a move: the host driver is on the object, so a crash after it can be
        repaired; it also marks the function as ours to give back (an admin's own vfio-pci
        bindings carry none and are left alone)."""
        name = pci.object_name(self.node, address)
        obj = self.objects.get(name)
        if driver:
            self.host_drivers[address] = driver
        if obj is not None and driver and (obj.get("status") or {}).get("hostDriver") != driver:
            self.objects[name] = kube.patch_status(None, name, {"hostDriver": driver}, plural=PLURAL)
