"""The node agent's reconciler: one VM's desired state against its libvirt domain.

Level-based and idempotent. It runs on a VM's watch events, on libvirt lifecycle
events, on reservation-pod events and on a slow resync, one VM at a time (a lock per
UID). It writes a VM's status only when what it would write differs from what is there,
so a start costs it one write.
"""

from __future__ import annotations

import logging
import threading
import time

import libvirt
from prometheus_client import Histogram

from .. import NODE_TLS_DIR, names
from ..clients import images, kube, kubelet, serial_logs
from ..clients.libvirt import DomainConflict, Hypervisor
from ..core import conditions, disks, domainxml, lifecycle, pools, reservation, steps, vmspec
from ..core.vmspec import SpecError
from ..reconciling import Reconciler, now
from .devices import DeviceUnavailable, Devices, load_pci_ids
from .migrator import Migrator
from .storage import PoolNotReady, Pools
from .strays import Strays

log = logging.getLogger("kopfvirt.agent")
NODE_LABEL = names.NODE_LABEL
FINALIZER_PREFIX = names.AGENT_FINALIZER_PREFIX
ACTIVE = steps.DOMAIN_UP  # domain states in which QEMU runs
STOP_EVENT_WINDOW = 10.0  # seconds within which a stopped event is taken as our own stop's
DEVICE_RETRY_SECONDS = 20.0  # after a failed start with host devices: no new bind before this
_SECONDS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)
START_SECONDS = Histogram("kopfvirt_vm_start_seconds", "From a VM's creation to its guest's first start (as its "
                          "agent records it: whole seconds).", buckets=_SECONDS)
STOP_SECONDS = Histogram("kopfvirt_vm_stop_seconds", "From a stop asked for (spec or plugin) to the guest gone.",
                         buckets=_SECONDS)


