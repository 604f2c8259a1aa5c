"""What the reconcilers do next, one row per situation, the faults of issue-sized scenarios
among them (a lost pod, a network split, a dead or unreachable node, a move that landed)."""

import pytest

from kopfvirt.core import nodeloss, steps

NODE, OTHER = "node-1", "node-2"


def pod(node=NODE, deleting=False):
    meta = {"name": "kopfvirt-vm", "deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {"name": "kopfvirt-vm"}
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


RUNNING_HERE = {"phase": "Running", "nodeName": NODE}
STOPPING_HERE = {"phase": "Stopping", "nodeName": NODE}


@pytest.mark.parametrize("the_pod,status,held", [
    (pod(), RUNNING_HERE, True),
    (pod(), {}, True),                             # handed off, before the agent's first write
    (None, RUNNING_HERE, False),                   # its pod was deleted
    (pod(deleting=True), RUNNING_HERE, False),     # evicted: the pod goes
    (pod(OTHER), RUNNING_HERE, False),             # a new pod bound elsewhere
    (pod(), {"phase": "Running", "nodeName": OTHER}, False),  # the controller placed it elsewhere
])
def test_a_node_is_held_only_through_a_live_pod_bound_there_and_no_other_placement(the_pod, status, held):
    assert steps.holds_node(the_pod, status, NODE) is held


@pytest.mark.parametrize("status,held,state,reread", [
    (RUNNING_HERE, True, "running", False),        # all as it should be: the cache will do
    (RUNNING_HERE, False, "running", True),        # pod gone from the cache: ask the API before a stop
    (RUNNING_HERE, True, "shutoff", True),         # the guest stopped: is the VM still this node's?
    (STOPPING_HERE, True, "shutoff", True),
    ({"phase": "Scheduling"}, False, "absent", False),  # never ran here: nothing to undo
    ({"phase": "Running", "nodeName": OTHER}, False, "running", False),  # not this node's guest (a stray's case)
])
def test_the_agent_reads_the_vm_afresh_before_it_stops_what_ran_here(status, held, state, reread):
    assert steps.agent_must_reread(status, NODE, held, state) is reread


@pytest.mark.parametrize("status,held,state,wants,action", [
    (RUNNING_HERE, True, "running", True, steps.RUN),
    ({"phase": "Starting", "nodeName": NODE}, True, "absent", True, steps.RUN),
    (RUNNING_HERE, True, "running", False, steps.STOP),       # runStrategy Halted, a stop request
    (RUNNING_HERE, False, "running", True, steps.EVICT),      # pod gone under a running guest
    (STOPPING_HERE, False, "running", True, steps.STOP),      # evicted already: not counted twice
    (RUNNING_HERE, False, "shutoff", True, steps.STOP),       # stopped here: report it stopped first
    ({"phase": "Stopped"}, False, "shutoff", True, steps.LET_GO),  # released: the controller places it
    ({"phase": "Scheduling"}, False, "absent", True, steps.LET_GO),
])
def test_the_agent_runs_only_what_holds_its_node(status, held, state, wants, action):
    assert steps.agent_action(status, NODE, held, state, wants) == action


MOVING = {"phase": "Migrating", "nodeName": NODE, "migration": {"name": "m", "targetNode": OTHER}}
MOVED = {**MOVING, "nodeName": OTHER}


@pytest.mark.parametrize("node_state,status,node,deleting,gate", [
    (nodeloss.READY, RUNNING_HERE, NODE, False, None),
    (nodeloss.DEAD, RUNNING_HERE, NODE, False, steps.RELEASE_LOST),     # tainted out-of-service
    (nodeloss.DEAD, RUNNING_HERE, NODE, True, steps.RELEASE_LOST),      # a deletion stuck on its finalizer
    (nodeloss.DEAD, MOVING, NODE, False, steps.RELEASE_LOST),           # caught mid-move
    (nodeloss.UNREACHABLE, RUNNING_HERE, NODE, False, steps.REPORT_UNREACHABLE),  # never moved on a timeout
    (nodeloss.UNREACHABLE, {"phase": "Starting"}, NODE, False, None),   # labelled there, not yet running
    (nodeloss.READY, RUNNING_HERE, NODE, True, steps.WAIT),             # its agent's finalizer
    (nodeloss.READY, MOVING, NODE, False, steps.WAIT),                  # the source agent moves it
    (nodeloss.READY, MOVED, OTHER, False, steps.HAND_OVER),
    (nodeloss.READY, {}, None, False, None),
])
def test_the_controller_looks_at_the_node_and_the_move_first(node_state, status, node, deleting, gate):
    assert steps.controller_gate(node_state, status, node, deleting) == gate


@pytest.mark.parametrize("status,label,the_pod,devices,step", [
    ({}, None, None, False, steps.PLACE),
    ({"phase": "Stopped"}, NODE, None, False, steps.PLACE),            # its old node's agent let go
    (RUNNING_HERE, NODE, None, True, steps.WAIT),                      # devices: the old domain still holds them
    (RUNNING_HERE, NODE, None, False, steps.PLACE),
    ({}, None, pod(None), False, steps.UNSCHEDULED),
    ({}, None, pod(), False, steps.HAND_OFF),
    (RUNNING_HERE, NODE, pod(OTHER), False, steps.WAIT),               # never on two nodes: the old agent first
    ({"phase": "Stopped"}, NODE, pod(OTHER), False, steps.HAND_OFF),
    (RUNNING_HERE, NODE, pod(deleting=True), False, steps.WAIT),
    (RUNNING_HERE, NODE, pod(), False, steps.DONE),
])
def test_the_controller_places_a_vm_once_no_agent_holds_it(status, label, the_pod, devices, step):
    assert steps.controller_placement(status, label, the_pod, devices) == step
