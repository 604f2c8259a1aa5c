"""Each lab node's kube-proxy: the pinned release, in the node's network namespace, so
Services work as in a cluster: a pod reaches the API server through the `kubernetes`
Service (what in-cluster clients use), and any ClusterIP Service's pods on any node.

iptables mode (Debian's iptables, nf_tables backend), as the system:kube-proxy user with a
lab-CA client certificate (the built-in system:node-proxier role). Conntrack limits are
machine-wide, not the node's: kube-proxy is told to leave them alone.
"""

from __future__ import annotations

import json

from . import kubeconfig, pki, procs
from .layout import POD_CIDR, Lab, node_ip


def config(lab: Lab, node: str, index: int) -> dict:
    root = lab.node_dir(node) / "kube-proxy"
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clusterCIDR": str(POD_CIDR), "hostnameOverride": node,
        "bindAddress": node_ip(index), "healthzBindAddress": f"{node_ip(index)}:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clientConnection": {"kubeconfig": str(root / "kubeconfig")},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        # No NodePort on 127.0.0.1: that needs route_localnet, and the lab has no use for it.
        "iptables": {"localhostNodePorts": False},
        "nodePortAddresses": ["primary"],
    }


def start(lab: Lab, node: str, index: int, enter: list[str], server: str) -> None:
    name = f"kube-proxy-{node}"
    if procs.running(lab, name):
        return
    binary = lab.k8s_binary("kube-proxy")
    pki.ensure_cert(lab.pki, "kube-proxy", "system:kube-proxy")
    root = lab.node_dir(node) / "kube-proxy"
    root.mkdir(parents=True, exist_ok=True)
    kubeconfig.write(root / "kubeconfig", server, lab.pki / "ca.crt", "system:kube-proxy",
                     cert=lab.pki / "kube-proxy.crt", key=lab.pki / "kube-proxy.key")
    (root / "config.json").write_text(json.dumps(config(lab, node, index), indent=1))
    procs.start(lab, name, [*enter, str(binary), f"--config={root / 'config.json'}", "--v=1"])
