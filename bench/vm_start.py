#!/usr/bin/env python3
"""VM start latency: kopfvirt against raw libvirt, in the same run, on the same lab nodes.

    .venv/bin/python bench/vm_start.py [--vms 100] [--interval 0.1] [--runs 2]
    .venv/bin/python bench/vm_start.py --single [--starts 10]

Each run creates N tiny domains (32 MiB, no OS) 100 ms apart, alternating lab nodes:
first with raw virDomainCreateXML through each node's libvirtd (the baseline), then as
VirtualMachine objects through the API server (our path: reservation pod, kube-scheduler,
controller, agent). Latency is creation to Running: for raw libvirt, the call's return;
for kopfvirt, the watch event that shows status.phase Running. Writes to the
VirtualMachine objects per start are counted in the API server's audit log.
Writes bench/results/vm_start.json and vm_start.png.

--single: one VM at a time on an idle cluster, N starts each way, alternating which goes
first: the latency of one start with nothing else going on (the agent starts the domain
once the reservation pod is bound, without waiting for the kubelet to run its container).
Writes bench/results/vm_start_single.json and vm_start_single.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import libvirt
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
from kopfvirt.core import disks, domainxml, vmspec  # noqa: E402
from kopfvirt_lab.layout import Lab  # noqa: E402

NODES = ("node-1", "node-2")
SPEC = {"memory": {"size": "32Mi"}, "runStrategy": "Always", "terminationGracePeriodSeconds": 0}
NAMESPACE = "bench"
RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": max(values)}


def raw_run(n: int, interval: float) -> list[float]:
    """virDomainCreateXML on each lab node's libvirtd over the lab network, like our agent's call."""
    conns = {node: libvirt.open(Lab(ROOT).libvirt_uri(node, i)) for i, node in enumerate(NODES, 1)}
    latencies, threads, created = [None] * n, [], []

    def start(i: int, node: str):
        uid = str(uuid.uuid4())
        vm = vmspec.parse("bench", f"raw-{i}", uid, SPEC)
        xml = domainxml.domain_xml(vm, disks.Plan([]), "qemu")
        t0 = time.monotonic()
        dom = conns[node].createXML(xml, 0)
        latencies[i] = time.monotonic() - t0
        created.append(dom)

    for i in range(n):
        t = threading.Thread(target=start, args=(i, NODES[i % len(NODES)]))
        t.start()
        threads.append(t)
        time.sleep(interval)
    for t in threads:
        t.join()
    for dom in created:
        dom.destroy()
    return latencies


def kopfvirt_run(n: int, interval: float, run_id: str) -> tuple[list[float], list[str]]:
    api = client.CustomObjectsApi()
    names = [f"vm-{run_id}-{i}" for i in range(n)]
    created_at, running_at = {}, {}
    done = threading.Event()

    def watcher():
        w = watch.Watch()
        for event in w.stream(api.list_namespaced_custom_object, "kopfvirt.io", "v1alpha1", NAMESPACE,
                              "virtualmachines", timeout_seconds=600):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if (obj.get("status") or {}).get("phase") == "Running" and name not in running_at:
                running_at[name] = time.monotonic()
                if len(running_at) >= n:
                    break
        done.set()

    threading.Thread(target=watcher, daemon=True).start()
    time.sleep(1)
    for name in names:
        body = {"apiVersion": "kopfvirt.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": name}, "spec": SPEC}
        created_at[name] = time.monotonic()
        api.create_namespaced_custom_object("kopfvirt.io", "v1alpha1", NAMESPACE, "virtualmachines", body)
        time.sleep(interval)
    if not done.wait(600):
        raise SystemExit(f"only {len(running_at)} of {n} VMs reached Running")
    return [running_at[x] - created_at[x] for x in names], names


def writes_per_start(names: list[str]) -> dict:
    wanted, counts = set(names), {}
    for line in (ROOT / ".lab" / "logs" / "audit.log").read_text().splitlines():
        e = json.loads(line)
        ref = e["objectRef"]
        if ref.get("namespace") == NAMESPACE and ref.get("name") in wanted and e["verb"] in ("patch", "update") \
                and e["user"]["username"].startswith("system:serviceaccount:kopfvirt-system:"):
            counts[ref["name"]] = counts.get(ref["name"], 0) + 1
    values = [counts.get(x, 0) for x in names]
    return {"mean": statistics.mean(values), "max": max(values), "min": min(values)}


def cleanup() -> None:
    subprocess.run([Lab(ROOT).kubectl, "--kubeconfig", str(ROOT / ".lab" / "kubeconfig"), "-n", NAMESPACE, "delete",
                    "virtualmachines", "--all", "--wait=true", "--timeout=600s"], check=True, capture_output=True)


def plot(result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, key, color in (("raw libvirt (virDomainCreateXML)", "raw", "#888888"),
                              ("kopfvirt (VirtualMachine -> Running)", "kopfvirt", "#1f77b4")):
        for i, run in enumerate(result["runs"]):
            ax.plot(range(len(run[key])), run[key], ".", color=color, alpha=0.7,
                    label=label if i == 0 else None)
    ax.set_xlabel(f"VM index (created {result['interval_s'] * 1000:.0f} ms apart)")
    ax.set_ylabel("creation to running (s)")
    s = result["summary"]
    ax.set_title(f"{result['vms']} VMs x {len(result['runs'])} runs: p95 kopfvirt {s['kopfvirt']['p95']:.2f} s, "
                 f"raw {s['raw']['p95']:.2f} s; {s['writes_per_start']['mean']:.1f} writes/start")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "vm_start.png", dpi=110)


def single(starts: int) -> None:
    """One VM at a time: raw and ours alternate, each start followed by a clean removal."""
    raw, ours = [], []
    for i in range(starts):
        for path in (("raw", "kopfvirt") if i % 2 == 0 else ("kopfvirt", "raw")):
            if path == "raw":
                raw += raw_run(1, 0)
            else:
                latencies, _ = kopfvirt_run(1, 0, f"s{i}{uuid.uuid4().hex[:4]}")
                ours += latencies
                cleanup()
            time.sleep(1)
        print(f"start {i + 1}: raw {raw[-1]:.3f}s kopfvirt {ours[-1]:.3f}s", flush=True)
    result = {"starts": starts, "nodes": list(NODES), "raw": raw, "kopfvirt": ours,
              "summary": {"raw": summary(raw), "kopfvirt": summary(ours),
                          "p50_overhead_s": pct(ours, 50) - pct(raw, 50),
                          "p95_overhead_s": pct(ours, 95) - pct(raw, 95)}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vm_start_single.json").write_text(json.dumps(result, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([raw, ours], tick_labels=["raw libvirt (virDomainCreateXML)", "kopfvirt (VirtualMachine -> Running)"])
    s = result["summary"]
    ax.set_ylabel("creation to running (s)")
    ax.set_title(f"one VM at a time, {starts} starts each: median {s['kopfvirt']['p50']:.2f} s vs "
                 f"{s['raw']['p50']:.2f} s raw")
    fig.tight_layout()
    fig.savefig(RESULTS / "vm_start_single.png", dpi=110)
    print(json.dumps(result["summary"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vms", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--single", action="store_true", help="one VM at a time on an idle cluster")
    p.add_argument("--starts", type=int, default=10, help="starts each way with --single")
    args = p.parse_args()
    config.load_kube_config(str(ROOT / ".lab" / "kubeconfig"))
    try:
        client.CoreV1Api().create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as e:
        if e.status != 409:
            raise
    if args.single:
        single(args.starts)
        return
    runs, writes = [], []
    for r in range(args.runs):
        raw = raw_run(args.vms, args.interval)
        time.sleep(5)
        ours, names = kopfvirt_run(args.vms, args.interval, f"{r}{uuid.uuid4().hex[:4]}")
        time.sleep(2)  # let the audit log catch up, then count before deletion adds its own writes
        writes.append(writes_per_start(names))
        cleanup()
        runs.append({"raw": raw, "kopfvirt": ours})
        print(f"run {r + 1}: raw p50 {pct(raw, 50):.2f} p95 {pct(raw, 95):.2f}; "
              f"kopfvirt p50 {pct(ours, 50):.2f} p95 {pct(ours, 95):.2f}", flush=True)
    raw_all = [x for run in runs for x in run["raw"]]
    ours_all = [x for run in runs for x in run["kopfvirt"]]
    result = {
        "vms": args.vms, "interval_s": args.interval, "nodes": list(NODES), "runs": runs,
        "summary": {"raw": summary(raw_all), "kopfvirt": summary(ours_all),
                    "p95_overhead_s": pct(ours_all, 95) - pct(raw_all, 95),
                    "p50_overhead_s": pct(ours_all, 50) - pct(raw_all, 50),
                    "writes_per_start": {"mean": statistics.mean(w["mean"] for w in writes),
                                         "max": max(w["max"] for w in writes)}},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vm_start.json").write_text(json.dumps(result, indent=1))
    plot(result)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
