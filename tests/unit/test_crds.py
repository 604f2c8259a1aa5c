"""The CRDs as `kubectl explain` and printers see them."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _crd(name):
    return yaml.safe_load((ROOT / "crds" / name).read_text())


def _undocumented(schema, path="spec"):
    missing = []
    for key, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{key}"
        if not sub.get("description"):
            missing.append(here)
        missing += _undocumented(sub, here)
        if "items" in sub:
            missing += _undocumented(sub["items"], here + "[]")
    return missing


def test_every_spec_field_is_described():
    version = _crd("virtualmachine.yaml")["spec"]["versions"][0]
    assert _undocumented(version["schema"]["openAPIV3Schema"]["properties"]["spec"]) == []


def test_printer_columns_and_names():
    crd = _crd("virtualmachine.yaml")
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Node", "Ready", "Age"]
    assert not {"vm", "vmi", "vmim"} & set(crd["spec"]["names"].get("shortNames", []))
    assert "status" in crd["spec"]["versions"][0]["subresources"]
