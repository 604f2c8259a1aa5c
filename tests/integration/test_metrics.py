"""What a user's Prometheus scrapes from the lab's operator (as kopfvirt-metrics-reader):
VMs by phase, guest statistics from libvirt under the VM's name, reconcile and libvirt call
timings, start and stop durations; every page passes promtool's linter (tools/promlint);
and a node whose libvirtd hangs still answers, saying libvirt is down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from ..gotools import go_tool
from .conftest import REPO, heartbeat, lab_guest, metrics_of, scrape, wait_for


def value(page: str, metric: str, **labels: str) -> float | None:
    """The sample of `metric` whose labels include these, from a /metrics page."""
    for line in page.splitlines():
        m = re.fullmatch(rf"{metric}(?:{{(.*)}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m[1] or "") for k, v in labels.items()):
            return float(m[2])
    return None


def test_a_running_guest_and_its_lifecycle_are_scraped_by_name(vms):
    assert vms.apply(lab_guest("scraped")).returncode == 0
    vm = vms.wait_phase("scraped", "Running")
    node, ns = vm["status"]["nodeName"], vms.namespace
    wait_for("its heartbeat", lambda: heartbeat(node, vms.domain("scraped")), timeout=60)
    agent = metrics_of("agent", 8081, node)
    assert value(agent, "kopfvirt_libvirt_up", node=node) == 1
    assert value(agent, "kopfvirt_vm_cpu_seconds_total", namespace=ns, name="scraped", node=node) > 0
    assert value(agent, "kopfvirt_vm_memory_balloon_bytes", namespace=ns, name="scraped") == 128 * 2**20
    assert value(agent, "kopfvirt_vm_memory_resident_bytes", namespace=ns, name="scraped") > 0
    assert value(agent, "kopfvirt_vm_start_seconds_count") >= 1
    assert value(agent, "kopfvirt_reconcile_duration_seconds_count", component="agent") >= 1
    assert value(agent, "kopfvirt_libvirt_call_duration_seconds_count", call="ensure_running") >= 1
    controller = wait_for("the controller counting it", lambda: (page := metrics_of("controller", 8080))
                          and value(page, "kopfvirt_vms", namespace=ns, phase="Running", node=node) == 1 and page)
    assert value(controller, "kopfvirt_reconcile_duration_seconds_count", component="controller") >= 1

    promlint = go_tool("promlint")
    for page in (agent, controller):
        linted = subprocess.run([str(promlint)], input=page, capture_output=True, text=True, timeout=60)
        assert linted.returncode == 0, linted.stdout + linted.stderr

    stops = value(agent, "kopfvirt_vm_stop_seconds_count") or 0
    vms.plugin("stop", "scraped")
    vms.wait_phase("scraped", "Stopped", timeout=60)
    after = metrics_of("agent", 8081, node)
    assert value(after, "kopfvirt_vm_stop_seconds_count") == stops + 1
    assert value(after, "kopfvirt_vm_cpu_seconds_total", namespace=ns, name="scraped") is None  # gone with it
    wait_for("the controller counting it stopped", lambda: value(metrics_of("controller", 8080), "kopfvirt_vms",
                                                                 namespace=ns, phase="Stopped") == 1)
    vms.delete("scraped")


def test_a_node_whose_libvirtd_hangs_still_answers_and_says_so(lab):
    libvirtd = int((REPO / ".lab" / "nodes" / "node-2" / "run/libvirt/libvirtd.pid").read_text())
    os.kill(libvirtd, signal.SIGSTOP)
    try:
        began = time.monotonic()
        status, page = scrape("agent", 8081, "node-2")
        assert status == 200 and time.monotonic() - began < 9
        assert value(page, "kopfvirt_libvirt_up", node="node-2") == 0
        assert "# TYPE kopfvirt_vm_start_seconds histogram" in page  # the rest of the page as ever
    finally:
        os.kill(libvirtd, signal.SIGCONT)
    wait_for("libvirt up again", lambda: value(metrics_of("agent", 8081, "node-2"), "kopfvirt_libvirt_up",
                                               node="node-2") == 1, timeout=60)
