"""Entry point of the node agent."""

from __future__ import annotations

from prometheus_client import REGISTRY

from .. import NODE_TLS_DIR
from ..clients import kube
from ..metrics_endpoint import MetricsEndpoint
from ..runtime import run
from .guest_metrics import GuestMetrics
from .handlers import build_registry
from .reconciler import Agent
from .streams import Streams
from .tls import NodeTLS


def main(node: str, kubeconfig: str | None, libvirt_uri: str, virt_type: str,
         vm_network: str, resync_seconds: float = 30, hidden_cpu_features: tuple[str, ...] = (),
         tls_dir: str = NODE_TLS_DIR, sysfs_root: str = "/sys", pci_ids: str | None = None,
         device_scan_seconds: float = 10, namespace: str = "kopfvirt-system", metrics_port: int = 0,
         lease_dir: str | None = None, health_port: int = 0, cert_check_seconds: float = 600,
         serial_log_max_bytes: int = 2 << 20, stream_port: int = 0,
         controller_name: str = "kopfvirt-webhook.kopfvirt-system.svc", kubelet_dir: str = "/var/lib/kubelet",
         proc_root: str = "/proc") -> None:
    kube.load(kubeconfig, "kopfvirt-agent")
    agent = Agent(node, libvirt_uri, virt_type, networks={"default": vm_network},
                  hidden_cpu_features=hidden_cpu_features, tls_dir=tls_dir,
                  sysfs_root=sysfs_root, pci_ids=pci_ids, namespace=namespace, lease_dir=lease_dir,
                  serial_log_max_bytes=serial_log_max_bytes, kubelet_dir=kubelet_dir, proc_root=proc_root)
    NodeTLS(node, namespace, tls_dir).keep_fresh(cert_check_seconds)
    if stream_port:  # served with the node's certificate, once it is issued
        Streams(agent, tls_dir, controller_name, stream_port).start()
    if metrics_port:  # served with the node's certificate, once it is issued
        REGISTRY.register(GuestMetrics(node, agent.hv, agent.vms))
        MetricsEndpoint(metrics_port, f"{tls_dir}/servercert.pem", f"{tls_dir}/serverkey.pem").start()
    run(build_registry(agent, resync_seconds, device_scan_seconds), health_port)
