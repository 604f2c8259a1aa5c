"""The shared write helper: writes run at once, and a failure is raised only once all ended."""

import threading
import time

import pytest

from kopfvirt.reconciling import concurrently


def test_writes_overlap_and_results_keep_their_order():
    started = threading.Barrier(3, timeout=2)  # all three must be in flight together

    def write(n):
        started.wait()
        return n

    assert concurrently(*(lambda n=n: write(n) for n in range(3))) == [0, 1, 2]


def test_a_failure_is_raised_after_the_others_finished():
    done = []

    def slow():
        time.sleep(0.2)
        done.append("slow")

    def fails():
        raise RuntimeError("409 conflict")

    with pytest.raises(RuntimeError, match="409 conflict"):
        concurrently(fails, slow)
    assert done == ["slow"]  # a later step (status.migration cleared) never races a running one
