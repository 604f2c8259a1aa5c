#!/usr/bin/env python3
"""Live migration: a Migration object against raw `virsh migrate --live --p2p`, alternating,
in the same run, between the same two lab nodes.

    .venv/bin/python bench/migration.py [--runs 3] [--rates 0,4,16] [--backends none,gluster,nfs,iscsi]

The same guest (the lab guest, 128 MiB, rewriting N MiB of memory with non-zero data each
second: kopfvirt.dirty_mibps=N) runs twice: as a VirtualMachine, and as a plain libvirt
domain of the same XML that kopfvirt does not manage. Each round moves each of them once,
alternating which goes first, and back and forth between the nodes. With a backend, the
guest also has a 1 GiB disk on the lab's shared storage and writes a checked log to it
all the time (kopfvirt.disk_writer=vda): a qcow2 on the GlusterFS pool or on the NFS
export (the VM's own empty disk in that pool; the raw domain's file made beside it), or
an iSCSI LUN (each its own). Memory rows are keyed by rate; disk rows by backend, at dirty rate 0.

  total: wall time as a user sees it. kopfvirt: creating the Migration to phase Succeeded,
         seen by a watch (target pod scheduling, the move, the hand-off), which the agent
         writes once the target's libvirtd resumed the guest; raw: the virsh command, which
         returns once the source's libvirtd has also stopped its paused copy (some 200 ms
         later: libvirt looks every 200 ms whether a QEMU it killed is gone).
  resumed: raw only, from the virsh command's start to the guest's resume on the target
         (its libvirtd's lifecycle event): the moment kopfvirt's Succeeded stands for.
         resumed_ratio is kopfvirt's total over it: the whole cost of the control path.
  job:   libvirt's own time for the move (completed job statistics on the target).
  ratio: kopfvirt's total over raw's, as the ratio of the medians (total_ratio) and as the
         median of each round's ratio (paired_total_ratio: the two moves of a round run
         back to back, so the machine's drift between rounds cancels out).
  downtime: the guest's pause at the switch-over (the same statistics).
After each move the guest's heartbeat must go on on the target (`survived`).
Writes bench/results/migration.json and migration.png.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
from kopfvirt.clients import images, nfs  # noqa: E402
from kopfvirt.clients.libvirt import Arrival  # noqa: E402
from kopfvirt.core import disks, domainxml, vmspec  # noqa: E402
from kopfvirt_lab.layout import LEASE_DIR, TLS_DIR, Lab, node_ip  # noqa: E402

NODES = ("node-1", "node-2")
LAB = Lab(Path(__file__).resolve().parents[1])
NAMESPACE = "bench-migration"
# Where each file pool keeps the VM's own disks (lab/storagepools.yaml): the GlusterFS mount
# of every node, and the NFS export QEMU opens itself.
OWN_ROOTS = {"gluster": "/var/lib/kopfvirt/pools/gluster", "nfs": "nfs://198.18.0.5/export"}
EMPTY = [{"name": "log", "empty": {"size": "1Gi"}}]
BACKENDS = {"none": ([], None),
            "gluster": (EMPTY, None),
            "nfs": (EMPTY, None),
            "iscsi": ([{"name": "log", "pool": {"pool": "iscsi", "volume": "unit:0:0:2"}}], "unit:0:0:3")}
RESULTS = ROOT / "bench" / "results"
KUBECONFIG = ROOT / ".lab" / "kubeconfig"
GROUP, VERSION = "kopfvirt.io", "v1alpha1"


def spec(rate: int, backend: str = "none") -> dict:
    writer = "" if backend == "none" else " kopfvirt.disk_writer=vda"
    return {"runStrategy": "Always", "cpu": {"cores": 1}, "memory": {"size": "128Mi"},
            "terminationGracePeriodSeconds": 0, "disks": BACKENDS[backend][0],
            **({"storagePool": backend} if backend in OWN_ROOTS else {}),
            "kernelBoot": {"pool": "lab-images", "kernel": "lab-guest-vmlinuz", "initrd": "lab-guest-initrd.img",
                           "cmdline": f"console=ttyS0 quiet kopfvirt.dirty_mibps={rate}{writer}"}}


def lab_exec(node: str, *argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "kopfvirt_lab", "exec", node, "--", *argv],
                          capture_output=True, text=True, check=True).stdout


def fresh_console(domain: str) -> None:
    """A console log of its own for this run: libvirt appends to the log of a domain of
    the same name, and a counter left by an earlier run would read as this guest's."""
    for node in NODES:
        lab_exec(node, "rm", "-f", f"/var/log/libvirt/qemu/{domain}-serial.log")


