"""Thin kopf handlers of the node agent: VM objects of this node in, libvirt calls out."""

from __future__ import annotations

import kopf

from .. import GROUP, VERSION
from ..clients.libvirt import Hypervisor
from ..core import conditions, domainxml, vmspec
from ..runtime import registry_with_settings

NODE_LABEL = f"{GROUP}/node"


def build_registry(node: str, hypervisor: Hypervisor, virt_type: str) -> kopf.OperatorRegistry:
    registry = registry_with_settings("agent", finalizer=node, vm_selector=f"{NODE_LABEL}={node}")
    on_mine = dict(labels={NODE_LABEL: node}, registry=registry)

    @kopf.on.resume(GROUP, VERSION, "virtualmachines", **on_mine)
    @kopf.on.create(GROUP, VERSION, "virtualmachines", **on_mine)
    @kopf.on.update(GROUP, VERSION, "virtualmachines", field="spec", **on_mine)
    def reconcile(name, namespace, uid, spec, meta, status, patch, logger, **_):
        try:
            vm = vmspec.parse(namespace, name, uid, spec)
        except vmspec.SpecError as e:
            patch.status["phase"] = "Failed"
            patch.status["conditions"] = conditions.set_condition(
                status.get("conditions"), "Ready", False, "InvalidSpec", str(e), meta.get("generation"))
            raise kopf.PermanentError(str(e))
        generation = meta.get("generation")
        if vm.run_strategy == "Halted":
            hypervisor.stop(uid)
            phase, ready, reason, message = "Stopped", False, "Halted", "runStrategy is Halted"
        else:
            info = hypervisor.ensure_running(vm.domain_name, uid, domainxml.domain_xml(vm, virt_type))
            patch.status["domainUUID"] = info.uuid
            phase, ready, reason, message = "Running", True, "DomainRunning", f"domain {info.name} runs on {node}"
            logger.info("domain %s is %s on %s", info.name, info.state, node)
        patch.status["phase"] = phase
        patch.status["nodeName"] = node
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = conditions.set_condition(
            status.get("conditions"), "Ready", ready, reason, message, generation)

    @kopf.on.delete(GROUP, VERSION, "virtualmachines", **on_mine)
    def remove(uid, logger, **_):
        hypervisor.remove(uid)
        logger.info("domain of the VM removed from %s", node)

    return registry
