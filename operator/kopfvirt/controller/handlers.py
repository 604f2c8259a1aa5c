"""Thin kopf handlers of the controller: a VM gets a reservation pod; its binding places the VM."""

from __future__ import annotations

import kopf

from .. import GROUP, VERSION
from ..agent.handlers import NODE_LABEL
from ..clients import kube
from ..core import conditions, reservation, vmspec
from ..runtime import registry_with_settings


def build_registry() -> kopf.OperatorRegistry:
    registry = registry_with_settings("controller")

    @kopf.on.resume(GROUP, VERSION, "virtualmachines", registry=registry)
    @kopf.on.create(GROUP, VERSION, "virtualmachines", registry=registry)
    def schedule(name, namespace, uid, spec, meta, status, patch, logger, **_):
        generation = meta.get("generation")
        try:
            vm = vmspec.parse(namespace, name, uid, spec)
        except vmspec.SpecError as e:
            patch.status["phase"] = "Failed"
            patch.status["conditions"] = conditions.set_condition(
                status.get("conditions"), "Ready", False, "InvalidSpec", str(e), generation)
            raise kopf.PermanentError(str(e))
        if status.get("nodeName") or NODE_LABEL in meta.get("labels", {}):
            return
        if vm.run_strategy == "Halted":
            patch.status["phase"] = "Stopped"
            return
        # Written before the pod exists, so it can never land after the binding's "Starting".
        conds = conditions.set_condition(status.get("conditions"), "Ready", False, "Scheduling",
                                         "waiting for the reservation pod to be scheduled", generation)
        conds = conditions.set_condition(conds, "Scheduled", False, "Pending",
                                         "reservation pod not yet bound", generation)
        kube.patch_vm_status(namespace, name, {"phase": "Scheduling", "conditions": conds,
                                               "observedGeneration": generation})
        if kube.create_pod(reservation.reservation_pod(vm)):
            logger.info("reservation pod %s created", reservation.pod_name(name))

    @kopf.on.event("", "v1", "pods", labels={reservation.ROLE_LABEL: "reservation"}, registry=registry)
    def reservation_bound(body, namespace, logger, **_):
        node = (body.get("spec") or {}).get("nodeName")
        if not node or body["metadata"].get("deletionTimestamp"):
            return
        vm_name = body["metadata"]["labels"].get(reservation.VM_LABEL)
        vm = kube.get_vm(namespace, vm_name)
        if vm is None or (vm["metadata"].get("labels") or {}).get(NODE_LABEL):
            return
        generation = vm["metadata"].get("generation")
        conds = conditions.set_condition((vm.get("status") or {}).get("conditions"), "Scheduled", True,
                                         "ReservationBound", f"reservation pod bound to {node}", generation)
        kube.patch_vm_status(namespace, vm_name, {"phase": "Starting", "nodeName": node, "conditions": conds})
        kube.patch_vm_labels(namespace, vm_name, {NODE_LABEL: node})
        logger.info("VM %s/%s placed on %s", namespace, vm_name, node)

    return registry
