"""Migration in the lab: live and offline moves between node-1 and node-2, the preflight's
refusals, cancels, timeouts, drain, and faults of the controller and agents mid-move.

node-2 hides the CPU feature sse4a (lab/kopfvirt_lab/layout.py): a VM that requires it can live only
on node-1, and its migration must be refused naming the feature.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml
from kubernetes import client, config, watch
from kopfvirt.names import NODE_LABEL

from .conftest import (KOPFVIRT_LAB, KUBECONFIG, REPO, domains_of, heartbeat, kubectl, kubectl_json, lab_exec,
                       lab_guest, metrics_of, operator_pid, operator_processes, restart_controllers_cold,
                       restarts_seen, run, wait_for)

OTHER = {"node-1": "node-2", "node-2": "node-1"}


class Migrations:
    def __init__(self, namespace: str):
        self.namespace = namespace

    def create(self, name: str, vm: str, **spec) -> None:
        body = {"apiVersion": "kopfvirt.io/v1alpha1", "kind": "Migration", "metadata": {"name": name},
                "spec": {"vmName": vm, **spec}}
        kubectl("-n", self.namespace, "apply", "-f", "-", stdin=yaml.safe_dump(body))

    def get(self, name: str) -> dict | None:
        result = kubectl("-n", self.namespace, "get", "migration", name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_phase(self, name: str, *phases: str, timeout: float = 90) -> dict:
        return wait_for(f"Migration {name} in phase {phases}",
                        lambda: (m := self.get(name)) and (m.get("status") or {}).get("phase") in phases and m,
                        timeout, interval=0.3)

    def delete(self, name: str, wait: bool = True) -> None:
        kubectl("-n", self.namespace, "delete", "migration", name, f"--wait={str(wait).lower()}", "--timeout=90s",
                check=False)


@pytest.fixture(scope="module")
def migrations(namespace):
    return Migrations(namespace)


def running_vm(vms, name: str, cmdline: str = "", **spec) -> tuple[str, str]:
    """Start a lab guest and wait for its heartbeat; (node, uid)."""
    result = vms.apply(lab_guest(name, cmdline, **spec))
    assert result.returncode == 0, result.stderr
    vm = vms.wait_phase(name, "Running")
    node = vm["status"]["nodeName"]
    wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)), timeout=60)
    return node, vm["metadata"]["uid"]


def assert_on_one_node(uid: str, node: str) -> None:
    """It runs on `node` only; the paused copy a live move leaves on its source (stopped by
    libvirt just after the resume on the target, which the Migration's Succeeded follows)
    is gone a moment later."""
    found = domains_of(uid)
    assert [n for n, state in found.items() if state != "paused"] == [node] and found[node] == "running", (
        f"domain {uid} should run on {node} only: {found}")
    wait_for(f"domain {uid} on {node} only", lambda: domains_of(uid) == {node: "running"}, timeout=10)


def assert_keeps_counting(vms, name: str, node: str, before: int) -> int:
    """The guest on `node` goes on from `before`: it was never restarted."""
    try:
        return wait_for(f"{name}'s heartbeat on {node} past {before}",
                        lambda: (n := heartbeat(node, vms.domain(name))) and n > before and n)
    except AssertionError as e:
        console = lab_exec(node, "tail", "-c", "1500", f"/var/log/libvirt/qemu/{vms.domain(name)}-serial.log",
                           check=False)
        raise AssertionError(f"{e}\nits serial console on {node}:\n{console.stdout}{console.stderr}") from None


def test_live_migration_there_and_back_keeps_the_guest_running(vms, migrations, kstatus):
    source, uid = running_vm(vms, "mig-live")
    target = OTHER[source]
    for step, (frm, to) in enumerate(((source, target), (target, source))):
        before = heartbeat(frm, vms.domain("mig-live"))
        migrations.create(f"mig-live-{step}", "mig-live")
        m = migrations.wait_phase(f"mig-live-{step}", "Succeeded", "Failed")
        st = m["status"]
        assert st["phase"] == "Succeeded", st
        assert (st["sourceNode"], st["targetNode"]) == (frm, to)
        assert st["totalTimeMs"] > 0 and 0 <= st["downtimeMs"] < 5000 and st["dataTransferredBytes"] > 0
        assert [t["phase"] for t in st["phaseTransitions"]] == ["Scheduling", "TargetReady", "Running", "Succeeded"]
        assert kstatus(m)[0] == "Current" and st["observedGeneration"] == m["metadata"]["generation"]
        # The hand-off ends the Migration and gives the VM to the target at once; the VM's
        # status.migration is cleared last (docs/migration.md), a moment after Succeeded.
        vm = wait_for(f"mig-live handed to {to}", lambda: (v := vms.get("mig-live")) and v["status"].get("phase") ==
                      "Running" and v["status"].get("nodeName") == to and "migration" not in v["status"] and v)
        assert vm["metadata"]["labels"]["kopfvirt.io/node"] == to
        assert kstatus(vm)[0] == "Current", kstatus(vm)
        assert f"agent.kopfvirt.io/{to}" in vm["metadata"]["finalizers"]
        assert_on_one_node(uid, to)
        assert_keeps_counting(vms, "mig-live", to, before)
        wait_for("one reservation pod, on the target", lambda: [
            (p["spec"].get("nodeName"), p["metadata"]["labels"]["kopfvirt.io/role"]) for p in kubectl_json(
                "-n", vms.namespace, "get", "pods", "-l", "kopfvirt.io/vm=mig-live")["items"]] == [(to, "reservation")])
    events = kubectl("-n", vms.namespace, "get", "events", "--field-selector", "involvedObject.name=mig-live-0",
                     "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert {"Scheduling", "TargetReady", "Succeeded"} <= set(events), events
    vms.delete("mig-live")


def test_the_source_agent_ends_a_move_and_the_next_waits_for_its_hand_over(vms, migrations):
    """The source agent writes Succeeded, with libvirt's figures, as the guest runs on the
    target: here while both controller replicas are frozen. A Migration of the VM asked
    before the controller has handed it over waits for the hand-over (the VM still carries
    the move's record), then moves the VM back."""
    source, target, uid, before = slow_move_under_way(vms, migrations, "mig-next")
    frozen = operator_processes("controller")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        m = migrations.wait_phase("mig-next", "Succeeded", "Failed", timeout=90)
        assert m["status"]["phase"] == "Succeeded" and m["status"]["totalTimeMs"] > 0, m["status"]
        assert (vms.get("mig-next")["status"].get("migration") or {}).get("name") == "mig-next"  # not handed over
        migrations.create("mig-next-back", "mig-next")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    back = migrations.wait_phase("mig-next-back", "Succeeded", "Failed", timeout=120)
    assert back["status"]["phase"] == "Succeeded", back["status"]
    assert (back["status"]["sourceNode"], back["status"]["targetNode"]) == (target, source)
    assert_on_one_node(uid, source)
    assert_keeps_counting(vms, "mig-next", source, before)
    vms.delete("mig-next")


def test_a_move_back_asked_the_moment_a_move_succeeded_succeeds(vms, migrations):
    """A Migration says Succeeded as soon as the guest resumed on the target, while the
    source's libvirtd still stops its paused copy (some 200 ms). A move back asked that
    very moment (watched, then created through the API) waits for the hand-over and for
    that copy to be gone, and succeeds, the guest counting on throughout."""
    api = client.CustomObjectsApi(config.new_client_from_config(str(KUBECONFIG)))
    node, uid = running_vm(vms, "mig-quick")
    before = heartbeat(node, vms.domain("mig-quick"))

    def move(name: str) -> dict:
        """Create the Migration and return it as the watch first shows it ended."""
        m = api.create_namespaced_custom_object("kopfvirt.io", "v1alpha1", vms.namespace, "migrations", {
            "apiVersion": "kopfvirt.io/v1alpha1", "kind": "Migration", "metadata": {"name": name},
            "spec": {"vmName": "mig-quick"}})
        for event in watch.Watch().stream(api.list_namespaced_custom_object, "kopfvirt.io", "v1alpha1",
                                          vms.namespace, "migrations", field_selector=f"metadata.name={name}",
                                          resource_version=m["metadata"]["resourceVersion"], timeout_seconds=120):
            m = event["object"]
            if (m.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                break
        return m

    for name in ("mig-quick-there", "mig-quick-back"):
        st = move(name)["status"]
        assert st["phase"] == "Succeeded" and st["sourceNode"] == node, st
        node = st["targetNode"]
    assert_on_one_node(uid, node)
    assert_keeps_counting(vms, "mig-quick", node, before)
    vms.delete("mig-quick")


def test_offline_migration_boots_the_guest_on_the_target(vms, migrations):
    source, uid = running_vm(vms, "mig-off")
    migrations.create("mig-off", "mig-off", mode="Offline")
    m = migrations.wait_phase("mig-off", "Succeeded", "Failed")
    assert m["status"]["phase"] == "Succeeded", m["status"]
    vm = vms.wait_phase("mig-off", "Running")
    target = vm["status"]["nodeName"]
    assert target == OTHER[source]
    assert_on_one_node(uid, target)
    wait_for("a heartbeat on the target", lambda: heartbeat(target, vms.domain("mig-off")), timeout=60)
    vms.delete("mig-off")


def test_preflight_names_the_cpu_feature_the_target_lacks(vms, migrations):
    """node-2 hides sse4a: a VM requiring it runs on node-1 and cannot move."""
    node, uid = running_vm(vms, "mig-cpu", cpu={"cores": 1, "features": [{"name": "sse4a", "policy": "require"}]})
    assert node == "node-1"
    dry = vms.plugin("migrate", "mig-cpu", "--dry-run", check=False)
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "node-2" in dry.stdout and "CPUIncompatible" in dry.stdout and "sse4a" in dry.stdout
    migrations.create("mig-cpu", "mig-cpu")
    m = migrations.wait_phase("mig-cpu", "Failed")
    assert m["status"]["reason"] == "CPUIncompatible"
    assert "sse4a" in m["status"]["message"] and "node-2" in m["status"]["message"]
    assert_on_one_node(uid, "node-1")
    assert kubectl_json("-n", vms.namespace, "get", "pods", "-l", "kopfvirt.io/role=migration-target")["items"] == []
    vms.delete("mig-cpu")


def test_refusals_fail_fast_with_a_reason(vms, migrations):
    migrations.create("mig-nothing", "no-such-vm")
    m = migrations.wait_phase("mig-nothing", "Failed", timeout=20)
    assert m["status"]["reason"] == "VMNotFound" and "no-such-vm" in m["status"]["message"]

    assert vms.apply(lab_guest("mig-stopped", runStrategy="Halted")).returncode == 0
    vms.wait_phase("mig-stopped", "Stopped")
    migrations.create("mig-stopped", "mig-stopped")
    assert migrations.wait_phase("mig-stopped", "Failed", timeout=20)["status"]["reason"] == "VMNotRunning"

    source, uid = running_vm(vms, "mig-bad")
    migrations.create("mig-bad-target", "mig-bad", targetNode="node-9")
    m = migrations.wait_phase("mig-bad-target", "Failed", timeout=20)
    assert m["status"]["reason"] == "NodeNotFound" and "node-9" in m["status"]["message"]
    migrations.create("mig-self", "mig-bad", targetNode=source)
    assert migrations.wait_phase("mig-self", "Failed", timeout=20)["status"]["reason"] == "TargetIsSource"
    migrations.create("mig-selector", "mig-bad", nodeSelector={"example.com/gpu": "true"})
    m = migrations.wait_phase("mig-selector", "Failed", timeout=20)
    assert m["status"]["reason"] == "NodeSelectorMismatch" and "example.com/gpu=true" in m["status"]["message"]
    assert_on_one_node(uid, source)
    assert kubectl_json("-n", vms.namespace, "get", "pods", "-l", "kopfvirt.io/role=migration-target")["items"] == []
    for name in ("mig-stopped", "mig-bad"):
        vms.delete(name)


def test_a_second_migration_of_a_moving_vm_is_refused(vms, migrations, kstatus):
    """A slow move (bandwidth-limited, memory dirtied) keeps the first one running."""
    source, uid = running_vm(vms, "mig-twice", "kopfvirt.dirty_mibps=8")
    migrations.create("mig-twice-1", "mig-twice", options={"bandwidthMiBps": 2})
    running = migrations.wait_phase("mig-twice-1", "Running")
    assert kstatus(running)[0] == "InProgress", kstatus(running)  # as Flux waits on it
    migrations.create("mig-twice-2", "mig-twice")
    m = migrations.wait_phase("mig-twice-2", "Failed", timeout=20)
    assert m["status"]["reason"] == "AlreadyMigrating" and "mig-twice-1" in m["status"]["message"]
    assert kstatus(m) == ("Failed", m["status"]["message"]), kstatus(m)
    # Deleting the running Migration cancels it: the guest stays on the source.
    before = heartbeat(source, vms.domain("mig-twice"))
    migrations.delete("mig-twice-1", wait=False)
    wait_for("the cancelled Migration to go", lambda: migrations.get("mig-twice-1") is None, timeout=60)
    vm = vms.wait_phase("mig-twice", "Running")
    assert vm["status"]["nodeName"] == source and "migration" not in vm["status"]
    assert_on_one_node(uid, source)
    assert_keeps_counting(vms, "mig-twice", source, before)
    wait_for("the target pod to go", lambda: kubectl_json(
        "-n", vms.namespace, "get", "pods", "-l", "kopfvirt.io/role=migration-target")["items"] == [])
    vms.delete("mig-twice")


def test_a_migration_that_cannot_converge_is_aborted_and_the_guest_stays(vms, migrations):
    source, uid = running_vm(vms, "mig-slow", "kopfvirt.dirty_mibps=16")
    before = heartbeat(source, vms.domain("mig-slow"))
    migrations.create("mig-slow", "mig-slow", options={"bandwidthMiBps": 1, "completionTimeoutPerGiB": 40,
                                                       "maxDowntimeMs": 10})
    m = migrations.wait_phase("mig-slow", "Failed", "Succeeded", timeout=60)
    assert m["status"]["phase"] == "Failed" and m["status"]["reason"] == "Timeout", m["status"]
    assert "did not converge" in m["status"]["message"]
    assert m["status"]["progress"]["dataRemainingBytes"] > 0
    vm = vms.wait_phase("mig-slow", "Running")
    assert vm["status"]["nodeName"] == source
    assert_on_one_node(uid, source)
    assert_keeps_counting(vms, "mig-slow", source, before)
    # With auto-converge the same guest moves: its vCPUs are throttled until the copy catches up.
    migrations.create("mig-slow-2", "mig-slow", options={"autoConverge": True, "bandwidthMiBps": 64})
    m = migrations.wait_phase("mig-slow-2", "Succeeded", "Failed", timeout=120)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    assert_on_one_node(uid, OTHER[source])
    vms.delete("mig-slow")


@pytest.mark.parametrize("victim", ["controller", "source-agent", "target-agent"])
def test_a_killed_part_mid_migration_leaves_the_vm_on_one_node(vms, migrations, victim):
    name = f"mig-kill-{victim.split('-')[0]}"
    source, uid = running_vm(vms, name)
    target = OTHER[source]
    migrations.create(name, name, options={"bandwidthMiBps": 6})  # about 20 s for 128 MiB
    migrations.wait_phase(name, "Running")
    component, node = {"controller": ("controller", None), "source-agent": ("agent", source),
                       "target-agent": ("agent", target)}[victim]
    before = heartbeat(source, vms.domain(name))
    os.kill(operator_pid(component, node), signal.SIGKILL)  # its pod's container restarts it
    m = migrations.wait_phase(name, "Succeeded", "Failed", timeout=120)
    vm = wait_for("the VM settled", lambda: (v := vms.get(name)) and v["status"].get("phase") == "Running"
                  and "migration" not in v["status"] and v, timeout=60)
    node = vm["status"]["nodeName"]
    assert node == (target if m["status"]["phase"] == "Succeeded" else source), (m["status"], vm["status"])
    assert_on_one_node(uid, node)
    assert_keeps_counting(vms, name, node, before)
    assert not restarts_seen(node, vms.domain(name))  # never restarted: the counter did not start over
    vms.delete(name)


def test_a_move_that_ends_while_no_controller_runs_is_closed_by_the_next_one(vms, migrations):
    """Both controller replicas frozen while libvirt ends a move, then killed: the one that
    leads next starts with empty caches, and may see the VM on its target before its watch
    has listed the Migration. It still closes the move: Succeeded, nothing left Running."""
    source, target, uid, before = slow_move_under_way(vms, migrations, "mig-unwatched")
    frozen = operator_processes("controller")
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for("the source agent to report the guest on its target",
                 lambda: (vms.get("mig-unwatched")["status"]).get("nodeName") == target, timeout=90)
    finally:
        restart_controllers_cold(frozen)
    m = migrations.wait_phase("mig-unwatched", "Succeeded", "Failed", timeout=120)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    vm = wait_for("the VM settled", lambda: (v := vms.get("mig-unwatched")) and "migration" not in v["status"]
                  and (v["metadata"].get("labels") or {}).get(NODE_LABEL) == target and v, timeout=60)
    assert vm["status"]["nodeName"] == target and vm["status"]["phase"] == "Running", vm["status"]
    wait_for("only the target's pod left", lambda: [p["spec"]["nodeName"] for p in kubectl_json(
        "-n", vms.namespace, "get", "pods", "-l", "kopfvirt.io/vm=mig-unwatched")["items"]] == [target])
    assert_on_one_node(uid, target)
    assert_keeps_counting(vms, "mig-unwatched", target, before)
    assert not restarts_seen(target, vms.domain("mig-unwatched"))
    vms.delete("mig-unwatched")


def slow_move_under_way(vms, migrations, name: str) -> tuple[str, str, str, int]:
    """A guest, and a live Migration of it slowed to about 20 s for its 128 MiB, that has
    begun to copy: (source, target, uid, the guest's counter then)."""
    source, uid = running_vm(vms, name)
    migrations.create(name, name, options={"bandwidthMiBps": 6})
    wait_for("the move's first progress", lambda: ((migrations.get(name) or {}).get("status") or {}).get("progress"),
             timeout=60)
    return source, OTHER[source], uid, heartbeat(source, vms.domain(name))


class TargetUnreachable:
    """New connections to the target's libvirtd refused (iptables in its network namespace),
    while those already open, the move's own among them, go on."""

    RULE = ["INPUT", "-p", "tcp", "--dport", "16514", "-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT"]

    def __init__(self, node: str):
        self.node = node

    def __enter__(self) -> "TargetUnreachable":
        lab_exec(self.node, "iptables", "-I", *self.RULE)
        return self

    def __exit__(self, *_) -> None:
        lab_exec(self.node, "iptables", "-D", *self.RULE, check=False)


def test_a_move_whose_target_cannot_be_asked_stays_migrating_until_it_can(vms, migrations):
    """The source agent dies mid-move and its successor cannot reach the target's libvirtd to
    learn how the move ended: the VM stays Migrating and says why (no guess of "failed", no
    second copy booted on the source); once the target answers, the move counts as done:
    one domain, on the target, its counter never reset."""
    name = "mig-unasked"
    source, target, uid, before = slow_move_under_way(vms, migrations, name)
    with TargetUnreachable(target):
        os.kill(operator_pid("agent", source), signal.SIGKILL)  # its pod's container restarts it
        wait_for("the guest on the target only", lambda: domains_of(uid) == {target: "running"}, timeout=120)
        condition = vms.wait_condition(name, "Ready", "MigrationOutcomeUnknown", timeout=90)
        vm = vms.get(name)
        assert vm["status"]["phase"] == "Migrating" and vm["status"]["nodeName"] == source, vm["status"]
        assert target in condition["message"], condition
        assert migrations.get(name)["status"]["phase"] == "Running"
        assert domains_of(uid) == {target: "running"}  # nothing started again on the source
    m = migrations.wait_phase(name, "Succeeded", "Failed", timeout=90)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    vm = vms.wait_phase(name, "Running")
    assert vm["status"]["nodeName"] == target
    assert_on_one_node(uid, target)
    assert_keeps_counting(vms, name, target, before)  # never restarted: it did not start over
    vms.delete(name)


@pytest.mark.parametrize("side", ["target", "source"])
def test_a_move_whose_libvirtd_dies_fails_and_the_guest_runs_on_at_the_source(vms, migrations, side):
    """A libvirtd is killed mid-move. The target's: libvirt aborts the move at once. The
    source's: the target's libvirtd drops the incoming guest when its peer goes, and the
    source agent, which cannot ask its own libvirtd, leaves the VM Migrating until `lab up`
    brings that libvirtd back, which finds the outgoing job failed and resumes the guest.
    Either way the guest runs on at the source, never restarted, and no half-made copy is
    left on the target."""
    name = f"mig-libvirtd-{side}"
    source, target, uid, before = slow_move_under_way(vms, migrations, name)
    victim = target if side == "target" else source
    os.kill(int((REPO / ".lab" / "nodes" / victim / "run/libvirt/libvirtd.pid").read_text()), signal.SIGKILL)
    if side == "source":
        run(*KOPFVIRT_LAB, "up", timeout=600)  # the source's libvirtd back: the agent asks it again
    m = migrations.wait_phase(name, "Succeeded", "Failed", timeout=120)
    assert m["status"]["phase"] == "Failed", m["status"]
    vm = wait_for("the VM settled", lambda: (v := vms.get(name)) and v["status"].get("phase") == "Running"
                  and "migration" not in v["status"] and v, timeout=60)
    assert vm["status"]["nodeName"] == source
    if side == "target":
        run(*KOPFVIRT_LAB, "up", timeout=600)  # the target's libvirtd back
    wait_for(f"the guest on {source} only", lambda: domains_of(uid) == {source: "running"}, timeout=60)
    assert_keeps_counting(vms, name, source, before)
    assert not restarts_seen(source, vms.domain(name))
    vms.delete(name)


def test_a_drain_makes_a_few_evacuations_of_a_vm_that_cannot_move_then_says_why(vms, migrations):
    """A LiveMigrate VM pinned to its node cannot move: each evacuation fails its preflight,
    and the drain's retries make no more than three of them; after that each refused eviction
    says why and how to go on, and the guest runs on untouched."""
    node, uid = running_vm(vms, "mig-pinned", evictionStrategy="LiveMigrate",
                           nodeSelector={"kubernetes.io/hostname": "node-1"})
    try:
        result = run("kubectl", "--kubeconfig", str(KUBECONFIG), "drain", node, "--ignore-daemonsets",
                     "--pod-selector", "kopfvirt.io/vm=mig-pinned", "--timeout=40s", check=False, timeout=90)
    finally:
        kubectl("uncordon", node)
    assert result.returncode != 0
    evacuations = [m for m in kubectl_json("-n", vms.namespace, "get", "migrations")["items"]
                   if m["metadata"].get("labels", {}).get("kopfvirt.io/evacuation") == node
                   and m["spec"]["vmName"] == "mig-pinned"]
    assert [m["status"]["phase"] for m in evacuations] == ["Failed"] * 3, [m.get("status") for m in evacuations]
    assert "cannot be live-migrated off " + node + ": 3 evacuations failed" in result.stderr, result.stderr
    assert "delete those Migrations to try again" in result.stderr
    assert_on_one_node(uid, node)
    assert vms.get("mig-pinned")["status"]["phase"] == "Running"
    vms.delete("mig-pinned")
    for m in evacuations:
        migrations.delete(m["metadata"]["name"])


def test_drain_moves_live_migratable_vms_and_stops_the_others(vms, migrations):
    moving_node, moving_uid = running_vm(vms, "mig-drain-live", evictionStrategy="LiveMigrate")
    staying = lab_guest("mig-drain-stop", evictionStrategy="Stop",
                        nodeSelector={"kubernetes.io/hostname": moving_node})
    assert vms.apply(staying).returncode == 0
    stop_uid = vms.wait_phase("mig-drain-stop", "Running")["metadata"]["uid"]
    try:
        result = run("kubectl", "--kubeconfig", str(KUBECONFIG), "drain", moving_node, "--ignore-daemonsets",
                     "--pod-selector", "kopfvirt.io/vm", "--timeout=150s", check=False, timeout=200)
        assert result.returncode == 0, result.stdout + result.stderr
        vm = vms.wait_phase("mig-drain-live", "Running")
        assert vm["status"]["nodeName"] == OTHER[moving_node]
        assert_on_one_node(moving_uid, OTHER[moving_node])
        evacuations = [m for m in kubectl_json("-n", vms.namespace, "get", "migrations")["items"]
                       if m["metadata"].get("labels", {}).get("kopfvirt.io/evacuation") == moving_node
                       and m["spec"]["vmName"] == "mig-drain-live"]
        assert [m["status"]["phase"] for m in evacuations] == ["Succeeded"]
        # The Stop VM may not run anywhere else (its nodeSelector): it stays stopped, evicted.
        wait_for("the Stop VM's guest stopped", lambda: "running" not in domains_of(stop_uid).values(), timeout=60)
        stopped = wait_for("the Stop VM evicted", lambda: (v := vms.get("mig-drain-stop"))
                           and v["status"].get("stopReason") == "Evicted" and v)
        assert stopped["status"]["phase"] in ("Pending", "Stopped")
    finally:
        kubectl("uncordon", moving_node)
    vms.wait_phase("mig-drain-stop", "Running")
    metrics = metrics_of("controller", 8080)
    assert 'kopfvirt_migrations_total{mode="Live",phase="Succeeded"}' in metrics
    assert "kopfvirt_migration_downtime_seconds_count" in metrics
    for name in ("mig-drain-live", "mig-drain-stop"):
        vms.delete(name)

