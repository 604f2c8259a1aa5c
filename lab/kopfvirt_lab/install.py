"""The operator in the lab, installed as users install it: `helm upgrade --install kopfvirt
charts/kopfvirt` with the values the lab writes (.lab/values.yaml: the images it built,
faster periods, where each node shows its sysfs), so the controller and the agents run as the chart's pods on
the lab's kubelets, from the images built from the Dockerfile. The lab's libvirtds run on
the nodes themselves (`libvirt.enabled=false`, as on hosts that already run libvirtd).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import images
from .errors import LabError
from .layout import CPU_ALLOCATION_RATIO, LAB_PROC, LAB_SYSFS, LEASE_DIR, Lab, cache_dir

RELEASE = "kopfvirt"
NAMESPACE = "kopfvirt-system"
RESYNC_SECONDS = 10  # faster than a cluster's default, so fault tests see repairs soon


def helm() -> str:
    """The pinned helm `make helm` builds (KOPFVIRT_HELM, or found in the cache), else one on PATH."""
    candidates = [os.environ.get("KOPFVIRT_HELM", ""), *sorted(map(str, (cache_dir() / "bin").glob("helm-v*"))),
                  shutil.which("helm") or ""]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if not found:
        raise LabError("no helm: `make helm` builds the pinned one")
    return found


def _split(reference: str) -> dict:
    repository, _, tag = reference.rpartition(":")
    return {"repository": repository, "tag": tag}


def values(lab: Lab, vm_network: str, virt_type: str = "qemu") -> dict:
    operator = _split(images.reference(lab, "operator"))
    return {
        # Imported into every node's containerd, never pulled; a rebuilt image rolls the pods.
        "image": {**operator, "pullPolicy": "Never"},
        "podAnnotations": {"kopfvirt.io/lab-image": images.digest("operator")[:16]},
        "reservation": {"image": _split(images.reference(lab, "reservation")),
                        "cpuAllocationRatio": CPU_ALLOCATION_RATIO},
        "libvirt": {"enabled": False},
        # Memory above the chart's defaults: the suite's many VMs fill their caches.
        "controller": {"extraArgs": [f"--resync-seconds={RESYNC_SECONDS}", "--cert-check-seconds=5"],
                       "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}},
        "agent": {
            "virtType": virt_type,
            "extraArgs": [f"--resync-seconds={RESYNC_SECONDS}", "--cert-check-seconds=5", "--device-scan-seconds=2",
                          f"--vm-network={vm_network}", f"--lease-dir={LEASE_DIR}"],
            # The machine's /sys and /proc on node-1, a built GPU server's on node-2 (nodes.py).
            "sysfsPath": LAB_SYSFS,
            "procPath": LAB_PROC,
            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        },
    }


def install(lab: Lab, vm_network: str, virt_type: str = "qemu") -> bool:
    """Install or upgrade the release when its chart or values changed; True if it did."""
    path = lab.root / "values.yaml"
    text = json.dumps(values(lab, vm_network, virt_type), indent=2) + "\n"  # JSON is YAML
    chart = lab.repo / "charts" / "kopfvirt"
    stamp = hashlib.sha256(text.encode() + b"".join(
        str(p.relative_to(chart)).encode() + p.read_bytes() for p in sorted(chart.rglob("*")) if p.is_file()
    )).hexdigest()
    stamp_file = lab.root / "release.sha256"
    if stamp_file.exists() and stamp_file.read_text() == stamp and deployed(lab):
        return False
    path.write_text(text)
    result = subprocess.run([helm(), "upgrade", "--install", RELEASE, str(chart), "--namespace", NAMESPACE,
                             "--kubeconfig", str(lab.kubeconfig), "--values", str(path), "--take-ownership",
                             "--wait", "--timeout", "300s"], capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"helm upgrade --install {RELEASE} failed: {result.stderr.strip()}\n"
                       f"pods:\n{pods_table(lab)}")
    stamp_file.write_text(stamp)
    return True


def deployed(lab: Lab) -> bool:
    result = subprocess.run([helm(), "status", RELEASE, "--namespace", NAMESPACE, "--kubeconfig", str(lab.kubeconfig),
                             "-o", "json"], capture_output=True, text=True)
    return result.returncode == 0 and json.loads(result.stdout).get("info", {}).get("status") == "deployed"


def pods(lab: Lab) -> list[dict]:
    result = subprocess.run(lab.kubectl_as_admin("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=kopfvirt",
                                                 "-o", "json"), capture_output=True, text=True)
    return json.loads(result.stdout)["items"] if result.returncode == 0 else []


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def restarts(pod: dict) -> int:
    """How often the kubelet has started the pod's containers again."""
    return sum(s.get("restartCount", 0) for s in (pod.get("status") or {}).get("containerStatuses") or [])


def pods_table(lab: Lab) -> str:
    rows = []
    for pod in pods(lab):
        rows.append(f"  {pod['metadata']['name']:40} {pod['spec'].get('nodeName') or '-':8} "
                    f"{(pod.get('status') or {}).get('phase')}{', ready' if ready(pod) else ''}, "
                    f"{restarts(pod)} restarts")
    return "\n".join(rows) or "  (none)"
