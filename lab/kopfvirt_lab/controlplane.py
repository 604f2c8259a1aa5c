"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as host processes."""

from __future__ import annotations

import os
import shutil
import ssl
import time
import urllib.request

from . import kubeconfig, pki, procs
from .errors import LabError
from .layout import (APISERVER_PORT, CONTAINERD_VERSION, ETCD_CLIENT_PORT, ETCD_PEER_PORT, HOST_IP,
                     K8S_VERSION, SERVICE_CIDR, Lab)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def server_url() -> str:
    return f"https://{HOST_IP}:{APISERVER_PORT}"


def build(lab: Lab) -> None:
    """Build (or find cached) the pinned releases' binaries: Kubernetes and containerd."""
    if shutil.which("etcd") is None:
        raise LabError("etcd is missing: apt-get install etcd-server (make lab-deps does it)")
    script = lab.repo / "lab" / "build-kubernetes.sh"
    result = procs.run(["bash", str(script)], check=False,
                       env=_env(K8S_VERSION=K8S_VERSION, CONTAINERD_VERSION=CONTAINERD_VERSION))
    if result.returncode != 0:
        raise LabError(f"building Kubernetes and containerd failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def _env(**extra) -> dict:
    return {**os.environ, **extra}


def prepare_pki(lab: Lab) -> None:
    p = lab.pki
    pki.ensure_ca(p)
    pki.ensure_service_account_keys(p)
    pki.ensure_cert(p, "apiserver", "kube-apiserver",
                    dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                         "kubernetes.default.svc.cluster.local", "localhost"),
                    ips=(HOST_IP, "127.0.0.1", SERVICE_CIDR.split("/")[0][:-1] + "1"))
    pki.ensure_cert(p, "admin", "kopfvirt-lab-admin", orgs=("system:masters",))
    pki.ensure_cert(p, "controller-manager", "system:kube-controller-manager")
    pki.ensure_cert(p, "scheduler", "system:kube-scheduler")
    # The API server's identity towards kubelets (logs, exec): bound to system:kubelet-api-admin.
    pki.ensure_cert(p, "apiserver-kubelet-client", "kube-apiserver-kubelet-client")
    # The API server's identity towards aggregated APIs (the operator's VM subresources),
    # from a CA of its own, as kubeadm sets it up: that CA vouches for X-Remote-User only.
    pki.ensure_ca(p, "front-proxy-ca", "kopfvirt-lab-front-proxy-ca")
    pki.ensure_cert(p, "front-proxy-client", "front-proxy-client", ca="front-proxy-ca")
    server = server_url()
    for user, name in (("admin", "admin"), ("system:kube-controller-manager", "controller-manager"),
                       ("system:kube-scheduler", "scheduler")):
        target = lab.kubeconfig if name == "admin" else lab.root / f"{name}.kubeconfig"
        kubeconfig.write(target, server, p / "ca.crt", user, cert=p / f"{name}.crt", key=p / f"{name}.key")


def _argv(lab: Lab, component: str) -> list[str]:
    p, b = lab.pki, lab.k8s_bin
    if component == "etcd":
        client, peer = f"http://127.0.0.1:{ETCD_CLIENT_PORT}", f"http://127.0.0.1:{ETCD_PEER_PORT}"
        return ["etcd", "--name", "lab", "--data-dir", str(lab.root / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"lab={peer}", "--log-level", "warn"]
    if component == "kube-apiserver":
        return [str(b / component), f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
                "--bind-address=0.0.0.0", f"--secure-port={APISERVER_PORT}",
                f"--advertise-address={HOST_IP}", f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC", "--allow-privileged=true",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--audit-policy-file={lab.root / 'audit-policy.yaml'}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                # Webhooks and aggregated APIs by their Services' pod addresses: the host
                # routes to pods, and Service addresses exist only inside the nodes.
                "--enable-aggregator-routing=true",
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                f"--audit-log-path={lab.logs / 'audit.log'}", "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1", "--profiling=false", "--v=1"]
    if component == "kube-controller-manager":
        kc = lab.root / "controller-manager.kubeconfig"
        return [str(b / component), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--secure-port=0", "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # A silent kubelet's node turns Ready=Unknown after 30 s (50 s by default): the
                # node-loss test waits for that, not for the default.
                "--node-monitor-grace-period=30s", "--v=1"]
    if component == "kube-scheduler":
        kc = lab.root / "scheduler.kubeconfig"
        return [str(b / component), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--secure-port=0", "--v=1"]
    raise ValueError(component)


# The API server's audit log counts writes to our objects (the benchmarks read it).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources: [{group: "kopfvirt.io"}]
    verbs: ["create", "update", "patch", "delete"]
  - level: None
"""


def _ready(lab: Lab) -> bool:
    ctx = ssl.create_default_context(cafile=str(lab.pki / "ca.crt"))
    ctx.load_cert_chain(str(lab.pki / "admin.crt"), str(lab.pki / "admin.key"))
    try:
        with urllib.request.urlopen(f"{server_url()}/readyz", context=ctx, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def start(lab: Lab) -> None:
    (lab.root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    ports = {"etcd": ETCD_CLIENT_PORT, "kube-apiserver": APISERVER_PORT}
    for component in COMPONENTS:
        argv = _argv(lab, component)
        if pid := procs.running(lab, component):
            if procs.command_line(pid) == argv:
                continue
            procs.stop(lab, component)  # started with other flags (an older checkout): restart
        port = ports.get(component)
        if port and (holder := procs.port_in_use(port)):
            raise LabError(f"cannot start {component}: port {port} is in use by {holder}. "
                           "Stop it (or run `kopfvirt-lab down` in the checkout that owns it).")
        procs.start(lab, component, argv)
        if component == "kube-apiserver":
            wait_ready(lab)
        else:
            time.sleep(0.5)
            if not procs.running(lab, component):
                raise LabError(f"{component} exited at once:\n{procs.log_tail(lab, component)}")


def wait_ready(lab: Lab, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(lab):
            return
        if not procs.running(lab, "kube-apiserver"):
            raise LabError(f"kube-apiserver exited:\n{procs.log_tail(lab, 'kube-apiserver')}")
        time.sleep(0.5)
    raise LabError(f"kube-apiserver not ready after {timeout:.0f}s:\n{procs.log_tail(lab, 'kube-apiserver')}")


def stop(lab: Lab) -> None:
    for component in reversed(COMPONENTS):
        procs.stop(lab, component)


def status(lab: Lab) -> dict[str, str]:
    return {c: (f"running (pid {pid})" if (pid := procs.running(lab, c)) else "stopped") for c in COMPONENTS}
