"""What each reconciler does next with a VM, as pure functions of what it sees: the VM's
status and labels, its reservation pod, the domain's state on the node, the node's state.
The reconcilers (agent/reconciler.py, controller/reconciler.py) read those, ask here, and
carry the answer out; each fault of docs/architecture.md has a row in tests/unit/test_steps.py.
"""

from __future__ import annotations

from . import migration, nodeloss

DOMAIN_UP = ("running", "paused", "shuttingdown")  # domain states in which QEMU runs
GUEST_PHASES = ("Running", "Paused", "Stopping")  # phases in which a node's agent has a guest

# -- the agent: one VM labelled for its node ---------------------------------------------
RUN = "Run"        # start, resume, pause or keep it running here
STOP = "Stop"      # stop it here (or report it stopped) and release the node
EVICT = "Evict"    # STOP, recorded as Evicted: its reservation pod went while it ran
LET_GO = "LetGo"   # stopped here and released: drop the domain, the controller places it anew


def holds_node(pod: dict | None, status: dict, node: str) -> bool:
    """Does the VM hold `node`? Its live reservation pod is bound there and the controller
    has not placed it elsewhere. Only then may the node's agent run it (never on two nodes)."""
    return (pod is not None and not pod["metadata"].get("deletionTimestamp")
            and (pod.get("spec") or {}).get("nodeName") == node
            and status.get("nodeName") in (None, node))


def agent_must_reread(status: dict, node: str, held: bool, domain_state: str) -> bool:
    """A guest this node ran is to stop, or has stopped: decide on the VM and its pod as the
    API has them now, not as cached. The pod watch may lag the VM watch (a hand-off's
    relabelled pod); after a network split the caches may predate the controller's release
    of a lost node's VMs, where a stale write would undo it and a restart be a second copy."""
    ran_here = status.get("nodeName") == node and status.get("phase") in GUEST_PHASES
    return ran_here and (not held or domain_state not in DOMAIN_UP)


def agent_action(status: dict, node: str, held: bool, domain_state: str, wants_running: bool) -> str:
    """RUN, STOP, EVICT or LET_GO, for a VM read afresh where agent_must_reread said so."""
    if not wants_running:
        return STOP
    if held:
        return RUN
    if domain_state not in DOMAIN_UP and status.get("nodeName") != node:
        return LET_GO  # the controller writes its status until a node takes it
    if domain_state in DOMAIN_UP and status.get("phase") != "Stopping":
        return EVICT
    return STOP  # stopped already (or stopping since the eviction): report it so


# -- the controller: every VM, before and between its agents -----------------------------
RELEASE_LOST = "ReleaseFromLostNode"    # force its pods off a dead node, record it stopped there
REPORT_UNREACHABLE = "ReportUnreachable"  # Ready Unknown; it may run on there: nothing moves
HAND_OVER = "HandOver"                  # a move landed: the target's pod and label become its own
WAIT = "Wait"                           # an agent (or libvirt) acts first
PLACE = "Place"                         # create its reservation pod (after the prechecks)
UNSCHEDULED = "Unscheduled"             # its pod waits for kube-scheduler: say why
HAND_OFF = "HandOff"                    # its pod is bound: label the VM for that node's agent
DONE = "Done"                           # the node's agent has it


def controller_gate(node_state: str, status: dict, node: str | None, deleting: bool) -> str | None:
    """The node and the move come first: RELEASE_LOST, REPORT_UNREACHABLE, HAND_OVER or
    WAIT; None when the VM's placement decides (controller_placement)."""
    if node and node_state == nodeloss.DEAD:
        return RELEASE_LOST
    if node_state == nodeloss.UNREACHABLE and status.get("nodeName") == node:
        return REPORT_UNREACHABLE
    if deleting:
        return WAIT  # the agents' finalizers; the lost-node path above removes a dead node's
    if status.get("migration"):  # the source agent moves it; once it runs on the target, it is handed over
        return HAND_OVER if migration.moved(status) else WAIT
    return None


def controller_placement(status: dict, node_label: str | None, pod: dict | None,
                         has_devices: bool) -> str:
    """For a VM that should run: PLACE, WAIT, UNSCHEDULED, HAND_OFF or DONE."""
    previous_holds = bool(node_label and status.get("nodeName"))  # an agent still has its domain
    if pod is None:
        # Devices are held by one VM at a time: none are allocated anew while its last
        # node's agent still stops the domain that uses them.
        return WAIT if has_devices and previous_holds else PLACE
    if pod["metadata"].get("deletionTimestamp"):
        return WAIT  # the agent stops the VM; a new pod follows once this one is gone
    bound = (pod.get("spec") or {}).get("nodeName")
    if not bound:
        return UNSCHEDULED
    if node_label != bound:
        return WAIT if previous_holds else HAND_OFF
    return DONE
