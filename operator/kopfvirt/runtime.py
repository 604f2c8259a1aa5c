"""How the controller and the agent run kopf: one process, one registry, watches only.

Both use kopf for what it does well (watching with server-side selectors, login, the
admission server) and feed every event to a level-based reconciler; with event handlers
only, kopf writes nothing into our objects. Each process still names kopf's finalizer and
annotation keys after itself, so a kopf default can never collide with the other's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

import kopf

from . import GROUP, VERSION, logformat


def registry_with_settings(identity: str, vm_selector: str | None = None,
                           pod_selector: tuple[str, str | None] | None = None) -> kopf.OperatorRegistry:
    """A registry whose startup applies the settings for `identity` (controller, agent).

    `vm_selector` (labels) and `pod_selector` (labels, fields) filter watches server-side,
    so an agent's watches carry only its own node's objects. Each process keeps kopf's
    state under its own prefix, so they never overwrite each other's.
    """
    registry = kopf.OperatorRegistry()
    prefix = f"{identity}.{GROUP}"

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_):
        # Our reconcilers manage their finalizers themselves; kopf's own name must never equal
        # one of them, or kopf would strip it as "not needed by any handler".
        settings.persistence.finalizer = f"{prefix}/kopf"
        if vm_selector:
            settings.watching.label_selectors[GROUP, "virtualmachines"] = vm_selector
        if pod_selector:
            labels, fields = pod_selector
            settings.watching.label_selectors["v1", "pods"] = labels
            if fields:
                settings.watching.field_selectors["v1", "pods"] = fields
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=prefix, key="last-handled-configuration")
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 30

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # KUBECONFIG is read at call time here (the client library reads it at import).
        if os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(**kwargs)
        info = kopf.login_with_service_account(**kwargs)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if info is not None and host:
            # The API server as client-go finds it from a pod: by the address in the
            # environment, not kubernetes.default.svc (no cluster DNS needed, hostNetwork too).
            host = f"[{host}]" if ":" in host else host
            return dataclasses.replace(info, server=f"https://{host}:{port}")
        return info

    return registry


def watch_vms_and_pods(registry: kopf.OperatorRegistry, reconciler) -> None:
    """Feed a reconciler every VirtualMachine and reservation-pod event its watches carry."""

    @kopf.on.event(GROUP, VERSION, "virtualmachines", registry=registry)
    def vm_event(type, body, **_):
        reconciler.observe_vm(dict(body), deleted=type == "DELETED")

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(type, body, **_):
        reconciler.observe_pod(dict(body), deleted=type == "DELETED")


def configure_logging(fmt: str = "text", **static: str) -> None:
    """Once, before anything logs (a second call changes nothing). `fmt`: text or json
    (logformat.py); `static`: fields of every JSON line."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logformat.formatter(fmt, **static))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event is noise


def run(registry: kopf.OperatorRegistry, health_port: int = 0) -> None:
    """Run kopf; with a health port, kopf's own liveness endpoint answers GET /healthz
    there (200 while its event loop runs: what the chart's probes ask)."""
    configure_logging()
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=True, liveness_endpoint=liveness))
