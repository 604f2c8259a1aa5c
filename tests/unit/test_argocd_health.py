"""The Argo CD health checks (integrations/argocd/kopfvirt.io/<Kind>/health.lua), run as
Argo CD runs them (tools/argocd-health: gopher-lua, Argo CD's libraries, `obj` decoded as
Argo CD decodes it): every case of their health_test.yaml, a wrong expectation caught, and
never an error on odd or partial objects. docs/gitops.md says what each verdict means."""

from __future__ import annotations

import functools
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ..gotools import go_tool

REPO = Path(__file__).resolve().parents[2]
CHECKS = REPO / "integrations" / "argocd"
GROUP = "kopfvirt.io"
CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
CAPTURE_NOTE = "# captured: "


@functools.cache
def crds() -> dict[str, dict]:
    """kind -> CRD of every kopfvirt.io kind in crds/."""
    out = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["group"] == GROUP:
            out[crd["spec"]["names"]["kind"]] = crd
    return out


KINDS = sorted(crds())


def cases(kind: str) -> list[tuple[dict, Path]]:
    """(expected healthStatus, input file) of each test of a kind."""
    directory = CHECKS / GROUP / kind
    tests = yaml.safe_load((directory / "health_test.yaml").read_text())["tests"]
    return [(t["healthStatus"], directory / t["inputPath"]) for t in tests]


@pytest.fixture(scope="session")
def argocd_health() -> Path:
    return go_tool("argocd-health")


def run(binary: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, timeout=120)


def evaluate(binary: Path, kind: str, objects: list) -> list[dict]:
    """Each object's verdict from `argocd-health eval` (one process for all of them)."""
    script = CHECKS / GROUP / kind / "health.lua"
    result = run(binary, "eval", str(script), stdin="".join(json.dumps(o) + "\n" for o in objects))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == len(objects)
    return verdicts


def test_every_kopfvirt_kind_has_a_health_check_and_no_check_is_stale():
    assert KINDS == ["Migration", "PassthroughDevice", "StoragePool", "VirtualMachine"]
    for kind in KINDS:
        for name in ("health.lua", "health_test.yaml"):
            assert (CHECKS / GROUP / kind / name).is_file(), f"{kind} has no {name}"
    assert sorted(p.name for p in (CHECKS / GROUP).iterdir()) == KINDS


def test_every_case_passes_as_argo_cd_runs_the_checks(argocd_health):
    result = run(argocd_health, "test", str(CHECKS))
    assert result.returncode == 0, result.stdout + result.stderr
    total = sum(len(cases(kind)) for kind in KINDS)
    assert result.stdout.splitlines()[-1] == f"{total} passed, 0 failed", result.stdout
    assert total >= 60


def test_a_wrong_expectation_an_erroring_script_and_an_unused_file_fail(argocd_health, tmp_path):
    checks = tmp_path / "argocd"
    shutil.copytree(CHECKS, checks)
    vm = checks / GROUP / "VirtualMachine"
    tests = (vm / "health_test.yaml").read_text()
    said = next(h["message"] for h, path in cases("VirtualMachine") if path.name == "running.yaml")
    wrong = tests.replace(said, said + " (not what it says)")
    assert wrong != tests
    (vm / "health_test.yaml").write_text(wrong)
    (vm / "testdata" / "forgotten.yaml").write_text((vm / "testdata" / "running.yaml").read_text())
    migration = checks / GROUP / "Migration" / "health.lua"
    migration.write_text(migration.read_text().replace("local hs = {}", "local hs = {}\nhs.x = string.format('%d', 1)"))
    result = run(argocd_health, "test", str(checks))
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert any("VirtualMachine/testdata/running.yaml" in line for line in failures), result.stdout
    assert f"got      Healthy {json.dumps(said)}" in result.stdout
    assert any("VirtualMachine/testdata/forgotten.yaml: no test" in line for line in failures), result.stdout
    # string is not among the libraries Argo CD opens for a check from argocd-cm.
    assert sum("kopfvirt.io/Migration/" in line and "(argocd-cm libraries)" in line for line in failures) \
        == len(cases("Migration")), result.stdout
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", result.stdout.splitlines()[-1])
    assert summary and int(summary[2]) == len(failures)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_agrees_with_the_test_cases_as_argo_cd_shows_live_objects(argocd_health, kind):
    """`eval` is what the integration tests ask about live objects; one being deleted is
    Progressing "Pending deletion", decided by Argo CD before any check runs."""
    expected, objects = [], []
    for health, path in cases(kind):
        obj = yaml.safe_load(path.read_text())
        objects.append(obj)
        deleting = obj["metadata"].get("deletionTimestamp")
        expected.append({"status": "Progressing", "message": "Pending deletion"} if deleting else health)
    assert evaluate(argocd_health, kind, objects) == expected


