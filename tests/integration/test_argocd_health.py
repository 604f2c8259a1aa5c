"""Argo CD's verdict on the lab's own objects: the health checks of integrations/argocd run,
as Argo CD runs them (tools/argocd-health), on each kind as the operator writes it through
a VM's and a Migration's lifecycle, and say what a user of Argo CD should see.

KOPFVIRT_CAPTURE_ARGOCD=1 also writes each object judged into its check's testdata (the
case named below, first line "# captured: lab"), and the verdict into health_test.yaml,
so the unit tier's cases run on shapes the operator really writes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ..gotools import go_tool
from .conftest import kubectl_json, lab_guest, wait_for
from .test_migration import migrations, running_vm  # noqa: F401 (a fixture)

CHECKS = Path(__file__).resolve().parents[2] / "integrations" / "argocd" / "kopfvirt.io"
CAPTURE = bool(os.environ.get("KOPFVIRT_CAPTURE_ARGOCD"))
TRANSIENT = {"Pending", "Scheduling", "Starting"}


@pytest.fixture(scope="module")
def argocd():
    binary = go_tool("argocd-health")

    def judge(kind: str, obj: dict) -> dict:
        out = subprocess.run([str(binary), "eval", str(CHECKS / kind / "health.lua")], input=json.dumps(obj) + "\n",
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    return judge


def _capture(kind: str, case: str, obj: dict, verdict: dict) -> None:
    """The object as a testdata file (no managedFields), and its case in health_test.yaml."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("managedFields", None)
    directory = CHECKS / kind
    (directory / "testdata" / f"{case}.yaml").write_text(
        "# captured: lab (tests/integration/test_argocd_health.py)\n" + yaml.safe_dump(obj, sort_keys=False))
    tests_file = directory / "health_test.yaml"
    tests = yaml.safe_load(tests_file.read_text())["tests"]
    path = f"testdata/{case}.yaml"
    entry = next((t for t in tests if t["inputPath"] == path), None)
    if entry is None:
        tests.append(entry := {"healthStatus": {}, "inputPath": path})
    entry["healthStatus"] = {"status": verdict["status"], "message": verdict["message"]}
    tests_file.write_text(yaml.safe_dump({"tests": tests}, sort_keys=False, width=1000))


def judged(argocd, kind: str, case: str, obj: dict, status: str) -> dict:
    """Argo CD's verdict on a live object, which must be `status`; captured on demand. An
    object being deleted Argo CD calls "Pending deletion" itself; the script's own verdict
    on it is what a test case records."""
    verdict = argocd(kind, obj)
    if obj["metadata"].get("deletionTimestamp"):
        assert verdict == {"status": "Progressing", "message": "Pending deletion"}, verdict
        verdict = argocd(kind, {**obj, "metadata": {k: v for k, v in obj["metadata"].items()
                                                    if k != "deletionTimestamp"}})
    assert verdict["status"] == status, (case, verdict, obj.get("status"))
    if CAPTURE:
        _capture(kind, case, obj, verdict)
    return verdict