def uri(node: str) -> str:
    return LAB.libvirt_uri(node, NODES.index(node) + 1)


def heartbeat(node: str, domain: str) -> int | None:
    """The guest's last counter on its console (kernel and disk-writer lines come between)."""
    out = subprocess.run([sys.executable, "-m", "kopfvirt_lab", "exec", node, "--", "tail", "-n", "200",
                          f"/var/log/libvirt/qemu/{domain}-serial.log"], capture_output=True, text=True).stdout
    counts = re.findall(r"kopfvirt-heartbeat (\d+)", out)
    return int(counts[-1]) if counts else None


def survived(node: str, domain: str, before: int | None) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = heartbeat(node, domain)
        if now is not None and before is not None and now > before:
            return True
        time.sleep(1)
    return False


def completed_stats(node: str, uuid_: str) -> dict:
    conn = libvirt.open(uri(node))
    try:
        return conn.lookupByUUIDString(uuid_).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    finally:
        conn.close()


def _foreign(xml: str) -> str:
    """The domain without kopfvirt's metadata: an agent destroys a domain whose metadata
    names a VM that does not exist (a stray), and this one is nobody's VM."""
    root = ET.fromstring(xml)
    for metadata in root.findall("metadata"):
        root.remove(metadata)
    return ET.tostring(root, encoding="unicode")


class Raw:
    """The baseline: a domain kopfvirt does not manage, moved by virsh."""

    def __init__(self, rate: int, backend: str = "none"):
        self.uid = str(uuid.uuid4())
        body = spec(rate, backend)
        raw_lun = BACKENDS[backend][1]
        if raw_lun:  # its own LUN: two writers of one would tear each other's log
            body["disks"] = [{"name": "log", "pool": {"pool": "iscsi", "volume": raw_lun}}]
        vm = vmspec.parse("bench", f"raw-{rate}-{backend}", self.uid, body)
        self.domain = vm.domain_name
        fresh_console(self.domain)
        own_dir = f"{OWN_ROOTS.get(backend, OWN_ROOTS['gluster'])}/bench/{vm.name}-{self.uid[:8]}"
        conn = libvirt.open(uri(NODES[0]))  # volumes as the agents resolve them
        volumes = {(p, v): conn.storagePoolLookupByName(p).storageVolLookupByName(v).path()
                   for p, v in disks.named_volumes(vm)}
        conn.close()
        # The same domain as kopfvirt's, leases included (libvirt hands them over in the pause).
        plan = disks.plan(vm, own_dir, volumes, own_pool_shared=True, lease_dir=LEASE_DIR)
        keys = [d.lease for d in plan.disks if d.lease]
        if keys:
            lab_exec(NODES[0], "sh", "-c", f"mkdir -p {LEASE_DIR} && cd {LEASE_DIR} && touch {' '.join(keys)}")
        for d in plan.disks:
            if d.kind == "empty":
                if backend == "nfs":
                    nfs.makedirs(own_dir)
                else:
                    lab_exec(NODES[0], "mkdir", "-p", own_dir)
                lab_exec(NODES[0], "qemu-img", "create", "-q", "-f", "qcow2", *images.fixed_length(d.path), d.path,
                         str(d.size_bytes))
        self.own_dir = own_dir if any(d.kind == "empty" for d in plan.disks) else None
        xml = _foreign(domainxml.domain_xml(vm, plan, "qemu", {"default": "kopfvirt"}))
        self.node = NODES[0]
        conn = libvirt.open(uri(self.node))
        conn.defineXML(xml).create()
        conn.close()

    def move(self) -> dict:
        target = NODES[1 - NODES.index(self.node)]
        before = heartbeat(self.node, self.domain)
        arrival = Arrival(uri(target), self.uid, threading.Event())  # the resume, seen as the agent sees it
        t0 = time.monotonic()
        # As the agent moves a VM: TLS between the libvirtds (each with its own certificate)
        # and for the guest's memory, sent to the target's address.
        address = node_ip(NODES.index(target) + 1)
        subprocess.run(["virsh", "-c", uri(self.node), "migrate", "--live", "--p2p", "--persistent",
                        "--undefinesource", "--tls", self.domain, f"qemu+tls://{address}/system?pkipath={TLS_DIR}",
                        f"tcp://{address}"], check=True, capture_output=True)
        total = time.monotonic() - t0
        arrival.resumed.wait(5)
        arrival.close()
        stats = completed_stats(target, self.uid)
        self.node = target
        return {"total_s": total, "resumed_s": arrival.resumed_at - t0 if arrival.resumed_at else None,
                "job_s": stats["time_elapsed"] / 1000, "downtime_ms": stats["downtime"],
                "survived": survived(target, self.domain, before)}

    def remove(self) -> None:
        conn = libvirt.open(uri(self.node))
        dom = conn.lookupByUUIDString(self.uid)
        dom.destroy()
        dom.undefine()
        conn.close()
        if self.own_dir and self.own_dir.startswith("nfs://"):
            nfs.remove_tree(self.own_dir)
        elif self.own_dir:
            lab_exec(NODES[0], "rm", "-rf", self.own_dir)


