"""The operator as the lab installs it, the way users do: a Helm release of charts/kopfvirt
whose controller and agents run as pods on the lab's kubelets, from the images built from
the Dockerfile, and whose webhook the API server calls through the chart's Service."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import yaml

from kopfvirt_lab import images, install
from kopfvirt_lab.layout import Lab

from .conftest import (KOPFVIRT_LAB, OPERATOR_NAMESPACE, REPO, controller_leader, heartbeat, kubectl, kubectl_json,
                       lab_guest, run, wait_for)

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
    assert len(by_component["controller"]) == 2
    assert controller_leader() in {p["metadata"]["name"] for p in by_component["controller"]}
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
    controllers = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                               "app.kubernetes.io/component=controller")["items"]
    addresses = {a for e in endpoints for ep in e.get("endpoints") or [] for a in ep["addresses"]
                 if (ep.get("conditions") or {}).get("ready")}
    assert {c["status"]["podIP"] for c in controllers} == addresses  # the standby serves it too


class VMWrites:
    """Server-side dry runs of a VM write every 0.5 s, as a user retrying would; the
    refusals are kept with their time."""

    def __init__(self, namespace: str):
        self.probe = yaml.safe_dump({**lab_guest("probe"), "metadata": {"name": "probe", "namespace": namespace}})
        self.refused: list[tuple[float, str]] = []
        self.count = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)

    def _write(self) -> None:
        while not self.done.is_set():
            t0 = time.monotonic()
            result = kubectl("create", "--dry-run=server", "-f", "-", stdin=self.probe, check=False)
            self.count += 1
            if result.returncode != 0:
                self.refused.append((t0, result.stderr.strip()))
            time.sleep(0.5)

    def __enter__(self) -> "VMWrites":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.done.set()
        self.thread.join(10)


def test_the_standby_takes_over_when_the_leader_goes_and_no_vm_write_is_refused(vms):
    """Deleting the leading controller's pod: the other replica holds the Lease within
    seconds (the leader hands it over on its way out) and acts on a new VM, and the
    webhook answers throughout."""
    old = controller_leader()
    with VMWrites(vms.namespace) as writes:
        t0 = time.monotonic()
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "pod", old, "--wait=false")
        new = wait_for("another replica to lead", lambda: (n := controller_leader()) != old and n, timeout=60)
        took = time.monotonic() - t0
        # A controller write: the new leader creates the VM's reservation pod and reports
        # what kube-scheduler says of it.
        stranded = lab_guest("failover", nodeSelector={"kopfvirt.io/no-such-node": "true"})
        assert vms.apply(stranded).returncode == 0
        condition = vms.wait_condition("failover", "Scheduled", "Unschedulable", timeout=60)
        wait_for("the old pod gone", lambda: kubectl("-n", OPERATOR_NAMESPACE, "get", "pod", old,
                                                     check=False).returncode != 0, timeout=60)
        wait_for("the Deployment's replacement Ready", lambda: sum(
            install.ready(p) and not p["metadata"].get("deletionTimestamp")
            for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                  "app.kubernetes.io/component=controller")["items"]) == 2, timeout=120)
    assert new != old and took < 20, (new, took)
    assert "kube-scheduler" in condition["message"]
    assert writes.count > 5 and not writes.refused, writes.refused
    vms.delete("failover")


def test_upgrading_the_release_restarts_no_guest_and_refuses_no_vm_write(vms):
    """A `helm upgrade` that rolls every pod of the operator (what a new image does): the
    guest's QEMU is the same process and keeps counting, and no VM write is refused (twice
    over: the rollout there and back)."""
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
    heartbeat_before = heartbeat(node, domain)
    with VMWrites(vms.namespace) as writes:
        try:
            run(install.helm(), "upgrade", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n",
                OPERATOR_NAMESPACE, "--kubeconfig", str(LAB.kubeconfig), "--values", str(rolled), "--wait",
                "--timeout", "300s", timeout=360)
        finally:
            run(install.helm(), "upgrade", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n",
                OPERATOR_NAMESPACE, "--kubeconfig", str(LAB.kubeconfig), "--values", str(LAB.root / "values.yaml"),
                "--wait", "--timeout", "300s", timeout=360)
            rolled.unlink(missing_ok=True)
    after = {p["metadata"]["uid"] for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                                        "app.kubernetes.io/name=kopfvirt")["items"]}
    assert not before & after, "every pod of the operator was replaced"
    # Two replicas rolled one at a time, each leaving the Service before it stops serving.
    assert writes.count > 10 and not writes.refused, writes.refused
    assert (LAB.node_dir(node) / "run/libvirt/qemu" / f"{domain}.pid").read_text() == qemu
    wait_for("the guest to keep counting", lambda: (heartbeat(node, domain) or 0) > heartbeat_before)
    assert vms.get("upgraded")["status"]["phase"] == "Running"
    vms.delete("upgraded")


def _overlay(values: dict) -> Path:
    """A kustomize overlay of manifests/ with the lab's node settings, as a user patches
    the shipped manifests for their nodes: the lab's extra flags, sysfs and proc paths (from the
    values the lab gives Helm), and no libvirt DaemonSet (the lab's nodes run libvirtd)."""
    overlay = LAB.root / "kustomize-overlay"
    overlay.mkdir(exist_ok=True)
    agent = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
             for arg in values["agent"]["extraArgs"]]
    host_paths = {"apiVersion": "apps/v1", "kind": "DaemonSet",  # the host's /sys and /proc, by volume name
                  "metadata": {"name": "kopfvirt-agent", "namespace": OPERATOR_NAMESPACE},
                  "spec": {"template": {"spec": {"volumes": [
                      {"name": name, "hostPath": {"path": values["agent"][key], "type": "Directory"}}
                      for name, key in (("sysfs", "sysfsPath"), ("proc", "procPath"))]}}}}
    controller = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
                  for arg in values["controller"]["extraArgs"]]
    no_libvirt = {"$patch": "delete", "apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": {"name": "kopfvirt-libvirt", "namespace": OPERATOR_NAMESPACE}}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "manifests", overlay)],
        "patches": [{"target": {"kind": "DaemonSet", "name": "kopfvirt-agent"}, "patch": yaml.safe_dump(agent)},
                    {"patch": yaml.safe_dump(host_paths)},
                    {"target": {"kind": "Deployment", "name": "kopfvirt-controller"},
                     "patch": yaml.safe_dump(controller)},
                    {"patch": yaml.safe_dump(no_libvirt)}]}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def _operator_ready() -> bool:
    pods = [p for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                    "app.kubernetes.io/name=kopfvirt")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
    return components == ["agent", "agent", "controller", "controller"] and all(map(install.ready, pods))


