"""A node lost, the Kubernetes way: its VMs say so and stay put until an admin declares
the node down (the out-of-service taint of non-graceful node shutdown); then they start
elsewhere from their shared disks, nothing written lost, and nothing hangs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kopfvirt.core.nodeloss import OUT_OF_SERVICE

from .conftest import domains_of, kubectl, kubectl_json, run, wait_for
from .test_migration import OTHER
from .test_storage import disk_records, verifications, writing_vm

TAINT = f"{OUT_OF_SERVICE}=nodeshutdown:NoExecute"


def qemu_pid(domain: str) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"guest={domain},".encode() in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def ready(node: str) -> str:
    conditions = kubectl_json("get", "node", node)["status"]["conditions"]
    return next(c["status"] for c in conditions if c["type"] == "Ready")


def test_a_lost_nodes_vm_waits_for_the_admin_then_starts_elsewhere_with_its_data(vms):
    name = "lost"
    node, uid = writing_vm(vms, name, "gluster")
    other, domain = OTHER[node], vms.domain(name)
    link = f"kv{node.rsplit('-', 1)[1]}h"  # the node's cable to the lab's network
    try:
        # The node goes dark, its guest with it (the power is cut).
        run("ip", "link", "set", link, "down")
        cut = time.monotonic()
        written = disk_records(node, domain)
        os.kill(qemu_pid(domain), signal.SIGKILL)
        condition = vms.wait_condition(name, "Ready", "NodeUnreachable", timeout=90)
        assert condition["status"] == "Unknown" and time.monotonic() - cut < 60, condition
        assert "out-of-service" in condition["message"], condition
        # Unreachable is no proof of death: nothing starts elsewhere on a timeout alone.
        time.sleep(10)
        assert other not in domains_of(uid)
        assert vms.get(name)["status"]["nodeName"] == node

        kubectl("taint", "node", node, TAINT)
        vm = wait_for(f"{name} running on {other}", lambda: (v := vms.get(name))
                      and (v.get("status") or {}).get("phase") == "Running"
                      and v["status"].get("nodeName") == other and v, timeout=240)
        assert vm["metadata"]["finalizers"] == [f"agent.kopfvirt.io/{other}"], vm["metadata"]
        assert vm["metadata"]["labels"]["kopfvirt.io/node"] == other
        lost = kubectl_json("-n", vms.namespace, "get", "events", "--field-selector",
                            f"involvedObject.name={name},reason=NodeLost")["items"]
        assert lost and node in lost[0]["message"], lost
        # Booted from the same disk: it checks every record it wrote before the node died.
        verdict = wait_for(f"{name} verifying its disk on {other}",
                           lambda: (v := verifications(other, domain)) and v[-1], timeout=120)
        status, count = verdict.split()
        assert status == "ok" and int(count) >= written, (verdict, written)
        assert domains_of(uid).get(other) == "running"
    finally:
        run("ip", "link", "set", link, "up")
        kubectl("taint", "node", node, f"{OUT_OF_SERVICE}-", check=False)
    wait_for(f"{node} Ready again", lambda: ready(node) == "True", timeout=120)
    vms.delete(name)  # completes: no finalizer of the lost node is left to wait for
    # The dead node's leftover definition of the VM is a stray of a VM now gone: removed.
    wait_for("no domain of the VM left", lambda: domains_of(uid) == {}, timeout=90)
