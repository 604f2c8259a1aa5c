"""Each lab node's kubelet: the pinned release, in the node's network and mount namespaces.

It registers its Node, renews its Lease and reports status itself, with a client
certificate of the lab CA for `system:node:<node>` (Node authorization and the
NodeRestriction admission plugin apply to it as in a cluster), and runs pods through
the node's containerd (lab/kopfvirt_lab/containerd.py).

This machine has cgroup v1 (cgroup2 is mounted without controllers): kubelet 1.36 runs
on it only with `failCgroupV1: false`, the cgroupfs driver, and a cgroup root per node
(/kvlab-node-N in every v1 hierarchy), so two kubelets on one machine do not manage the
same cgroups. kubelet also tunes machine-wide sysctls (vm.overcommit_memory, kernel.panic,
...); in the lab those entries are plain files in the node's mount namespace.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

from . import kubeconfig, pki, procs
from .layout import Lab, node_ip

CGROUP_ROOT = Path("/sys/fs/cgroup")
# What kubelet writes under /proc/sys when protectKernelDefaults is false.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# The plugin reaches lab nodes by `kopfvirt-lab exec`; every lab node runs VMs (the
# chart's DaemonSets select kopfvirt.io/virtualization=true, as users label their nodes).
NODE_LABELS = "kopfvirt.io/lab-node=true,kopfvirt.io/virtualization=true"


def cgroup_name(node: str) -> str:
    return f"kvlab-{node}"


def v1_hierarchies() -> list[Path]:
    """The mount points of the machine's cgroup v1 hierarchies (cpu,cpuacct counted once)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] == "cgroup":
            out.append(Path(fields[4]))
    return out


def ensure_cgroup_root(node: str) -> None:
    """/kvlab-<node> in every v1 hierarchy; cpuset needs its CPUs and memory nodes copied in."""
    for hierarchy in v1_hierarchies():
        path = hierarchy / cgroup_name(node)
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((hierarchy / knob).read_text())


def remove_cgroup_root(node: str) -> None:
    """Kill what is left in the node's cgroups (containers live in pod network namespaces,
    not the node's) and remove them, deepest first."""
    for hierarchy in v1_hierarchies():
        top = hierarchy / cgroup_name(node)
        if not top.exists():
            continue
        for procs_file in top.rglob("cgroup.procs"):
            for pid in procs_file.read_text().split():
                procs.kill(int(pid), grace=2)
        for d in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), top]:
            _rmdir_when_empty(d)


def _rmdir_when_empty(cgroup: Path, timeout: float = 15) -> None:
    """A killed process stays in its cgroup until it is reaped (late, by the machine's init)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cgroup.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sysctl_binds(node_root: Path) -> list[str]:
    """Shell commands that put plain files over the sysctls kubelet writes."""
    binds = []
    for name in SYSCTLS:
        source = Path("/proc/sys") / name
        if not source.exists():
            continue
        stand_in = node_root / "sysctl" / name.replace("/", ".")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text(source.read_text())
        binds.append(f"mount --bind {stand_in} {source}")
    return binds


def ensure_certs(lab: Lab, node: str, index: int) -> None:
    """The kubelet's certificate: a client of the API server as system:node:<node>, and the
    server the API server reaches for logs and exec, at the node's address."""
    pki.ensure_cert(lab.pki, f"kubelet-{node}", f"system:node:{node}", orgs=("system:nodes",),
                    dns=(node,), ips=(node_ip(index),))


def config(lab: Lab, node: str, index: int) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{cgroup_name(node)}",
        "address": node_ip(index), "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "tlsCertFile": str(lab.pki / f"kubelet-{node}.crt"), "tlsPrivateKeyFile": str(lab.pki / f"kubelet-{node}.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(lab.pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "failSwapOn": False, "protectKernelDefaults": False,
        # The images are imported, not pulled: never collect them, however full the disk.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "registerNode": True, "rotateCertificates": False, "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf", "clusterDomain": "cluster.local",
        # Fault tests kill the operator's processes again and again: the kubelet restarts
        # them within seconds each time instead of backing off for minutes.
        "featureGates": {"KubeletCrashLoopBackOffMax": True},
        "crashLoopBackOff": {"maxContainerRestartPeriod": "2s"},
    }


def start(lab: Lab, node: str, index: int, enter: list[str], server: str) -> None:
    name = f"kubelet-{node}"
    if procs.running(lab, name):
        return
    binary = lab.k8s_binary("kubelet")
    ensure_certs(lab, node, index)
    ensure_cgroup_root(node)
    root = lab.node_dir(node) / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    kc = root / "kubeconfig"
    kubeconfig.write(kc, server, lab.pki / "ca.crt", f"system:node:{node}",
                     cert=lab.pki / f"kubelet-{node}.crt", key=lab.pki / f"kubelet-{node}.key")
    (root / "config.json").write_text(json.dumps(config(lab, node, index), indent=1))
    procs.start(lab, name, [*enter, str(binary), f"--config={root / 'config.json'}", f"--kubeconfig={kc}",
                            f"--hostname-override={node}", f"--node-ip={node_ip(index)}",
                            f"--node-labels={NODE_LABELS}", "--v=1"])
