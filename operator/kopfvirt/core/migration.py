"""Migration rules (pure): what may move where, the options in effect, the target's
reservation pod, the queue, and how libvirt's job statistics read in our status.

The seed's rule: a VM on shared storage is bound to its host only by the CPU it was
given (cpu.incompatibility: its named model and required features; for host-model all
the source's features; for host-passthrough an identical CPU). A host device binds it
for good (offline migration only).
"""

from __future__ import annotations

import dataclasses

from .. import GROUP, names
from . import cpu, pools, reservation
from .conditions import drop, set_condition
from .vmspec import VM

PLURAL = names.MIGRATIONS
MIGRATION_LABEL = f"{GROUP}/migration"      # on the target pod: the Migration's name
SOURCE_NODE_LABEL = f"{GROUP}/source-node"  # on a Migration: the node whose agent moves it
TARGET_ROLE = "migration-target"            # reservation.ROLE_LABEL of a target pod until hand-off

# Built-in defaults of spec.options; the ConfigMap kopfvirt-migration overrides them.
DEFAULT_OPTIONS = {
    "bandwidthMiBps": 0, "maxDowntimeMs": 300, "completionTimeoutPerGiB": 150,
    "progressTimeoutSeconds": 150, "autoConverge": False, "postCopy": False, "copyStorage": False,
}
DEFAULT_LIMITS = {"parallelMigrationsPerCluster": 5, "parallelOutboundMigrationsPerNode": 2}
ACTIVE_PHASES = ("Scheduling", "TargetReady", "Running")
FINAL_PHASES = ("Succeeded", "Failed", "Cancelled")


def ended_at(body: dict) -> str | None:
    """When a Migration entered its final phase (its last phaseTransition), if it has."""
    status = body.get("status") or {}
    last = (status.get("phaseTransitions") or [{}])[-1]
    return last.get("time") if status.get("phase") in FINAL_PHASES and last.get("phase") == status["phase"] else None


def phase_conditions(conditions: list[dict] | None, phase: str, reason: str, message: str,
                     generation: int | None) -> list[dict]:
    """Ready, Reconciling and Stalled for a phase, as kstatus (Flux, kubectl wait, Argo CD's
    generic checks) reads them: a Migration under way is Reconciling, a Failed one Stalled,
    a Succeeded one Ready; a Cancelled one is over and no error (no Ready: conditions.drop)."""
    active, failed, done = phase not in FINAL_PHASES, phase == "Failed", phase == "Succeeded"
    why = reason or phase
    conditions = set_condition(conditions, "Ready", done, "Succeeded" if done else why,
                               message if failed else f"the Migration is {phase}", generation)
    conditions = set_condition(conditions, "Reconciling", active, phase if active else "Finished",
                               f"the Migration is {phase}" if active else "", generation)
    conditions = set_condition(conditions, "Stalled", failed, why if failed else "NotStalled",
                               message if failed else "", generation)
    return drop(conditions, "Ready") if phase == "Cancelled" else conditions


@dataclasses.dataclass(frozen=True)
class Node:
    """What the preflight needs of a node: its labels and whether it takes new pods."""

    name: str
    labels: dict[str, str]
    schedulable: bool = True
    being_emptied: bool = False  # see being_emptied()


# A node is being emptied (a drain, or the cluster autoscaler removing it): the only case in
# which an eviction moves a LiveMigrate VM off it.
AUTOSCALER_TAINT = "ToBeDeletedByClusterAutoscaler"


def being_emptied(node: dict | None) -> bool:
    spec = (node or {}).get("spec") or {}
    return bool(spec.get("unschedulable")) or any(t.get("key") == AUTOSCALER_TAINT for t in spec.get("taints") or [])


@dataclasses.dataclass(frozen=True)
class Verdict:
    node: str
    fit: bool
    reason: str
    message: str


def _parse_value(key: str, raw: str):
    if key in ("autoConverge", "postCopy", "copyStorage"):
        return raw.strip().lower() in ("true", "1", "yes")
    return int(raw) if raw.strip() else None


def cluster_config(config_map_data: dict[str, str] | None) -> tuple[dict, dict]:
    """(default options, limits) from the ConfigMap's data; unknown keys are ignored."""
    options, limits = dict(DEFAULT_OPTIONS), dict(DEFAULT_LIMITS)
    for key, raw in (config_map_data or {}).items():
        if key in options:
            options[key] = _parse_value(key, raw)
        elif key in limits:
            limits[key] = int(raw)
    return options, limits


def effective_options(spec_options: dict | None, defaults: dict) -> dict:
    """The spec's options over the cluster defaults; unset ones (None) are left out."""
    merged = {**defaults, **{k: v for k, v in (spec_options or {}).items() if v is not None}}
    return {k: v for k, v in merged.items() if v is not None}