class NotReady(Exception):
    """Something the VM needs is missing on this node; reported as a condition, retried on resync."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Agent(Reconciler):
    def __init__(self, node: str, uri: str, virt_type: str, networks: dict[str, str],
                 hidden_cpu_features: tuple[str, ...] = (), tls_dir: str = NODE_TLS_DIR,
                 sysfs_root: str = "/sys", pci_ids: str | None = None, namespace: str = "kopfvirt-system",
                 lease_dir: str | None = None, serial_log_max_bytes: int = 2 << 20, kubelet_dir: str = "/var/lib/kubelet",
                 proc_root: str = "/proc"):
        super().__init__(log)
        self.kubelet_dir = kubelet_dir  # where the cloud-init Secrets of its VMs' pods are mounted
        self.component = f"kopfvirt-agent/{node}"
        self.node, self.virt_type, self.networks = node, virt_type, networks
        self.hidden_cpu_features = tuple(hidden_cpu_features)
        # Each guest's serial log is cut past this (the Node's annotation may say otherwise).
        self.serial_log_default = self.serial_log_max_bytes = serial_log_max_bytes
        self.tls_dir = tls_dir  # the node's certificate for migration (agent/tls.py)
        self.migrator = Migrator(self)
        self.strays = Strays(self)
        self.finalizer = FINALIZER_PREFIX + node
        self.stopping: dict[str, float] = {}           # domains we stop ourselves -> until when
        self.shutdowns: dict[str, float] = {}          # guests asked to power off -> grace end
        self.guest_stops: dict[str, tuple[str, str]] = {}  # uid -> (reason, time), not yet written
        # uid -> (retry after, the failure): a start with devices that failed is not retried on
        # the domain events its own define and undefine raise, only after a pause.
        self.device_failures: dict[str, tuple[float, NotReady]] = {}
        self.hv = Hypervisor(uri, on_event=self._domain_event, on_reconnect=self._reconnected)
        self.devices = Devices(node, sysfs_root, load_pci_ids(pci_ids), namespace, self.hv, self.event, proc_root)
        self.pools = Pools(node, self.hv, lease_dir)
        # The Node's KopfvirtLibvirtReady as last written (handlers.report_libvirt): a resync
        # that finds it unchanged reads and writes nothing.
        self.libvirt_reported: tuple[str, str, str] | None = None

    # -- inputs -------------------------------------------------------------------------
    def _domain_event(self, uuid: str, event: str, detail: str) -> None:
        log.info("libvirt: domain %s %s (%s)", uuid, event, detail)
        ours = self.stopping.get(uuid, 0) > time.monotonic()
        if event == "stopped" and ours:
            self.stopping.pop(uuid, None)  # our own stop's event, which may arrive after it returned
        elif event == "stopped" and detail not in ("migrated", "saved"):
            self.guest_stops[uuid] = (lifecycle.stop_reason_for_event(detail), now())
        if uuid in self.vms:
            self.submit(uuid)
        elif event in ("started", "resumed", "defined"):
            self.strays.notice()  # a domain of no VM of this node's: is it a stray copy?

    def _reconnected(self) -> None:
        self.enqueue("resync", self.resync)

    def cap_serial_logs(self) -> None:
        for name in serial_logs.rotate(self.serial_log_max_bytes):
            log.info("serial log %s cut to %d bytes (the older part kept as %s.1)", name,
                     self.serial_log_max_bytes, name)

    # -- the loop -----------------------------------------------------------------------
    def on_error(self, body: dict, error: Exception) -> None:
        if isinstance(error, libvirt.libvirtError) and error.get_error_code() in (
                libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC):
            self.write_status(body, self.with_condition(body, "Ready", None, "LibvirtUnavailable",
                                                        f"libvirtd on {self.node} is unreachable: {error}"))
        else:
            super().on_error(body, error)

    def handle(self, body: dict, reread: bool = False) -> None:
        meta, status = body["metadata"], dict(body.get("status") or {})
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if meta.get("deletionTimestamp"):
            return self._delete(body)
        try:
            vm = vmspec.parse(ns, name, uid, body.get("spec") or {})
        except SpecError as e:
            return self._failed(body, "InvalidSpec", str(e), stalled=True)
        if (status.get("migration") or {}).get("sourceNode") == self.node:
            return self.migrator.recover(body, status)  # a move from here runs, or ended unrecorded

        # Never on two nodes: this node runs the VM only while its reservation pod is bound
        # here and the controller has not placed it elsewhere.
        pod = self.reservation_of(ns, name, self.node)
        if reread or pod is None or (pod.get("spec") or {}).get("nodeName") != self.node:
            # None of its own seen yet: ask the API, for this agent's pod watch may lag its VM
            # watch (after a migration's hand-off, the relabelled target pod), and a running
            # guest would be stopped as if evicted. A pod of its own seen going is lost.
            pod = kube.reservation_pod_on(ns, name, self.node)
        held_here = steps.holds_node(pod, status, self.node)
        # Read the domain before taking a recorded stop event, so a stop between the two is
        # still seen: a defined, shut-off domain of a VM we run means the guest stopped.
        state, why = self.hv.state_and_reason(uid)
        if not reread and steps.agent_must_reread(status, self.node, held_here, state):
            fresh = kube.get_object(ns, name)
            if fresh is None or fresh["metadata"]["uid"] != uid or \
                    (fresh["metadata"].get("labels") or {}).get(NODE_LABEL) != self.node:
                self.vms.pop(uid, None)  # no longer this node's: a copy left here is a stray
                return
            self.remember(body, fresh)
            return self.handle(body, reread=True)
        stop = self.guest_stops.pop(uid, None)
        if stop is None and state in ("shutoff", "crashed") and status.get("phase") in ("Running", "Paused"):
            stop = (lifecycle.stop_reason_for_event(why), now())
        if stop:
            status.update(stopReason=stop[0], stopTime=stop[1])
            self.event(body, stop[0], f"the guest stopped by itself on {self.node} ({stop[0]})",
                       warning=stop[0] == lifecycle.GUEST_CRASHED)
        annotations = meta.get("annotations") or {}
        action = steps.agent_action(status, self.node, held_here, state,
                                    lifecycle.wants_running(vm.run_strategy, annotations, status))
        if action == steps.LET_GO:  # (else the controller and this agent would overwrite each other's phase)
            self.hv.remove(uid)
            return
        if action == steps.EVICT:
            stop = ("Evicted", now())
            status.update(stopReason="Evicted", stopTime=stop[1])
            self.event(body, "Evicted", f"reservation pod gone: stopping the VM on {self.node} "
                       f"(evictionStrategy {vm.spec.eviction_strategy})", warning=True)
        if action == steps.RUN:
            status = self._run(body, vm, pod, annotations, status, state)
        else:
            # A stop recorded this round (by the guest, or an eviction) keeps its reason.
            status = self._stop(body, vm, status, state, requested=stop is None)
        # kstatus: done reconciling once the domain is where the spec wants it (in the same write).
        settled = status.get("phase") in ("Running", "Paused", "Stopped")
        reason = "Reconciled" if settled else (status.get("phase") or "InProgress")
        status["conditions"] = conditions.set_condition(
            status.get("conditions"), "Reconciling", not settled, reason,
            "" if settled else "working towards the spec", meta.get("generation"))
        if settled and status["phase"] != "Running":  # stopped or paused as asked: done, not Ready
            status["conditions"] = conditions.drop(status["conditions"], "Ready")
        self.write_status(body, status)

    def _run(self, body: dict, vm: vmspec.VM, pod: dict | None, annotations: dict, status: dict,
             state: str) -> dict:
        """`state` is the domain's, as handle() read it at the start of this reconcile."""
        uid, generation = vm.uid, body["metadata"].get("generation")
        if uid in self.shutdowns and state in ACTIVE:
            # A guest asked to power off cannot be asked back: the stop ends first (its event,
            # or the destroy after the grace), keeping its reason, and then the guest starts
            # again. Called off here, its power-off would read as the guest's own.
            if not self._shut_down(vm, state):
                status["phase"] = "Stopping"
                return status
            state = "shutoff"
        self.shutdowns.pop(uid, None)
        if state in ("running", "paused") and lifecycle.restart_due(annotations, status):
            self._stop_domain(vm)
            state = "shutoff"
            self.event(body, "Restarting", "restart requested")
        if state not in ACTIVE:
            try:
                self._prepare_and_start(vm, body, pod, status.get("hostDevices") or [])
            except NotReady as e:
                status["phase"] = "Pending"
                status["conditions"] = conditions.set_condition(status.get("conditions"), "Ready", False,
                                                                e.reason, str(e), generation)
                return status
            started = now()
            if not (body.get("status") or {}).get("startTime"):  # its first start
                START_SECONDS.observe(lifecycle.seconds_between(body["metadata"]["creationTimestamp"], started))
            status["startTime"] = started
            state = "running"
            self.event(body, "Started", f"guest started on {self.node}")
        if vm.spec.paused and state == "running":
            self.hv.pause(uid)
            state = "paused"
        elif not vm.spec.paused and state == "paused":
            self.hv.resume(uid)
            state = "running"
        status.setdefault("startTime", now())
        paused = state == "paused"
        status.update(phase="Paused" if paused else "Running", nodeName=self.node, domainUUID=uid,
                      observedGeneration=generation)
        conds = conditions.set_condition(status.get("conditions"), "Ready", not paused,
                                         "Paused" if paused else "DomainRunning",
                                         "the guest is paused" if paused else f"the guest runs on {self.node}",
                                         generation)
        conds = conditions.set_condition(conds, "Paused", paused, "Paused" if paused else "NotPaused",
                                         "spec.paused is true" if paused else "", generation)
        conds = conditions.unstall(conds, generation, f"the guest runs on {self.node}")
        trouble = self.pools.trouble(vm)
        conds = conditions.set_condition(conds, "StorageReady", trouble is None,
                                         "StoragePoolFailed" if trouble else "StoragePoolsActive",
                                         trouble or "every StoragePool the VM uses is active here", generation)
        devices = [h["device"] for h in status.get("hostDevices") or []]
        status["conditions"] = conditions.set_condition(
            conds, "Migratable", not devices, "HostDevice" if devices else "Migratable",
            f"passed-through device(s) {', '.join(devices)} cannot move with the guest" if devices
            else "a Migration's preflight judges each target", generation)
        macs = self.hv.interface_addresses(uid)
        status["interfaces"] = [{"name": i.name, "macAddress": vm.mac_address(i.name),
                                 "ipAddresses": macs.get(vm.mac_address(i.name), [])}
                                for i in vm.spec.interfaces]
        return status

    def _prepare_and_start(self, vm: vmspec.VM, body: dict, pod: dict | None, allocated: list[dict]) -> None:
        try:
            plan = self.pools.plan(vm)
        except PoolNotReady as e:
            raise NotReady(e.reason, str(e)) from None
        cloud_init, secrets = {}, self._cloud_init_secrets(vm, pod)
        for spec_disk in vm.spec.disks:
            if spec_disk.cloud_init:
                ref = spec_disk.cloud_init.secret_ref
                cloud_init[spec_disk.name] = disks.cloud_init_files(vm, spec_disk.name, ref and secrets[ref.name])
        try:
            images.ensure(plan.disks, plan.own_dir, cloud_init)
            images.ensure_leases(plan)
        except images.DiskError as e:
            raise NotReady("DiskError", str(e)) from None
        if vm.spec.host_devices:
            return self._start_with_devices(vm, body, plan, allocated)
        xml = domainxml.domain_xml(vm, plan, self.virt_type, self.networks)
        try:
            self.hv.ensure_running(vm.domain_name, vm.uid, xml)
        except DomainConflict as e:
            raise NotReady("DomainConflict", str(e)) from None

    def _cloud_init_secrets(self, vm: vmspec.VM, pod: dict | None) -> dict[str, dict[str, str]]:
        """The data of the Secrets the VM's cloud-init disks name, by name, as the kubelet
        mounted them into its reservation pod here (core/reservation.cloud_init_volumes)."""
        wanted = reservation.cloud_init_volumes(vm)
        if not wanted:
            return {}
        if pod is None:
            raise NotReady("CloudInitUnavailable", f"no reservation pod of {vm.name} on {self.node} to read "
                                                   f"its cloud-init Secrets from")
        meta = pod["metadata"]
        mounted = {v["name"]: v["secret"].get("secretName") for v in (pod.get("spec") or {}).get("volumes") or []
                   if v.get("secret")}
        out = {}
        for secret, volume in wanted.items():
            if mounted.get(volume) != secret:  # a pod's volumes are fixed when it is made
                raise NotReady("CloudInitUnavailable", f"pod {meta['name']} was made for other cloud-init "
                                                       f"Secrets than {secret}: restart the VM (kubectl kopfvirt "
                                                       f"stop, then start) to make it again")
            data = kubelet.secret_volume(reservation.cloud_init_path(self.kubelet_dir, meta["uid"], volume),
                                         disks.CLOUD_INIT_KEYS)
            if data is None:
                raise NotReady("CloudInitUnavailable", f"waiting for the kubelet to mount Secret {secret} into pod "
                                                       f"{meta['name']} on {self.node}; a Secret that does not "
                                                       f"exist keeps it waiting (kubectl -n {vm.namespace} "
                                                       f"describe pod {meta['name']})")
            out[secret] = data
        return out

    def _start_with_devices(self, vm: vmspec.VM, body: dict, plan: list, allocated: list[dict]) -> None:
        """Bind the devices allocated here (their groups), start, and give them back if the
        start fails."""
        here = [h for h in allocated if h.get("node") == self.node]
        failed = self.device_failures.get(vm.uid)
        if failed and failed[0] > time.monotonic():
            try:  # a device gone or changed since is said at once, not after the retry wait
                self.devices.check_held(vm.uid, here)
            except DeviceUnavailable as e:
                if e.reason != failed[1].reason:
                    self.event(body, e.reason, str(e), warning=True)
                raise NotReady(e.reason, str(e)) from None
            raise failed[1]
        try:
            self._bind_and_start(vm, body, plan, here)
            self.device_failures.pop(vm.uid, None)
        except NotReady as e:
            if e.reason != "DevicesNotAllocated":  # that one waits on the controller, not on us
                self.device_failures[vm.uid] = (time.monotonic() + DEVICE_RETRY_SECONDS, e)
            raise

    def _bind_and_start(self, vm: vmspec.VM, body: dict, plan: list, here: list[dict]) -> None:
        wanted = sum(1 if h.device else h.count for h in vm.spec.host_devices)
        if len(here) < wanted:
            raise NotReady("DevicesNotAllocated", f"{len(here)} of {wanted} host devices allocated on {self.node}")
        with self.devices.lock:
            try:
                pairs = self.devices.bind(vm.uid, here)
            except DeviceUnavailable as e:
                self.event(body, e.reason, str(e), warning=True)
                raise NotReady(e.reason, str(e)) from None
            self.event(body, "DevicesBound", f"IOMMU groups of {', '.join(a for _, a in pairs)} bound to vfio-pci "
                                             f"on {self.node}")
            xml = domainxml.domain_xml(vm, plan, self.virt_type, self.networks, pairs)
            try:
                self.hv.ensure_running(vm.domain_name, vm.uid, xml)
            except (DomainConflict, libvirt.libvirtError) as e:
                self.hv.remove(vm.uid)
                self._devices_released(body)
                raise NotReady("DomainStartFailed", f"the domain with host devices did not start: {e}") from None

    def _devices_released(self, body: dict) -> None:
        restored = self.devices.repair()
        if restored:
            self.event(body, "DevicesRestored", f"{', '.join(restored)} given back to their host drivers "
                                                f"on {self.node}")

    def _stop_domain(self, vm: vmspec.VM) -> None:
        grace = vm.spec.termination_grace_period_seconds
        self.stopping[vm.uid] = time.monotonic() + grace + STOP_EVENT_WINDOW
        self.hv.stop(vm.uid, grace=grace)

    def _shut_down(self, vm: vmspec.VM, state: str) -> bool:
        """A graceful stop that holds no worker for its grace period: ask the guest to power
        off and come back on its stopped event or when the grace ends (a timer), then
        destroy what still runs. True once the domain is off."""
        uid, grace = vm.uid, vm.spec.termination_grace_period_seconds
        if state not in ACTIVE:
            self.shutdowns.pop(uid, None)
            return True
        deadline = self.shutdowns.get(uid)
        if deadline is None and state != "paused" and grace > 0:
            deadline = self.shutdowns[uid] = time.monotonic() + grace
            self.stopping[uid] = deadline + STOP_EVENT_WINDOW
            self.hv.shutdown(uid)
            timer = threading.Timer(grace, self.submit, (uid,))
            timer.daemon = True
            timer.start()
            return False
        if deadline is not None and time.monotonic() < deadline:
            return False
        self.stopping[uid] = time.monotonic() + STOP_EVENT_WINDOW
        self.hv.destroy(uid)
        self.shutdowns.pop(uid, None)
        return True

    def _stop(self, body: dict, vm: vmspec.VM, status: dict, state: str, requested: bool) -> dict:
        """Stop and undefine the domain; disks stay for the next start (on any node). While
        the guest shuts down the VM is Stopping; its reason is the one recorded first."""
        generation = body["metadata"].get("generation")
        first = status.get("phase") != "Stopping"
        if state in ACTIVE and requested and first:
            status.update(stopReason=lifecycle.REQUESTED, stopTime=now())
        if not self._shut_down(vm, state):
            status["phase"] = "Stopping"
            status["conditions"] = conditions.set_condition(
                status.get("conditions"), "Ready", False, "Stopping",
                f"the guest shuts down (terminationGracePeriodSeconds "
                f"{vm.spec.termination_grace_period_seconds})", generation)
            return status
        if state in ACTIVE or not first:
            self.event(body, "Stopped", f"guest stopped on {self.node}")
            if status.get("stopReason") == lifecycle.REQUESTED and status.get("stopTime"):
                STOP_SECONDS.observe(lifecycle.seconds_between(status["stopTime"], now()))
        self.hv.remove(vm.uid)
        self.device_failures.pop(vm.uid, None)
        if status.get("hostDevices"):
            self._devices_released(body)
        status.update(phase="Stopped", nodeName=None, interfaces=None, observedGeneration=generation)
        conds = conditions.set_condition(status.get("conditions"), "Ready", False, "Stopped",
                                         f"stopped ({status.get('stopReason', 'runStrategy')})", generation)
        status["conditions"] = conditions.set_condition(conds, "Paused", False, "NotPaused", "", generation)
        return status

    def _delete(self, body: dict) -> None:
        meta = body["metadata"]
        self.stopping[meta["uid"]] = time.monotonic() + STOP_EVENT_WINDOW
        self.shutdowns.pop(meta["uid"], None)
        self.hv.remove(meta["uid"])
        self.device_failures.pop(meta["uid"], None)
        if (body.get("status") or {}).get("hostDevices"):
            self._devices_released(body)
        self._remove_disks(body)
        serial_logs.remove(vmspec.domain_name(meta["namespace"], meta["name"]))
        finalizers = meta.get("finalizers") or []
        if self.finalizer in finalizers:
            self.remember(body, kube.json_patch(meta["namespace"], meta["name"], [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "replace", "path": "/metadata/finalizers",
                 "value": [f for f in finalizers if f != self.finalizer]}]))
        log.info("VM %s/%s deleted: domain and disks removed from %s", meta["namespace"], meta["name"], self.node)
        self.vms.pop(meta["uid"], None)

    def _remove_disks(self, body: dict) -> None:
        """The VM's own disks go with it, but those its diskDeletionPolicy (or their own)
        retains; named volumes and base images are the admin's."""
        meta = body["metadata"]
        try:
            vm = vmspec.parse(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {})
            directory = self.pools.own_dir(vm)
        except (SpecError, PoolNotReady) as e:  # nothing was made, or the pool is gone with them
            log.info("VM %s/%s: no disks to remove (%s)", meta["namespace"], meta["name"], e)
            return
        if not directory:
            return
        kept = disks.kept_on_delete(vm)
        images.remove(directory, keep=kept)
        if kept:
            pool = pools.own_pool(vm.spec, self.pools.specs())
            message = (f"kept {', '.join(kept)} (diskDeletionPolicy Retain) in StoragePool {pool}, "
                       f"directory {directory}")
            self.event(body, "DisksRetained", message)
            log.info("VM %s/%s deleted: %s", meta["namespace"], meta["name"], message)

    def _failed(self, body: dict, reason: str, message: str, stalled: bool) -> None:
        status = self.with_condition(body, "Ready", False, reason, message)
        if stalled:
            status["phase"] = "Failed"
            status = self.with_condition(body, "Stalled", True, reason, message, base=status)
        self.write_status(body, status)