def test_kubectl_apply_k_of_the_manifests_installs_a_working_operator(vms):
    """The other install path: `kubectl apply -f crds/ && kubectl apply -k` (an overlay of
    manifests/), in place of the Helm release. Its webhook refuses a bad VM naming the
    field, and a VM boots; a guest started under Helm keeps running across both switches."""
    assert vms.apply(lab_guest("across")).returncode == 0
    node = vms.wait_phase("across", "Running")["status"]["nodeName"]
    domain = vms.domain("across")
    wait_for("the guest's heartbeat", lambda: heartbeat(node, domain))
    qemu = (LAB.node_dir(node) / "run/libvirt/qemu" / f"{domain}.pid").read_text()
    values = json.loads((LAB.root / "values.yaml").read_text())
    overlay = _overlay(values)
    run(install.helm(), "uninstall", install.RELEASE, "-n", OPERATOR_NAMESPACE, "--kubeconfig", str(LAB.kubeconfig),
        "--wait", "--timeout", "120s", timeout=180)
    try:
        assert not _operator_ready()
        kubectl("apply", "-f", str(REPO / "crds"))
        applied = kubectl("apply", "-k", str(overlay)).stdout
        assert "daemonset.apps/kopfvirt-libvirt" not in applied and "deployment.apps/kopfvirt-controller" in applied
        wait_for("the controller and agents of the manifests Ready", _operator_ready, timeout=180)
        deployed = kubectl_json("-n", OPERATOR_NAMESPACE, "get", "deployment", "kopfvirt-controller")
        assert "meta.helm.sh/release-name" not in (deployed["metadata"].get("annotations") or {})

        refused = vms.apply(lab_guest("bogus", cpu={"model": "Bogus-CPU"}))  # the webhook's, not the schema's
        assert refused.returncode != 0, refused.stdout
        assert "spec.cpu.model: no node offers CPU model Bogus-CPU" in refused.stderr, refused.stderr
        assert vms.apply(lab_guest("kustomized")).returncode == 0
        kustomized = vms.wait_phase("kustomized", "Running")
        wait_for("the new guest's heartbeat",
                 lambda: heartbeat(kustomized["status"]["nodeName"], vms.domain("kustomized")))
        # The VM subresources through the manifests' APIService (its caBundle the controller's).
        wait_for("the domain XML through the API", lambda: f"<name>{vms.domain('kustomized')}</name>"
                 in vms.plugin("xml", "kustomized", check=False).stdout, timeout=60)
        vms.delete("kustomized")
    finally:
        run(install.helm(), "upgrade", "--install", install.RELEASE, str(REPO / "charts" / "kopfvirt"), "-n",
            OPERATOR_NAMESPACE, "--kubeconfig", str(LAB.kubeconfig), "--values", str(LAB.root / "values.yaml"),
            "--take-ownership", "--wait", "--timeout", "300s", timeout=360)
    wait_for("the Helm release's pods Ready", _operator_ready, timeout=120)
    # The lab's own repairs: the agent's token for tests died with its old ServiceAccount.
    run(*KOPFVIRT_LAB, "up", timeout=600)
    assert (LAB.node_dir(node) / "run/libvirt/qemu" / f"{domain}.pid").read_text() == qemu
    before = heartbeat(node, domain)
    wait_for("the guest to keep counting", lambda: (heartbeat(node, domain) or 0) > before)
    vms.delete("across")


def test_helm_install_with_bad_values_fails_naming_them_and_installs_nothing(lab):
    """Values the chart cannot run with are refused by `helm install` itself (the schema),
    before any object exists, not by pods that fail later."""
    result = run(install.helm(), "install", "kopfvirt-bad", str(REPO / "charts" / "kopfvirt"), "-n",
                 OPERATOR_NAMESPACE, "--kubeconfig", str(LAB.kubeconfig), "--set", "controller.replicas=0",
                 "--set", "image.repository=", "--set", "agent.virtType=xen", check=False)
    assert result.returncode != 0
    for field in ("/controller/replicas", "/image/repository", "/agent/virtType"):
        assert f"at '{field}'" in result.stderr, result.stderr
    releases = json.loads(run(install.helm(), "list", "-a", "-n", OPERATOR_NAMESPACE, "--kubeconfig",
                              str(LAB.kubeconfig), "-o", "json").stdout)
    assert [r["name"] for r in releases] == [install.RELEASE]
