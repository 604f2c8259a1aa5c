"""Entry point of the node agent."""

from __future__ import annotations

from ..clients import kube
from ..clients.libvirt import Hypervisor
from ..runtime import run
from .handlers import build_registry


def main(node: str, kubeconfig: str | None, libvirt_uri: str, virt_type: str) -> None:
    kube.load(kubeconfig)
    run(build_registry(node, Hypervisor(libvirt_uri), virt_type))
