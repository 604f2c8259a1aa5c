"""The Lease rules replicas elect their leader by (core/leadership.py)."""

import datetime

from kopfvirt.core import leadership

WALL = datetime.datetime(2026, 11, 27, 19, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def lease(holder="a", renew="2026-11-27T18:59:58.000000Z", transitions=1, duration=15):
    return {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew,
            "acquireTime": "2026-11-27T18:00:00.000000Z", "leaseTransitions": transitions}


def test_another_holder_counts_until_its_record_stood_still_for_its_duration():
    seen = leadership.observe(None, lease(), now=100.0)
    assert leadership.held_by_other(lease(), "b", seen, now=114.9)
    assert not leadership.held_by_other(lease(), "b", seen, now=115.0)


def test_a_renewal_restarts_the_count_whatever_the_clocks_say():
    seen = leadership.observe(None, lease(), now=100.0)
    # renewTime far in the past by the local wall clock: only the change is judged
    renewed = lease(renew="2001-01-01T00:00:00.000000Z")
    seen = leadership.observe(seen, renewed, now=114.0)
    assert seen.since == 114.0
    assert leadership.held_by_other(renewed, "b", seen, now=128.0)
    assert leadership.observe(seen, renewed, now=120.0) is seen


def test_no_holder_or_our_own_lease_is_free_to_take():
    assert not leadership.held_by_other(None, "b", leadership.observe(None, None, 0.0), now=0.0)
    released = leadership.released(lease(), WALL)
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1
    assert not leadership.held_by_other(released, "b", leadership.observe(None, released, 0.0), now=0.0)
    # a restarted container of the same pod takes its own Lease back at once
    assert not leadership.held_by_other(lease(holder="b"), "b", leadership.observe(None, lease(), 0.0), now=0.0)


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time():
    taken = leadership.claimed(lease(holder="a", transitions=3), "b", WALL)
    assert taken == {"holderIdentity": "b", "leaseDurationSeconds": 15, "acquireTime": "2026-11-27T19:00:00.123456Z",
                     "renewTime": "2026-11-27T19:00:00.123456Z", "leaseTransitions": 4}
    later = WALL + datetime.timedelta(seconds=2)
    renewed = leadership.claimed(taken, "b", later)
    assert renewed["acquireTime"] == taken["acquireTime"] and renewed["leaseTransitions"] == 4
    assert renewed["renewTime"] == "2026-11-27T19:00:02.123456Z"
    assert leadership.claimed(None, "a", WALL)["leaseTransitions"] == 1

