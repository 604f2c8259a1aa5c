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
