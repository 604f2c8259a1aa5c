"""Thin kopf wiring of the node agent: watch events in, the reconciler does the work.

Both watches are filtered server-side: VMs labelled for this node, and the reservation
pods bound to it. Event handlers keep no state in the objects, so the agent writes a
VM only when its status changes.
"""

from __future__ import annotations

import logging
import threading
import time

import kopf
import libvirt

from .. import GROUP, VERSION
from ..clients import kube
from ..core import nodelabels, reservation
from ..runtime import registry_with_settings
from .reconciler import NODE_LABEL, Agent

log = logging.getLogger("kopfvirt.agent")


def label_node(agent: Agent) -> None:
    caps = agent.hv.capabilities()
    try:
        kvm_caps = agent.hv.domain_capabilities("kvm")
    except libvirt.libvirtError:
        kvm_caps = None
    labels = nodelabels.node_labels(caps, agent.hv.domain_capabilities(agent.virt_type), agent.virt_type,
                                    nodelabels.kvm_offered(kvm_caps))
    stale = {k: None for k in kube.get_node_labels(agent.node) if nodelabels.ours(k) and k not in labels}
    kube.patch_node_labels(agent.node, {**labels, **stale})
    log.info("node %s labelled: %d CPU features, %d CPU models", agent.node,
             sum(k.startswith("cpu-feature.") for k in labels), sum(k.startswith("cpu-model.") for k in labels))


def build_registry(agent: Agent, resync_seconds: float = 30) -> kopf.OperatorRegistry:
    registry = registry_with_settings("agent", vm_selector=f"{NODE_LABEL}={agent.node}",
                                      pod_selector=(f"{reservation.ROLE_LABEL}=reservation",
                                                    f"spec.nodeName={agent.node}"))

    @kopf.on.startup(registry=registry)
    def start(**_):
        label_node(agent)

        def resync_forever():
            while True:
                time.sleep(resync_seconds)
                try:
                    agent.resync()
                except Exception:
                    log.exception("resync failed")
        threading.Thread(target=resync_forever, name="resync", daemon=True).start()

    @kopf.on.event(GROUP, VERSION, "virtualmachines", registry=registry)
    def vm_event(type, body, **_):
        agent.observe_vm(dict(body), deleted=type == "DELETED")

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(type, body, **_):
        agent.observe_pod(dict(body), deleted=type == "DELETED")

    return registry
