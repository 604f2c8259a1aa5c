"""Requests that do not come through kube-apiserver: anyone in the cluster network can
reach the controller's webhook port, so what a webhook does on its own must be harmless
when forged."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid

from .conftest import OPERATOR_NAMESPACE, kubectl, kubectl_json, scrape
from .test_migration import running_vm


def _review(namespace: str, pod: str) -> dict:
    """An eviction's AdmissionReview as kube-apiserver would send it, claiming an admin."""
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "subResource": "eviction",
        "requestKind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"}, "requestSubResource": "eviction",
        "name": pod, "namespace": namespace, "operation": "CREATE", "dryRun": False,
        "userInfo": {"username": "system:admin", "groups": ["system:masters"]},
        "object": {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}},
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}


def test_a_forged_eviction_review_moves_no_vm_off_a_node_that_takes_pods(vms):
    running_vm(vms, "forged-evict", evictionStrategy="LiveMigrate")
    controllers = [p["status"]["podIP"] for p in kubectl_json(
        "-n", OPERATOR_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=controller")["items"]
        if p["status"].get("podIP")]
    anyone = ssl._create_unverified_context()
    for address in controllers:  # the leader and the standby
        request = urllib.request.Request(f"https://{address}:9443/evict-reservation-pod", method="POST",
                                         data=json.dumps(_review(vms.namespace, "kopfvirt-forged-evict")).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=anyone, timeout=10) as r:
            response = json.loads(r.read())["response"]
        assert response["allowed"] is False, response
        assert "evictions from a node that still takes pods are refused" in response["status"]["message"], response
    time.sleep(3)
    made = [m["metadata"]["name"] for m in kubectl_json("-n", vms.namespace, "get", "migrations")["items"]
            if m["spec"]["vmName"] == "forged-evict"]
    assert made == [], f"a forged review started {made}"
    kubectl("-n", vms.namespace, "delete", "virtualmachine", "forged-evict", "--wait=true", "--timeout=60s")


def test_metrics_answer_only_a_token_that_may_get_them(vms):
    """/metrics as kube-rbac-proxy guards it: a TokenReview and a SubjectAccessReview of
    `get /metrics`; a Prometheus bound to kopfvirt-metrics-reader reads them."""
    kubectl("-n", vms.namespace, "create", "serviceaccount", "nosy")
    nosy = kubectl("-n", vms.namespace, "create", "token", "nosy").stdout.strip()
    for component, port, node in (("controller", 8080, None), ("agent", 8081, "node-1")):
        status, body = scrape(component, port, node, token="")
        assert status == 401 and "a bearer token is needed" in body, (component, status, body)
        status, body = scrape(component, port, node, token="not-a-token")
        assert status == 401 and "not valid" in body, (component, status, body)
        status, body = scrape(component, port, node, token=nosy)
        assert status == 403, (component, status, body)
        assert f'"system:serviceaccount:{vms.namespace}:nosy" cannot get /metrics' in json.loads(body)["message"]
        status, body = scrape(component, port, node)
        assert status == 200 and "# TYPE kopfvirt_" in body, (component, status, body[:300])
