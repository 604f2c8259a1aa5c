"""Thin kopf wiring of the node agent: watch events in, the reconciler does the work.

Both watches are filtered server-side: VMs labelled for this node, and the reservation
pods bound to it. Event handlers keep no state in the objects, so the agent writes a
VM only when its status changes.
"""

from __future__ import annotations

import logging
import threading

import kopf
import libvirt

from .. import GROUP, VERSION
from ..clients import kube
from ..core import conditions, cpu, nodelabels, reservation
from ..core import pools as storagepools
from ..core.migration import SOURCE_NODE_LABEL
from ..runtime import registry_with_settings, watch_vms_and_pods
from .devices import PLURAL as DEVICES
from .reconciler import NODE_LABEL, Agent

log = logging.getLogger("kopfvirt.agent")
LIBVIRT_CONDITION = "KopfvirtLibvirtReady"  # on the Node: does its agent reach its libvirtd?
LIBVIRT_RETRY_SECONDS = 5


def expanded_host_model(agent: Agent, domain_capabilities: str) -> str | None:
    """libvirt's expansion of the host-model CPU; None where libvirt cannot expand it
    (the labels then lack the model's own features)."""
    host_model = cpu.host_model_cpu(domain_capabilities)
    if host_model is None:
        return None
    try:
        return agent.hv.expand_cpu(host_model, agent.virt_type)
    except libvirt.libvirtError as e:
        log.warning("libvirt cannot expand the host-model CPU: %s", e)
        return None


def label_node(agent: Agent) -> None:
    """Publish what placement needs to know of this node; writes only when labels change."""
    caps = agent.hv.capabilities()
    try:
        kvm_caps = agent.hv.domain_capabilities("kvm")
    except libvirt.libvirtError:
        kvm_caps = None
    specs = agent.pools.specs()
    # Those an admin offers, not others; nfs pools live outside libvirt.
    pools = sorted({p for p in agent.hv.active_pools() if p in specs} | set(agent.pools.active_outside_libvirt()))
    dom_caps = agent.hv.domain_capabilities(agent.virt_type)
    current, annotations = kube.get_node_metadata(agent.node)
    agent.serial_log_max_bytes, trouble = nodelabels.serial_log_max_bytes(annotations, agent.serial_log_default)
    if trouble:
        log.warning("node %s: %s", agent.node, trouble)
    labels = nodelabels.node_labels(caps, dom_caps, agent.virt_type,
                                    nodelabels.kvm_offered(kvm_caps), pools,
                                    shared_pools=[p for p in pools if p in specs and storagepools.is_shared(specs[p])],
                                    hidden_features=nodelabels.hidden_features(annotations,
                                                                               agent.hidden_cpu_features),
                                    expanded_cpu=expanded_host_model(agent, dom_caps))
    patch = {**{k: v for k, v in labels.items() if current.get(k) != v},
             **{k: None for k in current if nodelabels.ours(k) and k not in labels}}
    agent.pools.node_labels = {**current, **labels}
    if patch:
        kube.patch_node_labels(agent.node, patch)
        log.info("node %s labelled: %d CPU features, %d CPU models, pools %s", agent.node,
                 sum(k.startswith("cpu-feature.") for k in labels), sum(k.startswith("cpu-model.") for k in labels),
                 list(pools))


def report_libvirt(agent: Agent, error: Exception | None) -> None:
    """The Node's KopfvirtLibvirtReady condition; read and written only when it changes."""
    if error is None:
        reason, message = "LibvirtReachable", f"the kopfvirt agent reaches libvirtd at {agent.hv.uri}"
    else:
        reason, message = "LibvirtUnavailable", (f"the kopfvirt agent cannot reach libvirtd at {agent.hv.uri}, "
                                                 f"so this node runs no VMs: {error}")
    wanted = (str(error is None), reason, message)
    if agent.libvirt_reported == wanted:
        return
    current = kube.node_conditions(agent.node)
    before = conditions.get(current, LIBVIRT_CONDITION) or {}
    if (before.get("status"), before.get("reason"), before.get("message")) != wanted:
        condition = conditions.get(conditions.set_condition(current, LIBVIRT_CONDITION, error is None, reason,
                                                            message, None), LIBVIRT_CONDITION)
        kube.set_node_condition(agent.node, {**condition, "lastHeartbeatTime": condition["lastTransitionTime"]})
        (log.info if error is None else log.error)("node condition %s: %s", LIBVIRT_CONDITION, message)
    agent.libvirt_reported = wanted


