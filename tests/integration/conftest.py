"""Integration tests against the lab: started once per session (never skipped).

`kopfvirt-lab up` is idempotent, so a lab a developer already runs is reused; CI starts
it from nothing. A lab that cannot come up fails the session: a skipped integration
test would count as not written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from kopfvirt.clients import nfs
from kopfvirt_lab import images, install
from kopfvirt_lab.layout import Lab

from ..gotools import go_tool

REPO = Path(__file__).resolve().parents[2]
KOPFVIRT_LAB = [sys.executable, "-m", "kopfvirt_lab"]  # the developers' lab command
KUBECONFIG = REPO / ".lab" / "kubeconfig"
# The pinned release's kubectl (the lab builds it), first on PATH for the tests' own runs
# of kubectl, and the plugin next to it as a user installs it.
os.environ["PATH"] = os.pathsep.join([str(Lab(REPO).k8s_bin), str(Path(sys.executable).parent),
                                      os.environ.get("PATH", "")])


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = ["kubectl", "--kubeconfig", str(KUBECONFIG), *args]
    result = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def lab_exec(node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(*KOPFVIRT_LAB, "exec", node, "--", *argv, check=check)


def wait_for(what: str, probe, timeout: float = 90, interval: float = 0.5):
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


OPERATOR_NAMESPACE = "kopfvirt-system"  # where the lab installs the chart


def controller_leader() -> str:
    """The name of the controller pod holding the leadership Lease (the replica that writes)."""
    def holder():
        lease = kubectl("-n", OPERATOR_NAMESPACE, "get", "lease", "kopfvirt-controller", "-o",
                        "jsonpath={.spec.holderIdentity}", check=False)
        return lease.stdout.strip() if lease.returncode == 0 else None
    return wait_for("a controller replica to lead", holder, timeout=60)


def operator_pod(component: str, node: str | None = None) -> dict:
    """The running pod of a node's agent, or of the controller's leader."""
    selector = ["--field-selector", f"spec.nodeName={node}"] if node else []
    pods = [p for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                    f"app.kubernetes.io/component={component}", *selector)["items"]
            if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]
    if component == "controller":
        leader = controller_leader()
        pods = [p for p in pods if p["metadata"]["name"] == leader]
    assert pods, f"no running {component} pod" + (f" on {node}" if node else "")
    return pods[0]


def operator_url(component: str, port: int, path: str, node: str | None = None, scheme: str = "http") -> str:
    return f"{scheme}://{operator_pod(component, node)['status']['podIP']}:{port}{path}"


def token_kubeconfig(path: Path, token: str, namespace: str | None = None) -> Path:
    """A kubeconfig holding this token alone (none of the lab admin's credentials), against
    the lab's API server: how a user or a pod is seen."""
    cluster = yaml.safe_load(KUBECONFIG.read_text())["clusters"][0]
    context = {"cluster": cluster["name"], "user": "user", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
                                    "users": [{"name": "user", "user": {"token": token}}],
                                    "contexts": [{"name": "user", "context": context}], "current-context": "user"}))
    return path


def kubectl_with_token(tmp_path: Path, token: str):
    """kubectl with this token alone."""
    path = token_kubeconfig(tmp_path / f"token-{abs(hash(token))}.kubeconfig", token)

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "--kubeconfig", str(path), *args], input=input, capture_output=True,
                              text=True, timeout=60)
    return run


def as_agent_of(tmp_path: Path, node: str):
    """kubectl as the agent of `node`, with a token bound to its pod, as the pod's own is."""
    pod = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=agent",
                       "--field-selector", f"spec.nodeName={node}")["items"][0]["metadata"]["name"]
    return kubectl_with_token(tmp_path, kubectl("-n", OPERATOR_NAMESPACE, "create", "token", "kopfvirt-agent",
                                                "--bound-object-kind", "Pod", "--bound-object-name", pod).stdout.strip())


_SCRAPER: list[str] = []