def vm_refusal(vm: VM, vm_status: dict, mode: str, options: dict,
               pool_specs: dict[str, pools.StoragePoolSpec]) -> tuple[str, str] | None:
    """Why the VM cannot move at all, whatever the target: (reason, message) or None."""
    phase = vm_status.get("phase")
    if vm_status.get("migration"):
        return "AlreadyMigrating", f"VM {vm.name} is already moving (Migration {vm_status['migration']['name']})"
    if vm.spec.host_devices:  # its devices stay on the node; offline, they would need allocating anew
        held = [h["device"] for h in vm_status.get("hostDevices") or []] or [h.name for h in vm.spec.host_devices]
        return "HostDevice", (f"VM {vm.name} has host device(s) {', '.join(held)}: a passed-through device cannot "
                              f"move; stop the VM and start it where its devices are")
    if phase not in ("Running", "Paused") or not vm_status.get("nodeName"):
        return "VMNotRunning", f"VM {vm.name} is {phase or 'not started'}: only a running VM can migrate"
    local = pools.unshared_disks(vm.spec, pool_specs)
    if local and not options.get("copyStorage"):
        return "StorageNotShared", ("; ".join(f"disk {d} is in StoragePool {p}, which is not shared storage"
                                              for d, p in local) + ": set spec.options.copyStorage to copy "
                                                                   "these disks during the move")
    return None


def node_verdicts(vm: VM, source: str, nodes: list[Node], target_node: str | None = None,
                  node_selector: dict[str, str] | None = None) -> list[Verdict]:
    """Each node's fitness as a target, with the reason a user can act on. Capacity is
    judged by kube-scheduler when it binds the target pod."""
    requirements = reservation.node_requirements(vm)
    wanted = {**vm.spec.node_selector, **(node_selector or {})}
    source_labels = next((n.labels for n in nodes if n.name == source), {})
    out = []
    for n in sorted(nodes, key=lambda n: n.name):
        if n.name == source:
            out.append(Verdict(n.name, False, "SourceNode", "the VM runs here"))
            continue
        if target_node and n.name != target_node:
            out.append(Verdict(n.name, False, "NotTarget", f"spec.targetNode is {target_node}"))
            continue
        if not n.schedulable:
            out.append(Verdict(n.name, False, "NodeUnschedulable", "the node is cordoned or not ready"))
            continue
        mismatched = sorted(k for k, v in wanted.items() if n.labels.get(k) != v)
        if mismatched:
            out.append(Verdict(n.name, False, "NodeSelectorMismatch",
                               "lacks the label(s) " + ", ".join(f"{k}={wanted[k]}" for k in mismatched)))
            continue
        missing = [k for k in requirements if n.labels.get(k) != "true"]
        pools = [k.split("/", 1)[1] for k in missing if k.startswith("pool.")]
        cpu_refusal = cpu.incompatibility(vm.spec.cpu.model, requirements, source_labels, n.labels)
        if cpu_refusal:
            out.append(Verdict(n.name, False, "CPUIncompatible", cpu_refusal))
        elif pools:
            out.append(Verdict(n.name, False, "StoragePoolMissing", f"the node lacks storage pool(s) {', '.join(pools)}"))
        else:
            out.append(Verdict(n.name, True, "Fit", "CPU, storage and labels fit"))
    if target_node and not any(n.name == target_node for n in nodes):
        out.append(Verdict(target_node, False, "NodeNotFound", f"no node is named {target_node}"))
    return out


def preflight(vm: VM, vm_status: dict, spec: dict, options: dict, nodes: list[Node],
              pool_specs: dict[str, pools.StoragePoolSpec] | None = None
              ) -> tuple[tuple[str, str] | None, list[Verdict]]:
    """The whole preflight of a Migration spec: (refusal or None, each node's verdict)."""
    source = vm_status.get("nodeName")
    refusal = vm_refusal(vm, vm_status, spec.get("mode", "Live"), options, pool_specs or {})
    verdicts = node_verdicts(vm, source, nodes, spec.get("targetNode"), spec.get("nodeSelector"))
    if refusal is None and not any(v.fit for v in verdicts):
        unfit = [v for v in verdicts if v.reason not in ("SourceNode", "NotTarget")]
        reason = unfit[0].reason if len({v.reason for v in unfit}) == 1 else "NoNodeFits"
        if spec.get("targetNode") and spec.get("targetNode") == source:
            reason = "TargetIsSource"
        refusal = (reason, "no node fits: " + "; ".join(f"{v.node}: {v.message}" for v in verdicts if not v.fit))
    return refusal, verdicts


def target_pod_name(vm_name: str, migration_uid: str) -> str:
    return f"{reservation.pod_name(vm_name)}-{migration_uid[:8]}"


def target_pod(vm: VM, migration: str, migration_uid: str, source: str, target_node: str | None,
               node_selector: dict[str, str] | None,
               settings: reservation.PodSettings = reservation.DEFAULT_POD_SETTINGS) -> dict:
    """The VM's reservation pod, placed away from the source (and on the target, when named),
    and marked as a migration target: no agent runs the VM on it until the hand-off."""
    pod = reservation.reservation_pod(vm, settings=settings)
    meta = pod["metadata"]
    meta["name"] = target_pod_name(vm.name, migration_uid)
    meta["labels"] = {**meta["labels"], reservation.ROLE_LABEL: TARGET_ROLE, MIGRATION_LABEL: migration}
    if node_selector:
        pod["spec"]["nodeSelector"] = {**pod["spec"].get("nodeSelector", {}), **node_selector}
    fields = [{"key": "metadata.name", "operator": "NotIn", "values": [source]}]
    if target_node:
        fields.append({"key": "metadata.name", "operator": "In", "values": [target_node]})
    reservation.require_node_fields(pod, fields)
    return pod