class Ours:
    """The same guest as a VirtualMachine, moved by Migration objects."""

    def __init__(self, rate: int, backend: str = "none"):
        self.api = client.CustomObjectsApi()
        self.name = f"mig-{rate}-{backend}"
        fresh_console(f"{NAMESPACE}_{self.name}")
        self.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "virtualmachines", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": {"name": self.name},
            "spec": spec(rate, backend)})
        vm = self.wait(lambda v: (v.get("status") or {}).get("phase") == "Running")
        self.domain = f"{NAMESPACE}_{self.name}"
        self.node = vm["status"]["nodeName"]
        while heartbeat(self.node, self.domain) is None:
            time.sleep(0.5)

    def wait(self, done, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            vm = self.api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "virtualmachines", self.name)
            if done(vm):
                return vm
            time.sleep(0.05)
        raise TimeoutError(self.name)

    def move(self) -> dict:
        before = heartbeat(self.node, self.domain)
        name = f"{self.name}-{uuid.uuid4().hex[:6]}"
        t0 = time.monotonic()
        m = self.api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "migrations", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Migration", "metadata": {"name": name},
            "spec": {"vmName": self.name}})
        # Watched, not polled: the end is seen when the API has it, as virsh's exit is.
        stream = watch.Watch().stream(self.api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE,
                                      "migrations", field_selector=f"metadata.name={name}",
                                      resource_version=m["metadata"]["resourceVersion"], timeout_seconds=120)
        phase = None
        for event in stream:
            m = event["object"]
            phase = (m.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed", "Cancelled"):
                break
        total = time.monotonic() - t0
        if phase != "Succeeded":
            raise RuntimeError(f"Migration {name} {phase}: {m['status'].get('message')}")
        st = m["status"]
        self.node = st["targetNode"]
        return {"total_s": total, "job_s": st["totalTimeMs"] / 1000, "downtime_ms": st["downtimeMs"],
                "survived": survived(self.node, self.domain, before)}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def plot(result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cases = list(result["summary"])
    x = range(len(cases))
    for offset, path, color in ((-0.2, "raw", "#888888"), (0.2, "kopfvirt", "#1f77b4")):
        s = result["summary"]
        a1.bar([i + offset for i in x], [s[c][path]["total_s_median"] for c in cases], 0.4, color=color,
               label=f"{path} total")
        a1.bar([i + offset for i in x], [s[c][path]["job_s_median"] for c in cases], 0.4, color="none",
               edgecolor="black", hatch="//", label="libvirt job" if path == "raw" else None)
        a2.bar([i + offset for i in x], [s[c][path]["downtime_ms_median"] for c in cases], 0.4, color=color,
               label=path)
    resumed = [(i - 0.2, s[c]["raw"]["resumed_s_median"]) for i, c in zip(x, cases) if "resumed_s_median" in s[c]["raw"]]
    if resumed:
        a1.scatter(*zip(*resumed), marker="_", s=500, color="#d62728", zorder=3, label="raw: guest resumed on target")
    for ax, label in ((a1, "median time (s)"), (a2, "median guest downtime (ms)")):
        ax.set_xticks(list(x), cases, fontsize=8)
        ax.set_xlabel("guest dirty rate, or disk being written (dirty rate 0)")
        ax.set_ylabel(label)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # room for the legend above the bars
        ax.legend(loc="upper left", ncol=2, fontsize=8)
    fig.suptitle(f"live migration, 128 MiB TCG guest, {result['runs']} moves per path and case")
    fig.tight_layout()
    fig.savefig(RESULTS / "migration.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rates", default="0,4,16")
    p.add_argument("--backends", default="none,gluster,nfs,iscsi")
    args = p.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    backends = [b for b in args.backends.split(",") if b and b != "none"]
    cases = [(f"{r} MiB/s", r, "none") for r in rates] + [(f"{b} disk", 0, b) for b in backends]
    config.load_kube_config(str(KUBECONFIG))
    try:
        client.CoreV1Api().create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as e:
        if e.status != 409:
            raise
    rows: dict[str, dict[str, list[dict]]] = {}
    for label, rate, backend in cases:
        raw, ours = Raw(rate, backend), Ours(rate, backend)
        rows[label] = {"raw": [], "kopfvirt": []}
        try:
            for run in range(args.runs):
                order = (("raw", raw), ("kopfvirt", ours)) if run % 2 == 0 else (("kopfvirt", ours), ("raw", raw))
                for path, subject in order:
                    rows[label][path].append(subject.move())
                    time.sleep(1)
                print(f"{label} run {run + 1}: " + "; ".join(
                    f"{k} total {v[-1]['total_s']:.2f}s job {v[-1]['job_s']:.2f}s downtime {v[-1]['downtime_ms']}ms"
                    for k, v in rows[label].items()), flush=True)
        finally:
            raw.remove()
            client.CustomObjectsApi().delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "virtualmachines",
                                                                     ours.name)
    summary = {}
    for label, paths in rows.items():
        s = {path: {"total_s_median": median(r, "total_s"), "job_s_median": median(r, "job_s"),
                    "downtime_ms_median": median(r, "downtime_ms"), "survived": sum(x["survived"] for x in r),
                    "moves": len(r)} for path, r in paths.items()}
        s["total_ratio"] = s["kopfvirt"]["total_s_median"] / s["raw"]["total_s_median"]
        # Each round moves both back to back: its ratio is free of the drift between rounds
        # on a shared machine, and the median of those is the figure to judge by.
        s["paired_total_ratio"] = statistics.median(o["total_s"] / r["total_s"]
                                                    for o, r in zip(paths["kopfvirt"], paths["raw"]))
        resumed = [r["resumed_s"] for r in paths["raw"] if r.get("resumed_s")]
        if resumed:
            s["raw"]["resumed_s_median"] = statistics.median(resumed)
            s["resumed_ratio"] = s["kopfvirt"]["total_s_median"] / s["raw"]["resumed_s_median"]
        s["job_ratio"] = s["kopfvirt"]["job_s_median"] / s["raw"]["job_s_median"]
        s["downtime_delta_ms"] = s["kopfvirt"]["downtime_ms_median"] - s["raw"]["downtime_ms_median"]
        summary[label] = s
    result = {"runs": args.runs, "rates": rates, "backends": backends, "guest_memory": "128Mi",
              "nodes": list(NODES), "rows": rows, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "migration.json").write_text(json.dumps(result, indent=1))
    plot(result)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
