"""Cluster manifests: least-privilege RBAC, privileges only where the design allows them."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _docs(name):
    return [d for d in yaml.safe_load_all((ROOT / "manifests" / name).read_text()) if d]


def test_rbac_rules_name_resources_and_verbs():
    for role in (d for d in _docs("rbac.yaml") + _docs("subresources.yaml") if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            keys = ("nonResourceURLs", "verbs") if "nonResourceURLs" in rule else ("apiGroups", "resources", "verbs")
            for key in keys:
                assert rule[key] and "*" not in rule[key], f"{role['metadata']['name']}: wildcard in {key}"


def test_only_agent_and_libvirt_are_privileged():
    privileged = set()
    for name in ("controller.yaml", "agent.yaml", "libvirt.yaml"):
        for doc in _docs(name):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if (c.get("securityContext") or {}).get("privileged"):
                    privileged.add(doc["metadata"]["name"])
    assert privileged == {"kopfvirt-agent", "kopfvirt-libvirt"}


def test_libvirt_is_updated_only_on_purpose():
    ds, = _docs("libvirt.yaml")
    assert ds["spec"]["updateStrategy"]["type"] == "OnDelete"


@pytest.mark.parametrize("folder", ["manifests", "manifests/monitoring"])
def test_kustomization_lists_every_manifest(folder):
    listed = set(yaml.safe_load((ROOT / folder / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in (ROOT / folder).glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
