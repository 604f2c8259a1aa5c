"""The pure migration rules: preflight verdicts, options, the target pod, the queue,
libvirt's statistics, timeouts."""

from kopfvirt.core import migration, vmspec
from kopfvirt.core.migration import Node

UID = "11111111-2222-4333-8444-555555555555"
RUNNING = {"phase": "Running", "nodeName": "node-1"}


def vm(**spec):
    return vmspec.parse("ns", "web", UID, {"memory": {"size": "1Gi"}, **spec})


def nodes(**extra):
    base = {"cpu-feature.kopfvirt.io/sse4a": "true", "cpu-model.kopfvirt.io/EPYC": "true"}
    return [Node("node-1", dict(base)), Node("node-2", {**base, **extra.get("node2", {})}),
            Node("node-3", dict(base), schedulable=False)]


def test_a_node_lacking_a_required_feature_is_refused_by_name():
    v = vm(cpu={"features": [{"name": "sse4a"}, {"name": "avx2"}]})
    n = nodes()
    n[1] = Node("node-2", {"cpu-feature.kopfvirt.io/avx2": "true"})
    n[0] = Node("node-1", {"cpu-feature.kopfvirt.io/avx2": "true", "cpu-feature.kopfvirt.io/sse4a": "true"})
    refusal, verdicts = migration.preflight(v, RUNNING, {}, {}, n)
    by_node = {x.node: x for x in verdicts}
    assert by_node["node-1"].reason == "SourceNode"
    assert by_node["node-2"].reason == "CPUIncompatible" and "sse4a" in by_node["node-2"].message
    assert "avx2" not in by_node["node-2"].message
    assert by_node["node-3"].reason == "NodeUnschedulable"
    assert refusal[0] == "NoNodeFits" and "node-2: the node's CPU lacks CPU features sse4a" in refusal[1]


def test_a_fitting_node_passes_and_a_named_target_narrows():
    refusal, verdicts = migration.preflight(vm(), RUNNING, {}, {}, nodes())
    assert refusal is None and [v.node for v in verdicts if v.fit] == ["node-2"]
    refusal, _ = migration.preflight(vm(), RUNNING, {"targetNode": "node-3"}, {}, nodes())
    assert refusal[0] == "NodeUnschedulable"
    refusal, _ = migration.preflight(vm(), RUNNING, {"targetNode": "node-1"}, {}, nodes())
    assert refusal[0] == "TargetIsSource"
    refusal, _ = migration.preflight(vm(), RUNNING, {"targetNode": "node-7"}, {}, nodes())
    assert refusal[0] == "NodeNotFound"


def test_node_selectors_of_vm_and_migration_both_apply():
    refusal, _ = migration.preflight(vm(), RUNNING, {"nodeSelector": {"zone": "b"}}, {},
                                     nodes(node2={"zone": "a"}))
    assert refusal[0] == "NoNodeFits" and "node-2: lacks the label(s) zone=b" in refusal[1]
    refusal, _ = migration.preflight(vm(nodeSelector={"zone": "a"}), RUNNING, {}, {}, nodes(node2={"zone": "a"}))
    assert refusal is None


def test_vm_level_refusals():
    assert migration.vm_refusal(vm(), {"phase": "Stopped"}, "Live", {}, {})[0] == "VMNotRunning"
    moving = {**RUNNING, "migration": {"name": "m1"}}
    assert migration.vm_refusal(vm(), moving, "Live", {}, {}) == ("AlreadyMigrating", "VM web is already moving "
                                                                                       "(Migration m1)")
    gpu = vm(hostDevices=[{"name": "gpu", "resourceName": "nvidia.com/H100"}])
    held = {**RUNNING, "hostDevices": [{"name": "gpu", "device": "node-1-0000-01-00-0"}]}
    for mode in ("Live", "Offline"):
        reason, message = migration.vm_refusal(gpu, held, mode, {}, {})
        assert reason == "HostDevice" and "node-1-0000-01-00-0" in message
    # Storage: tests/unit/test_pools.py (StorageNotShared).


