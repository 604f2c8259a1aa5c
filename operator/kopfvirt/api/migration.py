"""Migration, kopfvirt.io/v1alpha1: move one VirtualMachine to another node, live or offline."""

from __future__ import annotations

import dataclasses

from .schema import field
from .virtualmachine import DNS_LABEL, Condition

MODES = ["Live", "Offline"]
PHASES = ["Pending", "Scheduling", "TargetReady", "Running", "Succeeded", "Failed", "Cancelled"]


@dataclasses.dataclass(kw_only=True)
class MigrationOptions:
    """How libvirt moves the guest; each unset option takes the cluster default from the
    ConfigMap kopfvirt-migration (see docs/migration.md), then the built-in one."""

    bandwidth_mi_bps: int | None = field(None, json="bandwidthMiBps", minimum=0, description=(
        "Bandwidth limit of the memory copy in MiB/s; 0: unlimited (the built-in default)."))
    max_downtime_ms: int | None = field(None, json="maxDowntimeMs", minimum=1, maximum=60000, description=(
        "Longest pause of the guest at the switch-over, in ms (built-in default: 300)."))
    completion_timeout_per_gi_b: int | None = field(None, json="completionTimeoutPerGiB", minimum=1, description=(
        "Seconds per GiB of guest memory the migration may take before it is switched to post-copy "
        "(when allowed) or aborted (built-in default: 150)."))
    progress_timeout_seconds: int | None = field(None, minimum=1, description=(
        "Seconds without the remaining data reaching a new low before the migration is aborted "
        "(built-in default: 150)."))
    auto_converge: bool | None = field(None, description=(
        "Throttle the guest's vCPUs when it dirties memory faster than it can be copied (built-in default: false)."))
    post_copy: bool | None = field(None, description=(
        "Allow switching to post-copy at the completion timeout: the guest runs on the target and fetches "
        "the remaining pages over the network (built-in default: false)."))
    copy_storage: bool | None = field(None, description=(
        "Copy disks that are not on shared storage along with memory (built-in default: false)."))


@dataclasses.dataclass(kw_only=True)
class MigrationSpec:
    """Which VM moves, how, and where it may go."""

    vm_name: str = field(json="vmName", pattern=DNS_LABEL, max_length=253, immutable=True,
                         description="The VirtualMachine to move, in the Migration's namespace.")
    mode: str = field("Live", enum=MODES, immutable=True, description=(
        "Live: the guest keeps running while its memory is copied. Offline: the guest shuts down on the "
        "source and boots on the target from the same disks."))
    target_node: str | None = field(None, min_length=1, immutable=True, description=(
        "The node to move to; empty: kube-scheduler picks one within the VM's own constraints."))
    node_selector: dict[str, str] = field({}, immutable=True, description=(
        "Node labels the target must have, on top of the VM's own (it can only narrow them)."))
    options: MigrationOptions = field(MigrationOptions, description="How libvirt moves the guest.")


@dataclasses.dataclass(kw_only=True)
class PhaseTransition:
    phase: str = field(enum=PHASES, description="The phase entered.")
    time: str = field(fmt="date-time", description="When.")


@dataclasses.dataclass(kw_only=True)
class MigrationProgress:
    """libvirt's job statistics while memory is copied."""

    data_total_bytes: int | None = field(None, description="Data to move in all (memory, and disks when copied).")
    data_processed_bytes: int | None = field(None, description="Data sent so far.")
    data_remaining_bytes: int | None = field(None, description="Data still to send.")
    dirty_rate_bytes_per_second: int | None = field(None, description="How fast the guest dirties memory.")
    iteration: int | None = field(None, description="Which pass over dirty memory is running (1: the first copy).")
    post_copy: bool | None = field(None, description="The migration switched to post-copy.")


@dataclasses.dataclass(kw_only=True)
class MigrationStatus:
    """Where the migration is; on completion, libvirt's measured time and downtime."""

    phase: str | None = field(None, enum=PHASES, description="Where the migration is: " + ", ".join(PHASES) + ".")
    phase_transitions: list[PhaseTransition] = field([], description="When each phase was entered.")
    observed_generation: int | None = field(None, description="The spec generation the status reflects.")
    source_node: str | None = field(None, description="The node the VM ran on when the migration began.")
    target_node: str | None = field(None, description="The node the VM moves to (once kube-scheduler bound it).")
    target_pod: str | None = field(None, description="The reservation pod that holds the target's share.")
    options: MigrationOptions | None = field(None, description="The options in effect (spec, then cluster defaults).")
    progress: MigrationProgress | None = field(None, description="Progress of the memory copy (Live).")
    total_time_ms: int | None = field(None, description="libvirt's time for the move, in ms (Live: the job; "
                                                        "Offline: stop to start).")
    downtime_ms: int | None = field(None, description="How long the guest was paused at the switch-over, in ms "
                                                      "(from libvirt's completed job statistics).")
    data_transferred_bytes: int | None = field(None, description="Data sent in all.")
    reason: str | None = field(None, description="Why it failed or was cancelled: a CamelCase word.")
    message: str | None = field(None, description="Why it failed or was cancelled, for a human.")
    conditions: list[Condition] = field([], list_map_keys=("type",), description=(
        "Kubernetes-style conditions: Ready (Succeeded), Reconciling (under way), Stalled (Failed), as kstatus "
        "reads them; Queued, TargetScheduled and Succeeded say more."))