def refresh_node(agent: Agent) -> None:
    """The node's pools and labels from libvirt; whether libvirt answers goes on the Node."""
    try:
        agent.pools.sync()
        label_node(agent)
    except libvirt.libvirtError as e:
        report_libvirt(agent, e)
        raise
    report_libvirt(agent, None)


def build_registry(agent: Agent, resync_seconds: float = 30, device_scan_seconds: float = 10) -> kopf.OperatorRegistry:
    registry = registry_with_settings("agent", vm_selector=f"{NODE_LABEL}={agent.node}",
                                      pod_selector=(f"{reservation.ROLE_LABEL}=reservation",
                                                    f"spec.nodeName={agent.node}"))

    def start_with_libvirt() -> None:
        label_node(agent)
        refresh_node(agent)  # with the pools now active
        agent.devices.publish()  # also gives back groups a crash left on vfio-pci
        agent.start_resync(resync_seconds, also=lambda: (refresh_node(agent), agent.strays.scan(),
                                                         agent.cap_serial_logs()))
        agent.start_periodic(device_scan_seconds, lambda: agent.enqueue("publish-devices", agent.devices.publish))

    def wait_for_libvirt(error: Exception) -> None:
        """A node without a reachable libvirtd: say so on the Node, keep serving (probes,
        watches), and start the libvirt side once it answers, not a crash loop."""
        while True:
            try:
                report_libvirt(agent, error)
            except Exception:  # noqa: BLE001 - the API may be away too; the next pass writes it
                log.exception("node condition %s", LIBVIRT_CONDITION)
            threading.Event().wait(LIBVIRT_RETRY_SECONDS)
            try:
                start_with_libvirt()
                return
            except libvirt.libvirtError as e:
                error = e

    @kopf.on.startup(registry=registry)
    def start(settings: kopf.OperatorSettings, **_):
        settings.watching.label_selectors[GROUP, "migrations"] = f"{SOURCE_NODE_LABEL}={agent.node}"
        settings.watching.label_selectors[GROUP, DEVICES] = f"{NODE_LABEL}={agent.node}"
        agent.pools.objects = {o["metadata"]["name"]: o for o in kube.list_objects(storagepools.PLURAL)}
        agent.devices.objects = {o["metadata"]["name"]: o for o in kube.list_objects(DEVICES)
                                 if (o.get("metadata", {}).get("labels") or {}).get(NODE_LABEL) == agent.node}
        try:
            start_with_libvirt()
        except libvirt.libvirtError as e:
            threading.Thread(target=wait_for_libvirt, args=(e,), name="wait-for-libvirt", daemon=True).start()

    @kopf.on.event(GROUP, VERSION, DEVICES, registry=registry)
    def device_event(type, body, **_):
        if agent.devices.observe(dict(body), deleted=type == "DELETED"):
            agent.enqueue("publish-devices", agent.devices.publish)

    @kopf.on.event(GROUP, VERSION, storagepools.PLURAL, registry=registry)
    def pool_event(type, body, **_):
        name = body["metadata"]["name"]
        before = agent.pools.objects.get(name)
        agent.pools.observe(dict(body), deleted=type == "DELETED")
        if type == "DELETED":
            agent.enqueue(("forget-pool", name), lambda: (agent.pools.forget(name), label_node(agent)))
        elif before is None or before["metadata"].get("generation") != body["metadata"].get("generation"):
            # A new spec, not the nodes' status writes (each agent's would wake every other
            # agent's sync, and its write the next: a storm); the resync refreshes those.
            agent.enqueue("sync-pools", lambda: (agent.pools.sync(), label_node(agent)))

    @kopf.on.event(GROUP, VERSION, "migrations", registry=registry)
    def migration_event(type, body, **_):
        agent.migrator.observe(dict(body), deleted=type == "DELETED")

    watch_vms_and_pods(registry, agent)
    return registry