def test_eval_reports_script_errors_and_invalid_statuses(argocd_health, tmp_path):
    script = tmp_path / "health.lua"
    for body, error in (("return 5", "expect table output from Lua script, not number"),
                        ('return {status = "Fine"}', 'invalid health status "Fine"'),
                        ("return obj.status.phase", "attempt to index")):
        script.write_text(body)
        result = run(argocd_health, "eval", str(script), stdin="{}\n")
        assert error in json.loads(result.stdout)["error"], result.stdout


BAD_STATUSES = [
    None, "x", 7, [], {}, {"conditions": "x"}, {"conditions": {"type": "Ready"}}, {"phase": 7}, {"phase": None},
    {"phase": ["Running"]}, {"phase": "Running", "conditions": [None, 5, "x", [], {"type": 5}, {"type": "Ready"}]},
    {"phase": "Running", "conditions": [{"type": "Ready", "status": True, "message": 5}]},
    {"phase": "Stopped", "stopReason": 5, "stopTime": {}}, {"phase": "Migrating", "migration": {"targetNode": 5}},
    {"phase": "Running", "progress": {"dataTotalBytes": 0, "dataProcessedBytes": 5}},
    {"phase": "Running", "progress": {"dataTotalBytes": 1, "dataProcessedBytes": 1e308}},
    {"observedGeneration": "1"}, {"observedGeneration": 1, "phase": "Succeeded", "downtimeMs": "x"},
    {"phase": "Failed", "reason": 5, "message": None}, {"conditions": [{"type": "Stalled", "status": "True"}]},
    {"conditions": [{"type": "StrayDomain", "status": "True", "reason": [], "message": {}}]},
    {"address": 5}, {"address": "0000:03:00.0", "node": None, "holder": {"namespace": 1, "name": "x"}},
    {"address": "0000:03:00.0", "reason": "NoIOMMU", "assignable": 0},
    {"nodes": {"node-1": None, "node-2": 5, "node-3": {"state": "Failed", "message": 5}}}, {"nodes": ["node-1"]},
    {"nodes": {"node-1": {"state": "Failed"}}, "conditions": [{"type": "Ready", "status": "False", "reason": 3}]},
]
BAD_METADATA = [None, {}, {"generation": "2"}, {"generation": 2}, {"annotations": "x"},
                {"annotations": {"kopfvirt.io/restart-requested-at": 5, "kopfvirt.io/start-requested-at": []}}]


@pytest.mark.parametrize("kind", KINDS)
def test_odd_and_partial_objects_never_fail_a_check(argocd_health, kind):
    """The brief's shapes and more, then random ones: always a valid health code and a
    message, never a script error (which Argo CD would show as Unknown, with a stack trace)."""
    objects: list = [{}, {"status": None}, {"status": {"conditions": "x"}}, {"status": {"phase": 7}}]
    objects += [{"metadata": meta, "spec": spec, "status": status} for status in BAD_STATUSES
                for meta in BAD_METADATA for spec in (None, {"runStrategy": "Manual"}, {"runStrategy": 5})]
    objects += [random_object(random.Random(seed), kind) for seed in range(400)]
    for obj, verdict in zip(objects, evaluate(argocd_health, kind, objects)):
        assert "error" not in verdict and verdict["status"] in CODES and isinstance(verdict["message"], str), \
            (obj, verdict)


