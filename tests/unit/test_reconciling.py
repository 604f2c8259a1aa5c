"""The shared write helper: writes run at once, and a failure is raised only once all ended."""

import logging
import threading
import time

import pytest

from kopfvirt.reconciling import Reconciler, concurrently


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


class _Blocking(Reconciler):
    """A reconciler whose first pass over a VM waits until released: a hung call."""

    def __init__(self):
        super().__init__(logging.getLogger("test"))
        self.release = threading.Event()
        self.passes: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.count = threading.Lock()

    def handle(self, body):
        with self.count:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.passes.append(body["metadata"]["uid"])
        if body["metadata"]["uid"] == "hung":
            self.release.wait(5)
        with self.count:
            self.running -= 1


def _vm(uid):
    return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "resourceVersion": "1"}}


def _until(condition, seconds=3.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_vm_asked_for_while_it_hangs_takes_one_worker_and_gets_one_more_pass():
    r = _Blocking()
    r.vms["hung"] = _vm("hung")
    r.submit("hung")
    assert _until(lambda: r.passes == ["hung"])
    for _ in range(50):  # events and resyncs pile up while its call hangs
        r.submit("hung")
    r.vms["other"] = _vm("other")
    r.resync()  # the other VM is reconciled at once, not after the hung one
    assert _until(lambda: "other" in r.passes)
    assert r.passes.count("hung") == 1 and r.most_at_once == 2
    r.release.set()
    assert _until(lambda: r.passes.count("hung") == 2)  # the 50 asks: one more pass, with the newest state
    time.sleep(0.2)
    assert r.passes.count("hung") == 2
    assert r._working == set() and r._waiting == {}


def test_a_failing_reconcile_leaves_the_vm_queueable():
    r = _Blocking()
    r.handle = lambda body: (_ for _ in ()).throw(RuntimeError("boom"))
    r.on_error = lambda body, error: (_ for _ in ()).throw(error)  # even the report fails
    r.vms["a"] = _vm("a")
    r.submit("a")
    assert _until(lambda: not r._working)
    r.handle = lambda body: r.passes.append("a")
    r.submit("a")
    assert _until(lambda: r.passes == ["a"])


def test_an_event_is_posted_in_the_background_and_a_reconcile_goes_on(monkeypatch):
    posted = []
    monkeypatch.setattr("kopfvirt.clients.kube.post_event", lambda *args: posted.append(args))
    r = _Blocking()
    r.handle = lambda body: (r.event(body, "Stopped", "guest stopped on node-1"), r.passes.append("a"))
    r.vms["a"] = _vm("a")
    r.submit("a")
    assert _until(lambda: r.passes == ["a"] and posted)
    assert posted[0][1:3] == ("Stopped", "guest stopped on node-1")


def test_a_hung_periodic_task_never_stops_the_resync():
    """The agent's `also` (node labels, strays, serial logs) may hang on a stuck libvirtd:
    it holds one worker of the queue, and every VM is still passed over on time."""
    release = threading.Event()
    passes = []

    class Quick(Reconciler):
        def resync(self):
            passes.append(time.monotonic())

    r = Quick(logging.getLogger("test"))
    r.start_resync(0.05, also=release.wait)
    time.sleep(0.5)
    release.set()
    assert len(passes) >= 5
