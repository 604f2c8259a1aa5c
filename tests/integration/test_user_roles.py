"""What a namespace's users may do with VMs through Kubernetes' own roles: the chart adds
VirtualMachines and Migrations to view, edit and admin (aggregated ClusterRoles), so a
user bound to `edit` in a namespace runs VMs there, and only there."""

from __future__ import annotations

import uuid

import yaml

from .conftest import kubectl, lab_guest


def can(user: str, verb: str, resource: str, namespace: str) -> bool:
    out = kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False).stdout.strip()
    return out == "yes"


def test_edit_and_view_carry_vm_rights_in_their_namespace_only(vms):
    ns, other = vms.namespace, f"roles-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", other)
    try:
        kubectl("-n", ns, "create", "serviceaccount", "alice")
        kubectl("-n", ns, "create", "rolebinding", "alice-edit", "--clusterrole=edit",
                f"--serviceaccount={ns}:alice")
        kubectl("-n", other, "create", "rolebinding", "alice-view", "--clusterrole=view",
                f"--serviceaccount={ns}:alice")
        alice = f"system:serviceaccount:{ns}:alice"
        vm, mig = "virtualmachines.kopfvirt.io", "migrations.kopfvirt.io"
        assert all(can(alice, verb, vm, ns) for verb in ("create", "patch", "delete", "get", "list"))
        assert can(alice, "create", mig, ns) and can(alice, "delete", mig, ns)
        assert not can(alice, "update", mig, ns)  # a Migration is asked for or cancelled, not edited
        assert can(alice, "get", vm, other) and can(alice, "list", mig, other)
        assert not can(alice, "create", vm, other) and not can(alice, "delete", vm, other)
        # As the user: a VM applied in her namespace is created; in the other, refused.
        body = yaml.safe_dump(lab_guest("alices", runStrategy="Halted"))
        assert kubectl("-n", ns, "apply", "-f", "-", f"--as={alice}", stdin=body).returncode == 0
        refused = kubectl("-n", other, "apply", "-f", "-", f"--as={alice}", stdin=body, check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr
        vms.delete("alices")
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_vm_may_carry_only_a_secret_its_writer_may_read(vms):
    """The kubelet mounts a cloud-init Secret for the VM's pod whoever wrote the VM, so the
    webhook asks whether the writer may read it: a user who may create VMs but not read a
    Secret cannot smuggle its data into a guest."""
    ns = vms.namespace
    kubectl("-n", ns, "create", "serviceaccount", "bob")
    kubectl("-n", ns, "create", "role", "vms-only", "--verb=get,list,create,patch,delete",
            "--resource=virtualmachines.kopfvirt.io")
    kubectl("-n", ns, "create", "role", "own-seed", "--verb=get", "--resource=secrets", "--resource-name=bob-seed")
    for role in ("vms-only", "own-seed"):
        kubectl("-n", ns, "create", "rolebinding", f"bob-{role}", f"--role={role}", f"--serviceaccount={ns}:bob")
    for secret in ("bob-seed", "db-password"):
        kubectl("-n", ns, "create", "secret", "generic", secret, "--from-literal=userdata=#cloud-config")
    bob = f"system:serviceaccount:{ns}:bob"

    def apply_as_bob(name: str, secret: str):
        body = lab_guest(name, runStrategy="Halted")
        body["spec"]["disks"] = [{"name": "seed", "cloudInit": {"secretRef": {"name": secret}}}]
        return kubectl("-n", ns, "apply", "-f", "-", f"--as={bob}", stdin=yaml.safe_dump(body), check=False)

    refused = apply_as_bob("bobs-theft", "db-password")
    assert refused.returncode != 0
    assert (f"spec.disks[seed].cloudInit.secretRef: {bob} may not get Secret db-password in namespace {ns}"
            in refused.stderr), refused.stderr
    assert vms.get("bobs-theft") is None
    assert apply_as_bob("bobs", "bob-seed").returncode == 0
    # An admin's later change to the VM is not judged as bob's (the Secret was named before).
    assert kubectl("-n", ns, "label", "virtualmachine", "bobs", "team=b").returncode == 0
    vms.delete("bobs")