def admissible(pending: list[tuple[str, str]], active_sources: list[str], limits: dict) -> tuple[set[str], dict]:
    """Which pending migrations (name, source node), oldest first, may start now; and for
    the others why they wait."""
    running = list(active_sources)
    start, waiting = set(), {}
    cluster, per_node = limits["parallelMigrationsPerCluster"], limits["parallelOutboundMigrationsPerNode"]
    for name, source in pending:
        if len(running) >= cluster:
            waiting[name] = f"{len(running)} migrations run in the cluster (limit {cluster})"
        elif running.count(source) >= per_node:
            waiting[name] = f"{running.count(source)} migrations leave {source} (limit {per_node})"
        else:
            start.add(name)
            running.append(source)
    return start, waiting


def progress(stats: dict) -> dict:
    """libvirt's virDomainGetJobStats of a running migration, as status.progress."""
    out = {"dataTotalBytes": stats.get("data_total"), "dataProcessedBytes": stats.get("data_processed"),
           "dataRemainingBytes": stats.get("data_remaining"),
           "dirtyRateBytesPerSecond": (stats["memory_dirty_rate"] * stats.get("memory_page_size", 4096)
                                       if stats.get("memory_dirty_rate") is not None else None),
           "iteration": stats.get("memory_iteration")}
    return {k: v for k, v in out.items() if v is not None}


def result(stats: dict) -> dict:
    """libvirt's completed-job statistics as the Migration's measured outcome."""
    out = {"totalTimeMs": stats.get("time_elapsed"), "downtimeMs": stats.get("downtime"),
           "dataTransferredBytes": stats.get("data_processed")}
    return {k: v for k, v in out.items() if v is not None}


def overdue(elapsed: float, memory_bytes: int, options: dict, since_progress: float) -> str | None:
    """What the timeouts say now: 'post-copy', 'abort' or None."""
    allowed = options.get("completionTimeoutPerGiB", 150) * max(memory_bytes / 2**30, 1 / 16)
    if elapsed > allowed:
        return "post-copy" if options.get("postCopy") else "abort"
    if since_progress > options.get("progressTimeoutSeconds", 150):
        return "abort"
    return None


def where_it_runs(source: str, target: str | None) -> str | None:
    """Where a live move's guest runs once no migration job runs on the source, from the
    domain states of the two libvirtds ("running", "paused", "absent", ...; target None when
    its libvirtd cannot be asked): "source", "target", "nowhere", or None while that cannot
    be known yet (the VM stays Migrating and both are asked again).

    A running source is authoritative: libvirt resumes a source only when the target surely
    never ran the guest. A paused source is ambiguous: libvirt pauses it at the switch-over
    and removes it a moment after the target resumed (its confirm step, when no job may be
    reported any more), or leaves it paused when the move failed late; the target decides.
    """
    if source == "running":
        return "source"
    if target is None or source not in ("paused", "absent", "shutoff", "crashed"):
        return None  # the target unasked, or the source's QEMU in a passing state (shutting down)
    if source == "paused":
        if target == "running":
            return "target"
        return None if target == "paused" else "source"  # both paused: not settled yet
    return "target" if target in ("running", "paused") else "nowhere"


def moved(vm_status: dict) -> bool:
    """The VM's move ended on its target (the source agent wrote so) and the controller has
    not yet handed it over (status.migration is cleared last)."""
    record = vm_status.get("migration")
    return bool(record) and vm_status.get("nodeName") == record["targetNode"]


def succeeded(status: dict, target: str, results: dict, generation: int | None) -> dict:
    """A Migration's status changes once its VM runs on the target: libvirt's figures of the
    move and a Succeeded condition (whoever writes the end, the source agent or the hand-over)."""
    return {**results, "conditions": set_condition(status.get("conditions"), "Succeeded", True, "Moved",
                                                   f"the VM runs on {target}", generation)}


def moved_message(vm_name: str, record: dict) -> str:
    """The Succeeded Event's message."""
    return f"VM {vm_name} moved from {record['sourceNode']} to {record['targetNode']}"


def handed_over_unrecorded(migration_status: dict, vm_status: dict) -> bool:
    """A Running Migration whose VM already runs on its target with the move's record
    cleared: the VM was handed over but the Migration's end was not written (a hand-over
    that did not find the Migration, as a new leader with cold caches once did). Its end is
    Succeeded; nothing else would ever write it, and its finalizer would hold its namespace."""
    target = migration_status.get("targetNode")
    return (migration_status.get("phase") == "Running" and bool(target) and not vm_status.get("migration")
            and vm_status.get("nodeName") == target and vm_status.get("phase") in ("Running", "Paused"))
