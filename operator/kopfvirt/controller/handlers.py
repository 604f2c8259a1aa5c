"""Thin kopf wiring of the controller: watch events in, the reconciler does the work, and
a validating admission webhook for the rules a schema cannot say."""

from __future__ import annotations

import dataclasses

import kopf

from .. import GROUP, VERSION
from ..clients import kube
from ..core import access, certificates, migration, pools, reservation, vmspec
from ..runtime import registry_with_settings, watch_vms_and_pods
from .certificates import NodeCertificateSigner
from .leadership import LeaderElector
from .migrations import EvacuationFailed
from .reconciler import POD_SELECTOR, Controller

PLACEHOLDER_UID = "00000000-0000-4000-8000-000000000000"  # CREATE reviews carry no UID yet
WEBHOOK_PATH = "validate-virtualmachine"  # served at https://<host>:<port>/<this>
EVICTION_PATH = "evict-reservation-pod"    # pods/eviction: a drain's request to move a VM
POOL_PATH = "validate-storagepool-delete"  # a StoragePool that VMs still use stays


@dataclasses.dataclass(frozen=True)
class Webhook:
    """Where the API server reaches the controller's admission webhook."""

    host: str           # the address in the webhook URL (and the serving cert's SAN)
    port: int
    certfile: str
    keyfile: str
    cafile: str         # the CA that signed certfile: the API server's caBundle


def build_registry(controller: Controller, resync_seconds: float = 30, webhook: Webhook | None = None,
                   signer: NodeCertificateSigner | None = None,
                   elector: LeaderElector | None = None) -> kopf.OperatorRegistry:
    registry = registry_with_settings("controller", pod_selector=(POD_SELECTOR, None))

    @kopf.on.startup(registry=registry)
    def start(settings: kopf.OperatorSettings, **_):
        controller.start_resync(resync_seconds)
        if elector:
            elector.start()  # it calls controller.lead once elected
        else:
            controller.lead()
        if webhook:
            with open(webhook.cafile, "rb") as ca:
                # A renewed certificate is served within seconds of its files changing.
                settings.admission.server = kopf.WebhookServer(
                    addr="0.0.0.0", port=webhook.port, host=webhook.host, certfile=webhook.certfile,
                    pkeyfile=webhook.keyfile, cadata=ca.read(), file_check_interval=5)
            # The ValidatingWebhookConfiguration is deployed (chart, or the lab), not managed
            # by kopf: kopf would also want to write mutating configurations.

    if elector:
        @kopf.on.cleanup(registry=registry)
        def step_down(**_):
            elector.release()

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(type, body, **_):
        controller.observe_node(dict(body), deleted=type == "DELETED")

    if webhook:
        @kopf.on.validate(GROUP, VERSION, "virtualmachines", id=WEBHOOK_PATH, operations=["CREATE", "UPDATE"],
                          registry=registry)
        def validate(spec, meta, old, userinfo, **_):
            try:
                vm = vmspec.parse(meta.get("namespace") or "default", meta.get("name") or "new",
                                  meta.get("uid") or PLACEHOLDER_UID, dict(spec))
            except vmspec.SpecError as e:
                raise kopf.AdmissionError(str(e), code=422)
            refusal = (reservation.policy_refusal(vm, controller.pod_settings.policy)
                       or controller.unknown_cpu_model(vm) or controller.storage_refusal(vm)
                       or controller.volume_taken(vm))
            if refusal:
                raise kopf.AdmissionError(refusal, code=422)
            user = access.admission_user(userinfo)
            for disk, secret, review in access.new_secret_reviews(user, vm.namespace, dict(spec),
                                                                  (old or {}).get("spec")):
                if not kube.access_allowed(review)[0]:
                    raise kopf.AdmissionError(f"spec.disks[{disk}].cloudInit.secretRef: {user.name} may not get "
                                              f"Secret {secret} in namespace {vm.namespace}, so may not give its "
                                              f"data to a guest", code=403)

        @kopf.on.validate("", "v1", "pods", subresource="eviction", id=EVICTION_PATH, operations=["CREATE"],
                          registry=registry)
        def evict(body, dryrun, **_):
            refusal = eviction_refusal(controller, body["metadata"].get("namespace"), body["metadata"]["name"],
                                       start=not dryrun)
            if refusal:
                raise kopf.AdmissionError(refusal, code=429)  # kubectl drain retries on 429

        @kopf.on.validate(GROUP, VERSION, pools.PLURAL, id=POOL_PATH, operations=["DELETE"], registry=registry)
        def pool_delete(name, **_):
            users = controller.pool_users(name)
            if users:
                shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                raise kopf.AdmissionError(f"StoragePool {name} is in use by VirtualMachine(s) {shown}: delete them "
                                          f"or move their disks first", code=409)

    if signer:  # the nodes' libvirt certificates, for migration over TLS
        @kopf.on.event("certificates.k8s.io", "v1", "certificatesigningrequests", registry=registry,
                       when=lambda spec, **_: spec.get("signerName") == certificates.NODE_SIGNER)
        def csr_event(type, name, **_):
            if type != "DELETED":
                signer.handle(name)

    @kopf.on.event(GROUP, VERSION, "passthroughdevices", registry=registry)
    def device_event(type, body, **_):
        controller.devices.observe(dict(body), deleted=type == "DELETED")

    @kopf.on.event(GROUP, VERSION, pools.PLURAL, registry=registry)
    def pool_event(type, body, **_):
        controller.observe_pool(dict(body), deleted=type == "DELETED")
        if type != "DELETED":
            controller.enqueue("judge-pools", controller.judge_pools)

    @kopf.on.event(GROUP, VERSION, "migrations", registry=registry)
    def migration_event(type, body, **_):
        controller.migrations.observe(dict(body), deleted=type == "DELETED")

    watch_vms_and_pods(registry, controller)
    return registry


