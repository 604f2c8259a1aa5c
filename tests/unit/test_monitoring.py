"""The chart's alerts and dashboard, judged by Prometheus' own promtool (built from the Go
module proxy, tools/prometheus): the rule file passes `promtool check rules`, each alert
has a case in `promtool test rules` (tests/prometheus/alerts_test.yaml), every dashboard
query parses as PromQL, and the chart ships both unchanged. That each query and alert
finds data in a real scrape of the lab is tests/integration/test_prometheus.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ..gotools import promtool as build_promtool
from .test_chart import CHART, KUBE, _helm, helm  # noqa: F401 - the fixture

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "kopfvirt.json"
ALERT_TESTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts_test.yaml"
# What Grafana puts in for the dashboard's variables before it asks Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana sends it) of every target of every panel."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def promtool() -> Path:
    return build_promtool()


def run(promtool: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_rules_pass_promtool_check(promtool):
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_every_alert_fires_as_its_unit_test_says(promtool):
    tested = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert firing == {r["alert"] for r in alert_rules()}  # each alert seen firing in a case


def test_a_broken_alert_is_caught(promtool, tmp_path):
    """The unit tests can fail: with one alert's threshold changed, they do."""
    (tmp_path / "rules.yaml").write_text(RULES.read_text().replace("kopfvirt_libvirt_up == 0", "kopfvirt_libvirt_up == 2"))
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests))
    tested = run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert tested.returncode != 0 and "KopfvirtLibvirtDown" in tested.stdout + tested.stderr


def test_every_dashboard_query_is_promql(promtool, tmp_path):
    """promtool has no offline query parser; a recording rule per query is parsed as PromQL."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"kopfvirt:dashboard_query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run(promtool, "check", "rules", str(tmp_path / "queries.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_whole():
    """What Grafana needs to import it: unique panel ids on a 24-column grid, every query
    through the dashboard's data source variable, and the namespace variable applied."""
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "namespace"]
    for panel in (p for p in panels if p["type"] != "row"):
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            per_vm = re.search(r"kopfvirt_vms?(_info)?\{|kopfvirt_vm_(cpu|memory|storage|network)", target["expr"])
            assert not per_vm or 'namespace=~"$namespace"' in target["expr"], (panel["title"], target["expr"])


def test_the_chart_ships_them_unchanged(helm):  # noqa: F811 - the fixture
    out = _helm(helm, "template", "kopfvirt", str(CHART), "--namespace", "kopfvirt-system", *KUBE,
                "--set", "metrics.prometheusRule.enabled=true,metrics.dashboards.enabled=true,"
                         "metrics.dashboards.namespace=monitoring").stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d and d["kind"] in ("PrometheusRule", "ConfigMap")
            and d["metadata"]["name"] in ("kopfvirt", "kopfvirt-dashboard")}
    assert docs["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())
    dashboard = docs["ConfigMap"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kopfvirt.json"]) == json.loads(DASHBOARD.read_text())
    off = _helm(helm, "template", "kopfvirt", str(CHART), *KUBE).stdout
    assert "PrometheusRule" not in off and "kopfvirt-dashboard" not in off  # both optional, off by default
