"""The controller's reconciler: a VM that should run gets a reservation pod; where
kube-scheduler binds it, the VM is handed to that node's agent (label + finalizer).

Level-based and idempotent, like the agent's. A start costs the controller three writes
to the VM: Scheduling (Ready=False early), Starting with the node, and the hand-off.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import names
from ..clients import kube
from ..core import conditions, lifecycle, migration, nodeloss, passthrough, pools, reservation, steps, vmspec
from ..core.vmspec import SpecError
from ..names import AGENT_FINALIZER_PREFIX as FINALIZER_PREFIX, NODE_LABEL
from ..reconciling import Reconciler, now, write_migration_status
from .devices import Allocator
from .migrations import Migrations

log = logging.getLogger("kopfvirt.controller")
ACTIVE_PHASES = ("Starting", "Running", "Paused", "Stopping", "Migrating")
POD_SELECTOR = f"{reservation.ROLE_LABEL} in (reservation,{migration.TARGET_ROLE})"  # the pods it watches
SYNC_PATIENCE = 60  # seconds a new leader waits for its watches to catch up before it acts anyway


def vm_has_devices(body: dict) -> bool:
    return bool((body.get("spec") or {}).get("hostDevices") or (body.get("status") or {}).get("hostDevices"))


class Controller(Reconciler):
    component = "kopfvirt-controller"

    def __init__(self, namespace: str = "kopfvirt-system",
                 pod_settings: reservation.PodSettings = reservation.DEFAULT_POD_SETTINGS):
        super().__init__(log)
        self.pod_settings = pod_settings
        self.nodes: dict[str, migration.Node] = {}
        self.node_states: dict[str, str] = {}  # core/nodeloss.py: Ready, Unreachable or Dead
        self.storage_pools: dict[str, dict] = {}   # StoragePool objects by name
        self.pools_listed = False                   # listed from the API once, before the watch fills it
        self.migrations = Migrations(self, namespace)
        self.devices = Allocator(self)
        # Set while this replica holds the leadership (always, without leader election).
        self.leading = threading.Event()
        self.leading.set()
        # Set once the watches had delivered everything that existed when it began to lead.
        self.synced = threading.Event()

    def active(self) -> bool:
        return self.leading.is_set() and self.synced.is_set()

    def lead(self) -> None:
        """Just elected (or started without election): once the caches hold what the API
        lists, act on all of it (the orphan checks wait for the next resync, as after a
        start). In a thread of its own: the elector must go on renewing meanwhile."""
        threading.Thread(target=self._take_over, name="take-over", daemon=True).start()

    def _take_over(self) -> None:
        began = time.monotonic()
        self.wait_for_caches()
        self.migrations.acting_since = now()
        self.synced.set()
        log.info("acting: the caches held all the API lists after %.1fs", time.monotonic() - began)
        for uid in list(self.vms):
            self.submit(uid)
        self.migrations.kick()
        self.enqueue("judge-pools", self.judge_pools)
        self.enqueue("reclaim-devices", self.devices.reclaim)

    def wait_for_caches(self) -> None:
        """Until every object the API lists is in the caches the watches fill: a leader just
        started acts on none before (a running VM whose pod it has not seen yet would be
        placed anew, a move handed over without its Migration). An object deleted meanwhile
        leaves the next list. After SYNC_PATIENCE it acts anyway, saying what it lacks."""
        deadline, missing = time.monotonic() + SYNC_PATIENCE, None
        while time.monotonic() < deadline:
            try:
                missing = self._not_yet_cached()
            except Exception as e:  # noqa: BLE001 - the API may be away a moment; ask again
                log.warning("listing what the caches must hold: %s", e)
            if missing == []:
                return
            time.sleep(1)
        missing = missing or []
        log.warning("acting on incomplete caches after %ss; not yet delivered: %s", SYNC_PATIENCE,
                    ", ".join(missing[:10]) if missing else "(the API did not answer)")

    def _not_yet_cached(self) -> list[str]:
        cached_pods = {uid for pods in list(self.pods.values()) for uid in pods}
        wanted = {
            "VirtualMachine": ({o["metadata"]["uid"] for o in kube.list_objects(names.VMS)}, set(self.vms)),
            "Migration": ({o["metadata"]["uid"] for o in kube.list_objects(migration.PLURAL)},
                          set(self.migrations.migrations)),
            "PassthroughDevice": ({o["metadata"]["name"] for o in kube.list_objects(names.DEVICES)},
                                  set(self.devices.objects)),
            "StoragePool": ({o["metadata"]["name"] for o in kube.list_objects(pools.PLURAL)},
                            set(self.storage_pools)),
            "Pod": (kube.pod_uids(POD_SELECTOR), cached_pods),
            "Node": (kube.node_names(), set(self.nodes)),
        }
        return [f"{kind} {key}" for kind, (listed, cached) in wanted.items() for key in sorted(listed - cached)]

    def observe_node(self, node: dict, deleted: bool = False) -> None:
        name = node["metadata"]["name"]
        before = self.nodes.pop(name, None)
        state = nodeloss.node_state(None if deleted else node)
        if self.node_states.get(name, nodeloss.READY) != state and self.active():
            for uid, body in list(self.vms.items()):  # its VMs say so, or are released from it
                if name in ((body.get("status") or {}).get("nodeName"),
                            (body["metadata"].get("labels") or {}).get(NODE_LABEL)):
                    self.submit(uid)
        self.node_states[name] = state
        if deleted:
            if self.active():
                self.devices.node_deleted(name)
            return
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        self.nodes[name] = migration.Node(name, dict(node["metadata"].get("labels") or {}),
                                          schedulable=ready and not (node.get("spec") or {}).get("unschedulable"),
                                          being_emptied=migration.being_emptied(node))
        if before is not None and not before.schedulable and self.nodes[name].schedulable and self.active():
            self.migrations.node_uncordoned(name)

    def observe_pool(self, body: dict, deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        if deleted:
            self.storage_pools.pop(name, None)
        else:
            self.storage_pools[name] = body

    def pool_specs(self) -> dict[str, pools.StoragePoolSpec]:
        return pools.specs_of(self.storage_pools)

    def judge_pools(self) -> None:
        """Each StoragePool's Ready condition from its nodes' reports; written on change."""
        if not self.active():
            return
        ready_nodes = {n.name: n.labels for n in list(self.nodes.values()) if n.schedulable}
        for name, spec in self.pool_specs().items():
            body = self.storage_pools.get(name)
            if body is None:
                continue
            status = body.get("status") or {}
            ok, reason, message = pools.readiness(spec, status.get("nodes") or {}, ready_nodes)
            generation = body["metadata"].get("generation")
            current = conditions.get(status.get("conditions"), "Ready") or {}
            if (current.get("status"), current.get("reason"), current.get("message"),
                    status.get("observedGeneration")) == (str(ok), reason, message, generation):
                continue
            merged = conditions.set_condition(status.get("conditions"), "Ready", ok, reason, message, generation)
            self.observe_pool(kube.patch_status(None, name, {"conditions": merged, "observedGeneration": generation},
                                                plural=pools.PLURAL))

    def storage_refusal(self, vm: vmspec.VM) -> str | None:
        """Pools the VM may not use (unknown, not for its namespace, unfit for its disks).
        A pool the cache lacks is read from the API first: just after a restart the watch
        may not have listed it yet, and a valid VM must not be refused for that."""
        if not self.pools_listed:  # once: a cluster may rightly have none
            for obj in kube.list_objects(pools.PLURAL):
                self.observe_pool(obj)
            self.pools_listed = True
        for name in pools.vm_pools(vm.spec, default=None):
            if name not in self.storage_pools and (obj := kube.get_object(None, name, pools.PLURAL)):
                self.observe_pool(obj)
        refusal = pools.refusal(vm.spec, vm.namespace, self.pool_specs())
        return str(refusal) if refusal else None

    def volume_taken(self, vm: vmspec.VM) -> str | None:
        """A volume this VM would write that another VM already attaches writable (at
        admission: a scan of every cached VM, so not on each reconcile)."""
        wanted = pools.writable_volumes(vm.spec)
        for other in self._cached_vms() if wanted else ():
            if (other.namespace, other.name) == (vm.namespace, vm.name):
                continue
            for key in wanted.keys() & pools.writable_volumes(other.spec).keys():
                return (f"{wanted[key]}: volume {key[1]} of StoragePool {key[0]} is already attached writable by "
                        f"VirtualMachine {other.namespace}/{other.name}")
        return None

    def _cached_vms(self):
        """Every cached VM whose spec parses (one that does not was refused, or never ran)."""
        for body in list(self.vms.values()):
            meta = body["metadata"]
            try:
                yield vmspec.parse(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {})
            except SpecError:
                continue

    def pool_users(self, pool: str) -> list[str]:
        """The VMs (namespace/name) whose spec uses the pool, the default pool included."""
        default = pools.default_pool(self.pool_specs())
        return sorted(f"{vm.namespace}/{vm.name}" for vm in self._cached_vms()
                      if pool in pools.vm_pools(vm.spec, default))

    def observe_vm(self, body: dict, deleted: bool = False) -> None:
        super().observe_vm(body, deleted)
        if deleted and vm_has_devices(body) and self.active():
            uid = body["metadata"]["uid"]
            self.enqueue(("release-devices", uid), lambda: self.devices.release(uid))
        self.migrations.kick()

    def observe_pod(self, pod: dict, deleted: bool = False) -> None:
        super().observe_pod(pod, deleted)
        if (pod["metadata"].get("labels") or {}).get(reservation.ROLE_LABEL) == migration.TARGET_ROLE:
            self.migrations.kick()

    def resync(self) -> None:
        """Through the queue, as every VM's pass: a call that hangs holds one worker, never
        the resync's own thread."""
        if not self.active():
            return
        super().resync()
        self.enqueue("judge-pools", self.judge_pools)
        self.migrations.kick()
        self.enqueue("reclaim-devices", self.devices.reclaim)
        self.enqueue("release-orphan-devices", self.devices.release_orphans)

    def node_state(self, node: str) -> str:
        """A node the watch has not delivered (just after a start) is read from the API."""
        if node not in self.node_states:
            self.node_states[node] = nodeloss.node_state(kube.get_node(node))
        return self.node_states[node]

    def handle(self, body: dict) -> None:
        meta, status = body["metadata"], dict(body.get("status") or {})
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        node = status.get("nodeName") or (meta.get("labels") or {}).get(NODE_LABEL)
        gate = steps.controller_gate(self.node_state(node) if node else nodeloss.READY, status, node,
                                     bool(meta.get("deletionTimestamp")))
        if gate == steps.RELEASE_LOST:
            return self._release_from_lost_node(body, node)
        if gate == steps.REPORT_UNREACHABLE:
            ready = conditions.get(status.get("conditions"), "Ready") or {}
            if status.get("phase") in ACTIVE_PHASES and ready.get("reason") != "NodeUnreachable":
                self.write_status(body, self.with_condition(body, "Ready", None, "NodeUnreachable",
                                                            nodeloss.unreachable_message(node)))
                self.event(body, "NodeUnreachable", nodeloss.unreachable_message(node), warning=True)
            return
        if gate == steps.HAND_OVER:
            return self.migrations.hand_over(body)
        if gate == steps.WAIT:
            return
        node_label = (meta.get("labels") or {}).get(NODE_LABEL)
        try:
            vm = vmspec.parse(ns, name, uid, body.get("spec") or {})
        except SpecError as e:
            if not node_label:  # once placed, the agent reports
                status = self.with_condition(body, "Ready", False, "InvalidSpec", str(e))
                status = self.with_condition(body, "Stalled", True, "InvalidSpec", str(e), base=status)
                self.write_status(body, {**status, "phase": "Failed"})
            return
        pod = self.reservation_of(ns, name, status.get("nodeName"))
        if not lifecycle.wants_running(vm.run_strategy, meta.get("annotations") or {}, status):
            return self._parked(body, pod, node_label, status)

        # Only before placement: a placed VM is its agent's to report (a pool or CPU label
        # that flaps on its node must not turn a running guest's phase back to Pending).
        problem = self._precheck(vm) if pod is None and not node_label else None
        if problem:
            return self._pending(body, status, *problem)
        step = steps.controller_placement(status, node_label, pod, bool(vm.spec.host_devices))
        if step == steps.PLACE:
            return self._place(body, vm, status)
        if step == steps.UNSCHEDULED:
            return self._unscheduled(body, pod)
        if step == steps.HAND_OFF:
            bound = pod["spec"]["nodeName"]
            if status.get("phase") not in ACTIVE_PHASES or status.get("nodeName") != bound:
                self._starting(body, bound)
            self.hand_off(body, bound)
            self.event(body, "Scheduled", f"placed on {bound}")
        # WAIT, DONE: once handed off, the status is the agent's to write.

    def _place(self, body: dict, vm: vmspec.VM, status: dict) -> None:
        """Its devices allocated (if any), then its reservation pod for kube-scheduler."""
        meta, node = body["metadata"], None
        if vm.spec.host_devices:
            try:
                alloc = self.devices.allocate(vm)
            except passthrough.Refusal as e:
                self._pending(body, {**status, "hostDevices": None}, e.reason, str(e))
                self.devices.release(meta["uid"])  # nothing runs: hold nothing while waiting
                return
            status["hostDevices"], node = self.devices.status_of(alloc), alloc.node
        # Ready=False before the pod exists, so it never lands after the binding's "Starting".
        status = self.with_condition(body, "Ready", False, "Scheduling",
                                     "waiting for the reservation pod to be scheduled", base=status)
        status = self.with_condition(body, "Scheduled", False, "Pending", "reservation pod created",
                                     base=status)
        status = self.with_condition(body, "Reconciling", True, "Scheduling", "placing the VM", base=status)
        status["conditions"] = conditions.unstall(status["conditions"], meta.get("generation"), "the VM is being placed")
        if status.get("phase") not in ACTIVE_PHASES:
            status["phase"] = "Scheduling"
        self.write_status(body, {**status, "observedGeneration": meta.get("generation")})
        if kube.create_pod(reservation.reservation_pod(vm, node, self.pod_settings)):
            self.event(body, "Scheduling", f"reservation pod {reservation.pod_name(meta['name'])} created")

    def _release_from_lost_node(self, body: dict, node: str) -> None:
        """`node` is known dead: what ran there no longer does. Its pods go at once, a move
        from it fails, a VM that ran there is recorded as stopped (stopReason NodeLost, so
        its runStrategy decides where it runs next), and the node's label and finalizer
        leave the VM (a deletion then completes; its disks stay in their pool)."""
        meta, status = body["metadata"], dict(body.get("status") or {})
        ns, name = meta["namespace"], meta["name"]
        for pod in self.pods_of(ns, name) + self.pods_of(ns, name, migration.TARGET_ROLE):
            if (pod.get("spec") or {}).get("nodeName") == node:
                kube.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"), force=True)
        message = nodeloss.lost_message(node, deleted=node not in self.nodes,
                                        vm_deleting=bool(meta.get("deletionTimestamp")))
        if status.get("nodeName") == node:
            record = status.get("migration") or {}
            current = kube.get_object(ns, record["name"], migration.PLURAL) if record.get("name") else None
            if current is not None and (current.get("status") or {}).get("phase") not in migration.FINAL_PHASES:
                write_migration_status(ns, record["name"], {"reason": nodeloss.NODE_LOST, "message": message},
                                       "Failed", current)
            if not meta.get("deletionTimestamp"):
                status = self.with_condition(body, "Ready", False, nodeloss.NODE_LOST, message)
                self.write_status(body, {**status, "phase": "Stopped", "nodeName": None, "migration": None,
                                         "hostDevices": None, "interfaces": None,
                                         "stopReason": nodeloss.NODE_LOST, "stopTime": now()})
            self.devices.release(meta["uid"])
        finalizers = meta.get("finalizers") or []
        changes = []
        if FINALIZER_PREFIX + node in finalizers:
            changes.append({"op": "replace", "path": "/metadata/finalizers",
                            "value": [f for f in finalizers if f != FINALIZER_PREFIX + node]})
        if (meta.get("labels") or {}).get(NODE_LABEL) == node:
            changes.append({"op": "remove", "path": "/metadata/labels/" + NODE_LABEL.replace("/", "~1")})
        if changes:
            guard = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers}] if finalizers else []
            self.remember(body, kube.json_patch(ns, name, guard + changes))
            self.event(body, nodeloss.NODE_LOST, message, warning=True)
            log.warning("VM %s/%s: %s", ns, name, message)

    def _pending(self, body: dict, status: dict, reason: str, message: str) -> None:
        """Held back before any pod exists: Pending, with the reason on Ready and Scheduled,
        and on Stalled when only a change ends the wait (conditions.STALLING_PENDING_REASONS)."""
        before = next((c for c in status.get("conditions") or [] if c.get("type") == "Scheduled"), {})
        status = self.with_condition(body, "Ready", False, reason, message, base=status)
        status = self.with_condition(body, "Scheduled", False, reason, message, base=status)
        if reason in conditions.STALLING_PENDING_REASONS:
            status = self.with_condition(body, "Stalled", True, reason, message, base=status)
        else:
            status["conditions"] = conditions.unstall(status["conditions"], body["metadata"].get("generation"),
                                                      f"waiting: {reason}")
        if self.write_status(body, {**status, "phase": "Pending",
                                    "observedGeneration": body["metadata"].get("generation")}) \
                and before.get("message") != message:
            self.event(body, reason, message, warning=True)

    def _starting(self, body: dict, node: str) -> None:
        status = self.with_condition(body, "Scheduled", True, "ReservationBound", f"reservation pod bound to {node}")
        status = self.with_condition(body, "Reconciling", True, "Starting", f"starting on {node}", base=status)
        self.write_status(body, {**status, "phase": "Starting", "nodeName": node})

    def hand_off(self, body: dict, node: str) -> None:
        """Label the VM for `node`'s agent and give that agent the finalizer, in one patch."""
        meta = body["metadata"]
        current = meta.get("finalizers")
        finalizers = [f for f in current or [] if not f.startswith(FINALIZER_PREFIX)]
        # Test the finalizers (not resourceVersion: our own status write just moved it).
        ops = [{"op": "test", "path": "/metadata/finalizers", "value": current}] if current else []
        if not meta.get("labels"):
            ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
        ops += [{"op": "add", "path": "/metadata/labels/" + NODE_LABEL.replace("/", "~1"), "value": node},
                {"op": "add", "path": "/metadata/finalizers", "value": finalizers + [FINALIZER_PREFIX + node]}]
        self.remember(body, kube.json_patch(meta["namespace"], meta["name"], ops))

    def _unscheduled(self, body: dict, pod: dict) -> None:
        cond = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
                    None)
        if cond and cond.get("status") == "False":
            message = f"kube-scheduler: {cond.get('message', '')}".strip()
            status = self.with_condition(body, "Scheduled", False, cond.get("reason") or "Unschedulable", message)
            status = self.with_condition(body, "Ready", False, "Unschedulable", message, base=status)
            self.write_status(body, {**status, "phase": "Pending"})  # waits for room, as its pod does

    def _parked(self, body: dict, pod: dict | None, node_label: str | None, status: dict) -> None:
        """Not supposed to run: once no agent runs it, release the reservation."""
        if node_label and status.get("nodeName"):
            return  # its agent is stopping it
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            kube.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"].get("uid"))
        if status.get("phase") != "Stopped" or status.get("hostDevices"):
            status = {**status, "conditions": conditions.drop(status.get("conditions"), "Ready")}  # done: see drop()
            self.write_status(body, {**status, "phase": "Stopped", "nodeName": None, "hostDevices": None,
                                     "observedGeneration": body["metadata"].get("generation")})
        if vm_has_devices(body):  # after status.hostDevices is cleared, so reclaim() cannot re-hold them
            self.devices.release(body["metadata"]["uid"])

    def _unoffered(self, vm: vmspec.VM) -> dict[str, list[str]]:
        """The VM's node requirements that no node's labels offer, by kind: cpu-model,
        cpu-feature, pool. Nothing before the first node is seen (no labels to judge by)."""
        out: dict[str, list[str]] = {}
        for key in reservation.node_requirements(vm) if self.nodes else ():
            if not any(n.labels.get(key) == "true" for n in self.nodes.values()):
                out.setdefault(key.split(".", 1)[0], []).append(key.split("/", 1)[1])
        return out

    def unknown_cpu_model(self, vm: vmspec.VM) -> str | None:
        """A named CPU model that no node offers: a typo, refused at admission."""
        models = self._unoffered(vm).get("cpu-model")
        return f"spec.cpu.model: no node offers CPU model {models[0]}" if models else None

    def _precheck(self, vm: vmspec.VM) -> tuple[str, str] | None:
        """What no node can offer, said before a pod waits for it forever. (A cloud-init
        Secret not made yet is the kubelet's to wait for: no Kopfvirt process reads Secrets.)"""
        refusal = self.storage_refusal(vm)
        if refusal:
            return "StoragePoolRefused", refusal
        refusal = reservation.policy_refusal(vm, self.pod_settings.policy)
        if refusal:
            return "PodPolicyRefused", refusal
        unoffered = self._unoffered(vm)
        if unoffered.get("pool"):
            return "StoragePoolNotFound", f"no node has StoragePool {unoffered['pool'][0]} active"
        if unoffered.get("cpu-model"):
            return "UnknownCPUModel", self.unknown_cpu_model(vm)
        if unoffered.get("cpu-feature"):
            return "CPUFeaturesUnavailable", f"spec.cpu.features: no node offers {', '.join(unoffered['cpu-feature'])}"
        return None
