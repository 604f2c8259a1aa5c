"""The controller's side of passthrough: allocate PassthroughDevices to VMs and hold them.

A VM's devices are chosen before its reservation pod exists, and the pod is pinned to
their node, so kube-scheduler and the allocation never disagree. A claim is a guarded
write of status.holder (it fails if the device changed since it was read), so two VMs
never get one device, even across controller restarts. Devices are released when the
VM stops or goes; a device deleted while held is reported on its VM and held again once
its agent publishes it anew.
"""

from __future__ import annotations

import logging
import threading

from kubernetes.client.rest import ApiException

from ..clients import kube
from ..core import passthrough, reservation
from ..core.vmspec import VM
from ..names import DEVICES as PLURAL, NODE_LABEL
from . import metrics

log = logging.getLogger("kopfvirt.controller.devices")


class Allocator:
    def __init__(self, controller):
        self.controller = controller
        self.objects: dict[str, dict] = {}
        self.lock = threading.Lock()

    def observe(self, obj: dict, deleted: bool = False) -> None:
        name = obj["metadata"]["name"]
        holder = (obj.get("status") or {}).get("holder")
        if deleted:
            self.objects.pop(name, None)
            if holder and self.controller.active():
                vm = self.controller.vm_named(holder["namespace"], holder["name"])
                if vm is not None:
                    self.controller.event(vm, "DeviceDeleted", f"PassthroughDevice {name} held by this VM was deleted; "
                                                                f"it is held again if its agent publishes it anew",
                                          warning=True)
        else:
            self.objects[name] = obj
        if self.controller.active():
            self.controller.enqueue("reclaim-devices", self.reclaim)
        for uid, body in list(self.controller.vms.items()):  # waiting VMs may now find what they lack
            if (body.get("spec") or {}).get("hostDevices") and (body.get("status") or {}).get("phase") == "Pending":
                self.controller.submit(uid)

    def node_deleted(self, node: str) -> None:
        """A node that leaves takes its devices' objects with it."""
        for name, obj in list(self.objects.items()):
            if (obj["metadata"].get("labels") or {}).get(NODE_LABEL) == node:
                kube.delete_object(None, name, PLURAL)

    def _nodes(self, vm: VM) -> list[str]:
        wanted = {**vm.spec.node_selector, **reservation.node_requirements(vm)}
        return [n.name for n in self.controller.nodes.values()
                if n.schedulable and all(n.labels.get(k) == v for k, v in wanted.items())]

    def _claim(self, name: str, holder: dict | None) -> bool:
        obj = self.objects.get(name)
        if obj is None:
            return False
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]}]
        if not obj.get("status"):
            ops.append({"op": "add", "path": "/status", "value": {}})
        ops.append({"op": "add", "path": "/status/holder", "value": holder} if holder
                   else {"op": "remove", "path": "/status/holder"})
        try:
            self.objects[name] = kube.json_patch(None, name, ops, plural=PLURAL, status=True)
            return True
        except ApiException as e:
            if e.status in (404, 409, 422):
                return False
            raise

    def allocate(self, vm: VM) -> passthrough.Allocation:
        """Claim the VM's devices; raises passthrough.Refusal (nothing new held then)."""
        with self.lock:
            try:
                alloc = passthrough.allocate(vm, [passthrough.Device.of(o) for o in list(self.objects.values())],
                                             self._nodes(vm))
            except passthrough.Refusal as e:
                metrics.DEVICE_REFUSALS.labels(e.reason).inc()
                raise
            me = {"namespace": vm.namespace, "name": vm.name, "uid": vm.uid}
            for name in alloc.hold:
                if (((self.objects.get(name) or {}).get("status") or {}).get("holder") or {}).get("uid") != vm.uid:
                    if not self._claim(name, me):
                        self.release(vm.uid)
                        raise passthrough.Refusal("DeviceHeld", f"{name} changed while being allocated; retrying")
            self.release(vm.uid, keep=alloc.hold)
            log.info("VM %s/%s holds %s on %s", vm.namespace, vm.name, ", ".join(alloc.hold), alloc.node)
            return alloc

    def release(self, uid: str, keep: list[str] = ()) -> list[str]:
        released = []
        for name, obj in list(self.objects.items()):
            holder = (obj.get("status") or {}).get("holder") or {}
            if holder.get("uid") == uid and name not in keep and self._claim(name, None):
                released.append(name)
        if released:
            log.info("released %s", ", ".join(released))
        return released

    def status_of(self, alloc: passthrough.Allocation) -> list[dict]:
        return [{"name": request, "device": name, "node": alloc.node,
                 "address": self.objects[name]["status"]["address"]} for request, name in alloc.assignments]

    def reclaim(self) -> None:
        """Hold again what a VM was given whose object was deleted and published anew; release
        what no known VM holds (only from a resync: the VM cache is complete by then)."""
        with self.lock:
            for body in list(self.controller.vms.values()):
                me = {k: body["metadata"][k] for k in ("namespace", "name", "uid")}
                for h in (body.get("status") or {}).get("hostDevices") or []:
                    obj = self.objects.get(h["device"])
                    if obj is not None and not (obj.get("status") or {}).get("holder") and \
                            (obj.get("status") or {}).get("address") == h["address"]:
                        if self._claim(h["device"], me):
                            self.controller.event(body, "DeviceHeld", f"PassthroughDevice {h['device']} is held "
                                                                      f"again by this VM")

    def release_orphans(self) -> None:
        """Release what a VM holds that no longer exists. A holder missing from the cache is
        asked of the API first: a restarted controller's watch may not have listed it yet."""
        with self.lock:
            known = set(self.controller.vms)
            for obj in list(self.objects.values()):
                holder = (obj.get("status") or {}).get("holder") or {}
                if not holder or holder.get("uid") in known:
                    continue
                vm = kube.get_object(holder.get("namespace"), holder.get("name", ""))
                if vm is not None and vm["metadata"]["uid"] == holder.get("uid"):
                    known.add(holder["uid"])
                    continue
                self.release(holder["uid"])
