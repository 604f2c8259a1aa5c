"""Thin kopf wiring of the controller: watch events in, the reconciler does the work."""

from __future__ import annotations

import kopf

from ..core import reservation
from ..runtime import registry_with_settings, watch_vms_and_pods
from .reconciler import Controller


def build_registry(controller: Controller, resync_seconds: float = 30) -> kopf.OperatorRegistry:
    registry = registry_with_settings("controller", pod_selector=(f"{reservation.ROLE_LABEL}=reservation", None))

    @kopf.on.startup(registry=registry)
    def start(**_):
        controller.start_resync(resync_seconds)

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(type, body, **_):
        controller.observe_node(dict(body), deleted=type == "DELETED")

    watch_vms_and_pods(registry, controller)
    return registry
