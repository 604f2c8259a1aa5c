"""Thin kopf wiring of the controller: watch events in, the reconciler does the work."""

from __future__ import annotations

import logging
import threading
import time

import kopf

from .. import GROUP, VERSION
from ..core import reservation
from ..runtime import registry_with_settings
from .reconciler import Controller

log = logging.getLogger("kopfvirt.controller")


def build_registry(controller: Controller, resync_seconds: float = 30) -> kopf.OperatorRegistry:
    registry = registry_with_settings("controller", pod_selector=(f"{reservation.ROLE_LABEL}=reservation", None))

    @kopf.on.startup(registry=registry)
    def start(**_):
        def resync_forever():
            while True:
                time.sleep(resync_seconds)
                try:
                    controller.resync()
                except Exception:
                    log.exception("resync failed")
        threading.Thread(target=resync_forever, name="resync", daemon=True).start()

    @kopf.on.event(GROUP, VERSION, "virtualmachines", registry=registry)
    def vm_event(type, body, **_):
        controller.observe_vm(dict(body), deleted=type == "DELETED")

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(type, body, **_):
        controller.observe_pod(dict(body), deleted=type == "DELETED")

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(type, body, **_):
        controller.observe_node(dict(body), deleted=type == "DELETED")

    return registry
