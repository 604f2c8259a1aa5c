"""Containers beside VMs on the lab's real nodes: kubelets with containerd, a VM's
reservation pod running as a container, a plain Deployment on both nodes reaching across,
and one node capacity that kube-scheduler shares out between pods and VMs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import yaml

from kopfvirt.core import quantity
from kopfvirt_lab.layout import CONTAINERD_VERSION, K8S_VERSION

from .conftest import KOPFVIRT_LAB, REPO, VMs, domains_of, heartbeat, kubectl, kubectl_json, lab_exec, lab_guest, wait_for

WEB_IMAGE = "kopfvirt-lab-web:0.1.0"  # lab/web.Dockerfile, built and imported by `lab up`
LAB = REPO / ".lab"


def apply(namespace: str, body: dict) -> None:
    kubectl("-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(body))


def web_pod_spec(node: str | None = None, memory: str = "32Mi") -> dict:
    spec = {"containers": [{"name": "web", "image": WEB_IMAGE, "ports": [{"containerPort": 8080}],
                            "resources": {"requests": {"memory": memory, "cpu": "10m"}, "limits": {"memory": memory}},
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "runAsNonRoot": True}}],
            "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return spec


def pods(namespace: str, selector: str) -> list[dict]:
    return kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]


def free_memory(node: str) -> int:
    """The node's allocatable memory less what its pods request, as kube-scheduler counts it."""
    body = kubectl_json("get", "node", node)
    used = 0
    for pod in kubectl_json("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}")["items"]:
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"]["containers"]:
            used += quantity.to_bytes(((c.get("resources") or {}).get("requests") or {}).get("memory", 0))
    return quantity.to_bytes(body["status"]["allocatable"]["memory"]) - used


def running_vm(vms, name: str, node: str) -> dict:
    assert vms.apply(lab_guest(name, nodeSelector={"kubernetes.io/hostname": node})).returncode == 0
    vm = vms.wait_phase(name, "Running", timeout=120)
    wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)))
    return vm


def test_nodes_are_kubelets_with_containerd(lab):
    for node in ("node-1", "node-2"):
        body = kubectl_json("get", "node", node)
        info = body["status"]["nodeInfo"]
        assert info["kubeletVersion"] == K8S_VERSION
        # containerd 2.x, built from its Go module (Kubernetes 1.36 is the last to accept 1.x).
        assert info["containerRuntimeVersion"] == f"containerd://{CONTAINERD_VERSION.lstrip('v')}", info
        ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "KubeletReady"), ready
        # The kubelet renews its own Lease (made shortly after it registers the Node).
        lease = wait_for(f"{node}'s Lease", lambda: (r := kubectl(
            "-n", "kube-node-lease", "get", "lease", node, "-o", "json", check=False)).returncode == 0
            and json.loads(r.stdout), timeout=60)
        assert lease["spec"]["holderIdentity"] == node


def test_a_vms_reservation_pod_runs_as_a_container(vms):
    vm = running_vm(vms, "resv", "node-2")
    pod = wait_for("the reservation pod's container to run", lambda: (
        p := kubectl_json("-n", vms.namespace, "get", "pod", "kopfvirt-resv"))["status"].get(
        "containerStatuses", [{}])[0].get("state", {}).get("running") and p)
    assert pod["spec"]["nodeName"] == vm["status"]["nodeName"] == "node-2"
    listed = json.loads(lab_exec("node-2", "crictl", "ps", "--name", "reservation", "-o", "json").stdout)
    ours = [c for c in listed["containers"] if c["labels"].get("io.kubernetes.pod.name") == "kopfvirt-resv"
            and c["labels"].get("io.kubernetes.pod.namespace") == vms.namespace]
    assert [c["state"] for c in ours] == ["CONTAINER_RUNNING"], listed
    vms.delete("resv")
    wait_for("the reservation container to go", lambda: not any(
        c["labels"].get("io.kubernetes.pod.name") == "kopfvirt-resv" for c in json.loads(
            lab_exec("node-2", "crictl", "ps", "-a", "-o", "json").stdout)["containers"]))


def test_vms_run_in_a_namespace_that_enforces_the_restricted_pod_security_profile(lab):
    """The API server's own PodSecurity admission judges the reservation pod: a VM runs in
    a namespace whose pods must all pass `restricted`, as its plain pods must."""
    ns = f"restricted-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    try:
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
        strict = VMs(ns)
        vm = running_vm(strict, "strict", "node-1")
        assert vm["status"]["phase"] == "Running"
        pod = kubectl_json("-n", ns, "get", "pod", "kopfvirt-strict")
        assert pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True
        # The profile is enforced there: a privileged pod is refused with its reasons.
        spec = web_pod_spec()
        spec["containers"][0]["securityContext"] = {"privileged": True}
        refused = kubectl("-n", ns, "apply", "-f", "-", check=False, stdin=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loud"}, "spec": spec}))
        assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr
        strict.delete("strict")
    finally:
        kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)


