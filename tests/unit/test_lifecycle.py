import pytest

from kopfvirt.core.lifecycle import RESTART_REQUESTED, START_REQUESTED, STOP_REQUESTED, restart_due, wants_running

T1, T2, T3 = "2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:03.000000Z"
SHUTDOWN = {"stopReason": "GuestShutdown", "stopTime": T2}
CRASH = {"stopReason": "GuestCrashed", "stopTime": T2}


@pytest.mark.parametrize("strategy,annotations,status,run", [
    ("Always", {}, SHUTDOWN, True),
    ("Halted", {START_REQUESTED: T3}, {}, False),
    ("RerunOnFailure", {}, {}, True),
    ("RerunOnFailure", {}, CRASH, True),
    ("RerunOnFailure", {}, SHUTDOWN, False),
    ("RerunOnFailure", {START_REQUESTED: T3}, SHUTDOWN, True),
    ("Once", {}, {}, True),
    ("Once", {}, CRASH, False),
    ("Once", {START_REQUESTED: T1}, CRASH, False),
    ("Manual", {}, {}, False),
    ("Manual", {START_REQUESTED: T1}, {}, True),
    ("Manual", {START_REQUESTED: T1, STOP_REQUESTED: T2}, {}, False),
    ("Manual", {START_REQUESTED: T3, STOP_REQUESTED: T2}, SHUTDOWN, True),
    ("Manual", {START_REQUESTED: T1}, SHUTDOWN, False),
])
def test_wants_running(strategy, annotations, status, run):
    assert wants_running(strategy, annotations, status) is run


def test_restart_is_due_once():
    assert restart_due({RESTART_REQUESTED: T2}, {"startTime": T1})
    assert not restart_due({RESTART_REQUESTED: T2}, {"startTime": T3})
    assert not restart_due({}, {"startTime": T1})
