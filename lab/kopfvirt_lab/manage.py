"""`kopfvirt-lab up|down|status|exec`: bring the whole lab up idempotently, or clear it.

`up` starts only what is not running, so after a killed libvirtd, agent or API server
it brings back the missing parts and leaves running guests alone. A lab left by another
checkout (CI clones elsewhere) is found through a machine-wide owner file and cleared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kopfvirt import GROUP, VERSION
from kopfvirt.core.nodelabels import HIDE_CPU_FEATURES_ANNOTATION
from . import (containerd, controlplane, guest, images, install, kubelet, kubeproxy, nodes, pcitree, procs, storage,
               tokens)
from .errors import LabError
from .layout import HIDDEN_CPU_FEATURES, PCI_TREE_NODES, RUN_DIR, SHARED_STORAGE, Lab, node_names

OWNER = RUN_DIR / "owner"
REQUIRED_TOOLS = {
    "ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "findmnt": "util-linux",
    "libvirtd": "libvirt-daemon-system", "virsh": "libvirt-clients",
    "qemu-system-x86_64": "qemu-system-x86", "etcd": "etcd-server",
    "cpio": "cpio", "glusterd": "glusterfs-server", "mount.glusterfs": "glusterfs-client", "tgtd": "tgt",
    "ganesha.nfsd": "nfs-ganesha", "rpcbind": "rpcbind", "rpcinfo": "rpcbind",
    "runc": "runc", "buildah": "buildah", "mmdebstrap": "mmdebstrap",
}


def _preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it makes network and mount namespaces and runs libvirtd. "
                       "Run it as root (sudo -E).")
    missing = [f"{tool} (package {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise LabError("missing tools: " + ", ".join(missing) + ". `make lab-deps` installs them.")


def _clear_foreign(lab: Lab) -> None:
    """Remove a lab made by another checkout: its processes, namespaces and mounts."""
    try:
        owner = Path(OWNER.read_text().strip())
    except FileNotFoundError:
        owner = None
    if owner and owner != lab.root:
        print(f"clearing a lab left by another checkout: {owner}")
        storage.quiesce()
        _sweep_processes(str(owner) + "/")
        nodes.teardown()
    elif owner is None and nodes.existing_netns():
        print("clearing lab nodes of an unknown owner")
        storage.quiesce()
        nodes.teardown()


def _sweep_processes(marker: str) -> None:
    """Kill every process whose command line mentions `marker` (a .lab/ path)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in cmdline:
            procs.kill(int(proc.name), grace=5)


def _apply(lab: Lab, *paths: Path) -> None:
    result = subprocess.run(lab.kubectl_as_admin("apply", "--server-side", "--force-conflicts",
                                                  *sum((["-f", str(p)] for p in paths), [])),
                            text=True, capture_output=True)
    if result.returncode != 0:
        raise LabError(f"kubectl apply failed: {result.stderr.strip()}")


def _start_node_daemons(lab: Lab, names: list[str]) -> None:
    """Each node's container runtime, kubelet and kube-proxy, and the PCI tree (and the
    proc tree of what its host uses) node-2's agent reads (lab/kopfvirt_lab/pcitree.py):
    what a node runs before Kopfvirt comes."""
    python = sys.executable
    for index, node in enumerate(names, start=1):
        containerd.start(lab, node, index, nodes.enter(node))
        kubelet.start(lab, node, index, nodes.enter(node), controlplane.server_url())
        kubeproxy.start(lab, node, index, nodes.enter(node), controlplane.server_url())
        if node in PCI_TREE_NODES:
            pcitree.build_proc(lab.proc_root(node))  # what the host uses: plain files, built in place
            sysfs_root = str(lab.sysfs_root(node))
            if not procs.running(lab, f"pcitree-{node}"):
                procs.start(lab, f"pcitree-{node}", [python, "-m", "kopfvirt_lab.pcitree", "serve", sysfs_root])
                deadline = time.monotonic() + 15
                while not (lab.sysfs_root(node) / "native.json").exists():
                    if time.monotonic() > deadline:
                        raise LabError(f"the PCI tree of {node} was not built; see {lab.logs}/pcitree-{node}.log")
                    time.sleep(0.1)


