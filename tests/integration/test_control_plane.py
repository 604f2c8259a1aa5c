"""The lab's control plane: the pinned release, Ready nodes, RBAC that means something."""

import datetime

import pytest

from kopfvirt_lab.layout import K8S_VERSION

from .conftest import kubectl, kubectl_json

CONTROLLER = "system:serviceaccount:kopfvirt-system:kopfvirt-controller"
AGENT = "system:serviceaccount:kopfvirt-system:kopfvirt-agent"


def test_server_reports_the_pinned_release(lab):
    assert kubectl_json("version")["serverVersion"]["gitVersion"] == K8S_VERSION


def test_nodes_are_ready_and_heartbeating(lab):
    nodes = {n["metadata"]["name"]: n for n in kubectl_json("get", "nodes")["items"]}
    assert {"node-1", "node-2"} <= set(nodes)
    for name in ("node-1", "node-2"):
        ready = next(c for c in nodes[name]["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", ready
        lease = kubectl_json("-n", "kube-node-lease", "get", "lease", name)
        renewed = datetime.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
        age = datetime.datetime.now(datetime.timezone.utc) - renewed
        assert age.total_seconds() < 30, f"{name}'s lease is {age} old"


@pytest.mark.parametrize("user,verb,resource,allowed", [
    (CONTROLLER, "create", "pods", "yes"),
    (CONTROLLER, "patch", "virtualmachines.kopfvirt.io/status", "yes"),
    (CONTROLLER, "get", "secrets", "no"),  # a tenant's: cloud-init Secrets reach nodes through the kubelet
    (CONTROLLER, "list", "secrets", "no"),
    (CONTROLLER, "delete", "nodes", "no"),
    (CONTROLLER, "delete", "virtualmachines.kopfvirt.io", "no"),
    (AGENT, "patch", "virtualmachines.kopfvirt.io/status", "yes"),
    (AGENT, "create", "pods", "no"),
    (AGENT, "list", "secrets", "no"),
    (AGENT, "get", "secrets", "no"),
    (AGENT, "list", "pods", "yes"),
    (AGENT, "patch", "pods", "no"),
    (AGENT, "delete", "nodes", "no"),
])
def test_rbac_of_the_service_accounts(lab, user, verb, resource, allowed):
    result = kubectl("auth", "can-i", verb, resource, "--as", user, "-A", check=False)
    assert result.stdout.strip() == allowed, f"{user} {verb} {resource}: {result.stdout}{result.stderr}"
