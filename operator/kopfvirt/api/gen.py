"""Write the generated files: crds/*.yaml and docs/api.md, from the API types.

    python -m kopfvirt.api.gen [--check]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import yaml

from .. import GROUP, VERSION
from . import schema
from .migration import MigrationSpec, MigrationStatus
from .passthroughdevice import PassthroughDeviceSpec, PassthroughDeviceStatus
from .storagepool import StoragePoolSpec, StoragePoolStatus
from .virtualmachine import VirtualMachineSpec, VirtualMachineStatus

ROOT = Path(__file__).resolve().parents[3]
HEADER = "# Generated from operator/kopfvirt/api by `python -m kopfvirt.api.gen`; do not edit.\n"


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type
    status: type
    description: str
    columns: tuple[tuple[str, str, str], ...]
    scope: str = "Namespaced"


KINDS = (
    Kind("VirtualMachine", "virtualmachines", ("kvvm",), VirtualMachineSpec, VirtualMachineStatus,
         "A virtual machine run by libvirt and QEMU on a node, placed by kube-scheduler through a "
         "reservation pod.",
         (("Phase", "string", ".status.phase"), ("Node", "string", ".status.nodeName"),
          ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
          ("Age", "date", ".metadata.creationTimestamp"))),
    Kind("Migration", "migrations", ("kvmig",), MigrationSpec, MigrationStatus,
         "A move of one VirtualMachine to another node, live or offline. Deleting a Migration that "
         "has not finished cancels it; the VM stays on its source.",
         (("VM", "string", ".spec.vmName"), ("Mode", "string", ".spec.mode"), ("Phase", "string", ".status.phase"),
          ("Source", "string", ".status.sourceNode"), ("Target", "string", ".status.targetNode"),
          ("Downtime-ms", "integer", ".status.downtimeMs"), ("Age", "date", ".metadata.creationTimestamp"))),
    Kind("PassthroughDevice", "passthroughdevices", ("kvdev",), PassthroughDeviceSpec, PassthroughDeviceStatus,
         "One PCI function of a node, published by its node agent, that VMs may be given through VFIO "
         "once permitted.",
         (("Node", "string", ".status.node"), ("Address", "string", ".status.address"),
          ("Device", "string", ".status.deviceName"), ("Driver", "string", ".status.driver"),
          ("Resource", "string", ".status.resourceName"), ("Permitted", "boolean", ".status.permitted"),
          ("Assignable", "boolean", ".status.assignable"), ("Reason", "string", ".status.reason"),
          ("Holder", "string", ".status.holder.name"), ("Age", "date", ".metadata.creationTimestamp")),
         scope="Cluster"),
    Kind("StoragePool", "storagepools", ("kvpool",), StoragePoolSpec, StoragePoolStatus,
         "Storage an admin offers to VMs: a libvirt storage pool that the node agents define on the nodes "
         "it selects. VMs name pools and volumes, never paths.",
         (("Type", "string", ".spec.type"), ("Shared", "boolean", ".spec.shared"),
          ("Default", "boolean", ".spec.default"),
          ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
          ("Age", "date", ".metadata.creationTimestamp")),
         scope="Cluster"),
)


def crd(k: Kind) -> dict:
    spec_schema = schema.openapi(k.spec)
    status_schema = schema.openapi(k.status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{k.plural}.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": k.scope,
            "names": {"kind": k.kind, "listKind": f"{k.kind}List", "plural": k.plural,
                      "singular": k.kind.lower(), "shortNames": list(k.short_names), "categories": ["kopfvirt"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": n, "type": t, "jsonPath": p} for n, t, p in k.columns],
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": k.description, "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec_schema, "status": status_schema},
                }},
            }],
        },
    }


def _type_name(tp) -> str:
    tp, _ = schema._unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return f"[]{_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "map[string]string" if typing.get_args(tp)[1] is str else "object"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return {str: "string", int: "integer", bool: "boolean"}.get(tp, "object")


def _nested(cls, seen):
    for tp in typing.get_type_hints(cls).values():
        tp, _ = schema._unwrap_optional(tp)
        while typing.get_origin(tp) is list:
            tp, _ = schema._unwrap_optional(typing.get_args(tp)[0])
        if dataclasses.is_dataclass(tp) and tp not in seen:
            seen.append(tp)
            _nested(tp, seen)
    return seen


def docs() -> str:
    out = [HEADER.replace("# ", "<!-- ", 1).rstrip() + " -->", "", "# API reference", ""]
    for k in KINDS:
        out += [f"## {k.kind} ({GROUP}/{VERSION})", "", k.description, ""]
        for cls in [k.spec, *_nested(k.spec, []), k.status, *_nested(k.status, [])]:
            out += [f"### {cls.__name__}", ""]
            if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
                out += [" ".join(cls.__doc__.split()), ""]
            out += ["| field | type | default | description |", "|---|---|---|---|"]
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                meta = f.metadata
                default = meta.get("default")
                required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                shown = "required" if required else ("" if default in (None, [], {}) else f"`{json.dumps(default)}`")
                desc = meta["description"]
                if "enum" in meta:
                    desc += " One of: " + ", ".join(f"`{v}`" for v in meta["enum"]) + "."
                out.append(f"| `{schema.key(f)}` | {_type_name(hints[f.name])} | {shown} | {desc} |")
            out.append("")
    return "\n".join(out)


def outputs() -> dict[Path, str]:
    files = {ROOT / "docs" / "api.md": docs()}
    for k in KINDS:
        files[ROOT / "crds" / f"{k.kind.lower()}.yaml"] = HEADER + yaml.safe_dump(crd(k), sort_keys=False, width=100)
    return files


def main() -> int:
    stale = [p for p, text in outputs().items() if not p.exists() or p.read_text() != text]
    if "--check" in sys.argv:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run python -m kopfvirt.api.gen)")
        return 1 if stale else 0
    for p, text in outputs().items():
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
