"""What the controller's and the agent's reconcilers share: a cache of the VMs their
watches deliver, one lock per VM, a thread pool, and status writes only on change."""

from __future__ import annotations

import collections
import datetime
import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

from kubernetes.client.rest import ApiException
from prometheus_client import Counter, Histogram

from .clients import kube
from .core import conditions, migration, reservation
from .logformat import about


def older(a: dict, b: dict) -> bool:
    """Is `a` an older version of the object than `b`? (etcd revisions, compared as numbers)"""
    try:
        return int(a["metadata"]["resourceVersion"]) < int(b["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return False


RECONCILE_SECONDS = Histogram("kopfvirt_reconcile_duration_seconds", "How long one reconcile of a VM took, by "
                              "component (controller, agent).", ["component"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
RECONCILE_ERRORS = Counter("kopfvirt_reconcile_errors", "Reconciles of a VM that failed (the VM says why), by "
                           "component.", ["component"])
_WRITES = ThreadPoolExecutor(max_workers=8, thread_name_prefix="writes")


def concurrently(*calls) -> list:
    """Run independent API writes at once (a round trip each, not their sum) and return
    their results; the first failure is raised once all have ended. The calls must not
    use this function themselves (the pool is small and shared)."""
    futures = [_WRITES.submit(call) for call in calls]
    wait(futures)
    return [f.result() for f in futures]


def in_background(call) -> Future:
    """Start an independent API call now, for its result (or its error) later."""
    return _WRITES.submit(call)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Reconciler:
    component = "kopfvirt"

    def __init__(self, log: logging.Logger):
        self.log = log
        # Each series from the start (at 0), so rate() sees the first error and dashboards data.
        RECONCILE_ERRORS.labels(component=type(self).__name__.lower())
        RECONCILE_SECONDS.labels(component=type(self).__name__.lower())
        self.vms: dict[str, dict] = {}  # uid -> latest VM body seen
        # (namespace, vm name) -> {pod uid: pod}: its reservation pod, and during a migration's
        # hand-off also the target's (relabelled) while the source's is deleted.
        self.pods: dict[tuple[str, str], dict[str, dict]] = collections.defaultdict(dict)
        self.locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        # Domain starts block for as long as QEMU takes to come up; many VMs start at once.
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="reconcile")
        self.notices = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")
        # A work queue as controllers keep one: each key (a VM, or a task such as a pool
        # sync) is worked on by one worker at a time, and what is asked for it meanwhile is
        # one more run after, however often it was asked. So a VM whose call hangs holds one
        # worker, and a storm of events (every status write of a StoragePool) one as well.
        self._queue_lock = threading.Lock()
        self._waiting: dict[object, Callable[[], None]] = {}  # asked for, not yet begun
        self._working: set[object] = set()                    # a worker runs it now

    def handle(self, body: dict) -> None:
        raise NotImplementedError

    def active(self) -> bool:
        """May this process write now? (A standby controller replica only watches.)"""
        return True

    def on_error(self, body: dict, error: Exception) -> None:
        meta = body["metadata"]
        self.log.exception("reconciling %s/%s failed", meta["namespace"], meta["name"],
                           extra=about(meta["namespace"], meta["name"]))
        self.write_status(body, self.with_condition(body, "Ready", False, "ReconcileError", str(error)))

    # -- inputs -------------------------------------------------------------------------
    def observe_vm(self, body: dict, deleted: bool = False) -> None:
        uid = body["metadata"]["uid"]
        if deleted:
            self.vms.pop(uid, None)
            return
        cached = self.vms.get(uid)
        if cached is None or not older(body, cached):  # our own writes may be ahead of the watch
            self.vms[uid] = body
        self.submit(uid)  # never block kopf's watch handling on a domain start

    def remember(self, body: dict, updated: dict) -> None:
        """Take the API's answer to our write as the newest state, in place, so the rest of
        this reconcile and the next ones see it before the watch event arrives."""
        body.clear()
        body.update(updated)
        self.vms[updated["metadata"]["uid"]] = body

    def observe_pod(self, pod: dict, deleted: bool = False) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        key = (meta["namespace"], labels.get(reservation.VM_LABEL))
        for pods in self.pods.values():  # a relabelled pod moves between roles, never between VMs
            pods.pop(meta["uid"], None)
        if not deleted:
            self.pods[key][meta["uid"]] = pod
        self.submit_named(*key)

    def pods_of(self, namespace: str, vm_name: str, role: str = "reservation") -> list[dict]:
        """The VM's pods of a role, live ones (not being deleted) first."""
        pods = [p for p in self.pods.get((namespace, vm_name), {}).values()
                if (p["metadata"].get("labels") or {}).get(reservation.ROLE_LABEL) == role]
        return sorted(pods, key=lambda p: bool(p["metadata"].get("deletionTimestamp")))

    def reservation_of(self, namespace: str, vm_name: str, node: str | None = None) -> dict | None:
        """The VM's reservation pod; the live one bound to `node` when there are two."""
        pods = self.pods_of(namespace, vm_name)
        if node:
            pods.sort(key=lambda p: (bool(p["metadata"].get("deletionTimestamp")),
                                     (p.get("spec") or {}).get("nodeName") != node))
        return pods[0] if pods else None

    def start_resync(self, seconds: float, also=None) -> None:
        """A slow pass over every VM: catches missed events and retries failed reconciles.
        `also` runs on the queue too, so a call of it that hangs never stops the resync."""
        self.start_periodic(seconds, also and (lambda: self.enqueue("resync-also", also)), self.resync)

    def start_periodic(self, seconds: float, *tasks) -> None:
        """Run each task every `seconds`, in a thread of its own; a failure is logged."""
        def loop():
            while True:
                time.sleep(seconds)
                for task in filter(None, tasks):
                    try:
                        task()
                    except Exception:
                        self.log.exception("periodic task %s failed", getattr(task, "__name__", task))
        threading.Thread(target=loop, name="periodic", daemon=True).start()

    def submit(self, uid: str) -> None:
        """Reconcile the VM soon: at once if no worker has it, else once more after."""
        self.enqueue(("vm", uid), functools.partial(self.reconcile, uid))

    def enqueue(self, key: object, task: Callable[[], None]) -> None:
        """Run `task` on the pool, once for all the asks for `key` until it begins."""
        with self._queue_lock:
            queued = key in self._waiting
            self._waiting[key] = task
            if queued or key in self._working:  # its worker goes round again
                return
            self._working.add(key)
        self.executor.submit(self._work, key)

    def _work(self, key: object) -> None:
        while True:
            with self._queue_lock:
                task = self._waiting.pop(key)
            try:
                task()
            except Exception:  # reconcile reports its own failures; this keeps the queue going
                self.log.exception("%s failed", key)
            with self._queue_lock:
                if key not in self._waiting:
                    self._working.discard(key)
                    return

    def vm_named(self, namespace: str, name: str) -> dict | None:
        """The cached VM of that namespace and name."""
        return next((b for b in list(self.vms.values())
                     if (b["metadata"]["namespace"], b["metadata"]["name"]) == (namespace, name)), None)

    def submit_named(self, namespace: str, name: str) -> None:
        for uid, body in list(self.vms.items()):  # every UID: a re-created VM's predecessor may still be going
            if (body["metadata"]["namespace"], body["metadata"]["name"]) == (namespace, name):
                self.submit(uid)

    def resync(self) -> None:
        """Every VM once more, through the queue: one whose reconcile hangs delays no other."""
        for uid in list(self.vms):
            self.submit(uid)

    def reconcile(self, uid: str) -> None:
        if not self.active():
            return
        with self.locks[uid]:
            body = self.vms.get(uid)
            if body is None:
                return
            component = type(self).__name__.lower()  # controller, agent
            with RECONCILE_SECONDS.labels(component=component).time():
                try:
                    self.handle(body)
                except ApiException as e:
                    if e.status == 404:  # deleted meanwhile: nothing left to do
                        self.vms.pop(uid, None)
                        return
                    RECONCILE_ERRORS.labels(component=component).inc()
                    self.on_error(body, e)
                except Exception as e:  # reported on the VM; the next event or resync retries
                    RECONCILE_ERRORS.labels(component=component).inc()
                    self.on_error(body, e)

    # -- outputs ------------------------------------------------------------------------
    def with_condition(self, body: dict, type_: str, status: bool | None, reason: str, message: str,
                       base: dict | None = None) -> dict:
        current = dict(base if base is not None else (body.get("status") or {}))
        current["conditions"] = conditions.set_condition(current.get("conditions"), type_, status, reason, message,
                                                         body["metadata"].get("generation"))
        return current

    def write_status(self, body: dict, status: dict) -> bool:
        """Patch status with what changed; nothing when nothing did (no write per resync)."""
        current = body.get("status") or {}
        changes = {k: v for k, v in status.items() if current.get(k) != v and not (v is None and k not in current)}
        if not changes:
            return False
        meta = body["metadata"]
        self.log.debug("VM %s/%s status changes: %s", meta["namespace"], meta["name"], changes)
        self.remember(body, kube.patch_status(meta["namespace"], meta["name"], changes))
        dropped = [k for k, v in changes.items() if v is not None and (body.get("status") or {}).get(k) != v]
        if dropped:  # pruned by the CRD's schema: every write would repeat forever
            self.log.error("the API server dropped status fields %s of %s/%s", dropped, meta["namespace"], meta["name"],
                           extra=about(meta["namespace"], meta["name"]))
        old, new = current.get("phase"), (body.get("status") or {}).get("phase")
        if old != new:
            self.log.info("VM %s/%s: %s -> %s", meta["namespace"], meta["name"], old, new,
                          extra=about(meta["namespace"], meta["name"]))
        return True

    def event(self, body: dict, reason: str, message: str, warning: bool = False) -> None:
        """Posted in the background: an Event must not add to a VM's start time."""
        snapshot = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                    "metadata": dict(body["metadata"])}
        self.notices.submit(kube.post_event, snapshot, reason, message, warning, self.component)


def write_migration_status(namespace: str, name: str, status: dict, phase: str | None = None,
                           current: dict | None = None, expect_phase: str | None = None) -> dict | None:
    """A merge patch of a Migration's status; a phase change is also recorded with its time.
    `expect_phase`: only if the Migration is still in that phase (a guarded JSON patch: two
    writers of one end never both win). None if it is gone, or has left `expect_phase`."""
    status = dict(status)
    if phase:
        before = (current or {}).get("status") or {}
        generation = ((current or {}).get("metadata") or {}).get("generation")
        status["phase"] = phase
        status["phaseTransitions"] = list(before.get("phaseTransitions") or []) + [{"phase": phase, "time": now()}]
        status["conditions"] = migration.phase_conditions(
            status.get("conditions", before.get("conditions")), phase, status.get("reason", before.get("reason", "")),
            status.get("message", before.get("message", "")), generation)
        if generation is not None:
            status["observedGeneration"] = generation
    try:
        if expect_phase:
            return kube.json_patch(namespace, name, [
                {"op": "test", "path": "/status/phase", "value": expect_phase},
                *({"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items())],
                plural="migrations", status=True)
        return kube.patch_status(namespace, name, status, plural="migrations")
    except ApiException as e:
        if e.status == 404 or (expect_phase and e.status == 422):
            return None
        raise
