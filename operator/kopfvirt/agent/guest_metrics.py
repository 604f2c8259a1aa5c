"""The node's guests as Prometheus sees them: at each scrape, libvirt's statistics of every
running domain that is one of this node's VMs (core/guest_stats.py names the samples), and
whether libvirtd answered at all. libvirtd down: kopfvirt_libvirt_up is 0, the rest of the
endpoint answers as before."""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..core import guest_stats

log = logging.getLogger(__name__)
VM_LABELS = ["namespace", "name", "node"]
ASK_SECONDS = 5.0  # a libvirtd that does not answer in this long is down for this scrape


class GuestMetrics:
    """A prometheus_client collector over the agent's Hypervisor and its VMs (uid -> body)."""

    def __init__(self, node: str, hv, vms: dict[str, dict]):
        self.node, self.hv, self.vms = node, hv, vms
        # One call at a time, in a thread of its own: a libvirtd that hangs (stopped, stuck)
        # holds that thread, never the scrape; while it hangs, scrapes say libvirt is down.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="guest-stats")
        self._asking: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def _stats(self) -> list[tuple[str, dict]]:
        with self._lock:  # scrapes at once share one call
            if self._asking is None or self._asking.done():
                self._asking = self._pool.submit(self.hv.all_domain_stats)
            asking = self._asking
        return asking.result(timeout=ASK_SECONDS)

    def describe(self):
        return []  # collect() asks libvirt: not at registration

    def collect(self):
        up = GaugeMetricFamily("kopfvirt_libvirt_up", "Whether the node's libvirtd answered this scrape (1) or not (0).",
                               labels=["node"])
        try:
            stats = self._stats()
        except Exception as e:  # noqa: BLE001 - a scrape says so and goes on (a timeout too)
            log.debug("libvirt statistics unavailable: %s", e)
            up.add_metric([self.node], 0)
            yield up
            return
        up.add_metric([self.node], 1)
        yield up
        families = {}
        for name, (kind, extra, help_) in guest_stats.METRICS.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = family(name, help_, labels=VM_LABELS + ([extra] if extra else []))
        for uuid, domain_stats in stats:
            meta = (self.vms.get(uuid) or {}).get("metadata")
            if not meta:  # not one of this node's VMs (a stray: kopfvirt_stray_domains)
                continue
            for name, extra, value in guest_stats.samples(domain_stats):
                families[name].add_metric([meta["namespace"], meta["name"], self.node, *extra.values()], value)
        yield from families.values()
