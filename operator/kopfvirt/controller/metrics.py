"""Prometheus metrics of migrations, in base units, served by the controller on /metrics
(metrics_endpoint.py).

Migrations are recorded once each, when the leading controller sees one reach a final
phase after it began to act (one that ended before was its predecessor's to count: no
spike after a restart or failover); VMs by phase are counted from the cache at each scrape.
"""

from __future__ import annotations

import collections

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from ..api.migration import MODES
from ..core import conditions
from ..core.migration import FINAL_PHASES

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_DOWNTIME = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BYTES = tuple(2.0 ** e for e in range(20, 41, 2))  # 1 MiB .. 1 TiB

OUTCOMES = Counter("kopfvirt_migrations", "Migrations that ended, by mode and final phase.", ["mode", "phase"])
RUNNING = Gauge("kopfvirt_migrations_running", "Migrations between Scheduling and their end.")
DURATION = Histogram("kopfvirt_migration_duration_seconds", "libvirt's time for a successful move.", ["mode"],
                     buckets=_SECONDS)
DOWNTIME = Histogram("kopfvirt_migration_downtime_seconds", "How long the guest was paused at the switch-over.",
                     buckets=_DOWNTIME)
DATA = Histogram("kopfvirt_migration_data_transferred_bytes", "Data sent by a successful live migration.",
                 buckets=_BYTES)
DIRTY_RATE = Histogram("kopfvirt_migration_dirty_rate_bytes_per_second",
                       "The guest's memory dirty rate last seen during a live migration.", buckets=_BYTES)
for _mode in MODES:  # each series from 0: the first failure is an increase that alerts see
    DURATION.labels(mode=_mode)
    for _phase in FINAL_PHASES:
        OUTCOMES.labels(mode=_mode, phase=_phase)
DEVICE_REFUSALS = Counter("kopfvirt_device_allocation_refusals", "VM starts held back for want of host devices.",
                          ["reason"])


class VMPhases:
    """From the leader's cache at each scrape (a standby replica reports none, so a sum over
    replicas counts each VM once): kopfvirt_vms{namespace,phase,node}, and one
    kopfvirt_vm_info{namespace,name,phase,node,ready} per VM, which the alerts name VMs by."""

    def __init__(self, controller):
        self.controller = controller

    def describe(self):
        return []

    def collect(self):
        if not self.controller.active():
            return
        counts = GaugeMetricFamily("kopfvirt_vms", "VirtualMachines by namespace, phase and node (none before "
                                   "their first status: Pending).", labels=["namespace", "phase", "node"])
        info = GaugeMetricFamily("kopfvirt_vm_info", "1 for each VirtualMachine: its phase, node and Ready "
                                 "condition (True, False, Unknown; empty without one).",
                                 labels=["namespace", "name", "phase", "node", "ready"])
        by_phase = collections.Counter()
        for vm in list(self.controller.vms.values()):
            status = vm.get("status") or {}
            phase, node = status.get("phase") or "Pending", status.get("nodeName") or ""
            ready = (conditions.get(status.get("conditions"), "Ready") or {}).get("status") or ""
            by_phase[vm["metadata"]["namespace"], phase, node] += 1
            info.add_metric([vm["metadata"]["namespace"], vm["metadata"]["name"], phase, node, ready], 1)
        for labels, count in sorted(by_phase.items()):
            counts.add_metric(list(labels), count)
        yield counts
        yield info


def set_running(count: int) -> None:
    RUNNING.set(count)


def observe_final(body: dict) -> None:
    status, mode = body.get("status") or {}, (body.get("spec") or {}).get("mode", "Live")
    OUTCOMES.labels(mode=mode, phase=status.get("phase")).inc()
    if status.get("phase") != "Succeeded":
        return
    if status.get("totalTimeMs") is not None:
        DURATION.labels(mode=mode).observe(status["totalTimeMs"] / 1000)
    if status.get("downtimeMs") is not None:
        DOWNTIME.observe(status["downtimeMs"] / 1000)
    if status.get("dataTransferredBytes") is not None:
        DATA.observe(status["dataTransferredBytes"])
    rate = (status.get("progress") or {}).get("dirtyRateBytesPerSecond")
    if rate is not None:
        DIRTY_RATE.observe(rate)