def test_argo_cd_reads_a_vm_through_its_lifecycle(vms, argocd):
    assert vms.apply(lab_guest("argo")).returncode == 0
    seen: dict[str, dict] = {}

    def running():
        vm = vms.get("argo") or {}
        phase = (vm.get("status") or {}).get("phase")
        if phase in TRANSIENT and phase not in seen:
            seen[phase] = vm
        return phase == "Running" and vm
    vm = wait_for("argo running", running, timeout=120, interval=0.05)
    for phase, obj in seen.items():  # whichever of the quick ones the watch caught
        judged(argocd, "VirtualMachine", phase.lower(), obj, "Progressing")
    assert judged(argocd, "VirtualMachine", "running", vm, "Healthy")["message"].startswith("Running")

    vms.plugin("pause", "argo")
    judged(argocd, "VirtualMachine", "paused", vms.wait_phase("argo", "Paused"), "Suspended")
    vms.plugin("stop", "argo")
    vm = wait_for("argo stopped and settled", lambda: (v := vms.get("argo"))["status"].get("phase") == "Stopped"
                  and not any(c["type"] == "Ready" for c in v["status"]["conditions"]) and v, timeout=90)
    assert "Halted" in judged(argocd, "VirtualMachine", "stopped", vm, "Suspended")["message"]
    vms.delete("argo")

    # Refused by what only a change can fix: Degraded, with the reason a user acts on.
    body = lab_guest("argo-flag", cpu={"cores": 1, "model": "qemu64", "features": [{"name": "no-such-flag"}]})
    assert vms.apply(body).returncode == 0
    vms.wait_condition("argo-flag", "Stalled", "CPUFeaturesUnavailable")
    assert "no-such-flag" in judged(argocd, "VirtualMachine", "pending-stalled", vms.get("argo-flag"),
                                    "Degraded")["message"]
    vms.delete("argo-flag")
    # Waiting on the cluster (no node has the memory): Progressing, with kube-scheduler's words.
    assert vms.apply(lab_guest("argo-huge", memory={"size": "64Gi"})).returncode == 0
    vms.wait_condition("argo-huge", "Scheduled", "Unschedulable")
    assert "Insufficient memory" in judged(argocd, "VirtualMachine", "pending", vms.get("argo-huge"),
                                           "Progressing")["message"]
    vms.delete("argo-huge")


def test_argo_cd_reads_migrations_as_they_run_succeed_fail_and_are_cancelled(vms, migrations, argocd):
    running_vm(vms, "argo-mig", "kopfvirt.dirty_mibps=8")
    migrations.create("argo-mig-1", "argo-mig", options={"bandwidthMiBps": 2})
    moving = wait_for("the move's first bytes", lambda: (m := migrations.get("argo-mig-1") or {}) and all(
        (m.get("status", {}).get("progress") or {}).get(k) for k in ("dataTotalBytes", "dataProcessedBytes")) and m,
        timeout=60)
    assert "bytes sent" in judged(argocd, "Migration", "running", moving, "Progressing")["message"]
    migrations.create("argo-mig-2", "argo-mig")
    failed = migrations.wait_phase("argo-mig-2", "Failed", timeout=20)
    assert "AlreadyMigrating" in judged(argocd, "Migration", "failed", failed, "Degraded")["message"]

    # Deleting a running Migration cancels it; Argo CD shows it going ("Pending deletion").
    migrations.delete("argo-mig-1", wait=False)
    # Cancelled lasts only until the finalizer goes: judged when the poll sees it (the unit
    # tier judges the captured object every run).
    cancelled = wait_for("the Migration cancelled or gone", lambda: (m := migrations.get("argo-mig-1")) is None
                         or (m.get("status", {}).get("phase") == "Cancelled" and m), timeout=60, interval=0.05)
    if cancelled is not True:
        judged(argocd, "Migration", "cancelled", cancelled, "Suspended")
    wait_for("the cancelled Migration to go", lambda: migrations.get("argo-mig-1") is None, timeout=60)

    migrations.create("argo-mig-3", "argo-mig")
    done = migrations.wait_phase("argo-mig-3", "Succeeded", timeout=120)
    assert "downtime" in judged(argocd, "Migration", "succeeded", done, "Healthy")["message"]
    vms.delete("argo-mig")


def test_argo_cd_reads_devices_and_pools_as_published(lab, argocd):
    vf = wait_for("a published VF", lambda: (d := kubectl_json("get", "passthroughdevice", "node-2-0000-3b-00-2"))
                  .get("status", {}).get("assignable") is not None and d)
    judged(argocd, "PassthroughDevice", "assignable", vf, "Healthy")
    boot = kubectl_json("get", "passthroughdevice", "node-2-0000-3d-00-0")
    assert "InUseByHost" in judged(argocd, "PassthroughDevice", "not-assignable", boot, "Healthy")["message"]
    pools = kubectl_json("get", "storagepools")["items"]
    ready = next(p for p in pools if p["metadata"]["name"] == "lab-images")
    judged(argocd, "StoragePool", "ready", ready, "Healthy")
