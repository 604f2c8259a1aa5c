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
from . import containerd, controlplane, guest, images, kubelet, kubeproxy, nodes, procs, storage, tokens
from .errors import LabError
from .layout import (AGENT_HEALTH_PORT, AGENT_METRICS_PORT, CPU_ALLOCATION_RATIO, HEALTH_PORT, HIDDEN_CPU_FEATURES,
                     HOST_IP, LEASE_DIR, METRICS_PORT, PCI_TREE_NODES, RUN_DIR, SHARED_STORAGE, TLS_DIR, WEBHOOK_PORT, Lab,
                     node_names)

OWNER = RUN_DIR / "owner"
WEBHOOK_SECRET = "kopfvirt-webhook-tls"  # the chart's webhook.certSecret
RESYNC_SECONDS = 10  # faster than a cluster's default, so fault tests see repairs soon
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


def _start_node_processes(lab: Lab, names: list[str], virt_type: str) -> None:
    python = sys.executable
    for index, node in enumerate(names, start=1):
        containerd.start(lab, node, index, nodes.enter(node))
        kubelet.start(lab, node, index, nodes.enter(node), controlplane.server_url())
        kubeproxy.start(lab, node, index, nodes.enter(node), controlplane.server_url())
        if node in PCI_TREE_NODES:
            sysfs_root = str(lab.sysfs_root(node))
            if not procs.running(lab, f"pcitree-{node}"):
                procs.start(lab, f"pcitree-{node}", [python, "-m", "kopfvirt_lab.pcitree", "serve", sysfs_root])
                deadline = time.monotonic() + 15
                while not (lab.sysfs_root(node) / "native.json").exists():
                    if time.monotonic() > deadline:
                        raise LabError(f"the PCI tree of {node} was not built; see {lab.logs}/pcitree-{node}.log")
                    time.sleep(0.1)
    _hide_cpu_features(lab)
    for node in names:
        sysfs_root = str(lab.sysfs_root(node)) if node in PCI_TREE_NODES else "/sys"
        if not procs.running(lab, f"agent-{node}"):
            procs.start(lab, f"agent-{node}", [
                *nodes.enter(node), python, "-m", "kopfvirt", "agent", "--node-name", node,
                "--kubeconfig", str(lab.root / "agent.kubeconfig"), "--virt-type", virt_type,
                "--vm-network", nodes.VM_NETWORK,
                "--resync-seconds", str(RESYNC_SECONDS), "--tls-dir", TLS_DIR, "--cert-check-seconds", "5",
                "--sysfs-root", sysfs_root, "--device-scan-seconds", "2", "--namespace", "kopfvirt-system",
                "--metrics-port", str(AGENT_METRICS_PORT), "--health-port", str(AGENT_HEALTH_PORT),
                "--lease-dir", LEASE_DIR])
    if not procs.running(lab, "controller"):
        # The webhook's certificate as in a cluster: issued by the controller into a Secret,
        # its CA patched into the webhook configuration (checked every few seconds here).
        procs.start(lab, "controller", [
            python, "-m", "kopfvirt", "controller", "--resync-seconds", str(RESYNC_SECONDS),
            "--kubeconfig", str(lab.root / "controller.kubeconfig"), "--webhook-host", HOST_IP,
            "--webhook-port", str(WEBHOOK_PORT), "--webhook-secret", WEBHOOK_SECRET,
            "--webhook-cert-dir", str(lab.root / "webhook"), "--cert-check-seconds", "5",
            "--namespace", "kopfvirt-system", "--metrics-port", str(METRICS_PORT),
            "--health-port", str(HEALTH_PORT), "--reservation-image", images.reference(lab, "reservation"),
            "--cpu-allocation-ratio", str(CPU_ALLOCATION_RATIO)])


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