def test_options_spec_over_cluster_over_builtin():
    defaults, limits = migration.cluster_config({"bandwidthMiBps": "64", "autoConverge": "true",
                                                 "parallelMigrationsPerCluster": "3", "unknown": "x"})
    assert limits == {"parallelMigrationsPerCluster": 3, "parallelOutboundMigrationsPerNode": 2}
    options = migration.effective_options({"bandwidthMiBps": 8, "postCopy": None}, defaults)
    assert options["bandwidthMiBps"] == 8 and options["autoConverge"] is True and options["postCopy"] is False
    assert options["maxDowntimeMs"] == 300


def test_target_pod_avoids_the_source_and_keeps_the_vms_affinity():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}
    pod = migration.target_pod(vm(affinity=affinity), "m1", "abcdef12-0000", "node-1", "node-2", {"ssd": "true"})
    assert pod["metadata"]["name"] == "kopfvirt-web-abcdef12"
    assert pod["metadata"]["labels"]["kopfvirt.io/role"] == "migration-target"
    assert pod["metadata"]["labels"]["kopfvirt.io/migration"] == "m1"
    assert pod["spec"]["nodeSelector"]["ssd"] == "true"
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 2
    for t in terms:
        assert t["matchExpressions"] and {"key": "metadata.name", "operator": "NotIn", "values": ["node-1"]} in \
            t["matchFields"] and {"key": "metadata.name", "operator": "In", "values": ["node-2"]} in t["matchFields"]


def test_queue_respects_cluster_and_per_node_limits_oldest_first():
    limits = {"parallelMigrationsPerCluster": 3, "parallelOutboundMigrationsPerNode": 2}
    start, waiting = migration.admissible([("a", "n1"), ("b", "n1"), ("c", "n2"), ("d", "n3")], ["n1"], limits)
    assert start == {"a", "c"}
    assert "leave n1" in waiting["b"] and "in the cluster" in waiting["d"]


def test_job_statistics_read_as_status():
    stats = {"type": 2, "time_elapsed": 643, "downtime": 193, "data_total": 1000, "data_processed": 900,
             "data_remaining": 100, "memory_dirty_rate": 10, "memory_page_size": 4096, "memory_iteration": 3,
             "memory_postcopy_requests": 0}
    assert migration.progress(stats) == {"dataTotalBytes": 1000, "dataProcessedBytes": 900, "dataRemainingBytes": 100,
                                         "dirtyRateBytesPerSecond": 40960, "iteration": 3}
    assert migration.result(stats) == {"totalTimeMs": 643, "downtimeMs": 193, "dataTransferredBytes": 900}


def test_timeouts():
    options = {"completionTimeoutPerGiB": 10, "progressTimeoutSeconds": 5}
    assert migration.overdue(9, 2**30, options, 1) is None
    assert migration.overdue(11, 2**30, options, 1) == "abort"
    assert migration.overdue(11, 2**30, {**options, "postCopy": True}, 1) == "post-copy"
    assert migration.overdue(3, 2**30, options, 6) == "abort"


def test_where_a_guest_runs_after_its_move_is_asked_of_both_sides():
    ends = migration.where_it_runs
    assert ends("running", None) == "source"  # libvirt resumed it: the target never ran it
    assert ends("running", "paused") == "source"  # the target's unfinished incoming copy
    # Paused at the switch-over: the target decides, and must be asked.
    assert ends("paused", None) is None
    assert ends("paused", "running") == "target"
    assert ends("paused", "absent") == "source"
    assert ends("paused", "paused") is None  # a paused guest caught mid confirm step: ask again
    # Gone from the source.
    assert ends("absent", "running") == "target"
    assert ends("shutoff", "paused") == "target"
    assert ends("absent", "absent") == "nowhere"
    assert ends("absent", None) is None
    assert ends("shuttingdown", "absent") is None  # its QEMU still runs: look again


