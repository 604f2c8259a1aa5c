"""A guest's statistics as libvirt reports them (virConnectGetAllDomainStats, groups cpu,
balloon, vcpu, block and net), as the samples of the kopfvirt_vm_* metrics: KubeVirt's
kubevirt_vmi_* analogues, in base units (seconds, bytes), with the VM's name instead of the
domain's. Pure: the agent's collector (agent/guest_metrics.py) asks libvirt at each scrape.
"""

from __future__ import annotations

# name -> (Prometheus type, the label beyond the VM's own, help)
METRICS: dict[str, tuple[str, str | None, str]] = {
    "kopfvirt_vm_cpu_seconds_total": ("counter", None, "CPU time the guest's QEMU used (libvirt cpu.time)."),
    "kopfvirt_vm_vcpu_seconds_total": ("counter", "vcpu", "CPU time of each of the guest's vCPUs (vcpu.<n>.time)."),
    "kopfvirt_vm_memory_balloon_bytes": ("gauge", None, "Memory the guest has now, as its balloon says "
                                                        "(balloon.current)."),
    "kopfvirt_vm_memory_resident_bytes": ("gauge", None, "Resident memory of the guest's QEMU on its node "
                                                         "(balloon.rss)."),
    "kopfvirt_vm_storage_read_bytes_total": ("counter", "drive", "Bytes the guest read from each disk "
                                                                 "(block.<n>.rd.bytes)."),
    "kopfvirt_vm_storage_write_bytes_total": ("counter", "drive", "Bytes the guest wrote to each disk "
                                                                  "(block.<n>.wr.bytes)."),
    "kopfvirt_vm_network_receive_bytes_total": ("counter", "interface", "Bytes each interface received "
                                                                        "(net.<n>.rx.bytes)."),
    "kopfvirt_vm_network_transmit_bytes_total": ("counter", "interface", "Bytes each interface sent "
                                                                         "(net.<n>.tx.bytes)."),
}
NANOSECONDS, KIB = 1e-9, 1024
# The per-device byte counters: libvirt group, the label its entries are named by, (key, metric).
_BYTE_COUNTERS = (
    ("block", "drive", (("rd.bytes", "kopfvirt_vm_storage_read_bytes_total"),
                        ("wr.bytes", "kopfvirt_vm_storage_write_bytes_total"))),
    ("net", "interface", (("rx.bytes", "kopfvirt_vm_network_receive_bytes_total"),
                          ("tx.bytes", "kopfvirt_vm_network_transmit_bytes_total"))),
)

Sample = tuple[str, dict[str, str], float]


def _indexed(stats: dict, group: str) -> list[tuple[int, dict]]:
    """(n, {field: value}) of a group's numbered entries: block.0.name, block.0.rd.bytes ..."""
    out: dict[int, dict] = {}
    for key, value in stats.items():
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == group and parts[1].isdigit():
            out.setdefault(int(parts[1]), {})[parts[2]] = value
    return sorted(out.items())


def samples(stats: dict) -> list[Sample]:
    """The samples of one domain's stats (labels beyond the VM's own: vcpu, drive, interface).
    What libvirt leaves out (a stopped balloon driver, no disks) is left out here too."""
    out: list[Sample] = []
    if "cpu.time" in stats:
        out.append(("kopfvirt_vm_cpu_seconds_total", {}, stats["cpu.time"] * NANOSECONDS))
    for n, vcpu in _indexed(stats, "vcpu"):
        if "time" in vcpu:
            out.append(("kopfvirt_vm_vcpu_seconds_total", {"vcpu": str(n)}, vcpu["time"] * NANOSECONDS))
    for key, name in (("balloon.current", "kopfvirt_vm_memory_balloon_bytes"),
                      ("balloon.rss", "kopfvirt_vm_memory_resident_bytes")):
        if key in stats:
            out.append((name, {}, stats[key] * KIB))
    for group, label, counters in _BYTE_COUNTERS:
        for _, entry in _indexed(stats, group):
            named = str(entry.get("name", ""))
            out += [(name, {label: named}, float(entry[key])) for key, name in counters if key in entry and named]
    return out