def random_object(rnd: random.Random, kind: str) -> dict:
    """An object whose fields are those the checks read, each of a random JSON type (often
    the right one), nested the way the operator nests them."""
    phases = crd_phases(kind) + ["Unknown", "Hibernating", ""]
    words = ["True", "False", "Unknown", "Ready", "Stalled", "Paused", "StrayDomain", "Reconciling", "Queued",
             "TargetScheduled", "Succeeded", "Active", "Failed", "Inactive", "NoNodes", "GuestCrashed", "NodeLost",
             "GuestShutdown", "Requested", "Always", "Manual", "Once", "Halted", "RerunOnFailure", "node-1",
             "2026-01-12T09:00:00Z", "2026-01-12T10:00:00.5Z", ""] + phases

    def scalar():
        return rnd.choice([None, True, False, 0, 1, 2, -1, 3.5, 1e12, rnd.choice(words), [], {}])

    def maybe(good):
        return good() if rnd.random() < 0.7 else scalar()

    def condition():
        return {k: maybe(lambda: rnd.choice(words)) for k in ("type", "status", "reason", "message")
                if rnd.random() < 0.9} | ({"observedGeneration": maybe(lambda: rnd.randint(0, 3))}
                                         if rnd.random() < 0.5 else {})

    def node_entry():
        return {"state": maybe(lambda: rnd.choice(["Active", "Failed", "Inactive"])),
                "message": maybe(lambda: rnd.choice(words))}

    fields = {
        "phase": lambda: rnd.choice(phases), "conditions": lambda: [maybe(condition) for _ in range(rnd.randint(0, 6))],
        "observedGeneration": lambda: rnd.randint(0, 3), "stopReason": lambda: rnd.choice(words),
        "stopTime": lambda: rnd.choice(words), "startTime": lambda: rnd.choice(words),
        "migration": lambda: {"name": maybe(lambda: "m"), "targetNode": maybe(lambda: "node-2")},
        "sourceNode": lambda: "node-1", "targetNode": lambda: "node-2", "reason": lambda: rnd.choice(words),
        "message": lambda: rnd.choice(words), "downtimeMs": lambda: rnd.randint(0, 500),
        "progress": lambda: {k: maybe(lambda: rnd.randint(0, 10**9)) for k in ("dataTotalBytes", "dataProcessedBytes")}
        | {"postCopy": maybe(lambda: rnd.random() < 0.5)},
        "address": lambda: "0000:03:00.0", "node": lambda: "node-1", "permitted": lambda: rnd.random() < 0.5,
        "assignable": lambda: rnd.random() < 0.5, "holder": lambda: {"namespace": maybe(lambda: "default"),
                                                                      "name": maybe(lambda: "demo")},
        "nodes": lambda: {f"node-{i}": maybe(node_entry) for i in range(rnd.randint(0, 3))},
    }
    status = {k: maybe(make) for k, make in fields.items() if rnd.random() < 0.5}
    annotations = {f"kopfvirt.io/{a}-requested-at": maybe(lambda: rnd.choice(words))
                   for a in ("start", "stop", "restart") if rnd.random() < 0.3}
    metadata = {"name": "x", "generation": maybe(lambda: rnd.randint(1, 3)), "annotations": maybe(lambda: annotations)}
    spec = {"runStrategy": maybe(lambda: rnd.choice(words)), "paused": maybe(lambda: rnd.random() < 0.5)}
    obj = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": maybe(lambda: metadata),
           "spec": maybe(lambda: spec)}
    if rnd.random() < 0.9:
        obj["status"] = maybe(lambda: status)
    return obj


def crd_phases(kind: str) -> list[str]:
    props = crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    return list(props.get("status", {}).get("properties", {}).get("phase", {}).get("enum", []))


@pytest.mark.parametrize("kind", ["VirtualMachine", "Migration"])
def test_every_phase_of_the_crd_is_judged(argocd_health, kind):
    """A phase added to the CRD must be added to the check: Unknown is for phases it does
    not know."""
    phases = crd_phases(kind)
    assert len(phases) >= 7
    objects = [{"metadata": {"generation": 1}, "spec": {}, "status": {"phase": p, "observedGeneration": 1}}
               for p in phases]
    for phase, verdict in zip(phases, evaluate(argocd_health, kind, objects)):
        assert verdict["status"] in CODES - {"Unknown"}, (phase, verdict)


@pytest.mark.parametrize("kind", KINDS)
def test_the_test_objects_are_whole_objects_marked_as_captured_or_not(kind):
    """The lead replaces written objects with `kubectl get -o yaml` captures from the lab:
    each stays a whole object of its kind, and says which it is on its first line."""
    namespaced = crds()[kind]["spec"]["scope"] == "Namespaced"
    for _, path in cases(kind):
        text = path.read_text()
        assert text.startswith(CAPTURE_NOTE), f"{path.name}: first line must be '{CAPTURE_NOTE}yes|no ...'"
        obj = yaml.safe_load(text)
        assert obj["apiVersion"] == f"{GROUP}/v1alpha1" and obj["kind"] == kind, path.name
        meta = obj["metadata"]
        assert meta.get("name") and isinstance(meta.get("generation"), int), path.name
        assert bool(meta.get("namespace")) == namespaced, path.name
        assert "spec" in obj, path.name