def scraper_token() -> str:
    """A token of ServiceAccount default/kopfvirt-scraper, bound to ClusterRole
    kopfvirt-metrics-reader, as a user's Prometheus would be."""
    if not _SCRAPER:
        kubectl("-n", "default", "create", "serviceaccount", "kopfvirt-scraper", check=False)
        kubectl("create", "clusterrolebinding", "kopfvirt-scraper", "--clusterrole=kopfvirt-metrics-reader",
                "--serviceaccount=default:kopfvirt-scraper", check=False)
        _SCRAPER.append(kubectl("-n", "default", "create", "token", "kopfvirt-scraper",
                                "--duration=2h").stdout.strip())
    return _SCRAPER[0]


def scrape(component: str, port: int, node: str | None = None, token: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a component's /metrics, over TLS, with a token."""
    import ssl
    import urllib.error
    import urllib.request
    request = urllib.request.Request(operator_url(component, port, "/metrics", node, "https"))
    if token != "":
        request.add_header("Authorization", f"Bearer {token or scraper_token()}")
    try:
        with urllib.request.urlopen(request, context=ssl._create_unverified_context(), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics_of(component: str, port: int, node: str | None = None) -> str:
    status, body = scrape(component, port, node)
    assert status == 200, (status, body)
    return body


def operator_processes(component: str) -> dict[int, list[bytes]]:
    """Host pid -> environment of every running kopfvirt `component` process (each in its
    pod's container)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            at = next(i for i, a in enumerate(argv[:3]) if a == b"kopfvirt" or a.endswith(b"/kopfvirt"))
            if argv[at + 1] == component.encode():
                found[int(proc.name)] = (proc / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, StopIteration):
            continue
    return found


def operator_pid(component: str, node: str | None = None) -> int:
    """The host pid of a node's agent's process, or of the controller leader's (in its pod's
    container)."""
    wanted = f"NODE_NAME={node}" if node else f"POD_NAME={controller_leader()}" if component == "controller" else None
    return wait_for(f"the {component} process" + (f" of {node}" if node else ""),
                    lambda: next((pid for pid, env in operator_processes(component).items()
                                  if not wanted or wanted.encode() in env), None), timeout=60)


def controller_pods() -> list[dict]:
    return kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=controller")["items"]


def restart_controllers_cold(pids=None) -> None:
    """Kill every controller replica at once (SIGKILL, frozen or not: no Lease handed over)
    and wait until each container has restarted and is Ready: whichever leads next starts
    with empty caches."""
    pids = list(pids or operator_processes("controller"))
    assert pids, "no controller process"
    before = {p["metadata"]["name"]: install.restarts(p) for p in controller_pods()}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for("the controller replicas restarted and ready", lambda: all(
        install.ready(p) and install.restarts(p) > before.get(p["metadata"]["name"], -1)
        for p in controller_pods()), timeout=120)


LAB_NODES = ("node-1", "node-2")


def domains_of(uid: str) -> dict[str, str]:
    """node -> domain state, for every lab node that has a domain with this UUID."""
    found = {}
    for node in LAB_NODES:
        result = lab_exec(node, "virsh", "-c", "qemu:///system", "domstate", uid, check=False)
        if result.returncode == 0:
            found[node] = result.stdout.strip()
    return found


def heartbeat(node: str, domain: str, log_dir: str = "/var/log/libvirt/qemu") -> int | None:
    """The last counter the guest printed on its serial console, read on its node (the
    kernel may print several lines between two counters, e.g. about a clocksource)."""
    result = lab_exec(node, "tail", "-n", "200", f"{log_dir}/{domain}-serial.log", check=False)
    counts = re.findall(r"kopfvirt-heartbeat (\d+)", result.stdout)
    return int(counts[-1]) if counts else None


def restarts_seen(node: str, domain: str, log_dir: str = "/var/log/libvirt/qemu") -> list[tuple[int, int]]:
    """Where the guest's counter started over in its serial log on `node` (libvirt appends
    to it across starts and incoming migrations): (last counter, next counter) pairs."""
    result = lab_exec(node, "grep", "-o", "kopfvirt-heartbeat [0-9]*", f"{log_dir}/{domain}-serial.log",
                      check=False)
    counts = [int(n) for n in re.findall(r"kopfvirt-heartbeat (\d+)", result.stdout)]
    return [(a, b) for a, b in zip(counts, counts[1:]) if b <= a]


def vm_disk_dirs(namespace: str, name: str, pool_root: str = "/var/lib/kopfvirt/pools/gluster") -> list[str]:
    """The directories of a VM's own disks in a file pool, as node-1 sees the pool (an
    nfs:// root is asked through libnfs, as the agent does)."""
    if pool_root.startswith("nfs://"):
        found = nfs.listdir(f"{pool_root}/vms/{namespace}")
    else:
        found = lab_exec("node-1", "ls", f"{pool_root}/vms/{namespace}", check=False).stdout.split()
    return [d for d in found if d.startswith(f"{name}-")]


