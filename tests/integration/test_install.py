"""The operator as the lab installs it, the way users do: a Helm release of charts/kopfvirt
whose controller and agents run as pods on the lab's kubelets, from the images built from
the Dockerfile, and whose webhook the API server calls through the chart's Service."""

from __future__ import annotations

import json

from kopfvirt_lab import images, install
from kopfvirt_lab.layout import Lab

from .conftest import OPERATOR_NAMESPACE, REPO, kubectl_json, run


def test_helm_lists_the_release_deployed(lab):
    out = run(install.helm(), "list", "-n", OPERATOR_NAMESPACE, "--kubeconfig", str(Lab(REPO).kubeconfig),
              "-o", "json").stdout
    releases = {r["name"]: r for r in json.loads(out)}
    assert releases[install.RELEASE]["status"] == "deployed"
    assert releases[install.RELEASE]["chart"].startswith("kopfvirt-")


def test_the_controller_and_an_agent_per_node_run_as_pods_from_the_built_image(lab):
    pods = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=kopfvirt")["items"]
    by_component: dict[str, list[dict]] = {}
    for pod in pods:
        by_component.setdefault(pod["metadata"]["labels"]["app.kubernetes.io/component"], []).append(pod)
    assert len(by_component["controller"]) == 1
    assert sorted(p["spec"]["nodeName"] for p in by_component["agent"]) == ["node-1", "node-2"]
    image = images.reference(Lab(REPO), "operator")
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running", (pod["metadata"]["name"], status)
        assert all(c["ready"] for c in status["containerStatuses"]), pod["metadata"]["name"]
        assert [c["image"] for c in pod["spec"]["containers"]] == [image]
        assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == install.RELEASE
    owners = {p["metadata"]["ownerReferences"][0]["kind"] for p in by_component["agent"]}
    assert owners == {"DaemonSet"}


def test_the_webhook_is_called_through_the_charts_service(lab):
    config = kubectl_json("get", "validatingwebhookconfiguration", "kopfvirt")
    for webhook in config["webhooks"]:
        assert webhook["clientConfig"]["service"] == {"name": "kopfvirt-webhook", "namespace": OPERATOR_NAMESPACE,
                                                       "path": webhook["clientConfig"]["service"]["path"],
                                                       "port": 443}
    endpoints = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "endpointslices", "-l",
                             "kubernetes.io/service-name=kopfvirt-webhook")["items"]
    controller = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                              "app.kubernetes.io/component=controller")["items"][0]
    addresses = {a for e in endpoints for ep in e.get("endpoints") or [] for a in ep["addresses"]}
    assert controller["status"]["podIP"] in addresses