def _webhook_configuration(lab: Lab) -> None:
    """The lab's ValidatingWebhookConfiguration: the controller runs on the host, so by URL.
    Applied before the controller starts and without a caBundle, as a chart installs it:
    the controller gives it its CA (an apply leaves the caBundle it set alone)."""
    # kopf loads only when needed
    from kopfvirt.controller.handlers import EVICTION_PATH, POOL_PATH, WEBHOOK_PATH  # noqa: PLC0415

    def webhook(name: str, path: str, api: tuple[str, str], resource: str, operations: list[str], **extra) -> dict:
        return {"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {"url": f"https://{HOST_IP}:{WEBHOOK_PORT}/{path}"},
                "rules": [{"apiGroups": [api[0]], "apiVersions": [api[1]], "resources": [resource],
                           "operations": operations}], **extra}

    config = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kopfvirt"},
        "webhooks": [
            # Metadata-only writes (finalizers, labels) never wait for the controller.
            webhook("virtualmachines.kopfvirt.io", WEBHOOK_PATH, (GROUP, VERSION), "virtualmachines",
                    ["CREATE", "UPDATE"], matchConditions=[{
                        "name": "spec-changes-only",
                        "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec"}]),
            webhook("evictions.kopfvirt.io", EVICTION_PATH, ("", "v1"), "pods/eviction", ["CREATE"],
                    sideEffects="NoneOnDryRun", matchConditions=[{
                        "name": "reservation-pods-only", "expression": "request.name.startsWith('kopfvirt-')"}]),
            # A StoragePool stays while VMs use it.
            webhook("storagepools.kopfvirt.io", POOL_PATH, (GROUP, VERSION), "storagepools", ["DELETE"]),
        ],
    }
    path = lab.root / "webhook.yaml"
    path.write_text(json.dumps(config))
    _apply(lab, path)


def _wait_webhook(lab: Lab) -> None:
    """Until the webhook serves with the controller's certificate: `lab up` returns when
    VM writes are judged, not refused."""
    deadline = time.monotonic() + 60
    while True:
        secret = _kubectl_json(lab, "-n", "kopfvirt-system", "get", "secret", WEBHOOK_SECRET)
        config = _kubectl_json(lab, "get", "validatingwebhookconfiguration", "kopfvirt")
        ca = ((secret or {}).get("data") or {}).get("ca.crt")
        bundles = {(w.get("clientConfig") or {}).get("caBundle") for w in (config or {}).get("webhooks") or []}
        if ca and bundles == {ca} and procs.port_in_use(WEBHOOK_PORT):
            return
        if time.monotonic() > deadline or not procs.running(lab, "controller"):
            raise LabError(f"the controller's webhook does not serve with its certificate on {WEBHOOK_PORT}:\n"
                           f"{procs.log_tail(lab, 'controller')}")
        time.sleep(0.2)


def _kubectl_json(lab: Lab, *args: str) -> dict | None:
    result = subprocess.run(lab.kubectl_as_admin(*args, "-o", "json"),
                            capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


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
                   f"see {lab.logs}/kubelet-*.log and agent-*.log")


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
        _apply(lab, lab.repo / "crds", lab.repo / "manifests" / "namespace.yaml",
               lab.repo / "manifests" / "rbac.yaml", lab.repo / "manifests" / "migration-config.yaml",
               lab.repo / "manifests" / "passthrough-config.yaml")
        subprocess.run(lab.kubectl_as_admin("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"),
                       check=True, capture_output=True)
        _apply(lab, lab.repo / "lab" / "storagepools.yaml", lab.repo / "lab" / "kubelet-api.yaml")
        storage.up(lab)
        nodes.up(lab, names)
        tokens.write_kubeconfigs(lab, controlplane.server_url())
        _webhook_configuration(lab)
        _start_node_processes(lab, names, virt_type)
        _wait_webhook(lab)
        nodes.ensure_tls_listeners(lab, names)
        _wait_nodes_ready(lab, names)
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
        healthy &= "running" in state
        print(f"  {node:26} {state}")
    print("kubelets, container runtimes, kube-proxies and kopfvirt:")
    daemons = ("kubelet", "containerd", "kube-proxy", "agent")
    for name in ["controller"] + [f"{p}-{n}" for n in names for p in daemons] + \
            [f"pcitree-{n}" for n in names if n in PCI_TREE_NODES]:
        pid = procs.running(lab, name)
        healthy &= pid is not None
        print(f"  {name:26} {'running (pid %d)' % pid if pid else 'stopped'}")
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
