"""The operator as the lab installs it, the way users do: a Helm release of charts/kopfvirt
whose controller and agents run as pods on the lab's kubelets, from the images built from
the Dockerfile, and whose webhook the API server calls through the chart's Service."""

from __future__ import annotations

import json
import threading
import time
import uuid

import yaml

from kopfvirt_lab import images, install
from kopfvirt_lab.layout import Lab

from .conftest import OPERATOR_NAMESPACE, REPO, heartbeat, kubectl, kubectl_json, lab_guest, run, wait_for

LAB = Lab(REPO)


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


def test_upgrading_the_release_restarts_no_guest_and_vm_writes_come_back(vms):
    """A `helm upgrade` that rolls every pod of the operator (what a new image does): the
    guest's QEMU is the same process and keeps counting, and VM writes are refused at
    most while the controller's single replica restarts."""
    assert vms.apply(lab_guest("upgraded")).returncode == 0
    node = vms.wait_phase("upgraded", "Running")["status"]["nodeName"]
    domain = vms.domain("upgraded")
    wait_for("the guest's heartbeat", lambda: heartbeat(node, domain))
    qemu = (LAB.node_dir(node) / "run/libvirt/qemu" / f"{domain}.pid").read_text()
    before = {p["metadata"]["uid"] for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                                         "app.kubernetes.io/name=kopfvirt")["items"]}
    values = json.loads((LAB.root / "values.yaml").read_text())
    values["podAnnotations"]["kopfvirt.io/test-upgrade"] = uuid.uuid4().hex
    rolled = LAB.root / "values-upgrade.json"
    rolled.write_text(json.dumps(values))
    refused, done = [], threading.Event()
    probe = yaml.safe_dump({**lab_guest("probe"), "metadata": {"name": "probe", "namespace": vms.namespace}})

    def write_vms():  # a server-side dry run of a VM write, as often as a user might retry
        while not done.is_set():
            t0 = time.monotonic()
            result = kubectl("create", "--dry-run=server", "-f", "-", stdin=probe, check=False)
            if result.returncode != 0:
                refused.append((t0, result.stderr.strip()))
            time.sleep(0.5)
    writer = threading.Thread(target=write_vms, daemon=True)
    writer.start()
    heartbeat_before = heartbeat(node, domain)
    try:
        run(install.helm(), "upgrade", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n", OPERATOR_NAMESPACE,
            "--kubeconfig", str(LAB.kubeconfig), "--values", str(rolled), "--wait", "--timeout", "300s", timeout=360)
        wait_for("VM writes admitted again", lambda: kubectl("create", "--dry-run=server", "-f", "-", stdin=probe,
                                                             check=False).returncode == 0, timeout=60)
    finally:
        done.set()
        writer.join(10)
        run(install.helm(), "upgrade", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n", OPERATOR_NAMESPACE,
            "--kubeconfig", str(LAB.kubeconfig), "--values", str(LAB.root / "values.yaml"), "--wait",
            "--timeout", "300s", timeout=360)
        rolled.unlink(missing_ok=True)
    after = {p["metadata"]["uid"] for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                                        "app.kubernetes.io/name=kopfvirt")["items"]}
    assert not before & after, "every pod of the operator was replaced"
    window = refused[-1][0] - refused[0][0] if refused else 0.0
    assert window < 60, f"VM writes refused for {window:.0f}s: {refused[-1][1]}"
    assert all("webhook" in why for _, why in refused), refused  # only while it was away
    assert (LAB.node_dir(node) / "run/libvirt/qemu" / f"{domain}.pid").read_text() == qemu
    wait_for("the guest to keep counting", lambda: (heartbeat(node, domain) or 0) > heartbeat_before)
    assert vms.get("upgraded")["status"]["phase"] == "Running"
    vms.delete("upgraded")
