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
DEVICE_REFUSALS = Counter("kopfvirt_device_allocation_refusals", "VM starts held back for want of host devices.",
                          ["reason"])


class VMPhases:
    """kopfvirt_vms{namespace,phase,node} from the leader's cache at each scrape (a standby
    replica reports none, so a sum over replicas counts each VM once)."""

    def __init__(self, controller):
        self.controller = controller

    def describe(self):
        return []

    def collect(self):
        if not self.controller.active():
            return
        family = GaugeMetricFamily("kopfvirt_vms", "VirtualMachines by namespace, phase and node (none before "
                                   "their first status: Pending).", labels=["namespace", "phase", "node"])
        counts = collections.Counter(
            (vm["metadata"]["namespace"], (vm.get("status") or {}).get("phase") or "Pending",
             (vm.get("status") or {}).get("nodeName") or "") for vm in list(self.controller.vms.values()))
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family


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