def lab_guest(name: str, cmdline: str = "", **spec) -> dict:
    body = {"runStrategy": "Always", "cpu": {"cores": 1}, "memory": {"size": "128Mi"},
            "terminationGracePeriodSeconds": 10,
            "kernelBoot": {"pool": "lab-images", "kernel": "lab-guest-vmlinuz", "initrd": "lab-guest-initrd.img",
                           "cmdline": f"console=ttyS0 quiet {cmdline}".strip()}}
    body.update(spec)
    return {"apiVersion": "kopfvirt.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name}, "spec": body}


def operator_logs(about: str, lines: int = 40) -> str:
    """What every operator pod logged about `about` (a test namespace), its previous
    container's too (one killed by a test): read into a failed test's report."""
    pods = kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "name", check=False).stdout.split()
    # The controllers last, each one's current container after its previous one: a long
    # report is cut in its middle, and their last words matter most.
    pods.sort(key=lambda pod: "controller" in pod)
    out = []
    for pod in pods:
        for previous in (("--previous",), ()):
            log = kubectl("-n", OPERATOR_NAMESPACE, "logs", pod, *previous, check=False).stdout
            found = [line for line in log.splitlines() if about in line][-lines:]
            # The controllers' last words too, whatever they are about (leadership, the API).
            if "controller" in pod:
                found += ["-- its last lines:"] + [line for line in log.splitlines()
                                                   if "/healthz" not in line and "/readyz" not in line][-lines:]
            if found:
                out.append(f"== {pod} {' '.join(previous)}\n" + "\n".join(found))
    lease = kubectl("-n", OPERATOR_NAMESPACE, "get", "lease", "kopfvirt-controller", "-o", "jsonpath={.spec}",
                    check=False).stdout
    return "\n".join(out + [f"== the controllers' Lease: {lease}", "== restarts:", *pod_restarts()])


def pod_restarts() -> list[str]:
    """Each operator container's restarts and how its last one ended (OOMKilled, a probe's
    kill, an exit code), one line each: why a pod's previous container is there."""
    pods = json.loads(kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "json", check=False).stdout
                      or '{"items": []}')["items"]
    lines = []
    for pod in pods:
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (c.get("lastState") or {}).get("terminated") or {}
            lines.append(f"{pod['metadata']['name']} on {pod['spec'].get('nodeName')}: {c['name']} restarted "
                         f"{c.get('restartCount', 0)}x" + (f"; last ended {ended.get('finishedAt')} "
                                                          f"{ended.get('reason')} (exit {ended.get('exitCode')})"
                                                          if ended else ""))
    return lines


