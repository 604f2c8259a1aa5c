"""What the operator's ServiceAccounts may do, as the API server judges it: their rights
recorded in golden files (`kubectl auth can-i --list`), so any widening shows in review,
and an agent's writes held to its own node by ValidatingAdmissionPolicy
kopfvirt-agent-own-node, keyed on the node its pod's token is bound to.
KOPFVIRT_UPDATE_GOLDEN=1 rewrites the golden files from the lab."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .conftest import (OPERATOR_NAMESPACE, as_agent_of, kubectl, kubectl_json, kubectl_with_token, lab_exec,
                       lab_guest, vm_disk_dirs)

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("account", ["kopfvirt-controller", "kopfvirt-agent"])
def test_the_service_accounts_rights_are_the_recorded_ones(lab, account):
    out = kubectl("auth", "can-i", "--list", f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{account}",
                  "-n", OPERATOR_NAMESPACE).stdout
    rights = "\n".join(sorted({re.sub(r"\s+", " ", line).strip() for line in out.splitlines()[1:] if line.strip()}))
    path = GOLDEN / f"can-i-{account}.txt"
    if os.environ.get("KOPFVIRT_UPDATE_GOLDEN"):
        path.write_text(rights + "\n")
    assert rights + "\n" == path.read_text(), f"{account}'s rights changed: review, then KOPFVIRT_UPDATE_GOLDEN=1"
    # Whatever the golden says: no wildcard (but the discovery URLs every user may get, as
    # /api/*), and no Secret of a tenant's namespace readable.
    assert not [line for line in rights.splitlines() if "*" in line and not line.startswith("[/")], rights
    for verb in ("get", "list", "watch"):
        answer = kubectl("auth", "can-i", verb, "secrets", "-n", "default",
                         f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{account}", check=False).stdout.strip()
        assert answer == "no", (account, verb, answer)


def test_an_agent_changes_its_own_node_and_devices_only(lab, tmp_path):
    agent = as_agent_of(tmp_path, "node-1")
    assert agent("label", "node", "node-1", "kopfvirt-test=1").returncode == 0
    assert agent("label", "node", "node-1", "kopfvirt-test-").returncode == 0
    refused = agent("label", "node", "node-2", "kopfvirt-test=1")
    assert refused.returncode != 0
    assert "an agent may change only its own Node (node-1), not node-2" in refused.stderr, refused.stderr
    assert "kopfvirt-test" not in kubectl_json("get", "node", "node-2")["metadata"]["labels"]

    theirs = next(d for d in kubectl_json("get", "passthroughdevices")["items"]
                  if d["metadata"]["labels"].get("kopfvirt.io/node") == "node-2")
    for attempt in (agent("delete", "passthroughdevice", theirs["metadata"]["name"]),
                    agent("patch", "passthroughdevice", theirs["metadata"]["name"], "--subresource=status",
                          "--type=merge", "-p", '{"status":{"permitted":true}}')):
        assert attempt.returncode != 0
        assert "may change only the PassthroughDevices of its own node (node-1)" in attempt.stderr, attempt.stderr
    assert kubectl_json("get", "passthroughdevice", theirs["metadata"]["name"])["status"] == theirs["status"]


def test_an_agents_token_not_bound_to_its_pod_changes_no_node(lab, tmp_path):
    unbound = kubectl("-n", OPERATOR_NAMESPACE, "create", "token", "kopfvirt-agent").stdout.strip()
    agent = kubectl_with_token(tmp_path, unbound)
    refused = agent("label", "node", "node-1", "kopfvirt-test=1")
    assert refused.returncode != 0 and "the agent's token is bound to no node" in refused.stderr, refused.stderr


def test_an_agent_changes_no_vms_spec_labels_or_others_finalizers(vms, tmp_path):
    assert vms.apply(lab_guest("guarded", runStrategy="Halted")).returncode == 0
    kubectl("-n", vms.namespace, "patch", "virtualmachine", "guarded", "--type=merge",
            "-p", '{"metadata":{"finalizers":["agent.kopfvirt.io/node-2"]}}')
    agent = as_agent_of(tmp_path, "node-1")
    try:
        for patch in ('{"spec":{"runStrategy":"Always"}}', '{"metadata":{"labels":{"kopfvirt.io/node":"node-1"}}}',
                      '{"metadata":{"finalizers":null}}'):
            refused = agent("-n", vms.namespace, "patch", "virtualmachine", "guarded", "--type=merge", "-p", patch)
            assert refused.returncode != 0, patch
            assert "an agent changes no VM's spec, labels or finalizers" in refused.stderr, (patch, refused.stderr)
        vm = vms.get("guarded")
        assert vm["spec"]["runStrategy"] == "Halted" and vm["metadata"]["finalizers"] == ["agent.kopfvirt.io/node-2"]
        # node-2's agent lets go of it.
        released = as_agent_of(tmp_path, "node-2")("-n", vms.namespace, "patch", "virtualmachine", "guarded",
                                                    "--type=json", "-p",
                                                    '[{"op":"remove","path":"/metadata/finalizers"}]')
        assert released.returncode == 0, released.stderr
    finally:
        kubectl("-n", vms.namespace, "patch", "virtualmachine", "guarded", "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}')
        vms.delete("guarded")


def test_an_agent_writes_and_reads_only_its_own_nodes_vms(vms, tmp_path):
    """The cloud-init Secret reaches the guest's media through the kubelet of the VM's node
    (a volume of its pod), never through an agent's token: no agent may read it; the other
    node's agent may not rewrite the VM's status (but for the StrayDomain condition it reports)."""
    marker = f"kopfvirt-seed-{vms.namespace}"
    kubectl("-n", vms.namespace, "create", "secret", "generic", "placed-seed",
            f"--from-literal=userdata=#cloud-config\nhostname: {marker}\n")
    body = lab_guest("placed")
    body["spec"]["disks"] = [{"name": "seed", "cloudInit": {"secretRef": {"name": "placed-seed"}}}]
    assert vms.apply(body).returncode == 0
    vm = vms.wait_phase("placed", "Running", timeout=120)
    node = vm["status"]["nodeName"]
    other = next(n for n in ("node-1", "node-2") if n != node)
    (vm_dir,) = vm_disk_dirs(vms.namespace, "placed")
    iso = f"/var/lib/kopfvirt/pools/gluster/vms/{vms.namespace}/{vm_dir}/seed-cidata.iso"
    assert lab_exec(node, "grep", "-c", marker, iso).stdout.strip() != "0"

    pod = kubectl_json("-n", vms.namespace, "get", "pod", "kopfvirt-placed")
    assert [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v] == ["placed-seed"]
    own, foreign = as_agent_of(tmp_path, node), as_agent_of(tmp_path, other)
    for agent in (own, foreign):
        refused = agent("-n", vms.namespace, "get", "secret", "placed-seed")
        assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr

    rewritten = foreign("-n", vms.namespace, "patch", "virtualmachine", "placed", "--subresource=status",
                        "--type=merge", "-p", '{"status":{"phase":"Failed"}}')
    assert rewritten.returncode != 0
    assert "an agent writes the status only of VMs placed on its node" in rewritten.stderr, rewritten.stderr
    conditions = vms.get("placed")["status"]["conditions"]
    stray = {"type": "StrayDomain", "status": "True", "reason": "StrayDomain", "message": f"{other}: a test",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    reported = foreign("-n", vms.namespace, "patch", "virtualmachine", "placed", "--subresource=status",
                       "--type=json", "-p", json.dumps([{"op": "replace", "path": "/status/conditions",
                                                         "value": [*conditions, stray]}]))
    assert reported.returncode == 0, reported.stderr
    assert vms.get("placed")["status"]["phase"] == "Running"
    vms.delete("placed")
