"""libvirtd in a pod without betting the guests on it: the chart's libvirt DaemonSet (its
image, built from the Dockerfile, and its pod as the chart renders it) runs a guest whose
QEMU outlives the pod, and the pod that replaces it adopts the guest again.

The lab's nodes run their own libvirtd at libvirt's usual paths, so this DaemonSet runs on
node-1 with its host directories under a prefix of their own and in the pod network (its
TLS listener beside the node's); everything else is the chart's.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml

from kopfvirt_lab import images, install
from kopfvirt_lab.layout import Lab

from .conftest import (OPERATOR_NAMESPACE, REPO, heartbeat, kubectl, kubectl_json, lab_exec, run, wait_for)

LAB = Lab(REPO)
NODE = "node-1"
PREFIX = "/var/lib/kopfvirt-lab/libvirt-pod"
NAME = "kopfvirt-libvirt-test"
DOMAIN = "libvirt-pod-guest"
GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/var/lib/kopfvirt/lab-guest-vmlinuz</kernel><initrd>/var/lib/kopfvirt/lab-guest-initrd.img</initrd>
    <cmdline>console=ttyS0 quiet</cmdline></os>
  <devices>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}-serial.log'/><target port='0'/></serial>
  </devices>
</domain>
"""


def _daemonset() -> dict:
    """The chart's libvirt DaemonSet, moved aside (name, labels, host paths, node-1)."""
    repository, _, tag = images.reference(LAB, "libvirt").rpartition(":")
    rendered = run(install.helm(), "template", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n",
                   OPERATOR_NAMESPACE, "--kube-version", "1.36.3", "--show-only", "templates/libvirt.yaml",
                   "--set", f"libvirt.image.repository={repository}", "--set", f"libvirt.image.tag={tag}",
                   "--set", "image.pullPolicy=Never").stdout
    ds = yaml.safe_load(rendered)
    labels = {"app.kubernetes.io/name": NAME}
    ds["metadata"] = {"name": NAME, "namespace": OPERATOR_NAMESPACE, "labels": labels}
    ds["spec"]["selector"] = {"matchLabels": labels}
    template = ds["spec"]["template"]
    template["metadata"]["labels"] = labels
    pod = template["spec"]
    assert pod["hostPID"] and pod["containers"][0]["securityContext"]["privileged"]
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    pod["hostNetwork"] = False
    pod["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    for volume in pod["volumes"]:
        if volume["hostPath"]["path"].startswith("/var/"):
            volume["hostPath"]["path"] = PREFIX + volume["hostPath"]["path"]
    return ds


def _pod() -> dict | None:
    pods = [p for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={NAME}")[
        "items"] if not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods and install.ready(pods[0]) else None


def _virsh(pod: dict, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return kubectl("-n", OPERATOR_NAMESPACE, "exec", "-i", pod["metadata"]["name"], "--", "virsh", "-c",
                   "qemu:///system", *args, stdin=stdin, check=check)


def _qemu_pid() -> int:
    return int(lab_exec(NODE, "cat", f"{PREFIX}/var/run/libvirt/qemu/{DOMAIN}.pid").stdout)


def _cgroups(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return {parts[1]: parts[2] for parts in (line.strip().split(":", 2) for line in f) if parts[1]}


@pytest.fixture
def libvirt_pod(lab):
    # What the agent would have put there: the node's certificate (start.sh waits for it).
    lab_exec(NODE, "sh", "-c", f"mkdir -p {PREFIX}/var/lib/kopfvirt && cp -a /var/lib/kopfvirt/tls "
                               f"{PREFIX}/var/lib/kopfvirt/ && cp /var/lib/kopfvirt/storage/images/lab-guest-* "
                               f"{PREFIX}/var/lib/kopfvirt/")
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(_daemonset()))
    try:
        yield wait_for("the libvirt pod Ready", _pod, timeout=120)
    finally:
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "daemonset", NAME, "--wait=true", "--ignore-not-found")
        found = lab_exec(NODE, "cat", f"{PREFIX}/var/run/libvirt/qemu/{DOMAIN}.pid", check=False)
        if found.returncode == 0 and found.stdout.strip().isdigit():
            try:  # nothing of the test outlives it
                os.kill(int(found.stdout), 9)
            except ProcessLookupError:
                pass
        lab_exec(NODE, "rm", "-rf", PREFIX)


def test_a_guest_outlives_its_libvirt_pod_and_the_next_pod_adopts_it(libvirt_pod):
    created = _virsh(libvirt_pod, "create", "/dev/stdin", stdin=GUEST.format(name=DOMAIN))
    assert f"Domain '{DOMAIN}' created" in created.stdout
    log_dir = f"{PREFIX}/var/log/libvirt/qemu"
    wait_for("the guest's heartbeat", lambda: heartbeat(NODE, DOMAIN, log_dir), timeout=60)
    qemu = _qemu_pid()
    # QEMU is out of the pod's cgroups in every hierarchy (else the runtime kills it with the pod).
    container = _cgroups(int(lab_exec(NODE, "cat", f"{PREFIX}/var/run/libvirt/libvirtd.pid").stdout))
    inside = {c: p for c, p in _cgroups(qemu).items() if p.startswith(container[c])}
    assert not inside, inside

    kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", libvirt_pod["metadata"]["name"], "--wait=true")
    assert os.path.exists(f"/proc/{qemu}"), "QEMU died with the libvirt pod"
    counted = heartbeat(NODE, DOMAIN, log_dir)
    replacement = wait_for("the DaemonSet's next libvirt pod Ready", _pod, timeout=120)
    assert replacement["metadata"]["uid"] != libvirt_pod["metadata"]["uid"]

    # The new libvirtd adopted the running guest: same QEMU, still counting, and it can stop it.
    assert _virsh(replacement, "domstate", DOMAIN).stdout.strip() == "running"
    assert _qemu_pid() == qemu
    wait_for("the guest to keep counting", lambda: (heartbeat(NODE, DOMAIN, log_dir) or 0) > (counted or 0),
             timeout=30)
    _virsh(replacement, "destroy", DOMAIN)
    wait_for("QEMU gone", lambda: not os.path.exists(f"/proc/{qemu}"), timeout=30)
    leftovers = glob.glob(f"/sys/fs/cgroup/*/kopfvirt-guests/{DOMAIN}")  # the hook's, removed at release
    assert not leftovers, leftovers
