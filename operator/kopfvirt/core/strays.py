"""Stray domains: a Kopfvirt domain a node's libvirtd knows that the cluster does not
place on that node (a copy started by hand, a node that came back after its VMs were
restarted elsewhere, a leftover of a deleted VM). Two copies of a guest writing one disk
destroy it, and so does destroying the only copy: a stray is destroyed only when its VM
is gone or its VM's copy is proven to run on the VM's own node; otherwise it is reported
and left for a human."""

from __future__ import annotations

from ..names import NODE_LABEL

CONDITION = "StrayDomain"  # on a VM with a stray copy that is only reported
PLACED, GONE, ELSEWHERE = "placed", "gone", "elsewhere"
KEEP, DESTROY, REPORT = "keep", "destroy", "report"


def placement(node: str, domain_uid: str, vm: dict | None) -> str:
    """Where the cluster places the VM a domain on `node` was made for: PLACED (here, or
    moving from or to here), GONE (no VM of that UID exists) or ELSEWHERE."""
    if vm is None or vm["metadata"]["uid"] != domain_uid:
        return GONE
    status = vm.get("status") or {}
    migration = status.get("migration") or {}
    if node in ((vm["metadata"].get("labels") or {}).get(NODE_LABEL), status.get("nodeName"),
                migration.get("sourceNode"), migration.get("targetNode")):
        return PLACED
    return ELSEWHERE


def verdict(where: str, active: bool, on_its_node: str | None) -> str:
    """What to do with a domain found on a node: `where` is its placement(), `active`
    whether its QEMU runs, `on_its_node` the state of the VM's domain on the node the VM's
    status names (None when there is none or it cannot be asked)."""
    if where == PLACED:
        return KEEP
    if where == GONE:
        return DESTROY  # an inactive definition too: nothing will ever start it
    if not active:
        return KEEP  # a definition only, of a VM that lives on: harmless
    return DESTROY if on_its_node in ("running", "paused") else REPORT