def test_a_deployment_runs_on_both_nodes_beside_vms_and_leaves_them_alone(vms):
    ns = vms.namespace
    before = {}
    for name, node in (("beside-1", "node-1"), ("beside-2", "node-2")):
        vm = running_vm(vms, name, node)
        before[name] = (node, vm["status"]["startTime"], heartbeat(node, vms.domain(name)))
    apply(ns, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            **web_pod_spec(),
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}}})
    kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=180s")
    by_node = {p["spec"]["nodeName"]: p for p in pods(ns, "app=web")}
    assert set(by_node) == {"node-1", "node-2"}
    # A pod on node-1 fetches the page of the pod on node-2, across the lab's network.
    there = by_node["node-2"]
    fetch = (f"import urllib.request; print(urllib.request.urlopen('http://{there['status']['podIP']}:8080/', "
             f"timeout=10).read().decode().strip())")
    out = kubectl("-n", ns, "exec", by_node["node-1"]["metadata"]["name"], "--", "python3", "-c", fetch).stdout
    assert out.strip() == there["metadata"]["name"]
    # A Service in front of them (kube-proxy on each node): from either node its ClusterIP
    # reaches both pods, the one beside the caller and the one across the lab's network.
    apply(ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    ip = kubectl_json("-n", ns, "get", "service", "web")["spec"]["clusterIP"]
    names = {p["metadata"]["name"] for p in by_node.values()}
    many = (f"import urllib.request\nfor _ in range(24): print(urllib.request.urlopen('http://{ip}/', "
            f"timeout=5).read().decode().strip())")
    for node, pod in by_node.items():
        answered = wait_for(f"the Service answering from {node}", lambda pod=pod: kubectl(
            "-n", ns, "exec", pod["metadata"]["name"], "--", "python3", "-c", many, check=False).stdout.split(),
            timeout=60)
        assert set(answered) == names, (node, answered)
    kubectl("-n", ns, "delete", "deployment", "web", "--wait=true", "--timeout=60s")
    wait_for("the Deployment's pods to go", lambda: not pods(ns, "app=web"), timeout=60)
    for name, (node, started, count) in before.items():
        vm = vms.get(name)
        assert (vm["status"]["phase"], vm["status"]["nodeName"], vm["status"]["startTime"]) == \
            ("Running", node, started), vm["status"]
        assert domains_of(vm["metadata"]["uid"]) == {node: "running"}
        wait_for(f"{name} to keep counting", lambda: (heartbeat(node, vms.domain(name)) or 0) > count)
        vms.delete(name)


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(vms):
    """What every in-cluster client (the operator's own pods among them) does: the
    `kubernetes` Service's address from the environment, the pod's ServiceAccount token."""
    spec = web_pod_spec("node-2")
    spec["automountServiceAccountToken"] = True
    spec["restartPolicy"] = "Never"
    spec["containers"][0]["command"] = ["python3", "-c", (
        "import json, os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "url = f\"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/api\"\n"
        "request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
        "context = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "print(os.environ['KUBERNETES_SERVICE_HOST'], json.load(urllib.request.urlopen(request, context=context))['kind'])")]
    apply(vms.namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "in-cluster"}, "spec": spec})
    wait_for("the pod to finish", lambda: kubectl_json("-n", vms.namespace, "get", "pod", "in-cluster")["status"].get(
        "phase") in ("Succeeded", "Failed"), timeout=90)
    service_ip = kubectl_json("-n", "default", "get", "service", "kubernetes")["spec"]["clusterIP"]
    assert kubectl("-n", vms.namespace, "logs", "in-cluster").stdout.split() == [service_ip, "APIVersions"]
    kubectl("-n", vms.namespace, "delete", "pod", "in-cluster", "--wait=false")


def test_pods_and_vms_share_one_node_memory(vms):
    ns = vms.namespace
    # A pod takes all of node-1's memory but 512 MiB: a 1 GiB VM no longer fits there.
    hog = quantity.to_bytes("512Mi")
    apply(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog", "labels": {"app": "hog"}},
               "spec": web_pod_spec("node-1", memory=str(free_memory("node-1") - hog))})
    kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/hog", "--timeout=120s")
    body = lab_guest("squeezed", nodeSelector={"kubernetes.io/hostname": "node-1"}, memory={"size": "1Gi"})
    assert vms.apply(body).returncode == 0
    condition = vms.wait_condition("squeezed", "Scheduled", "Unschedulable")
    assert "Insufficient memory" in condition["message"], condition
    assert vms.get("squeezed")["status"]["phase"] == "Pending"
    # The pod goes: the VM gets the room and runs there.
    kubectl("-n", ns, "delete", "pod", "hog", "--wait=true", "--timeout=60s")
    vm = vms.wait_phase("squeezed", "Running", timeout=180)
    assert vm["status"]["nodeName"] == "node-1"
    # And the other way round: a pod asking for more than the VM left stays Pending.
    apply(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"},
               "spec": web_pod_spec("node-1", memory=str(free_memory("node-1") + 1))})
    scheduled = wait_for("the late pod to be judged", lambda: next(
        (c for c in kubectl_json("-n", ns, "get", "pod", "late")["status"].get("conditions") or []
         if c["type"] == "PodScheduled" and c["status"] == "False"), None))
    assert scheduled["reason"] == "Unschedulable" and "Insufficient memory" in scheduled["message"], scheduled
    kubectl("-n", ns, "delete", "pod", "late", "--wait=true", "--timeout=60s")
    vms.delete("squeezed")


