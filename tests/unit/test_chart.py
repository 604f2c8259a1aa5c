"""The Helm chart: lints strictly, validates values, and is the source of manifests/."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kopfvirt"
KUBE = ("--kube-version", "1.36.3")  # helm template assumes an old cluster otherwise


@pytest.fixture(scope="module")
def helm():
    path = os.environ.get("KOPFVIRT_HELM") or shutil.which("helm")
    if not path or not Path(path).exists():
        pytest.fail("helm not found: `make helm` builds it (KOPFVIRT_HELM points at it)", pytrace=False)
    return path


def _helm(helm, *args, check=True):
    result = subprocess.run([helm, *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_lint_strict(helm):
    _helm(helm, "lint", "--strict", str(CHART))


def test_values_schema_refuses_a_bad_virt_type(helm):
    result = _helm(helm, "template", "x", str(CHART), *KUBE, "--set", "agent.virtType=xen", check=False)
    assert result.returncode != 0 and "virtType" in result.stderr


def test_chart_renders_every_placement_value(helm, golden):
    """Pull secrets, tolerations, affinity, priority classes, node selectors and the
    ServiceMonitors, as a user sets them (Helm's `global` included)."""
    out = _helm(helm, "template", "kopfvirt", str(CHART), "--namespace", "kopfvirt-system", *KUBE,
                "-f", str(ROOT / "tests/unit/data/chart-values-everything.yaml")).stdout
    golden("chart-everything.yaml", out)


def test_every_pod_template_carries_the_recommended_labels(helm):
    docs = [d for d in yaml.safe_load_all(_helm(helm, "template", "kopfvirt", str(CHART), *KUBE).stdout) if d]
    templates = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert {d["metadata"]["name"] for d in templates} == {"kopfvirt-controller", "kopfvirt-agent", "kopfvirt-libvirt"}
    for d in templates:
        labels = d["spec"]["template"]["metadata"]["labels"]
        for key in ("name", "instance", "version", "component", "managed-by", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (d["metadata"]["name"], key)
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("value, field", [
    ("agent.tolerations[0].operator=Maybe", "operator"),
    ("metrics.serviceMonitor.interval=often", "interval"),
    ("imagePullSecrets[0].nam=regcred", "nam"),
])
def test_values_schema_names_the_bad_field(helm, value, field):
    result = _helm(helm, "template", "x", str(CHART), *KUBE, "--set", value, check=False)
    assert result.returncode != 0 and field in result.stderr, result.stderr


def test_libvirt_daemonset_can_be_left_out(helm):
    out = _helm(helm, "template", "x", str(CHART), *KUBE, "--set", "libvirt.enabled=false").stdout
    assert "kopfvirt-libvirt" not in out and "kopfvirt-agent" in out


@pytest.mark.parametrize("template", ["rbac", "controller", "pdb", "migration-config", "passthrough-config", "agent",
                                      "libvirt", "webhook", "subresources", "agent-policy",
                                      "monitoring/prometheusrule", "monitoring/dashboard"])
def test_manifests_are_rendered_from_the_chart(helm, template):
    monitoring = ("--set", "metrics.prometheusRule.enabled=true,metrics.dashboards.enabled=true")
    rendered = _helm(helm, "template", "kopfvirt", str(CHART), "--namespace", "kopfvirt-system", *KUBE,
                     "--show-only", f"templates/{template.rsplit('/', 1)[-1]}.yaml",
                     *(monitoring if template.startswith("monitoring/") else ())).stdout
    committed = (ROOT / "manifests" / f"{template}.yaml").read_text()
    assert committed.split("\n", 1)[1] == rendered, f"manifests/{template}.yaml is stale: run `make manifests`"


def test_chart_crds_are_the_crds():
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), f"run `make manifests` ({crd.name})"


@pytest.mark.parametrize("values, managed", [((), True), (("webhook.certManagerIssuer=ca-issuer",), False),
                                             (("webhook.caBundle=Y2E=",), False)])
def test_the_webhook_certificate_is_the_controllers_unless_cert_manager_or_yours(helm, values, managed):
    sets = [arg for v in values for arg in ("--set", v)]
    docs = [d for d in yaml.safe_load_all(_helm(helm, "template", "kopfvirt", str(CHART), *KUBE, *sets).stdout) if d]
    controller = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = controller["containers"][0]["args"]
    volume = next(v for v in controller["volumes"] if v["name"] == "webhook-tls")
    if managed:
        assert "--webhook-secret=kopfvirt-webhook-tls" in args and "emptyDir" in volume
        assert not any(a.startswith("--webhook-cert=") for a in args)
    else:
        assert "--webhook-cert=/etc/kopfvirt/webhook/tls.crt" in args and volume["secret"]["secretName"] == \
            "kopfvirt-webhook-tls"
        assert not any(a.startswith("--webhook-secret") for a in args)
    assert any(d["kind"] == "Certificate" for d in docs) == ("webhook.certManagerIssuer=ca-issuer" in values)


def test_the_operators_own_pods_never_pass_its_eviction_webhook(helm):
    """A drain of the node of the last controller replica must not wait on that replica."""
    out = _helm(helm, "template", "x", str(CHART), *KUBE, "-n", "ops", "--show-only", "templates/webhook.yaml").stdout
    config = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ValidatingWebhookConfiguration")
    evictions = next(w for w in config["webhooks"] if w["name"] == "evictions.kopfvirt.io")
    assert evictions["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ops"]}]}
