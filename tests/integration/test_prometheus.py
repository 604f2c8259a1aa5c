"""A real Prometheus (built from the Go module proxy, tools/prometheus) scrapes the lab's
controllers and agents as a user's would: over TLS, with the token of a ServiceAccount
bound to kopfvirt-metrics-reader, under the job names the chart's ServiceMonitors give,
with the chart's alerts loaded. While it scrapes, a VM with a disk and a NIC starts,
migrates live and stops, and another cannot be placed. Then every query of the chart's
dashboard returns data, every series each alert reads is there, and Prometheus evaluates
every alert without an error.

KOPFVIRT_CAPTURE_DASHBOARD=1 also draws the dashboard's panels from this scrape into
docs/images/dashboard.png (needs matplotlib: `.venv/bin/pip install matplotlib`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from ..gotools import prometheus as build_prometheus
from ..unit.test_monitoring import DASHBOARD, RULES, alert_rules
from .conftest import OPERATOR_NAMESPACE, REPO, kubectl_json, lab_guest, scraper_token, wait_for
from .test_migration import OTHER, Migrations, running_vm

SCRAPE_SECONDS = 2
# Grafana's variables as it would put them in for this scrape: all namespaces, and a rate
# window of several scrapes.
VARIABLES = {"$__rate_interval": "30s", "$namespace": ".*"}
PICTURE = REPO / "docs" / "images" / "dashboard.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def targets(component: str, port: int) -> list[str]:
    pods = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/component={component}")
    return [f"{p['status']['podIP']}:{port}" for p in pods["items"]
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")]


@pytest.fixture(scope="module")
def prometheus(lab, tmp_path_factory):
    """A Prometheus scraping every controller replica and agent every 2 s: its API's URL."""
    binary = build_prometheus()
    home = tmp_path_factory.mktemp("prometheus")
    (home / "token").write_text(scraper_token())
    jobs = [{"job_name": f"kopfvirt-{component}-metrics", "scheme": "https",
             # As the chart's ServiceMonitors: the certificates name the Service or the node,
             # not the pod address scraped.
             "tls_config": {"insecure_skip_verify": True},
             "authorization": {"credentials_file": str(home / "token")},
             "static_configs": [{"targets": targets(component, port)}]}
            for component, port in (("controller", 8080), ("agent", 8081))]
    assert all(job["static_configs"][0]["targets"] for job in jobs)
    (home / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(RULES)], "scrape_configs": jobs}))
    port = free_port()
    log = open(home / "prometheus.log", "w")
    proc = subprocess.Popen([str(binary), f"--config.file={home / 'prometheus.yml'}",
                             f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: _ready(url), timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def api(url: str, path: str, **params) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def dashboard_panels() -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(PromQL with the variables put in, legend format)]) of each panel; rows too."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        queries = []
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append((expr, target.get("legendFormat", "")))
        out.append((panel["title"] if panel["type"] != "row" else f"# {panel['title']}", queries))
    return out


def alert_selectors(expr: str) -> list[str]:
    """The series an alert reads, by name, keeping a `job` matcher (the jobs are the
    contract with the scrape configuration); other matchers pick values the lab need not
    show (an Unknown node, a failed migration)."""
    out = []
    for name, matchers in re.findall(r"\b(kopfvirt_\w+|up)(\{[^}]*\})?", expr):
        job = re.search(r'job="[^"]*"', matchers or "")
        out.append(f"{name}{{{job[0]}}}" if job else name)
    return out


def test_every_dashboard_query_and_alert_finds_data_in_a_real_scrape(prometheus, vms):
    # Every target scraped before anything happens, so each counter's increase is seen.
    wanted = len(targets("controller", 8080)) + len(targets("agent", 8081))
    wait_for("every target scraped up", lambda: len([s for s in api(prometheus, "query", query="up")["result"]
                                                      if s["value"][1] == "1"]) == wanted, timeout=60)
    began = time.time()
    # What the panels show: a VM with a disk it writes and a NIC, its start, a live move,
    # its stop; and one that no node can take (not Ready).
    root = {"name": "root", "image": {"pool": "lab-images", "volume": "blank.qcow2"}}
    source, _ = running_vm(vms, "scraped-vm", "kopfvirt.disk_writer=vda", disks=[root],
                           interfaces=[{"name": "eth0", "model": "virtio"}])
    assert vms.apply(lab_guest("unplaceable", nodeSelector={"disktype": "nowhere"})).returncode == 0
    migrations = Migrations(vms.namespace)
    migrations.create("scraped-move", "scraped-vm")
    assert migrations.wait_phase("scraped-move", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    wait_for("the guest on its target", lambda: vms.get("scraped-vm")["status"].get("nodeName") == OTHER[source])
    time.sleep(6 * SCRAPE_SECONDS)  # its statistics on the target, scraped a few times
    vms.plugin("stop", "scraped-vm")
    vms.wait_phase("scraped-vm", "Stopped", timeout=60)
    time.sleep(3 * SCRAPE_SECONDS)

    up = api(prometheus, "query", query="up")["result"]
    assert up and all(s["value"][1] == "1" for s in up), up
    assert {s["metric"]["job"] for s in up} == {"kopfvirt-controller-metrics", "kopfvirt-agent-metrics"}

    window = {"start": began, "end": time.time(), "step": SCRAPE_SECONDS}
    drawn, empty = [], []
    for title, queries in dashboard_panels():
        results = []
        for expr, legend in queries:
            series = api(prometheus, "query_range", query=expr, **window)["result"]
            if not any(v != "NaN" for s in series for _, v in s["values"]):
                empty.append(f"{title}: {expr}")
            results.append((series, legend))
        drawn.append((title, results))
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    for rule in alert_rules():
        for selector in alert_selectors(rule["expr"]):
            assert api(prometheus, "query", query=selector)["result"], f"{rule['alert']} reads {selector}: no series"
    loaded = [r for g in api(prometheus, "rules", type="alert")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in alert_rules())
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]

    if os.environ.get("KOPFVIRT_CAPTURE_DASHBOARD"):
        draw(drawn, PICTURE)
    vms.delete("scraped-vm")
    vms.delete("unplaceable")


def _legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt) or str(labels)


def draw(panels: list, path: Path) -> None:
    """The dashboard's rows and panels as Grafana lays them out, drawn from the scrape."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list]] = []
    for title, results in panels:
        if title.startswith("# "):
            rows.append((title[2:], []))
        else:
            rows[-1][1].append((title, results))
    width = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(4 * width, 3.2 * len(rows)), squeeze=False)
    t0 = min(float(v[0]) for _, p in rows for _, results in p for series, _ in results
             for s in series for v in s["values"])
    for r, (row, row_panels) in enumerate(rows):
        for c in range(width):
            ax = axes[r][c]
            if c >= len(row_panels):
                ax.axis("off")
                continue
            title, results = row_panels[c]
            ax.set_title(f"{row}: {title}" if c == 0 else title, fontsize=9, loc="left")
            for series, legend in results:
                for s in series:
                    xs = [float(t) - t0 for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    ax.plot(xs, ys, linewidth=1, label=_legend(legend, s["metric"])[:40])
            ax.tick_params(labelsize=7)
            ax.set_xlabel("seconds", fontsize=7)
            if ax.lines:
                ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Kopfvirt dashboard (charts/kopfvirt/files/dashboards/kopfvirt.json), drawn from a real "
                 "Prometheus scraping the lab", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
