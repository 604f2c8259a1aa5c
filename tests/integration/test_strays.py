"""Stray domains: a copy of a VM's domain that a node's libvirtd runs although the cluster
does not place the VM there (here started by hand, as a node that comes back after its
VMs were restarted elsewhere would have it). The node's agent destroys a copy only when
it is proven redundant, and otherwise reports it and leaves it to a human."""

from __future__ import annotations


from .conftest import (domains_of, heartbeat, kubectl, kubectl_json, lab_exec, lab_guest, metrics_of,
                       restarts_seen, wait_for)

VIRSH = ("virsh", "-c", "qemu:///system")


def running_on_node_1(vms, name: str, **spec) -> str:
    assert vms.apply(lab_guest(name, nodeSelector={"kubernetes.io/hostname": "node-1"}, **spec)).returncode == 0
    vm = vms.wait_phase(name, "Running", timeout=120)
    wait_for(f"{name}'s heartbeat", lambda: heartbeat("node-1", vms.domain(name)), timeout=60)
    return vm["metadata"]["uid"]


def copy_by_hand(uid: str, source: str, target: str) -> None:
    """What an admin (or a node that comes back) does: the same domain started on another node."""
    path = f"/tmp/kopfvirt-it-stray-{uid}.xml"
    lab_exec(source, "sh", "-c", f"virsh -c qemu:///system dumpxml {uid} > {path}")
    lab_exec(target, *VIRSH, "create", path)
    lab_exec(target, "rm", "-f", path)


def events(namespace: str, name: str, reason: str, kind: str = "VirtualMachine") -> list[str]:
    items = kubectl_json("-n", namespace, "get", "events", "--field-selector",
                         f"involvedObject.name={name},involvedObject.kind={kind},reason={reason}")["items"]
    return [e["message"] for e in items]


def test_a_second_copy_of_a_running_vm_is_destroyed_and_the_vm_runs_on(vms):
    name = "stray-copy"
    uid = running_on_node_1(vms, name)
    copy_by_hand(uid, "node-1", "node-2")
    assert domains_of(uid) == {"node-1": "running", "node-2": "running"}
    # node-2's agent asks node-1's libvirtd: the VM's own copy runs there, so this one goes.
    wait_for("the copy on node-2 destroyed", lambda: domains_of(uid) == {"node-1": "running"}, timeout=90)
    (message,) = wait_for("the Event", lambda: events(vms.namespace, name, "StrayDomainDestroyed"))
    assert "node-2" in message and "runs on node-1" in message, message
    before = heartbeat("node-1", vms.domain(name))
    wait_for("the VM's own copy counting on", lambda: heartbeat("node-1", vms.domain(name)) > before)
    assert not restarts_seen("node-1", vms.domain(name))
    assert vms.get(name)["status"]["phase"] == "Running"
    vms.delete(name)


def test_a_copy_of_a_deleted_vm_is_destroyed(vms):
    name = "stray-gone"
    uid = running_on_node_1(vms, name)
    path = f"/tmp/kopfvirt-it-stray-{uid}.xml"
    lab_exec("node-1", "sh", "-c", f"virsh -c qemu:///system dumpxml {uid} > {path}")
    vms.delete(name)
    assert domains_of(uid) == {}
    lab_exec("node-2", *VIRSH, "create", path)
    lab_exec("node-2", "rm", "-f", path)
    wait_for("the copy of a VM that is gone destroyed", lambda: domains_of(uid) == {}, timeout=90)
    messages = wait_for("the Event on the Node", lambda: [
        m for m in events("default", "node-2", "StrayDomainDestroyed", kind="Node") if uid in m])
    assert f"{vms.namespace}/{name}" in messages[0] and "no longer exists" in messages[0], messages


def test_a_copy_not_proven_redundant_is_reported_and_left_running(vms):
    """The VM is stopped (so placed nowhere) while a copy of its domain runs on node-2: the
    agent cannot know which copy the user wants, so it destroys nothing and says so."""
    name = "stray-kept"
    uid = running_on_node_1(vms, name)
    path = f"/tmp/kopfvirt-it-stray-{uid}.xml"
    lab_exec("node-1", "sh", "-c", f"virsh -c qemu:///system dumpxml {uid} > {path}")
    kubectl("-n", vms.namespace, "patch", "virtualmachine", name, "--type", "merge",
            "-p", '{"spec": {"runStrategy": "Halted"}}')
    vms.wait_phase(name, "Stopped", timeout=60)
    lab_exec("node-2", *VIRSH, "create", path)
    lab_exec("node-2", "rm", "-f", path)

    condition = vms.wait_condition(name, "StrayDomain", "StrayDomain", timeout=90)
    assert condition["status"] == "True" and condition["message"].startswith("node-2: "), condition
    assert uid in condition["message"]  # what to destroy, if that is what the user wants
    assert wait_for("the Event", lambda: events(vms.namespace, name, "StrayDomain"))
    metrics = metrics_of("agent", 8081, "node-2")
    assert 'kopfvirt_stray_domains{node="node-2"} 1.0' in metrics
    assert domains_of(uid) == {"node-2": "running"}  # left running: not proven redundant

    lab_exec("node-2", *VIRSH, "destroy", uid)  # the human's choice
    condition = vms.wait_condition(name, "StrayDomain", "NoStrayDomain", timeout=90)
    assert condition["status"] == "False"
    assert vms.get(name)["status"]["phase"] == "Stopped"
    vms.delete(name)