def test_a_pod_whose_image_is_absent_says_so(vms):
    spec = web_pod_spec()
    spec["containers"][0].update(image="kopfvirt-no-such-image:0.1.0", imagePullPolicy="Never")
    apply(vms.namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "absent"}, "spec": spec})
    waiting = wait_for("the kubelet's verdict", lambda: (w := (
        kubectl_json("-n", vms.namespace, "get", "pod", "absent")["status"].get("containerStatuses") or [{}])[0]
        .get("state", {}).get("waiting")) and w.get("reason") != "ContainerCreating" and w, timeout=60)
    assert waiting["reason"] == "ErrImageNeverPull", waiting
    kubectl("-n", vms.namespace, "delete", "pod", "absent", "--wait=true", "--timeout=60s")


def test_the_walkthrough_of_docs_containers_md(vms):
    """docs/containers.md, command by command, in a namespace of its own."""
    ns = ["-n", vms.namespace]
    assert "kopfvirt-lab-web" in lab_exec("node-1", "crictl", "images").stdout
    kubectl(*ns, "run", "hello", f"--image={WEB_IMAGE}")
    kubectl(*ns, "wait", "--for=condition=Ready", "pod/hello", "--timeout=120s")
    assert kubectl(*ns, "exec", "hello", "--", "sh", "-c", "echo changed > /tmp/note && cat /tmp/note").stdout \
        == "changed\n"
    kubectl(*ns, "run", "hello-2", f"--image={WEB_IMAGE}")
    kubectl(*ns, "wait", "--for=condition=Ready", "pod/hello-2", "--timeout=120s")
    other = kubectl(*ns, "exec", "hello-2", "--", "cat", "/tmp/note", check=False)
    assert other.returncode != 0 and "No such file or directory" in other.stderr
    node = kubectl(*ns, "get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}").stdout
    assert "Running" in lab_exec(node, "crictl", "ps", "--name", "^hello$").stdout
    kubectl(*ns, "delete", "pod", "hello", "hello-2", "--wait=true", "--timeout=60s")
    wait_for("the container and its layer to be removed", lambda: "hello" not in lab_exec(
        node, "crictl", "ps", "-a", "--name", "^hello$").stdout, timeout=150, interval=3)


def test_killed_kubelet_and_containerd_come_back_without_touching_guests_or_containers(vms):
    """`lab up` repairs a node whose kubelet and containerd died: the VM's QEMU and the
    pod's container are the same processes afterwards, and both kept running."""
    ns, node = vms.namespace, "node-1"
    running_vm(vms, "steady", node)
    apply(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady-web"}, "spec": web_pod_spec(node)})
    kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/steady-web", "--timeout=120s")
    container = kubectl_json("-n", ns, "get", "pod", "steady-web")["status"]["containerStatuses"][0]
    qemu = int((LAB / "nodes" / node / "run/libvirt/qemu" / f"{vms.domain('steady')}.pid").read_text())
    for daemon in ("kubelet", "containerd"):
        pid = int((LAB / "pids" / f"{daemon}-{node}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(f"{daemon} to die", lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
    assert "degraded" in subprocess.run([*KOPFVIRT_LAB, "status"], capture_output=True, text=True).stdout
    count = heartbeat(node, vms.domain("steady"))
    subprocess.run([*KOPFVIRT_LAB, "up"], check=True, capture_output=True, timeout=300)
    assert subprocess.run([*KOPFVIRT_LAB, "status"], capture_output=True).returncode == 0
    wait_for("node-1 Ready again", lambda: next(c for c in kubectl_json("get", "node", node)["status"]["conditions"]
                                                if c["type"] == "Ready")["status"] == "True")
    assert os.path.exists(f"/proc/{qemu}")
    wait_for("the guest to keep counting", lambda: (heartbeat(node, vms.domain("steady")) or 0) > count)
    after = kubectl_json("-n", ns, "get", "pod", "steady-web")["status"]["containerStatuses"][0]
    assert (after["containerID"], after["restartCount"], after["state"].get("running")) == \
        (container["containerID"], 0, container["state"]["running"]), after
    assert vms.get("steady")["status"]["phase"] == "Running"
    kubectl("-n", ns, "delete", "pod", "steady-web", "--wait=true", "--timeout=60s")
    vms.delete("steady")
