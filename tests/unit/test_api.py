"""The API types are the one source: generated files must match them."""

import subprocess
import sys

import pytest

from kopfvirt.api import gen, schema
from kopfvirt.api.virtualmachine import VirtualMachineSpec


def test_generated_files_are_current():
    result = subprocess.run([sys.executable, "-m", "kopfvirt.api.gen", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_crd_schema_is_structural_and_described():
    crd = gen.crd(gen.KINDS[0])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(node, path):
        if "properties" in node:
            for key, sub in node["properties"].items():
                assert sub.get("description"), f"{path}.{key} has no description"
                assert "type" in sub, f"{path}.{key} has no type"
                walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], path + "[]")
    walk(spec, "spec")


def test_from_dict_names_the_field():
    with pytest.raises(schema.SpecError, match=r"spec\.disks\[0\]\.bus: must be one of"):
        schema.from_dict(VirtualMachineSpec, {"memory": {"size": "1Gi"}, "disks": [{"name": "a", "bus": "ide"}]})
    with pytest.raises(schema.SpecError, match=r"spec\.cpu\.cores: must be a int, not 'two'"):
        schema.from_dict(VirtualMachineSpec, {"memory": {"size": "1Gi"}, "cpu": {"cores": "two"}})


def test_round_trip():
    spec = {"memory": {"size": "1Gi"}, "disks": [{"name": "a", "empty": {"size": "1Gi"}}]}
    typed = schema.from_dict(VirtualMachineSpec, spec)
    again = schema.from_dict(VirtualMachineSpec, schema.to_dict(typed))
    assert again == typed
