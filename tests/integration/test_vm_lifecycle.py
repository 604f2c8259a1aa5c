"""A VirtualMachine from kubectl apply to a guest that counts on its node, and back."""

import json
import time

from .conftest import REPO, heartbeat, kubectl, kubectl_json, lab_exec, lab_guest, wait_for

NODES = ("node-1", "node-2")


def _domains(node):
    return lab_exec(node, "virsh", "-c", "qemu:///system", "list", "--all", "--uuid").stdout.split()


def test_vm_runs_counts_and_goes_away(vms):
    assert vms.apply(lab_guest("life")).returncode == 0
    vm = vms.wait_phase("life", "Running")
    status, uid = vm["status"], vm["metadata"]["uid"]
    node = status["nodeName"]
    assert node in NODES
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Scheduled"]["status"] == "True"
    assert status["domainUUID"] == uid
    assert status["observedGeneration"] == vm["metadata"]["generation"]

    # kube-scheduler bound the reservation pod, and the VM runs where it was bound; the
    # node's kubelet runs the pod's container beside it (the start did not wait for that).
    pod = kubectl_json("-n", vms.namespace, "get", "pod", "kopfvirt-life")
    assert pod["spec"]["nodeName"] == node
    assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
    wait_for("the reservation pod's container to run", lambda: kubectl_json(
        "-n", vms.namespace, "get", "pod", "kopfvirt-life")["status"]["phase"] == "Running", timeout=60)

    # Exactly one domain, on that node; and the guest is alive and counting.
    other = next(n for n in NODES if n != node)
    assert uid in _domains(node) and uid not in _domains(other)
    first = wait_for("the guest's first heartbeat", lambda: heartbeat(node, vms.domain("life")))
    time.sleep(3)
    assert heartbeat(node, vms.domain("life")) > first

    vms.delete("life")
    assert uid not in _domains(node)
    wait_for("the reservation pod to go", lambda: kubectl(
        "-n", vms.namespace, "get", "pod", "kopfvirt-life", check=False).returncode != 0)


def test_printer_columns_show_phase_node_ready(vms):
    assert vms.apply(lab_guest("columns")).returncode == 0
    vm = vms.wait_phase("columns", "Running")
    out = kubectl("-n", vms.namespace, "get", "virtualmachine", "columns").stdout.splitlines()
    assert out[0].split()[:4] == ["NAME", "PHASE", "NODE", "READY"]
    assert out[1].split()[:4] == ["columns", "Running", vm["status"]["nodeName"], "True"]
    vms.delete("columns")


def test_operator_writes_as_its_service_accounts(vms):
    """The controller and the agents run with the ServiceAccounts and RBAC of manifests/."""
    assert vms.apply(lab_guest("audited")).returncode == 0
    vms.wait_phase("audited", "Running")
    writers = set()
    for line in (REPO / ".lab" / "logs" / "audit.log").read_text().splitlines():
        event = json.loads(line)
        if event["objectRef"].get("name") == "audited" and event["verb"] in ("patch", "update"):
            writers.add(event["user"]["username"])
    assert writers == {"system:serviceaccount:kopfvirt-system:kopfvirt-controller",
                       "system:serviceaccount:kopfvirt-system:kopfvirt-agent"}
    vms.delete("audited")


def test_halted_vm_gets_no_pod_and_no_domain(vms):
    assert vms.apply(lab_guest("parked", runStrategy="Halted")).returncode == 0
    vm = vms.wait_phase("parked", "Stopped")
    assert "nodeName" not in vm["status"]
    assert kubectl("-n", vms.namespace, "get", "pod", "kopfvirt-parked", check=False).returncode != 0
    assert all(vm["metadata"]["uid"] not in _domains(n) for n in NODES)
    vms.delete("parked")


def test_kstatus_reads_a_vm_from_stalled_to_running_to_stopped(vms, kstatus):
    """As Flux and kubectl-wait tooling judge it (kstatus' own code): a VM asking for a CPU
    flag no node offers is Failed, not waited on; fixing its spec clears Stalled; running
    and stopped are Current."""
    def labelled() -> bool:
        return "cpu-feature.kopfvirt.io/sse4a" in kubectl_json("get", "node", "node-1")["metadata"]["labels"]
    try:  # node-2 hides sse4a already (the lab's narrower CPU); node-1 too, for a while
        kubectl("annotate", "--overwrite", "node", "node-1", "kopfvirt.io/hide-cpu-features=sse4a")
        wait_for("node-1's sse4a label gone", lambda: not labelled(), timeout=60)
        vms.apply(lab_guest("ks", cpu={"cores": 1, "model": "qemu64", "features": [{"name": "sse4a"}]}))
        cond = vms.wait_condition("ks", "Stalled", "CPUFeaturesUnavailable")
        vm = vms.get("ks")
        assert cond["status"] == "True" and "spec.cpu.features: no node offers sse4a" in cond["message"]
        assert vm["status"]["phase"] == "Pending" and vm["status"]["observedGeneration"] == vm["metadata"]["generation"]
        assert kstatus(vm) == ("Failed", cond["message"]), kstatus(vm)

        kubectl("-n", vms.namespace, "patch", "virtualmachine", "ks", "--type", "merge",
                "-p", json.dumps({"spec": {"cpu": {"cores": 1, "model": "qemu64", "features": None}}}))
        vm = vms.wait_phase("ks", "Running", timeout=120)
    finally:
        kubectl("annotate", "node", "node-1", "kopfvirt.io/hide-cpu-features-")
    stalled = next(c for c in vm["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False" and stalled["observedGeneration"] == vm["metadata"]["generation"] == 2
    assert kstatus(vm)[0] == "Current", kstatus(vm)

    kubectl("-n", vms.namespace, "patch", "virtualmachine", "ks", "--type", "merge",
            "-p", json.dumps({"spec": {"runStrategy": "Halted"}}))
    vm = vms.wait_phase("ks", "Stopped", timeout=60)
    assert vm["status"]["observedGeneration"] == vm["metadata"]["generation"] == 3
    assert kstatus(vm)[0] == "Current", kstatus(vm)
    vms.delete("ks")
