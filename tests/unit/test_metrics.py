"""The operator's metrics: names as `promtool check metrics` judges them (client_golang's
promlint, built as tools/promlint), guest statistics from what libvirt really reports
(a lab guest's `virsh domstats --raw`), and what a scrape says when libvirtd is away."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, REGISTRY

from kopfvirt import reconciling
from kopfvirt.agent import guest_metrics, reconciler
from kopfvirt.agent.guest_metrics import GuestMetrics
from kopfvirt.clients import libvirt as libvirt_client
from kopfvirt.controller import metrics as controller_metrics
from kopfvirt.core import guest_stats, lifecycle, migration

from ..gotools import go_tool

DATA = Path(__file__).parent / "data" / "guest-stats"
UID = "6f1d3c52-8b0e-4d7a-9c1e-2a4b5c6d7e8f"
VMS = {UID: {"metadata": {"namespace": "team-a", "name": "web"}, "status": {"phase": "Running", "nodeName": "node-1"}}}


def domstats(name: str) -> dict:
    """`virsh domstats --raw` as libvirt's Python binding returns it: numbers as numbers."""
    out = {}
    for line in (DATA / name).read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


class Libvirt:
    def __init__(self, stats=None, error: Exception | None = None, hang: threading.Event | None = None):
        self.stats, self.error, self.hang = stats or [], error, hang

    def all_domain_stats(self):
        if self.hang:
            self.hang.wait()
        if self.error:
            raise self.error
        return self.stats


def scrape(*collectors) -> str:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return generate_latest(registry).decode()


def test_a_lab_guests_statistics_become_kopfvirt_vm_samples():
    stats = domstats("lab-guest.txt")
    got = {(name, tuple(sorted(labels.items()))): value for name, labels, value in guest_stats.samples(stats)}
    assert got[("kopfvirt_vm_cpu_seconds_total", ())] == pytest.approx(stats["cpu.time"] / 1e9)
    assert got[("kopfvirt_vm_vcpu_seconds_total", (("vcpu", "0"),))] == pytest.approx(stats["vcpu.0.time"] / 1e9)
    assert got[("kopfvirt_vm_memory_balloon_bytes", ())] == stats["balloon.current"] * 1024
    drive = stats["block.0.name"]
    assert got[("kopfvirt_vm_storage_read_bytes_total", (("drive", drive),))] == stats["block.0.rd.bytes"]
    assert got[("kopfvirt_vm_memory_resident_bytes", ())] == stats["balloon.rss"] * 1024
    assert stats["net.count"] == 0 and not [n for n, _ in got if "network" in n]  # no interface, no samples
    assert {name for name, _ in got} <= set(guest_stats.METRICS)
    assert guest_stats.samples({"state.state": 1}) == []  # a group libvirt left out is left out


def test_a_scrape_names_each_guest_by_its_vm_and_leaves_strays_out():
    stats = domstats("lab-guest.txt")
    page = scrape(GuestMetrics("node-1", Libvirt([(UID, stats), ("stray-uuid", stats)]), VMS))
    assert 'kopfvirt_libvirt_up{node="node-1"} 1.0' in page
    assert 'kopfvirt_vm_cpu_seconds_total{name="web",namespace="team-a",node="node-1"}' in page
    assert "stray" not in page and page.count("kopfvirt_vm_cpu_seconds_total{") == 1


def test_libvirtd_down_or_hanging_is_said_and_the_scrape_answers(monkeypatch):
    assert 'kopfvirt_libvirt_up{node="node-1"} 0.0' in scrape(GuestMetrics("node-1", Libvirt(error=OSError("gone")),
                                                                            VMS))
    monkeypatch.setattr(guest_metrics, "ASK_SECONDS", 0.2)
    hang = threading.Event()
    collector = GuestMetrics("node-1", Libvirt([(UID, domstats("lab-guest.txt"))], hang=hang), VMS)
    began = time.monotonic()
    for _ in range(3):  # one call hangs; the scrapes after it do not pile up more
        assert 'kopfvirt_libvirt_up{node="node-1"} 0.0' in scrape(collector)
    assert time.monotonic() - began < 2
    hang.set()
    time.sleep(0.05)
    assert 'kopfvirt_libvirt_up{node="node-1"} 1.0' in scrape(collector)


def test_vms_are_counted_by_phase_by_the_leader_only():
    class Controller:
        active_now = True
        vms = {**VMS, "u2": {"metadata": {"namespace": "team-a", "name": "new"}},
               "u3": {"metadata": {"namespace": "team-a", "name": "db"}, "status": {
                   "phase": "Running", "nodeName": "node-1",
                   "conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeUnreachable"}]}}}

        def active(self):
            return self.active_now
    leader = Controller()
    page = scrape(controller_metrics.VMPhases(leader))
    assert 'kopfvirt_vms{namespace="team-a",node="node-1",phase="Running"} 2.0' in page
    assert 'kopfvirt_vms{namespace="team-a",node="",phase="Pending"} 1.0' in page
    # One series per VM, which the alerts name it by: its Ready condition, none yet is "".
    assert 'kopfvirt_vm_info{name="db",namespace="team-a",node="node-1",phase="Running",ready="Unknown"} 1.0' in page
    assert 'kopfvirt_vm_info{name="new",namespace="team-a",node="",phase="Pending",ready=""} 1.0' in page
    leader.active_now = False
    assert "kopfvirt_vm" not in scrape(controller_metrics.VMPhases(leader))


def test_a_migration_ended_when_it_entered_its_final_phase():
    done = {"status": {"phase": "Succeeded", "phaseTransitions": [
        {"phase": "Pending", "time": "2026-11-29T03:00:00Z"}, {"phase": "Succeeded", "time": "2026-11-29T03:00:04Z"}]}}
    assert migration.ended_at(done) == "2026-11-29T03:00:04Z"
    assert migration.ended_at({"status": {"phase": "Running", "phaseTransitions": [
        {"phase": "Running", "time": "2026-11-29T03:00:01Z"}]}}) is None
    assert migration.ended_at({}) is None
    assert lifecycle.seconds_between("2026-11-29T03:00:00Z", "2026-11-29T03:01:04Z") == 64


@pytest.fixture(scope="module")
def promlint() -> Path:
    return go_tool("promlint")


def test_every_metric_passes_promtools_linter(promlint):
    """The whole page an operator process serves, with a sample of each labelled metric."""
    reconciling.RECONCILE_ERRORS.labels(component="agent")
    reconciling.RECONCILE_SECONDS.labels(component="agent")
    libvirt_client.CALLS.labels(call="ensure_running")
    assert reconciler.START_SECONDS and reconciler.STOP_SECONDS  # the agent's, on the same page
    controller_metrics.OUTCOMES.labels(mode="Live", phase="Succeeded")
    controller_metrics.DEVICE_REFUSALS.labels(reason="DeviceHeld")
    page = generate_latest(REGISTRY).decode() + scrape(
        GuestMetrics("node-1", Libvirt([(UID, domstats("lab-guest.txt"))]), VMS),
        controller_metrics.VMPhases(type("Leader", (), {"vms": VMS, "active": lambda self: True})()))
    assert "kopfvirt_vm_cpu_seconds_total{" in page and "kopfvirt_reconcile_duration_seconds_bucket" in page
    result = subprocess.run([str(promlint)], input=page, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_refuses_what_promtool_refuses(promlint):
    bad = "# HELP kopfvirt_things_count things\n# TYPE kopfvirt_things_count counter\nkopfvirt_things_count 1\n"
    result = subprocess.run([str(promlint)], input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and 'counter metrics should have "_total" suffix' in result.stdout
