"""A running guest survives its node's agent and libvirtd being killed: the kubelet restarts
the agent's container, `lab up` the node's libvirtd."""

import json
import os
import signal
import subprocess
import time
import urllib.request

from kopfvirt_lab import install

from .conftest import (KOPFVIRT_LAB, OPERATOR_NAMESPACE, REPO, domains_of, heartbeat, kubectl, kubectl_json,
                       lab_exec, lab_guest, operator_pid, operator_pod, operator_url, restart_controllers_cold,
                       wait_for)

LAB = REPO / ".lab"


def _qemu_pid(node: str, domain: str) -> int:
    return int((LAB / "nodes" / node / "run/libvirt/qemu" / f"{domain}.pid").read_text())


def _pid(path) -> int:
    return int(path.read_text().strip())


def restarted(pod: dict):
    """The kubelet started the pod's container again and its probes pass: Ready."""
    name, before = pod["metadata"]["name"], install.restarts(pod)

    def probe():
        now = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pod", name)
        return install.restarts(now) > before and install.ready(now) and now
    return wait_for(f"the container of {name} restarted and Ready", probe, timeout=90)


def test_killed_agent_and_libvirtd_come_back_without_touching_the_guest(vms):
    assert vms.apply(lab_guest("sacred")).returncode == 0
    vm = vms.wait_phase("sacred", "Running")
    node, domain = vm["status"]["nodeName"], vms.domain("sacred")
    wait_for("the guest's heartbeat", lambda: heartbeat(node, domain))
    qemu = _qemu_pid(node, domain)

    agent = operator_pid("agent", node)
    agent_pod = operator_pod("agent", node)
    libvirtd = _pid(LAB / "nodes" / node / "run/libvirt/libvirtd.pid")
    assert healthy(operator_url("agent", 8082, "/healthz", node))
    os.kill(agent, signal.SIGKILL)
    os.kill(libvirtd, signal.SIGKILL)
    wait_for("agent and libvirtd to die", lambda: not os.path.exists(f"/proc/{agent}")
             and not os.path.exists(f"/proc/{libvirtd}"), timeout=10)
    status = subprocess.run([*KOPFVIRT_LAB, "status"], capture_output=True, text=True)
    assert status.returncode != 0 and "degraded" in status.stdout and "libvirtd stopped" in status.stdout

    before = heartbeat(node, domain)
    subprocess.run([*KOPFVIRT_LAB, "up"], check=True, capture_output=True, timeout=300)
    restarted(agent_pod)
    assert healthy(operator_url("agent", 8082, "/healthz", node))
    assert subprocess.run([*KOPFVIRT_LAB, "status"], capture_output=True).returncode == 0

    # The same QEMU process, still counting: the guest never restarted.
    assert _qemu_pid(node, domain) == qemu and os.path.exists(f"/proc/{qemu}")
    time.sleep(2)
    assert heartbeat(node, domain) > before
    state = lab_exec(node, "virsh", "-c", "qemu:///system", "domstate", domain).stdout.strip()
    assert state == "running"
    vm = vms.get("sacred")
    assert vm["status"]["phase"] == "Running" and vm["status"]["nodeName"] == node

    # The restarted agent adopted the domain: deleting the VM still removes it.
    vms.delete("sacred")
    assert lab_exec(node, "virsh", "-c", "qemu:///system", "domstate", domain, check=False).returncode != 0


def test_restarted_controller_leaves_running_vms_alone(vms):
    assert vms.apply(lab_guest("steady")).returncode == 0
    vm = vms.wait_phase("steady", "Running")
    node, domain = vm["status"]["nodeName"], vms.domain("steady")
    qemu = _qemu_pid(node, domain)
    leader = operator_pod("controller")
    os.kill(operator_pid("controller"), signal.SIGTERM)
    restarted(leader)
    time.sleep(3)
    assert _qemu_pid(node, domain) == qemu and os.path.exists(f"/proc/{qemu}")
    assert vms.get("steady")["status"]["phase"] == "Running"
    vms.delete("steady")


def test_controllers_restarted_cold_leave_running_vms_alone(vms):
    """Both replicas killed at once: the next leader's caches start empty, and a running VM
    whose reservation pod its watch has not delivered yet must not look unplaced to it.
    Nothing is written to the VMs: their Ready condition never flips."""
    names = ["cold-1", "cold-2"]
    for name in names:
        assert vms.apply(lab_guest(name)).returncode == 0
    before = {name: conditions(vms.wait_phase(name, "Running")) for name in names}
    restart_controllers_cold()
    time.sleep(5)  # the new leader has acted on everything by now
    for name in names:
        vm = vms.get(name)
        assert vm["status"]["phase"] == "Running" and conditions(vm) == before[name], (before[name], vm["status"])
        vms.delete(name)


