"""Entry point of the node agent."""

from __future__ import annotations

from ..clients import kube
from ..runtime import run
from .handlers import build_registry
from .reconciler import Agent


def main(node: str, kubeconfig: str | None, libvirt_uri: str, virt_type: str, storage_root: str,
         vm_network: str, resync_seconds: float = 30, hidden_cpu_features: tuple[str, ...] = (),
         migration_transport: str = "tls") -> None:
    kube.load(kubeconfig)
    agent = Agent(node, libvirt_uri, virt_type, storage_root, networks={"default": vm_network},
                  hidden_cpu_features=hidden_cpu_features, migration_transport=migration_transport)
    run(build_registry(agent, resync_seconds))