def test_a_move_handed_over_without_its_end_written_is_recognised():
    running = {"phase": "Running", "sourceNode": "node-2", "targetNode": "node-1"}
    on_target = {"phase": "Running", "nodeName": "node-1"}
    assert migration.handed_over_unrecorded(running, on_target)
    assert migration.handed_over_unrecorded(running, {**on_target, "phase": "Paused"})
    # Still under way: the record is there (the hand-over writes the end before clearing it).
    assert not migration.handed_over_unrecorded(running, {**on_target, "migration": {"name": "m"}})
    # Back on the source (the agent writes Failed itself), stopped, or never placed on a target.
    assert not migration.handed_over_unrecorded(running, {**on_target, "nodeName": "node-2"})
    assert not migration.handed_over_unrecorded(running, {**on_target, "phase": "Stopped"})
    assert not migration.handed_over_unrecorded({**running, "targetNode": None}, on_target)
    # Ended already, or not yet claimed by the source agent.
    assert not migration.handed_over_unrecorded({**running, "phase": "Succeeded"}, on_target)
    assert not migration.handed_over_unrecorded({**running, "phase": "TargetReady"}, on_target)


def test_a_move_ended_on_its_target_waits_for_its_hand_over():
    record = {"name": "m", "sourceNode": "node-2", "targetNode": "node-1"}
    assert migration.moved({"phase": "Running", "nodeName": "node-1", "migration": record})
    assert migration.moved({"phase": "Starting", "nodeName": "node-1", "migration": record})  # offline
    assert not migration.moved({"phase": "Migrating", "nodeName": "node-2", "migration": record})  # under way
    assert not migration.moved({"phase": "Running", "nodeName": "node-1"})  # handed over


def test_a_succeeded_migration_carries_libvirts_figures_and_says_where_the_vm_runs():
    before = {"conditions": [{"type": "TargetScheduled", "status": "True", "reason": "Bound", "message": "x"}]}
    out = migration.succeeded(before, "node-1", {"totalTimeMs": 812, "downtimeMs": 160}, 3)
    assert (out["totalTimeMs"], out["downtimeMs"]) == (812, 160)
    by_type = {c["type"]: c for c in out["conditions"]}
    assert set(by_type) == {"TargetScheduled", "Succeeded"}
    assert (by_type["Succeeded"]["status"], by_type["Succeeded"]["reason"], by_type["Succeeded"]["message"],
            by_type["Succeeded"]["observedGeneration"]) == ("True", "Moved", "the VM runs on node-1", 3)
    assert migration.moved_message("vm", {"sourceNode": "node-2", "targetNode": "node-1"}) == \
        "VM vm moved from node-2 to node-1"


def test_phase_conditions_say_what_kstatus_reads():
    def states(phase, reason="", message=""):
        conds = migration.phase_conditions(None, phase, reason, message, 1)
        return {c["type"]: (c["status"], c["reason"]) for c in conds}
    assert states("Scheduling") == {"Ready": ("False", "Scheduling"), "Reconciling": ("True", "Scheduling"),
                                    "Stalled": ("False", "NotStalled")}
    assert states("Succeeded") == {"Ready": ("True", "Succeeded"), "Reconciling": ("False", "Finished"),
                                   "Stalled": ("False", "NotStalled")}
    failed = migration.phase_conditions(None, "Failed", "HostDevice", "gpu cannot move", 1)
    assert {c["type"]: (c["status"], c["reason"], c["message"]) for c in failed}["Stalled"] == (
        "True", "HostDevice", "gpu cannot move")
    assert states("Cancelled", "Cancelled") == {"Reconciling": ("False", "Finished"),  # over, no error, no Ready
                                                "Stalled": ("False", "NotStalled")}
    assert all(c["observedGeneration"] == 1 for c in failed)
