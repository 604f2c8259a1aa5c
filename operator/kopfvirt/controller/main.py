"""Entry point of the controller."""

from __future__ import annotations

from ..clients import kube
from ..runtime import run
from .handlers import Webhook, build_registry
from .reconciler import Controller


def main(kubeconfig: str | None, resync_seconds: float = 30, webhook: Webhook | None = None) -> None:
    kube.load(kubeconfig)
    run(build_registry(Controller(), resync_seconds, webhook))
