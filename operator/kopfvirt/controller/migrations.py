"""The controller's side of migrations: preflight, queue, the target's reservation pod,
the hand-off once the VM runs on the target, cancels, evacuation of drained nodes, and
metrics. The source node's agent moves the domain itself (agent/migrator.py).

Phases: Pending (preflight, queue) -> Scheduling (target pod created) -> TargetReady
(kube-scheduler bound it) -> Running (the source agent claimed it) -> Succeeded (the
source agent, with the VM's new node; the hand-over follows) | Failed | Cancelled. All
Migrations are reconciled under one lock, oldest first, so the limits are counted
without races; they are few.
"""

from __future__ import annotations

import logging
import threading
import uuid as uuidlib

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..clients import kube
from ..core import conditions, lifecycle, migration, reservation, vmspec
from ..core.migration import FINAL_PHASES, PLURAL
from ..logformat import about
from ..names import NODE_LABEL
from ..reconciling import concurrently, now, older, write_migration_status
from . import metrics

log = logging.getLogger("kopfvirt.controller.migrations")
FINALIZER = f"{GROUP}/migration"
EVACUATION_LABEL = f"{GROUP}/evacuation"  # on Migrations a drain started: the node drained
MAX_EVACUATIONS = 3  # failed evacuations of a VM off a node before a drain's retries stop making more


class EvacuationFailed(Exception):
    """A VM's evacuations off a node failed MAX_EVACUATIONS times: no more are made."""

    def __init__(self, failed: list[dict]):
        last = failed[-1].get("status") or {}
        names = ", ".join(b["metadata"]["name"] for b in failed)
        super().__init__(f"{len(failed)} evacuations failed ({names}; the last: {last.get('reason')}: "
                         f"{last.get('message')}); the drain waits: fix that and delete those Migrations to try "
                         f"again, or stop the VM")
CONFIG_MAP = "kopfvirt-migration"
TARGET_SCHEDULE_SECONDS = 120  # a target pod unbound this long fails the Migration


def _age_seconds(timestamp: str | None) -> float:
    return lifecycle.seconds_between(timestamp, now()) if timestamp else 0.0