def conditions(vm: dict) -> dict:
    return {c["type"]: (c["status"], c.get("reason"), c.get("lastTransitionTime"))
            for c in vm["status"].get("conditions") or []}


def test_libvirtd_down_is_reported_and_repaired(vms):
    assert vms.apply(lab_guest("orphaned")).returncode == 0
    vm = vms.wait_phase("orphaned", "Running")
    node, domain = vm["status"]["nodeName"], vms.domain("orphaned")
    qemu = _qemu_pid(node, domain)
    os.kill(_pid(LAB / "nodes" / node / "run/libvirt/libvirtd.pid"), signal.SIGKILL)
    condition = vms.wait_condition("orphaned", "Ready", "LibvirtUnavailable", timeout=60)
    assert condition["status"] == "Unknown" and node in condition["message"]
    subprocess.run([*KOPFVIRT_LAB, "up"], check=True, capture_output=True, timeout=300)
    vms.wait_condition("orphaned", "Ready", "DomainRunning", timeout=60)
    assert _qemu_pid(node, domain) == qemu and os.path.exists(f"/proc/{qemu}")
    before = heartbeat(node, domain)
    wait_for("the guest to keep counting", lambda: heartbeat(node, domain) > before)
    vms.delete("orphaned")


def test_agent_killed_mid_start_ends_with_one_domain(vms):
    assert vms.apply(lab_guest("halfway")).returncode == 0
    # Kill the node's agent as soon as the VM is handed to it, before it reports Running.
    vm = wait_for("the hand-off to a node", lambda: (v := vms.get("halfway")) and
                  (v["metadata"].get("labels") or {}).get("kopfvirt.io/node") and v, interval=0.05)
    node = vm["metadata"]["labels"]["kopfvirt.io/node"]
    os.kill(operator_pid("agent", node), signal.SIGKILL)
    vm = vms.wait_phase("halfway", "Running")
    assert domains_of(vm["metadata"]["uid"]) == {node: "running"}
    vms.delete("halfway")


def healthy(url: str) -> bool:
    """GET /healthz as the chart's probes do: 200 with kopf's JSON, or not."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200 and isinstance(json.load(response), dict)
    except OSError:
        return False


def test_the_controller_and_agents_answer_their_probes(lab):
    assert healthy(operator_url("controller", 8082, "/healthz"))
    for node in ("node-1", "node-2"):
        assert healthy(operator_url("agent", 8082, "/healthz", node))


def _libvirt_condition(node: str) -> dict:
    conditions = kubectl_json("get", "node", node)["status"].get("conditions") or []
    return next((c for c in conditions if c["type"] == "KopfvirtLibvirtReady"), {})


def test_an_agent_without_libvirt_says_so_on_its_node_and_starts_once_it_answers(lab):
    """A node whose libvirtd is away when its agent starts: the agent runs on (Ready, no
    crash loop), the Node's KopfvirtLibvirtReady condition says why, and once libvirtd is
    back the agent starts its libvirt side and the condition turns True."""
    node = "node-2"
    assert _libvirt_condition(node).get("status") == "True"
    libvirtd = _pid(LAB / "nodes" / node / "run/libvirt/libvirtd.pid")
    os.kill(libvirtd, signal.SIGKILL)
    try:
        wait_for("libvirtd to die", lambda: not os.path.exists(f"/proc/{libvirtd}"), timeout=10)
        old = operator_pod("agent", node)
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=true")
        condition = wait_for("the node's condition to say libvirt is away",
                             lambda: (c := _libvirt_condition(node)).get("reason") == "LibvirtUnavailable" and c,
                             timeout=60)
        assert condition["status"] == "False" and "libvirtd" in condition["message"], condition
        agent = wait_for("the new agent Ready", lambda: (p := operator_pod("agent", node))["metadata"]["uid"] !=
                         old["metadata"]["uid"] and install.ready(p) and p, timeout=60)
        time.sleep(10)  # a crash loop would have restarted it by now
        assert install.restarts(kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pod", agent["metadata"]["name"])) == 0
    finally:
        subprocess.run([*KOPFVIRT_LAB, "up"], check=True, capture_output=True, timeout=300)
    condition = wait_for("the node's condition True again",
                         lambda: (c := _libvirt_condition(node)).get("status") == "True" and c, timeout=60)
    assert condition["reason"] == "LibvirtReachable"