def eviction_refusal(controller: Controller, namespace: str, pod_name: str, start: bool = True) -> str | None:
    """Why a reservation pod may not be evicted now, or None to let it go. LiveMigrate: a
    Migration moves the VM and the pod goes once it has moved (the drain retries); None:
    never; Stop: it goes, and the agent stops the VM."""
    pod = next((p for pods in list(controller.pods.values()) for p in list(pods.values())
                if (p["metadata"]["namespace"], p["metadata"]["name"]) == (namespace, pod_name)), None)
    labels = (pod or {}).get("metadata", {}).get("labels") or {}
    if labels.get(reservation.ROLE_LABEL) != "reservation":
        return None
    vm_name = labels.get(reservation.VM_LABEL)
    vm = controller.vm_named(namespace, vm_name)
    if vm is None:
        return None
    node = (pod.get("spec") or {}).get("nodeName")
    if pod["metadata"].get("deletionTimestamp") or (vm.get("status") or {}).get("nodeName") not in (None, node):
        return None  # the pod of a VM that has left its node (a finished move): nothing runs there
    strategy = (vm.get("spec") or {}).get("evictionStrategy", "Stop")
    if strategy == "None":
        return f"VM {namespace}/{vm_name} has evictionStrategy None: stop it before its node is drained"
    if strategy != "LiveMigrate":
        return None
    # Only a node being emptied moves a VM: anyone who reaches the webhook's port could send
    # an eviction's review, but not cordon a node (checked in the API when the cache has not
    # seen the cordon a drain made just before its evictions).
    cached = controller.nodes.get(node)
    if not (cached and cached.being_emptied) and not migration.being_emptied(kube.get_node(node)):
        return (f"VM {namespace}/{vm_name} has evictionStrategy LiveMigrate: it moves off {node} when the node is "
                f"drained (cordoned); evictions from a node that still takes pods are refused")
    try:
        name = controller.migrations.evacuate(namespace, vm_name, node) if start else "(dry run)"
    except EvacuationFailed as e:
        return f"VM {namespace}/{vm_name} cannot be live-migrated off {node}: {e}"
    return (f"VM {namespace}/{vm_name} is being live-migrated off {node} by Migration {name}; "
            f"its reservation pod goes once it has moved")
