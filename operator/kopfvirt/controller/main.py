"""Entry point of the controller."""

from __future__ import annotations

from ..clients import kube
from ..core.reservation import DEFAULT_POD_SETTINGS, PodSettings
from ..runtime import run
from . import metrics
from .handlers import Webhook, build_registry
from .reconciler import Controller


def main(kubeconfig: str | None, resync_seconds: float = 30, webhook: Webhook | None = None,
         namespace: str = "kopfvirt-system", metrics_port: int = 8080,
         pod_settings: PodSettings = DEFAULT_POD_SETTINGS) -> None:
    kube.load(kubeconfig)
    if metrics_port:
        metrics.serve(metrics_port)
    run(build_registry(Controller(namespace, pod_settings), resync_seconds, webhook))
