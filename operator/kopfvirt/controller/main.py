"""Entry point of the controller."""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY

from ..clients import kube
from ..core.reservation import DEFAULT_POD_SETTINGS, PodSettings
from ..runtime import configure_logging, run
from ..metrics_endpoint import MetricsEndpoint
from .apiserver import SubresourceServer
from .certificates import NodeCertificateSigner, WebhookCertificates
from .handlers import Webhook, build_registry
from .leadership import LeaderElector
from .metrics import VMPhases
from .reconciler import Controller


def main(kubeconfig: str | None, resync_seconds: float = 30, webhook: Webhook | None = None,
         namespace: str = "kopfvirt-system", metrics_port: int = 8080,
         pod_settings: PodSettings = DEFAULT_POD_SETTINGS, certs: WebhookCertificates | None = None,
         cert_check_seconds: float = 600, health_port: int = 0, lease: str | None = None,
         identity: str = "", api_port: int = 0) -> None:
    """With `lease`, replicas elect a leader by that Lease of `namespace`; only it writes.
    With `api_port`, every replica serves the VM subresources (console, vnc, xml)."""
    configure_logging()
    kube.load(kubeconfig, "kopfvirt-controller")
    if metrics_port and webhook:  # served with the webhook's certificate, once it is there
        MetricsEndpoint(metrics_port, webhook.certfile, webhook.keyfile).start()
    elif metrics_port:
        logging.getLogger(__name__).warning("no /metrics: it is served over TLS with the webhook's certificate")
    if certs:
        _first_certificates(certs)
        certs.keep_fresh(cert_check_seconds)
    signer = NodeCertificateSigner(certs, namespace) if certs else None
    if certs and api_port:
        SubresourceServer(namespace, certs.certfile, certs.cafile, api_port).start()
    controller = Controller(namespace, pod_settings)
    REGISTRY.register(VMPhases(controller))
    elector = None
    if lease:
        elector = LeaderElector(namespace, lease, identity, on_started=controller.lead)
        controller.leading = elector.leading
    run(build_registry(controller, resync_seconds, webhook, signer, elector), health_port)


def _first_certificates(certs: WebhookCertificates) -> None:
    """The webhook serves nothing without its certificate: wait for the API until it is there."""
    delay = 1.0
    while True:
        try:
            certs.ensure()
            return
        except Exception as e:  # noqa: BLE001 - the API server may still be starting
            logging.getLogger(__name__).warning("webhook certificates (retrying in %.0fs): %s", delay, e)
            time.sleep(delay)
            delay = min(delay * 2, 30)
