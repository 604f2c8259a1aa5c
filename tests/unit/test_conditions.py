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
