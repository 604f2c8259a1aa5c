"""Nothing hangs: the API server (30 s), then a node's libvirtd (20 s), stop answering
(SIGSTOP; the lab's node grace is 30 s, so nodes may show NotReady a moment: that is not
a lost node, and no VM acts on it). A guest that crashes meanwhile, a live move libvirt
finishes meanwhile, and a change asked meanwhile, are acted on once they answer again:
every call has a timeout or keepalive, and a stuck call holds one VM, not the rest."""

from __future__ import annotations

import os
import signal
import time

from kopfvirt_lab import install, procs
from kopfvirt_lab.layout import Lab

from .conftest import (OPERATOR_NAMESPACE, REPO, heartbeat, kubectl, kubectl_json, lab_exec, lab_guest,
                       restarts_seen, wait_for)
from .test_migration import assert_keeps_counting, assert_on_one_node, migrations, slow_move_under_way  # noqa: F401
from .test_node_loss import qemu_pid

API_STALL_SECONDS = 30  # as long as the lab's node grace: nodes may show NotReady a moment after
LIBVIRTD_STALL_SECONDS = 20


def agent_restarts() -> dict[str, int]:
    pods = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=agent")["items"]
    return {p["metadata"]["name"]: install.restarts(p) for p in pods}


def running_on(vms, name: str, node: str) -> str:
    assert vms.apply(lab_guest(name, nodeSelector={"kubernetes.io/hostname": node})).returncode == 0
    vms.wait_phase(name, "Running", timeout=120)
    wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)), timeout=60)
    return vms.domain(name)


def test_a_stalled_api_server_then_libvirtd_leave_every_vm_reconciled(vms, migrations):
    crashed, steady = running_on(vms, "stall-crash", "node-1"), running_on(vms, "stall-steady", "node-2")
    first_start = vms.get("stall-crash")["status"]["startTime"]
    agents = agent_restarts()
    # A live move of about 20 s under way: libvirt ends it while the API server is frozen.
    source, target, uid, moving = slow_move_under_way(vms, migrations, "stall-move")

    # The API server freezes; meanwhile a guest crashes (its QEMU killed).
    apiserver = procs.running(Lab(REPO), "kube-apiserver")
    os.kill(apiserver, signal.SIGSTOP)
    try:
        os.kill(qemu_pid(crashed), signal.SIGKILL)
        time.sleep(API_STALL_SECONDS)
    finally:
        os.kill(apiserver, signal.SIGCONT)
    vm = wait_for("the crashed guest started again and reported", lambda: (v := vms.get("stall-crash"))
                  and v["status"].get("phase") == "Running" and v["status"].get("startTime") != first_start
                  and v, timeout=120)
    assert vm["status"]["stopReason"] == "GuestCrashed", vm["status"]
    wait_for("its new heartbeat", lambda: heartbeat("node-1", crashed), timeout=60)
    before = heartbeat("node-2", steady)
    wait_for("the other guest counting on", lambda: heartbeat("node-2", steady) > before)
    assert not restarts_seen("node-2", steady)
    # The move the source agent could not report is told as libvirt ended it.
    m = migrations.wait_phase("stall-move", "Succeeded", "Failed", timeout=120)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    vm = wait_for("the moved VM settled", lambda: (v := vms.get("stall-move")) and v["status"].get("phase") == "Running"
                  and "migration" not in v["status"] and v, timeout=60)
    assert vm["status"]["nodeName"] == target
    assert_on_one_node(uid, target)
    assert_keeps_counting(vms, "stall-move", target, moving)
    assert not restarts_seen(target, vms.domain("stall-move"))

    # node-2's libvirtd freezes while the user pauses the guest there.
    libvirtd = int((REPO / ".lab" / "nodes" / "node-2" / "run/libvirt/libvirtd.pid").read_text())
    os.kill(libvirtd, signal.SIGSTOP)
    try:
        kubectl("-n", vms.namespace, "patch", "virtualmachine", "stall-steady", "--type", "merge",
                "-p", '{"spec": {"paused": true}}')
        time.sleep(LIBVIRTD_STALL_SECONDS)
    finally:
        os.kill(libvirtd, signal.SIGCONT)
    vms.wait_phase("stall-steady", "Paused", timeout=120)
    assert lab_exec("node-2", "virsh", "-c", "qemu:///system", "domstate", steady).stdout.strip() == "paused"
    assert not restarts_seen("node-2", steady)
    # The agents rode it out (the controller's leader exits by design when it cannot renew
    # its Lease for 10 s: the API server froze for 30).
    assert agent_restarts() == agents
    for name in ("stall-crash", "stall-steady", "stall-move"):
        vms.delete(name)