class Migrations:
    def __init__(self, controller, namespace: str):
        self.c = controller
        self.namespace = namespace  # where the ConfigMap kopfvirt-migration lives
        self.migrations: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.counted: set[str] = set()  # uids whose end is in the metrics (or ended before we started)
        # When this process began to act (controller._take_over): a Migration that ended
        # before was counted by the leader then, and is not counted again after a failover.
        self.acting_since = ""
        self._pass_config: tuple[dict, dict] | None = None

    # -- inputs -------------------------------------------------------------------------
    def observe(self, body: dict, deleted: bool = False) -> None:
        uid = body["metadata"]["uid"]
        cached = self.migrations.get(uid)
        if deleted:
            self.migrations.pop(uid, None)
        elif cached is None or not older(body, cached):  # our own writes may be ahead of the watch
            self.migrations[uid] = body
            if cached is None and (body.get("status") or {}).get("phase") in FINAL_PHASES:
                self.counted.add(uid)  # it ended before this controller started
        self.kick()

    def kick(self) -> None:
        self.c.enqueue("migrations", self.reconcile_all)

    def reconcile_all(self) -> None:
        if not self.c.active():
            return
        with self.lock:
            self._pass_config = None
            pending = []
            for body in sorted(self.migrations.values(), key=lambda b: b["metadata"]["creationTimestamp"]):
                try:
                    if self._handle(body):
                        pending.append(body)
                except ApiException as e:
                    if e.status not in (404, 409, 422):
                        log.exception("migration %s", body["metadata"]["name"])
                except Exception:
                    log.exception("migration %s", body["metadata"]["name"])
            self._admit(pending)
            metrics.set_running(sum((b.get("status") or {}).get("phase") in migration.ACTIVE_PHASES
                                    for b in self.migrations.values()))

    # -- one Migration ------------------------------------------------------------------
    def _handle(self, m: dict) -> bool:
        """Advance one Migration; True if it passed the preflight and waits for its turn."""
        meta, st = m["metadata"], m.get("status") or {}
        phase = st.get("phase")
        if meta.get("deletionTimestamp"):
            self._deleting(m)
            return False
        if phase in FINAL_PHASES:
            if meta["uid"] not in self.counted:
                self.counted.add(meta["uid"])
                if (migration.ended_at(m) or "") >= self.acting_since:
                    metrics.observe_final(m)
            self._clean_up(m)
            return False
        vm_body = self._vm(m)
        if FINALIZER not in (meta.get("finalizers") or []):
            # With the source node's label already (its agent watches by it): one write less
            # before the move, unless the VM moves while this one waits its turn.
            self._remember(m, kube.json_patch(meta["namespace"], meta["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                {"op": "add", "path": "/metadata/finalizers",
                 "value": list(meta.get("finalizers") or []) + [FINALIZER]},
                *self._source_label_ops(m, vm_body)], plural=PLURAL))
        if phase in (None, "Pending"):
            if vm_body is not None and migration.moved(vm_body.get("status") or {}):
                return False  # its last move is being handed over: judged after (the VM's write kicks this)
            refusal = self._preflight(m, vm_body)
            if refusal:
                self._fail(m, *refusal)
                return False
            return True
        vm_status = (vm_body or {}).get("status") or {}
        if vm_body is not None and migration.handed_over_unrecorded(st, vm_status):
            log.warning("Migration %s/%s: its VM was handed over to %s but the end was not recorded; recording it",
                        meta["namespace"], meta["name"], st["targetNode"])
            self._succeed(m, m["spec"]["vmName"], {"sourceNode": st.get("sourceNode"), "targetNode": st["targetNode"]})
            return False
        moving = (vm_status.get("migration") or {}).get("name") == meta["name"]
        if not moving and (vm_body is None or vm_status.get("phase") not in ("Running", "Paused")
                           or vm_status.get("nodeName") != st.get("sourceNode")):
            if phase != "Running":  # once Running, the source agent says how it ended
                self._fail(m, "VMNotRunning", f"VM {m['spec']['vmName']} stopped or moved before the migration began")
            return False
        if phase == "Scheduling":
            self._scheduling(m, vm_body)
        return False

    def _vm(self, m: dict) -> dict | None:
        """The VM from the cache; from the API when the cache lacks it (it may not be filled yet)."""
        key = (m["metadata"]["namespace"], m["spec"]["vmName"])
        return self.c.vm_named(*key) or kube.get_object(*key)

    def _preflight(self, m: dict, vm_body: dict | None) -> tuple[str, str] | None:
        ns, spec = m["metadata"]["namespace"], m["spec"]
        if vm_body is None:
            return "VMNotFound", f"VirtualMachine {spec['vmName']} does not exist in {ns}"
        meta = vm_body["metadata"]
        try:
            vm = vmspec.parse(ns, meta["name"], meta["uid"], vm_body.get("spec") or {})
        except vmspec.SpecError as e:
            return "InvalidVM", f"VirtualMachine {spec['vmName']}: {e}"
        for other in self.migrations.values():
            if (other is not m and other["metadata"]["namespace"] == ns and other["spec"]["vmName"] == meta["name"]
                    and (other.get("status") or {}).get("phase") in migration.ACTIVE_PHASES):
                return "AlreadyMigrating", f"VM {meta['name']} is already moving (Migration {other['metadata']['name']})"
        options = migration.effective_options(spec.get("options"), self._config()[0])
        refusal, _ = migration.preflight(vm, vm_body.get("status") or {}, spec, options, list(self.c.nodes.values()),
                                         self.c.pool_specs())
        return refusal

    def _config(self) -> tuple[dict, dict]:
        """The cluster's defaults and limits, read once per pass (a pass judges, admits and
        starts a Migration: one read, not three, before its move)."""
        if self._pass_config is None:
            self._pass_config = migration.cluster_config(kube.config_map_data(self.namespace, CONFIG_MAP))
        return self._pass_config

    def _admit(self, pending: list[dict]) -> None:
        """Start what the limits allow, oldest first; the rest wait with a Queued condition."""
        if not pending:
            return
        _, limits = self._config()
        active = [(b.get("status") or {}).get("sourceNode") for b in self.migrations.values()
                  if (b.get("status") or {}).get("phase") in migration.ACTIVE_PHASES]
        sources = {b["metadata"]["uid"]: ((self._vm(b) or {}).get("status") or {}).get("nodeName") for b in pending}
        start, waiting = migration.admissible([(b["metadata"]["uid"], sources[b["metadata"]["uid"]]) for b in pending],
                                              active, limits)
        for b in pending:
            uid = b["metadata"]["uid"]
            if uid in start:
                try:
                    self._start(b, self._vm(b))
                except ApiException as e:  # a stale cache (409/422): the next event retries
                    log.warning("starting migration %s: %s %s", b["metadata"]["name"], e.reason, e.body)
            else:
                self._write(b, self._condition(b, "Queued", True, "WaitingForTurn", f"queued: {waiting[uid]}"),
                            "Pending" if (b.get("status") or {}).get("phase") != "Pending" else None)

    def _start(self, m: dict, vm_body: dict) -> None:
        meta, spec = m["metadata"], m["spec"]
        vm_meta = vm_body["metadata"]
        source = vm_body["status"]["nodeName"]
        vm = vmspec.parse(meta["namespace"], vm_meta["name"], vm_meta["uid"], vm_body.get("spec") or {})
        options = migration.effective_options(spec.get("options"), self._config()[0])
        relabel = self._source_label_ops(m, vm_body)
        if relabel:
            self._remember(m, kube.json_patch(meta["namespace"], meta["name"], [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}, *relabel],
                plural=PLURAL))
        pod = migration.target_pod(vm, meta["name"], meta["uid"], source, spec.get("targetNode"),
                                   spec.get("nodeSelector"), self.c.pod_settings)
        queued = conditions.get((m.get("status") or {}).get("conditions"), "Queued")
        status = self._condition(m, "Queued", False, "Started", "its turn came") if queued else dict(m.get("status") or {})
        # The pod's name is fixed by the Migration's UID: if the status write fails, the
        # next try finds the pod there already (create_pod takes that as done).
        started = {**status, "sourceNode": source, "targetPod": pod["metadata"]["name"], "options": options}
        concurrently(lambda: self._write(m, started, "Scheduling"), lambda: kube.create_pod(pod))
        self.c.event(m, "Scheduling", f"target reservation pod {pod['metadata']['name']} created")

    @staticmethod
    def _source_label_ops(m: dict, vm_body: dict | None) -> list[dict]:
        """JSON patch ops that label a Migration with its VM's node, if it lacks that label."""
        labels = m["metadata"].get("labels") or {}
        source = ((vm_body or {}).get("status") or {}).get("nodeName")
        if not source or labels.get(migration.SOURCE_NODE_LABEL) == source:
            return []
        return [{"op": "add", "path": "/metadata/labels", "value": {**labels, migration.SOURCE_NODE_LABEL: source}}]

    def _target_pod(self, m: dict) -> dict | None:
        name = (m.get("status") or {}).get("targetPod")
        for p in self.c.pods_of(m["metadata"]["namespace"], m["spec"]["vmName"], role=migration.TARGET_ROLE):
            if p["metadata"]["name"] == name:
                return p
        return kube.get_pod(m["metadata"]["namespace"], name) if name else None

    def _scheduling(self, m: dict, vm_body: dict) -> None:
        pod = self._target_pod(m)
        if pod is None:
            vm_meta = vm_body["metadata"]
            vm = vmspec.parse(m["metadata"]["namespace"], vm_meta["name"], vm_meta["uid"], vm_body.get("spec") or {})
            kube.create_pod(migration.target_pod(vm, m["metadata"]["name"], m["metadata"]["uid"],
                                                 m["status"]["sourceNode"], m["spec"].get("targetNode"),
                                                 m["spec"].get("nodeSelector"), self.c.pod_settings))
            return
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound:
            self._write(m, {**self._condition(m, "TargetScheduled", True, "Bound", f"target pod bound to {bound}"),
                            "targetNode": bound}, "TargetReady")
            self.c.event(m, "TargetReady", f"target {bound} is ready")
            return
        cond = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
                    None)
        if cond and cond.get("status") == "False":
            message = f"kube-scheduler: {cond.get('message', '')}"
            if _age_seconds(pod["metadata"].get("creationTimestamp")) > TARGET_SCHEDULE_SECONDS:
                self._fail(m, "TargetUnschedulable", message)
            else:
                self._write(m, self._condition(m, "TargetScheduled", False, cond.get("reason") or "Unschedulable",
                                               message))

    # -- endings ------------------------------------------------------------------------
    def hand_over(self, vm_body: dict) -> None:
        """The VM runs on the target (its status says so): make the target's pod its
        reservation, release the source's and close the Migration with libvirt's result
        (unless the source agent did), at once; then give the VM to the target's agent,
        which must find its reservation pod when it looks (else it would stop the guest as
        evicted); then clear status.migration, last, so that a failed step is retried by
        the next reconcile (each step is idempotent). Under the Migrations' lock: no new
        Migration of the VM is judged halfway through (nor before: see _handle). What the
        caches lack is read from the API: a controller just started may hand over before
        its watches have listed the pods and Migrations, and a Migration left out would
        stay Running for ever."""
        meta, status = vm_body["metadata"], vm_body.get("status") or {}
        record, ns = status["migration"], meta["namespace"]
        target = record["targetNode"]
        pods = list(self.c.pods.get((ns, meta["name"]), {}).values())
        if not any(p["metadata"]["name"] == record["targetPod"] for p in pods):
            pods = kube.pods_of_vm(ns, meta["name"])
        target_pod = next((p for p in pods if p["metadata"]["name"] == record["targetPod"]), None)
        steps = []
        if target_pod is not None and (target_pod["metadata"].get("labels") or {}).get(reservation.ROLE_LABEL) \
                != "reservation":
            steps.append(lambda: kube.patch_pod_labels(ns, record["targetPod"], {
                reservation.ROLE_LABEL: "reservation", migration.MIGRATION_LABEL: None}))
        steps += [lambda p=p: kube.delete_pod(ns, p["metadata"]["name"], p["metadata"]["uid"]) for p in pods
                  if p["metadata"]["name"] != record["targetPod"] and not p["metadata"].get("deletionTimestamp")]
        with self.lock:
            m = self._named(ns, record["name"])
            if m is not None and (m.get("status") or {}).get("phase") not in FINAL_PHASES:
                steps.append(lambda: self._succeed(m, vm_body["metadata"]["name"], record))
            concurrently(*steps)
            if (meta.get("labels") or {}).get(NODE_LABEL) != target:
                self.c.hand_off(vm_body, target)
            self.c.write_status(vm_body, {**vm_body.get("status", {}), "migration": None})

    def _named(self, namespace: str, name: str) -> dict | None:
        """The Migration from the cache; from the API (and then cached) when the cache lacks it."""
        found = next((b for b in self.migrations.values()
                      if b["metadata"]["namespace"] == namespace and b["metadata"]["name"] == name), None)
        if found is None:
            found = kube.get_object(namespace, name, plural=PLURAL)
            if found is not None:
                self.observe(found)
                found = self.migrations.get(found["metadata"]["uid"], found)
        return found

    def _succeed(self, m: dict, vm_name: str, record: dict) -> None:
        """The Migration's end, unless the source agent wrote it with the VM's (a guarded write)."""
        if self._write(m, migration.succeeded(m.get("status") or {}, record["targetNode"], record.get("result") or {},
                                              m["metadata"].get("generation")), "Succeeded", expect_phase="Running"):
            self.c.event(m, "Succeeded", migration.moved_message(vm_name, record))

    def _deleting(self, m: dict) -> None:
        """A deleted Migration is cancelled: before the source agent claimed it, here (a
        guarded write, so the claim and the cancel never both win); once Running, the agent
        aborts libvirt's job and writes Cancelled."""
        meta, phase = m["metadata"], (m.get("status") or {}).get("phase")
        if phase not in FINAL_PHASES and phase != "Running":
            try:
                self._remember(m, kube.json_patch(meta["namespace"], meta["name"], [
                    {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                    {"op": "add", "path": "/status", "value": {
                        **(m.get("status") or {}), "phase": "Cancelled", "reason": "Cancelled",
                        "message": "the Migration was deleted before the move began"}}],
                    plural=PLURAL, status=True))
            except ApiException as e:
                if e.status != 422:
                    raise
                return  # changed meanwhile: the next event decides
            phase = "Cancelled"
        if phase in FINAL_PHASES:
            self._clean_up(m)
            finalizers = meta.get("finalizers") or []
            if FINALIZER in finalizers:
                kube.json_patch(meta["namespace"], meta["name"], [
                    {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                    {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers
                                                                                if f != FINALIZER]}],
                    plural=PLURAL)

    def _clean_up(self, m: dict) -> None:
        """A target pod left by a Migration that did not hand over goes."""
        if (m.get("status") or {}).get("phase") == "Succeeded":
            return
        pod = self._target_pod(m)
        labels = (pod or {}).get("metadata", {}).get("labels") or {}
        if pod is not None and labels.get(reservation.ROLE_LABEL) == migration.TARGET_ROLE \
                and not pod["metadata"].get("deletionTimestamp"):
            kube.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"])

    def _fail(self, m: dict, reason: str, message: str) -> None:
        status = self._condition(m, "Succeeded", False, reason, message)
        self._write(m, {**status, "reason": reason, "message": message}, "Failed")
        self.c.event(m, "Failed", message, warning=True)
        self._clean_up(m)

    # -- evacuation (drain) ---------------------------------------------------------------
    def evacuate(self, namespace: str, vm_name: str, node: str) -> str:
        """The Migration that moves a VM off a draining node: the one running, else a new
        one, unless MAX_EVACUATIONS of them failed already (EvacuationFailed says why)."""
        with self.lock:
            failed = []
            for b in sorted(self.migrations.values(), key=lambda b: b["metadata"]["creationTimestamp"]):
                if (b["metadata"]["namespace"], b["spec"]["vmName"]) != (namespace, vm_name):
                    continue
                phase = (b.get("status") or {}).get("phase")
                if phase not in FINAL_PHASES:
                    return b["metadata"]["name"]
                if phase == "Failed" and (b["metadata"].get("labels") or {}).get(EVACUATION_LABEL) == node:
                    failed.append(b)
            if len(failed) >= MAX_EVACUATIONS:
                raise EvacuationFailed(failed)
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Migration",
                    "metadata": {"name": f"evacuate-{vm_name}-{uuidlib.uuid4().hex[:5]}", "namespace": namespace,
                                 "labels": {EVACUATION_LABEL: node}},
                    "spec": {"vmName": vm_name, "mode": "Live"}}
            created = kube.create_object(namespace, body, PLURAL)
            self.migrations[created["metadata"]["uid"]] = created
        self.kick()
        return created["metadata"]["name"]

    def node_uncordoned(self, node: str) -> None:
        """Evacuations of a node that takes pods again and that have not begun are cancelled."""
        for b in list(self.migrations.values()):
            if (b["metadata"].get("labels") or {}).get(EVACUATION_LABEL) == node and \
                    (b.get("status") or {}).get("phase") in (None, "Pending", "Scheduling", "TargetReady"):
                kube.delete_object(b["metadata"]["namespace"], b["metadata"]["name"], PLURAL)

    # -- writes ---------------------------------------------------------------------------
    def _condition(self, m: dict, type_: str, status: bool, reason: str, message: str) -> dict:
        current = dict(m.get("status") or {})
        current["conditions"] = conditions.set_condition(current.get("conditions"), type_, status, reason, message,
                                                         m["metadata"].get("generation"))
        return current

    def _write(self, m: dict, status: dict, phase: str | None = None, expect_phase: str | None = None) -> bool:
        """Write what changed; False if nothing did, or the Migration is gone or left `expect_phase`."""
        current = m.get("status") or {}
        changes = {k: v for k, v in status.items() if current.get(k) != v}
        if phase == current.get("phase"):
            phase = None
        if not changes and not phase:
            return False
        updated = write_migration_status(m["metadata"]["namespace"], m["metadata"]["name"], changes, phase, m,
                                         expect_phase=expect_phase)
        if updated is None:  # gone, or it left expect_phase
            return False
        self._remember(m, updated)
        if phase:
            log.info("Migration %s/%s: %s -> %s", m["metadata"]["namespace"], m["metadata"]["name"],
                     current.get("phase"), phase, extra=about(m["metadata"]["namespace"], m["spec"].get("vmName", ""),
                                                              migration=m["metadata"]["name"]))
        return True

    def _remember(self, m: dict, updated: dict) -> None:
        m.clear()
        m.update(updated)
        self.migrations[updated["metadata"]["uid"]] = m