def _hide_cpu_features(lab: Lab, timeout: float = 60) -> None:
    """Narrow node-2's CPU as an admin would (an annotation its agent reads), once its
    kubelet has registered it, before its agent labels it."""
    deadline = time.monotonic() + timeout
    for node, features in HIDDEN_CPU_FEATURES.items():
        while True:
            result = subprocess.run(lab.kubectl_as_admin("annotate", "--overwrite", "node", node,
                                                         f"{HIDE_CPU_FEATURES_ANNOTATION}={','.join(features)}"),
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError(f"could not annotate node {node}: {result.stderr.strip()}")
            time.sleep(0.5)


def _wait_webhook(lab: Lab, timeout: float = 120) -> None:
    """Until the API server reaches the controller's webhook through its Service (a
    server-side dry run of a VM is judged, admitted or denied, not failed): `lab up` returns
    when VM writes work."""
    probe = json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                        "metadata": {"name": "lab-webhook-probe", "namespace": install.NAMESPACE},
                        "spec": {"cpu": {"cores": 1}, "memory": {"size": "64Mi"}}})
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(lab.kubectl_as_admin("create", "--dry-run=server", "-f", "-"), input=probe,
                                capture_output=True, text=True)
        if result.returncode == 0 or "denied the request" in result.stderr:  # judged either way
            return
        if time.monotonic() > deadline:
            raise LabError(f"the controller's webhook does not answer: {result.stderr.strip()}\n"
                           f"pods:\n{install.pods_table(lab)}")
        time.sleep(0.5)


def _wait_operator_ready(lab: Lab, names: list[str], timeout: float = 120) -> None:
    """The controller and an agent per node Ready (their probes pass): after a repaired
    kubelet they are probed afresh."""
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in install.pods(lab) if not p["metadata"].get("deletionTimestamp")]
        if len(pods) >= len(names) + 1 and all(install.ready(p) for p in pods):
            return
        if time.monotonic() > deadline:
            raise LabError(f"the operator's pods are not Ready after {timeout:.0f}s:\n{install.pods_table(lab)}")
        time.sleep(0.5)


def _wait_nodes_ready(lab: Lab, names: list[str], timeout: float = 180) -> None:
    """Ready, and labelled by their agents (CPU, pools): until then no VM can be placed. A
    fresh libvirtd first probes QEMU, which takes a while on two busy cores."""
    deadline = time.monotonic() + timeout
    jsonpath = ('{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}'
                '/{.metadata.labels.cpu\\.kopfvirt\\.io/host-cpu-digest} {end}')
    while time.monotonic() < deadline:
        out = subprocess.run(lab.kubectl_as_admin("get", "nodes", "-o", f"jsonpath={jsonpath}"),
                             text=True, capture_output=True).stdout
        ready = {pair.split("=")[0] for pair in out.split() if "=True/" in pair and not pair.endswith("/")}
        if set(names) <= ready:
            return
        time.sleep(0.5)
    raise LabError(f"nodes not Ready and labelled after {timeout:.0f}s; "
                   f"see {lab.logs}/kubelet-*.log and the agents' logs (kubectl -n {install.NAMESPACE} logs)")


def up(lab: Lab, count: int, virt_type: str = "qemu") -> None:
    _preflight()
    t0 = time.monotonic()
    names = node_names(count)
    _clear_foreign(lab)
    if lab.state_file.exists():
        previous = json.loads(lab.state_file.read_text()).get("nodes", [])
        if previous != names:
            raise LabError(f"this lab runs nodes {previous}; `kopfvirt-lab down` first to change to {count}")
    fresh = not lab.state_file.exists()
    lab.root.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    OWNER.write_text(f"{lab.root}\n")
    lab.state_file.write_text(json.dumps({"nodes": names, "virtType": virt_type}))
    try:
        controlplane.build(lab)
        took = images.build(lab)
        if any(took.values()):
            print("images built: " + ", ".join(f"{t} {s:.0f}s" for t, s in took.items() if s), flush=True)
        guest.install(lab)
        nodes.ensure_bridge()  # before the API server: its address lives on the bridge
        controlplane.prepare_pki(lab)
        controlplane.start(lab)
        # The namespace with its Pod Security labels, as a user creates it before the chart.
        _apply(lab, lab.repo / "crds", lab.repo / "manifests" / "namespace.yaml")
        subprocess.run(lab.kubectl_as_admin("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"),
                       check=True, capture_output=True)
        _apply(lab, lab.repo / "lab" / "storagepools.yaml", lab.repo / "lab" / "kubelet-api.yaml")
        storage.up(lab)
        nodes.up(lab, names)
        _start_node_daemons(lab, names)
        _hide_cpu_features(lab)
        if install.install(lab, nodes.VM_NETWORK, virt_type):
            print("kopfvirt installed: helm upgrade --install " + install.RELEASE, flush=True)
        tokens.write_kubeconfigs(lab, controlplane.server_url())  # for tests acting as the agent
        _wait_webhook(lab)
        nodes.ensure_tls_listeners(lab, names)
        _wait_nodes_ready(lab, names)
        _wait_operator_ready(lab, names)
    except (LabError, subprocess.CalledProcessError, KeyboardInterrupt) as e:
        if fresh:  # never leave half a lab behind
            down(lab, keep_logs=True, quiet=True)
            print(f"lab up failed; everything it started was removed (logs kept in {lab.logs})",
                  file=sys.stderr)
        else:
            print("lab up failed while repairing a lab; `kopfvirt-lab status` shows what runs, "
                  "`kopfvirt-lab down` removes it", file=sys.stderr)
        if isinstance(e, subprocess.CalledProcessError):
            raise LabError(f"`{' '.join(map(str, e.cmd))}` failed: {(e.stderr or '').strip()}") from None
        raise
    print(f"lab up in {time.monotonic() - t0:.1f}s: {', '.join(names)}; "
          f"KUBECONFIG={lab.kubeconfig}")


