"""Which controller replica writes: the holder of a Lease (core/leadership.py has the rules).

Standby replicas keep their caches warm from the same watches and answer the admission
webhook, so a failover loses neither; they take the Lease when its holder stops renewing,
or at once when it steps down on shutdown. A leader that cannot renew in time exits: the
kubelet restarts it as a standby, and nothing it started can race the new leader.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from typing import Callable

from kubernetes.client.rest import ApiException

from ..clients import kube
from ..core import leadership

log = logging.getLogger(__name__)


def _wall() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _step_down() -> None:
    log.error("leadership lost: exiting so that only the new leader writes")
    logging.shutdown()
    os._exit(1)


class LeaderElector:
    def __init__(self, namespace: str, name: str, identity: str, on_started: Callable[[], None],
                 on_lost: Callable[[], None] = _step_down, retry: float = leadership.RETRY_SECONDS):
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_started, self.on_lost, self.retry = on_started, on_lost, retry
        self.leading = threading.Event()
        self.stopping = threading.Event()
        self._held: tuple[dict, str] | None = None  # the spec and resourceVersion we last wrote
        self._lock = threading.Lock()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        self._acquire()
        if self.stopping.is_set():
            return
        log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
        self.on_started()
        self._keep()

    def _acquire(self) -> None:
        observed = None
        while not self.stopping.is_set():
            try:
                found = kube.read_lease(self.namespace, self.name, timeout=self.retry * 2)
                spec, version = found if found else (None, None)
                observed = leadership.observe(observed, spec, time.monotonic())
                if not leadership.held_by_other(spec, self.identity, observed, time.monotonic()):
                    if self._write(leadership.claimed(spec, self.identity, _wall()), version, self.retry * 2):
                        return
            except Exception as e:  # noqa: BLE001 - the API may be away; try again
                log.warning("leader election: %s", e)
            self.stopping.wait(self.retry)

    def _keep(self) -> None:
        renewed = time.monotonic()
        while not self.stopping.wait(self.retry):
            # No call may outlast the deadline: the leader is gone before anyone may take over.
            left = leadership.RENEW_DEADLINE - (time.monotonic() - renewed)
            if left <= 0:
                log.error("no renewal for %ss", leadership.RENEW_DEADLINE)
                break
            timeout = min(self.retry * 2, left)
            try:
                with self._lock:
                    if self.stopping.is_set():
                        return
                    spec, version = self._held
                    if self._write(leadership.claimed(spec, self.identity, _wall()), version, timeout):
                        renewed = time.monotonic()
                        continue
                found = kube.read_lease(self.namespace, self.name, timeout=timeout)
                if found and (found[0].get("holderIdentity") or "") == self.identity:
                    self._held = found  # our own write whose answer was lost: renew from it
                    continue
                log.error("Lease %s/%s is now held by %s", self.namespace, self.name,
                          (found or ({}, ""))[0].get("holderIdentity"))
                break
            except Exception as e:  # noqa: BLE001 - keep trying until the deadline
                log.warning("renewing the leadership: %s", e)
        if not self.stopping.is_set():
            self.leading.clear()
            self.on_lost()

    def _write(self, spec: dict, version: str | None, timeout: float) -> bool:
        """Write the Lease; False when another replica wrote it first (409)."""
        try:
            new_version = kube.write_lease(self.namespace, self.name, spec, version, timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._held = (spec, new_version)
        self.leading.set()
        return True

    def release(self) -> None:
        """On shutdown: stop writing, then hand the Lease over at once (a standby takes it
        within a retry period instead of waiting for it to expire)."""
        with self._lock:
            self.stopping.set()
            was_leading = self.leading.is_set()
            self.leading.clear()
            if not was_leading or self._held is None:
                return
            spec, version = self._held
            try:
                kube.write_lease(self.namespace, self.name, leadership.released(spec, _wall()), version,
                                 timeout=self.retry * 2)
                log.info("Lease %s/%s released", self.namespace, self.name)
            except Exception as e:  # noqa: BLE001 - it then expires by itself
                log.warning("releasing the Lease: %s", e)
