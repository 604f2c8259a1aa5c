"""Each lab node's container runtime: containerd 2.x with runc, and CNI for its pods.

containerd runs in the node's network and mount namespaces with its own root, state and
socket (bind-mounted per node, lab/kopfvirt_lab/nodes.py). Pods get addresses from the node's own
subnet of POD_CIDR on a bridge inside the node (CNI bridge + host-local); each node
routes the other nodes' subnets to them over the lab bridge, and the host routes them
all, so pods reach each other, the nodes and the API server without NAT.

The pod sandbox ("pause") image is the Dockerfile's reservation target: a program that
only waits, which is all a sandbox's first process does here (no shared PID namespace
to reap for).
"""

from __future__ import annotations

import json
import os
import time

from . import images, procs
from .errors import LabError
from .layout import CONTAINERD_VERSION, Lab, pod_cidr

SOCKET = "/run/containerd/containerd.sock"


def config(lab: Lab) -> str:
    """containerd 2.x's config (version 4, as `containerd config default` prints it). No
    CAP_SYS_RESOURCE in the lab: containers may not lower their OOM score adjustment
    below containerd's own."""
    return f"""\
# kopfvirt lab node: containerd {CONTAINERD_VERSION} in the node's namespaces; paths are the node's own binds.
version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{SOCKET}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{images.reference(lab, 'reservation')}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"
"""


def cni_config(index: int) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "kopfvirt-lab",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr(index)}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}]}, indent=1)


def _write_if_changed(path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def start(lab: Lab, node: str, index: int, enter: list[str]) -> None:
    """Configure and start the node's containerd (if not running), then import the images."""
    root = lab.node_dir(node)
    changed = _write_if_changed(root / "containerd/config.toml", config(lab))
    _write_if_changed(root / "etc/cni/net.d/10-kopfvirt-lab.conflist", cni_config(index))
    name = f"containerd-{node}"
    if changed and procs.running(lab, name):  # running containers outlive it; it finds them again
        procs.stop(lab, name)
    if not procs.running(lab, name):
        (root / SOCKET.lstrip("/")).unlink(missing_ok=True)
        # Its runc shim is looked up on PATH.
        path = f"{lab.containerd_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        procs.start(lab, name, [*enter, str(lab.containerd_bin / "containerd"), "--config",
                                str(root / "containerd/config.toml")], env={"PATH": path})
        deadline = time.monotonic() + 30
        while not (root / SOCKET.lstrip("/")).exists():
            if time.monotonic() > deadline or not procs.running(lab, name):
                raise LabError(f"containerd on {node} did not start:\n{procs.log_tail(lab, name)}")
            time.sleep(0.1)
    images.import_into(lab, node, enter, SOCKET)
