"""Lost nodes, the Kubernetes way (pure).

A node whose kubelet stops reporting is only unreachable: its guests may well run on (a
network split), so its VMs say so (Ready Unknown, NodeUnreachable) and stay where they
are; nothing restarts on a timeout alone. A node is known dead when an admin says so
with the taint of Kubernetes' non-graceful node shutdown (node.kubernetes.io/out-of-service)
or deletes its Node: then its VMs are released (pods force-deleted, the node's finalizer
removed) and their runStrategy starts them elsewhere.
"""

from __future__ import annotations

OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
NODE_LOST = "NodeLost"  # a VM's stopReason, and the Event's reason
READY, UNREACHABLE, DEAD = "Ready", "Unreachable", "Dead"


def node_state(node: dict | None) -> str:
    """READY, UNREACHABLE (its Ready condition is not True) or DEAD (no Node, or tainted
    out-of-service)."""
    if node is None:
        return DEAD
    if any(t.get("key") == OUT_OF_SERVICE for t in (node.get("spec") or {}).get("taints") or []):
        return DEAD
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    return READY if ready.get("status") == "True" else UNREACHABLE


def unreachable_message(node: str) -> str:
    return (f"node {node} does not report (its kubelet stopped posting status): the VM is left there, for it may "
            f"still run; once the node is known to be off, taint it {OUT_OF_SERVICE}=nodeshutdown:NoExecute (or "
            f"delete the Node) and the VM starts elsewhere")


def lost_message(node: str, deleted: bool, vm_deleting: bool = False) -> str:
    why = "its Node was deleted" if deleted else f"it is tainted {OUT_OF_SERVICE}"
    message = f"node {node} is known to be down ({why}): the VM was released from it"
    if vm_deleting:  # the node's agent, which removes a deleted VM's disks, is gone with it
        message += "; the VM's own disks were not removed and stay in their pool"
    return message
