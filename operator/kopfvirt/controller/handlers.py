"""Thin kopf wiring of the controller: watch events in, the reconciler does the work, and
a validating admission webhook for the rules a schema cannot say."""

from __future__ import annotations

import dataclasses

import kopf

from .. import GROUP, VERSION
from ..core import reservation, vmspec
from ..runtime import registry_with_settings, watch_vms_and_pods
from .reconciler import Controller

PLACEHOLDER_UID = "00000000-0000-4000-8000-000000000000"  # CREATE reviews carry no UID yet
WEBHOOK_PATH = "validate-virtualmachine"  # served at https://<host>:<port>/<this>


@dataclasses.dataclass(frozen=True)
class Webhook:
    """Where the API server reaches the controller's admission webhook."""

    host: str           # the address in the webhook URL (and the serving cert's SAN)
    port: int
    certfile: str
    keyfile: str
    cafile: str         # the CA that signed certfile: the API server's caBundle


def build_registry(controller: Controller, resync_seconds: float = 30,
                   webhook: Webhook | None = None) -> kopf.OperatorRegistry:
    registry = registry_with_settings("controller", pod_selector=(f"{reservation.ROLE_LABEL}=reservation", None))

    @kopf.on.startup(registry=registry)
    def start(settings: kopf.OperatorSettings, **_):
        controller.start_resync(resync_seconds)
        if webhook:
            with open(webhook.cafile, "rb") as ca:
                settings.admission.server = kopf.WebhookServer(
                    addr="0.0.0.0", port=webhook.port, host=webhook.host, certfile=webhook.certfile,
                    pkeyfile=webhook.keyfile, cadata=ca.read())
            # The ValidatingWebhookConfiguration is deployed (chart, or the lab), not managed
            # by kopf: kopf would also want to write mutating configurations.

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(type, body, **_):
        controller.observe_node(dict(body), deleted=type == "DELETED")

    if webhook:
        @kopf.on.validate(GROUP, VERSION, "virtualmachines", id=WEBHOOK_PATH, operations=["CREATE", "UPDATE"],
                          registry=registry)
        def validate(spec, meta, **_):
            try:
                vm = vmspec.parse(meta.get("namespace") or "default", meta.get("name") or "new",
                                  meta.get("uid") or PLACEHOLDER_UID, dict(spec))
            except vmspec.SpecError as e:
                raise kopf.AdmissionError(str(e), code=422)
            refusal = controller.unknown_cpu_model(vm)
            if refusal:
                raise kopf.AdmissionError(refusal, code=422)

    watch_vms_and_pods(registry, controller)
    return registry