def down(lab: Lab, keep_logs: bool = False, quiet: bool = False) -> None:
    """Remove everything `up` made except the build cache under $HOME."""
    storage.quiesce()
    for pidfile in sorted(lab.pids.glob("*.pid")) if lab.pids.exists() else []:
        if pidfile.stem not in controlplane.COMPONENTS:
            procs.stop(lab, pidfile.stem, grace=5)
    removed = nodes.teardown()
    controlplane.stop(lab)
    _sweep_processes(str(lab.root) + "/")
    if keep_logs and lab.root.exists():
        for entry in lab.root.iterdir():
            if entry.is_dir() and entry != lab.logs:
                shutil.rmtree(entry, ignore_errors=True)
            elif not entry.is_dir():
                entry.unlink()
    else:
        shutil.rmtree(lab.root, ignore_errors=True)
    shutil.rmtree(SHARED_STORAGE, ignore_errors=True)
    storage.remove_data()
    try:
        if Path(OWNER.read_text().strip()) == lab.root:
            OWNER.unlink()
    except FileNotFoundError:
        pass
    if not quiet:
        print(f"lab down: removed nodes {', '.join(removed) or '(none)'} and {lab.root}")


def status(lab: Lab) -> int:
    if not lab.state_file.exists():
        print("no lab here (kopfvirt-lab up starts one)")
        return 1
    names = json.loads(lab.state_file.read_text())["nodes"]
    healthy = True
    print("control plane:")
    for name, state in controlplane.status(lab).items():
        healthy &= state.startswith("running")
        print(f"  {name:26} {state}")
    print("nodes:")
    for node, state in nodes.status(lab, names).items():
        healthy &= "libvirtd running" in state and "virtlockd running" in state
        print(f"  {node:26} {state}")
    print("kubelets, container runtimes and kube-proxies:")
    daemons = ("kubelet", "containerd", "kube-proxy")
    for name in [f"{p}-{n}" for n in names for p in daemons] + [f"pcitree-{n}" for n in names if n in PCI_TREE_NODES]:
        pid = procs.running(lab, name)
        healthy &= pid is not None
        print(f"  {name:26} {'running (pid %d)' % pid if pid else 'stopped'}")
    released = install.deployed(lab)
    operator = install.pods(lab)
    healthy &= released and len(operator) > len(names) and all(install.ready(p) for p in operator)
    print(f"kopfvirt (helm release {install.RELEASE} in {install.NAMESPACE}: {'deployed' if released else 'absent'}):")
    print(install.pods_table(lab))
    print(f"storage servers ({storage.LAB.ip}):")
    for name, state in storage.status(lab).items():
        healthy &= state.startswith("running") and state.endswith(" reachable")
        print(f"  {name:26} {state}")
    print(f"kubeconfig: {lab.kubeconfig}")
    print(f"shared storage: {SHARED_STORAGE}")
    print("healthy" if healthy else "degraded: `kopfvirt-lab up` restarts what is missing")
    return 0 if healthy else 1


def exec_(lab: Lab, node: str, argv: list[str]) -> None:
    from .layout import netns_path
    if not netns_path(node).exists():
        raise LabError(f"no lab node {node!r} (kopfvirt-lab status lists them)")
    # The lab's kubectl, crictl and ctr first on PATH; crictl talks to the node's containerd.
    os.environ["PATH"] = os.pathsep.join([str(lab.k8s_bin), str(lab.containerd_bin), os.environ.get("PATH", "")])
    os.environ.setdefault("CONTAINER_RUNTIME_ENDPOINT", f"unix://{containerd.SOCKET}")
    os.execvp("nsenter", [*nodes.enter(node), *argv])