def namespace_state(namespace: str) -> str:
    """A failed test's namespace in a few lines: each VM's phase, node and Ready condition,
    each pod, the last events. First in the report: a long one is cut in its middle."""
    out = []
    for vm in kubectl_json("-n", namespace, "get", "virtualmachines").get("items", []):
        s = vm.get("status") or {}
        ready = next((c for c in s.get("conditions") or [] if c["type"] == "Ready"), {})
        out.append(f"vm {vm['metadata']['name']}: {s.get('phase')} on {s.get('nodeName')} stopReason="
                   f"{s.get('stopReason')} Ready={ready.get('status')}/{ready.get('reason')}: "
                   f"{(ready.get('message') or '')[:160]}")
    for pod in kubectl_json("-n", namespace, "get", "pods").get("items", []):
        out.append(f"pod {pod['metadata']['name']} ({pod['metadata']['uid'][:8]}): {pod['status'].get('phase')} on "
                   f"{pod['spec'].get('nodeName')}" + (" deleting" if pod["metadata"].get("deletionTimestamp") else ""))
    events = sorted(kubectl_json("-n", namespace, "get", "events").get("items", []),
                    key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    out += [f"event {e.get('lastTimestamp') or e.get('eventTime')} {e['involvedObject'].get('name')} {e.get('reason')}: "
            f"{(e.get('message') or '')[:160]}" for e in events[-20:]]
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    namespace = item.funcargs.get("namespace") or getattr(item.funcargs.get("vms"), "namespace", None)
    if report.when == "call" and report.failed and namespace:
        try:
            report.sections.append((f"the state of {namespace}", namespace_state(namespace)))
        except Exception as e:  # noqa: BLE001 - the report must not fail for want of it
            report.sections.append((f"the state of {namespace}", f"not read: {e}"))
        report.sections.append((f"operator logs about {namespace}", operator_logs(namespace)))


@pytest.fixture(scope="session")
def lab():
    result = subprocess.run([*KOPFVIRT_LAB, "up"], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"kopfvirt-lab up failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    os.environ[images.KEEP_IMAGES] = "1"  # the tests' own repairs keep what this session runs
    return REPO / ".lab"


def domains_named(prefix: str) -> dict[str, list[str]]:
    """The libvirt domains, defined or running, whose names start with `prefix`, by node."""
    found = {}
    for node in LAB_NODES:
        names = lab_exec(node, "virsh", "-c", "qemu:///system", "list", "--all", "--name", check=False).stdout.split()
        if mine := [n for n in names if n.startswith(prefix)]:
            found[node] = mine
    return found


@pytest.fixture(scope="session")
def namespace(lab):
    """The session's namespace. At the end it is deleted as a user would, and nothing of it
    may be left behind: the deletion completes (no finalizer waits forever, no pod stays)
    and no node keeps a domain of its VMs."""
    name = f"it-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    result = kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s", check=False)
    assert result.returncode == 0, f"namespace {name} still there after 180 s: {result.stderr}"
    deadline = time.monotonic() + 60  # a stray (a lost node's leftover) goes on its agent's next scan
    while (left := domains_named(f"{name}_")) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, f"domains of {name} left on the nodes: {left}"


class VMs:
    def __init__(self, namespace: str):
        self.namespace = namespace

    def apply(self, body: dict) -> subprocess.CompletedProcess:
        return kubectl("-n", self.namespace, "apply", "-f", "-", stdin=yaml.safe_dump(body), check=False)

    def get(self, name: str) -> dict | None:
        result = kubectl("-n", self.namespace, "get", "virtualmachine", name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict:
        return wait_for(f"VM {name} in phase {phase}",
                        lambda: (vm := self.get(name)) and vm.get("status", {}).get("phase") == phase and vm,
                        timeout)

    def delete(self, name: str) -> None:
        kubectl("-n", self.namespace, "delete", "virtualmachine", name, "--wait=true", "--timeout=60s")

    def condition(self, name: str, type_: str) -> dict:
        vm = self.get(name) or {}
        return next((c for c in (vm.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})

    def wait_condition(self, name: str, type_: str, reason: str, timeout: float = 60) -> dict:
        return wait_for(f"VM {name} condition {type_} with reason {reason}",
                        lambda: (c := self.condition(name, type_)).get("reason") == reason and c, timeout)

    def plugin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(str(Path(sys.executable).parent / "kubectl-kopfvirt"), "--kubeconfig", str(KUBECONFIG),
                   "-n", self.namespace, *args, check=check)

    def domain(self, name: str) -> str:
        return f"{self.namespace}_{name}"


@pytest.fixture(scope="session")
def vms(namespace):
    return VMs(namespace)


@pytest.fixture(scope="session")
def kstatus():
    """Judge objects as kstatus does (tools/kstatus: cli-utils' own code, built once into
    the cache from the Go module proxy): kstatus(obj) -> (status, message)."""
    binary = go_tool("kstatus")

    def judge(obj: dict) -> tuple[str, str]:
        out = subprocess.run([str(binary)], input=json.dumps(obj) + "\n", capture_output=True, text=True,
                             timeout=30, check=True).stdout
        verdict = json.loads(out)
        assert not verdict.get("error"), verdict
        return verdict["status"], verdict["message"]
    return judge
