"""The source side of a migration: the agent of the VM's node moves its domain.

The controller prepares the target (a reservation pod bound by kube-scheduler) and sets
the Migration to TargetReady; this node's agent claims it (TargetReady -> Running, a
guarded write, so a cancel and a start never both win), records it in the VM's
status.migration, and has its libvirtd migrate the domain peer-to-peer to the target's.
It reports the outcome: on success the VM's status names the target node and the
Migration says Succeeded (two writes at once), as soon as the target's libvirtd resumed
the guest (libvirt's call returns some 200 ms later, once this node's paused copy is
stopped), and the controller hands the VM over (pods, label, finalizer); on failure the
VM keeps running here. status.migration survives an agent restart: the next reconcile
finds out from the two libvirtds how the move ended.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext

import libvirt
from kubernetes.client.rest import ApiException

from ..clients import images, kube
from ..clients.libvirt import Arrival, CopyRefused
from ..core import disks, migration, pools, quantity, vmspec
from ..logformat import about
from ..reconciling import concurrently, in_background, now, write_migration_status

log = logging.getLogger("kopfvirt.agent.migrator")
PLURAL = migration.PLURAL
POLL_SECONDS = 0.5


@dataclasses.dataclass
class Running:
    """A move this process drives (or watches, after a restart)."""

    migration: str
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)  # nothing left to watch
    # libvirt's call returned, or the guest resumed on the target: the outcome can be told.
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)
    why_aborted: tuple[str, str] | None = None
    call: Future | None = None  # libvirt's migration call, which may outlast the move's outcome
    resumed_there: bool = False  # the outcome came from the target's resume, before the call ended


@dataclasses.dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str = ""
    message: str = ""
    results: dict = dataclasses.field(default_factory=dict)


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def _close_watch(target: Future) -> None:
    if target.exception() is None and target.result()[1] is not None:
        target.result()[1].close()


def _in_thread(call, name: str) -> Future:
    """A long blocking call in a thread of its own (not the small shared pool of API writes)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as e:
            future.set_exception(e)
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Migrator:
    def __init__(self, agent):
        self.agent = agent
        self.migrations: dict[str, dict] = {}  # uid -> Migration leaving this node
        self.running: dict[str, Running] = {}  # VM uid -> the move in progress here

    # -- inputs -------------------------------------------------------------------------
    def observe(self, body: dict, deleted: bool = False) -> None:
        uid = body["metadata"]["uid"]
        if deleted:
            self.migrations.pop(uid, None)
        else:
            self.migrations[uid] = body
        name = body["metadata"]["name"]
        for run in self.running.values():
            if run.migration == name and (deleted or body["metadata"].get("deletionTimestamp")):
                self._abort(run, "Cancelled", "the Migration was deleted")
        phase = (body.get("status") or {}).get("phase")
        if not deleted and phase == "TargetReady" and not body["metadata"].get("deletionTimestamp"):
            threading.Thread(target=self._run_guarded, args=(body,), name=f"migrate-{name}", daemon=True).start()

    def _abort(self, run: Running, reason: str, message: str) -> None:
        if not run.cancel.is_set():
            run.why_aborted = (reason, message)
            run.cancel.set()

    # -- one move -----------------------------------------------------------------------
    def _run_guarded(self, m: dict) -> None:
        try:
            self._run(m)
        except Exception:
            log.exception("migration %s/%s failed", m["metadata"]["namespace"], m["metadata"]["name"])

    def _run(self, m: dict) -> None:
        meta, spec, mstatus = m["metadata"], m.get("spec") or {}, m.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        body = self.agent.vm_named(ns, spec.get("vmName", ""))
        if body is None:
            write_migration_status(ns, name, {"reason": "VMNotOnSource", "message": (
                f"VM {spec.get('vmName')} is not on {self.agent.node} any more")}, "Failed", m)
            return
        uid = body["metadata"]["uid"]
        with self.agent.locks[uid]:
            if uid in self.running:
                return
            m = self._claim(m)
            if m is None:
                return
            status = dict(body.get("status") or {})
            state, _ = self.agent.hv.state_and_reason(uid)
            if status.get("nodeName") != self.agent.node or state not in ("running", "paused"):
                write_migration_status(ns, name, {"reason": "VMNotRunning", "message": (
                    f"VM {body['metadata']['name']} is not running on {self.agent.node}")}, "Failed", m)
                return
            record = {"name": name, "mode": spec.get("mode", "Live"), "sourceNode": self.agent.node,
                      "targetNode": mstatus["targetNode"], "targetPod": mstatus["targetPod"], "startTime": now()}
            run = Running(name)
            target = in_background(lambda: self._reach(record["targetNode"], uid, run.ended)) \
                if record["mode"] == "Live" else None
            # Recovery looks for this record: it lands before libvirt starts.
            try:
                self.agent.write_status(body, {**status, "phase": "Migrating", "migration": record})
            except Exception:
                if target is not None:
                    target.add_done_callback(_close_watch)
                raise
            self.running[uid] = run
        self.agent.event(body, "Migrating", f"{record['mode']} migration {name} to {record['targetNode']} started")
        log.info("migrating VM %s/%s to %s (%s)", ns, body["metadata"]["name"], record["targetNode"], record["mode"],
                 extra=about(ns, body["metadata"]["name"], migration=record.get("name", "")))
        try:
            if record["mode"] == "Live":
                outcome = self._live(body, m, run, target)
            else:
                outcome = self._offline(body, run)
        except Exception as e:  # anything unforeseen: where the guest runs decides below
            log.exception("migration %s/%s", ns, name)
            outcome = Outcome(False, "MigrationError", str(e))
        try:
            with self.agent.locks[uid]:
                current = self.agent.vms.get(uid, body)
                if not outcome.ok and record["mode"] == "Live":
                    outcome = self._as_seen(current, outcome)
                if outcome is not None:  # None: unknown yet; the resync asks again (recover)
                    self.conclude(current, outcome, m)
        finally:
            self._let_go(uid, run)

    def _let_go(self, uid: str, run: Running) -> None:
        """The move is over for this agent once libvirt's call has returned: until then the
        source's libvirtd may still be stopping its copy of a guest that runs on the target."""
        error = run.call.exception() if run.call is not None else None  # waits for it
        if error is not None and run.resumed_there:
            log.warning("migration %s: the guest resumed on the target, then libvirt's call failed: %s",
                        run.migration, error)
        self.running.pop(uid, None)

    @staticmethod
    def _claim(m: dict) -> dict | None:
        """TargetReady -> Running, one guarded write, so that a cancel (or a stale event) and
        a start never both win; None if it lost."""
        meta, mstatus = m["metadata"], m.get("status") or {}
        transitions = list(mstatus.get("phaseTransitions") or []) + [{"phase": "Running", "time": now()}]
        try:
            return kube.json_patch(meta["namespace"], meta["name"], [
                {"op": "test", "path": "/status/phase", "value": "TargetReady"},
                {"op": "replace", "path": "/status/phase", "value": "Running"},
                {"op": "add", "path": "/status/phaseTransitions", "value": transitions}],
                plural=PLURAL, status=True)
        except ApiException as e:
            if e.status in (404, 409, 422):
                return None
            raise

    def node_uri(self, node: str) -> str:
        """The libvirtd of another node, as this node's agent reaches it."""
        return self._target_uri(self._target_address(node))

    def _reach(self, node: str, uid: str, wake: threading.Event) -> tuple[str, Arrival | None]:
        """The target's address, and its libvirtd watched for the guest's arrival (None if it
        cannot be: the move then ends when libvirt's call returns)."""
        address = self._target_address(node)
        try:
            return address, Arrival(self._target_uri(address), uid, wake)
        except (libvirt.libvirtError, RuntimeError) as e:
            log.info("%s's libvirtd cannot be watched for the guest's arrival: %s", node, e)
            return address, None

    def _target_address(self, node: str) -> str:
        address = kube.node_address(node)
        if not address:
            raise RuntimeError(f"node {node} reports no InternalIP to migrate to")
        return address

    def _target_uri(self, address: str) -> str:
        # TLS only, with the node's certificate (agent/tls.py): libvirtd listens on nothing else.
        return f"qemu+tls://{address}/system?pkipath={self.agent.tls_dir}"

    def _live(self, body: dict, m: dict, run: Running, target: Future) -> Outcome:
        """`target`: its address and its watch, made ready while the move was claimed."""
        address, arrival = target.result()
        try:
            return self._live_to(body, m, run, address, arrival)
        finally:
            run.done.set()
            if arrival is not None:
                arrival.close()

    def _live_to(self, body: dict, m: dict, run: Running, address: str, arrival: Arrival | None) -> Outcome:
        uid, hv = body["metadata"]["uid"], self.agent.hv
        options = (m.get("status") or {}).get("options") or {}
        uri = self._target_uri(address)
        try:
            hv.set_max_downtime(uid, options.get("maxDowntimeMs", 300))
        except libvirt.libvirtError as e:
            log.warning("could not set the maximum downtime: %s", e)
        watcher = threading.Thread(target=self._watch, args=(body, m, run), name=f"watch-{run.migration}",
                                   daemon=True)
        watcher.start()
        copy, own_dir, media = self._copies(body) if options.get("copyStorage") else ([], None, [])
        moved = False

        def keep() -> bool:  # the copies stay unless the domain is surely not on the target
            try:
                return moved or hv.remote(uri, uid)[0] != "absent"
            except (libvirt.libvirtError, RuntimeError):
                return True

        destination = hv.copy_destination(uri, f"kopfvirt-copy-{uid}", own_dir, keep, media) if own_dir \
            else nullcontext()

        def call() -> None:
            nonlocal moved
            try:
                if arrival is not None and (waited := arrival.await_departure()) > 0.05:
                    log.info("migration %s: waited %.0f ms for the target to stop the copy an earlier move "
                             "left paused there", run.migration, waited * 1000)
                with destination:
                    hv.migrate(uid, uri, bandwidth_mibps=options.get("bandwidthMiBps"),
                               auto_converge=bool(options.get("autoConverge")),
                               post_copy=bool(options.get("postCopy")), copy_disks=copy, tls=True,
                               migrate_uri=f"tcp://{address}")
                moved = True
            finally:
                run.ended.set()

        run.call = _in_thread(call, f"libvirt-{run.migration}")
        run.ended.wait()
        run.done.set()
        # A move onto copies ends with its call: their directory here is removed after it.
        if arrival is not None and arrival.resumed.is_set() and not run.call.done() and not own_dir:
            try:
                figures = arrival.figures()
            except libvirt.libvirtError as e:  # the call's return tells it instead
                log.info("migration %s: no figures from the target yet: %s", run.migration, e)
            else:
                run.resumed_there = True
                return Outcome(True, results=migration.result(figures))
        try:
            run.call.result()
        except CopyRefused as e:
            return Outcome(False, "CopyRefused", str(e))
        except libvirt.libvirtError as e:
            if run.why_aborted:
                return Outcome(False, *run.why_aborted)
            return Outcome(False, "LibvirtError", f"libvirt: {e.get_error_message()}")
        try:
            _state, stats = hv.remote(uri, uid)
        except (libvirt.libvirtError, RuntimeError) as e:  # libvirt said it moved; only its figures are missing
            log.warning("moved, but the target's libvirtd gave no figures of the move: %s", e)
            stats = {}
        if own_dir:  # the VM runs on its copies there: these are stale
            images.remove(own_dir)
        return Outcome(True, results=migration.result(stats))

    def _copies(self, body: dict) -> tuple[list[str], str | None, list[str]]:
        """What a copyStorage move copies: the targets (vda, ...) of the VM's writable disks
        on storage the target does not share; when the VM's own disks are among them, their
        directory, which the target must offer as a pool for libvirt to fill, and the
        cloud-init media in it, which are sent there as they are."""
        meta = body["metadata"]
        vm = vmspec.parse(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {})
        specs = self.agent.pools.specs()
        unshared = pools.unshared_disks(vm.spec, specs)
        targets = [vm.targets[disk] for disk, _pool in unshared]
        if pools.own_pool(vm.spec, specs) not in {pool for _disk, pool in unshared}:
            return targets, None, []
        own_dir = self.agent.pools.own_dir(vm)
        return targets, own_dir, [disks.cloud_init_iso(own_dir, d.name) for d in vm.spec.disks if d.cloud_init]

    def _watch(self, body: dict, m: dict, run: Running) -> None:
        """Progress into the Migration's status; the timeouts and cancels applied."""
        uid, ns, name = body["metadata"]["uid"], m["metadata"]["namespace"], m["metadata"]["name"]
        options = (m.get("status") or {}).get("options") or {}
        memory = quantity.to_bytes(body["spec"]["memory"]["size"])
        start = last_progress = time.monotonic()
        lowest, written, post_copy = None, None, False
        while not run.done.wait(POLL_SECONDS):
            if run.cancel.is_set():
                self.agent.hv.abort_job(uid)
                return
            try:
                stats = self.agent.hv.job_stats(uid)
            except libvirt.libvirtError:
                continue
            if not stats:
                continue
            remaining = stats.get("data_remaining")
            if remaining is not None and (lowest is None or remaining < lowest):
                lowest, last_progress = remaining, time.monotonic()
            verdict = None if post_copy else migration.overdue(time.monotonic() - start, memory, options,
                                                               time.monotonic() - last_progress)
            if verdict == "post-copy":
                self.agent.hv.start_post_copy(uid)
                post_copy = True
                log.info("migration %s/%s switched to post-copy", ns, name)
            elif verdict == "abort":
                self._abort(run, "Timeout", (
                    f"did not converge: {lowest or 0} bytes still to copy after {time.monotonic() - start:.0f}s "
                    f"(completionTimeoutPerGiB {options.get('completionTimeoutPerGiB')}, progressTimeoutSeconds "
                    f"{options.get('progressTimeoutSeconds')}); allow autoConverge or postCopy, or raise the "
                    f"bandwidth"))
                self.agent.hv.abort_job(uid)
                return
            progress = migration.progress(stats)
            if post_copy:
                progress["postCopy"] = True
            if progress != written:
                written = progress
                write_migration_status(ns, name, {"progress": progress})

    def _offline(self, body: dict, run: Running) -> Outcome:
        """Shut the guest down gracefully here; the target's agent boots it from the same disks."""
        meta = body["metadata"]
        vm = vmspec.parse(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {})
        start = time.monotonic()
        self.agent._stop_domain(vm)
        self.agent.hv.remove(vm.uid)
        return Outcome(True, results={"totalTimeMs": _ms_since(start)})

    # -- endings --------------------------------------------------------------------------
    def conclude(self, body: dict, outcome: Outcome, m: dict | None = None) -> None:
        """Write how the move ended. A success: the VM's status (where it runs now, and
        libvirt's result), for the controller to hand it over, and with `m` (the Migration as
        claimed) at once the Migration's Succeeded, which the hand-over writes otherwise. A
        failure: the Migration's status, then the VM's. Called with the VM's lock held."""
        status = dict(body.get("status") or {})
        record = status.get("migration") or {}
        ns = body["metadata"]["namespace"]
        if outcome.ok:
            target = record["targetNode"]
            phase = "Running" if record.get("mode") == "Live" else "Starting"
            if record.get("mode") == "Live" and status.get("phase") == "Paused":
                phase = "Paused"
            concurrently(lambda: self.agent.write_status(body, {**status, "phase": phase, "nodeName": target,
                                                                "migration": {**record, "result": outcome.results}}),
                         *([lambda: self._succeed(m, body["metadata"]["name"], record, outcome.results)] if m else []))
            self.agent.event(body, "Migrated", f"moved to {target}" + (
                f" in {outcome.results['totalTimeMs']} ms, downtime {outcome.results['downtimeMs']} ms"
                if "downtimeMs" in outcome.results else ""))
            log.info("VM %s/%s moved to %s: %s", ns, body["metadata"]["name"], target, outcome.results,
                     extra=about(ns, body["metadata"]["name"], migration=record.get("name", "")))
            return
        phase = "Cancelled" if outcome.reason == "Cancelled" else "Failed"
        current = kube.get_object(ns, record["name"], PLURAL) if record.get("name") else None
        if current is not None and (current.get("status") or {}).get("phase") not in migration.FINAL_PHASES:
            write_migration_status(ns, record["name"], {"reason": outcome.reason, "message": outcome.message},
                                   phase, current)
        state, _ = self.agent.hv.state_and_reason(body["metadata"]["uid"])
        status.update(migration=None, phase="Paused" if state == "paused" else "Running")
        self.agent.write_status(body, status)
        self.agent.event(body, f"Migration{phase}", f"{record.get('name')}: {outcome.message}; the VM stays on "
                                                    f"{self.agent.node}", warning=True)

    def _succeed(self, m: dict, vm_name: str, record: dict, results: dict) -> None:
        """The Migration's Succeeded, if it is still Running (a guarded write: the
        controller's hand-over may have written it first)."""
        meta = m["metadata"]
        done = write_migration_status(meta["namespace"], meta["name"], migration.succeeded(
            m.get("status") or {}, record["targetNode"], results, meta.get("generation")), "Succeeded", m,
            expect_phase="Running")
        if done is not None:
            self.agent.event(done, "Succeeded", migration.moved_message(vm_name, record))

    def recover(self, body: dict, status: dict) -> None:
        """status.migration names this node as source but no move runs here (the agent
        restarted, or the thread ended before its write): read how it ended."""
        uid = body["metadata"]["uid"]
        record = status["migration"]
        if uid in self.running or status.get("nodeName") != self.agent.node:
            return  # still moving, or moved and waiting for the controller's hand-off
        hv = self.agent.hv
        state, _ = hv.state_and_reason(uid)
        if state in ("running", "paused") and hv.job_stats(uid):
            run = self.running[uid] = Running(record["name"])
            threading.Thread(target=self._await_job, args=(body, run), daemon=True).start()
            return
        if record.get("mode") == "Offline":
            if state == "shuttingdown":
                return  # the guest still stops: the next resync looks again
            outcome = Outcome(True) if state not in ("running", "paused") else Outcome(
                False, "Interrupted", f"the move was interrupted (the agent on {self.agent.node} restarted) "
                                      f"before the guest was shut down")
        else:
            outcome = self._as_seen(body, Outcome(False, "Interrupted", (
                f"the move was interrupted (the agent on {self.agent.node} restarted) and libvirt did not "
                f"finish it")))
        if outcome is not None:
            self.conclude(body, outcome)

    def _as_seen(self, body: dict, failure: Outcome) -> Outcome | None:
        """How a live move ended, as the two libvirtds tell it once no job runs here:
        `failure` where the guest runs on here, success where it runs on the target. None
        while that cannot be known (the target's libvirtd cannot be asked, or both copies
        are paused): the VM stays Migrating, saying so, never guessed failed, for the
        guest there may already be writing its disks."""
        uid, record = body["metadata"]["uid"], (body.get("status") or {})["migration"]
        target = record["targetNode"]
        state, _ = self.agent.hv.state_and_reason(uid)
        remote_state, stats, unasked = None, {}, None
        if state != "running":
            try:
                remote_state, stats = self.agent.hv.remote(self.node_uri(target), uid)
            except (libvirt.libvirtError, RuntimeError) as e:
                log.warning("migration %s: cannot ask %s where the guest runs: %s", record.get("name"), target, e)
                unasked = f"{target}'s libvirtd cannot be asked whether it runs there ({e})"
        where = migration.where_it_runs(state, remote_state)
        if where == "source":
            return failure
        if where == "target":
            return Outcome(True, results=migration.result(stats))
        if where == "nowhere":
            return Outcome(False, "GuestLost", f"the guest runs neither on {self.agent.node} nor on {target}")
        self.agent.write_status(body, self.agent.with_condition(
            body, "Ready", None, "MigrationOutcomeUnknown",
            f"migration {record.get('name')}: the guest is {state} on {self.agent.node} and "
            f"{unasked or f'{remote_state} on {target}'}; the VM stays Migrating until the two tell where it runs"))
        return None

    def _await_job(self, body: dict, run: Running) -> None:
        """libvirt still migrates a domain whose agent restarted: wait for it, then recover."""
        uid = body["metadata"]["uid"]
        try:
            while self.agent.hv.job_stats(uid):
                if run.cancel.is_set():
                    self.agent.hv.abort_job(uid)
                time.sleep(POLL_SECONDS)
        except libvirt.libvirtError:
            pass
        finally:
            self.running.pop(uid, None)
        self.agent.submit(uid)
