from kopfvirt.core import conditions
from kopfvirt.core.conditions import get, set_condition


def test_transition_time_moves_only_when_status_flips():
    c = set_condition(None, "Ready", False, "Scheduling", "wait", 1, at="2026-01-01T00:00:00Z")
    c = set_condition(c, "Ready", False, "Starting", "still", 2, at="2026-01-01T00:01:00Z")
    assert get(c, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert get(c, "Ready")["reason"] == "Starting" and get(c, "Ready")["observedGeneration"] == 2
    c = set_condition(c, "Ready", True, "DomainRunning", "up", 2, at="2026-01-01T00:02:00Z")
    assert get(c, "Ready")["lastTransitionTime"] == "2026-01-01T00:02:00Z"


def test_other_conditions_are_kept():
    c = set_condition(None, "Scheduled", True, "Bound", "x", 1)
    c = set_condition(c, "Ready", True, "Up", "y", 1)
    assert [x["type"] for x in c] == ["Ready", "Scheduled"]


def test_a_vm_that_gets_on_is_no_longer_stalled():
    stalled = conditions.set_condition(None, "Stalled", True, "InvalidSpec", "spec.cpu: bad", 1, at="t0")
    fixed = conditions.unstall(stalled, 2, "the guest runs on node-1")
    assert conditions.get(fixed, "Stalled") == {"type": "Stalled", "status": "False", "reason": "NotStalled",
                                                "message": "the guest runs on node-1", "observedGeneration": 2,
                                                "lastTransitionTime": conditions.get(fixed, "Stalled")["lastTransitionTime"]}
    assert conditions.unstall(None, 2, "x") is None  # never stalled: no condition added
    running = conditions.set_condition(None, "Ready", True, "DomainRunning", "", 1)
    assert conditions.unstall(running, 2, "x") is running


def test_a_condition_dropped_is_gone_and_the_rest_kept():
    c = set_condition(set_condition(None, "Ready", False, "Stopped", "x", 1), "Reconciling", False, "Reconciled", "", 1)
    assert [x["type"] for x in conditions.drop(c, "Ready")] == ["Reconciling"]
    assert conditions.drop(None, "Ready") == []
