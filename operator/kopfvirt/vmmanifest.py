"""The VirtualMachine manifest `kubectl kopfvirt create vm` prints from its flags: pure, so
it can be piped into `kubectl apply -f -` or saved into Git. Checked by the same spec
parser the operator uses (core/vmspec.py), so a bad flag is refused here, naming the flag,
not later at admission."""

from __future__ import annotations

import re

from . import GROUP, VERSION
from .core import vmspec
from .api.schema import SpecError

# Each flag and the spec field it writes, so a refusal of the field names the flag.
FLAGS = {"spec.cpu": "--cpu", "spec.memory": "--memory", "spec.runStrategy": "--run-strategy",
         "spec.kernelBoot": "--kernel/--initrd/--cmdline", "spec.storagePool": "--storage-pool",
         "spec.disks": "--image/--disk/--empty-disk/--cloud-init-secret", "spec.interfaces": "--interface",
         "spec.nodeSelector": "--node-selector", "spec.evictionStrategy": "--eviction-strategy"}


class FlagError(ValueError):
    """A flag the manifest cannot be made from; the message names it."""


def _pool_volume(flag: str, value: str) -> dict:
    pool, slash, volume = value.partition("/")
    if not slash or not pool or not volume:
        raise FlagError(f"{flag} {value!r}: give POOL/VOLUME (a volume of a StoragePool)")
    return {"pool": pool, "volume": volume}


def _named(flag: str, value: str, what: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon or not name or not rest:
        raise FlagError(f"{flag} {value!r}: give NAME:{what}")
    return name, rest


def vm_manifest(name: str, namespace: str | None = None, *, cpu: int = 1, memory: str = "1Gi",
                run_strategy: str = "Always", image: str | None = None, disks: list[str] = (),
                empty_disks: list[str] = (), cloud_init_secret: str | None = None, kernel: str | None = None,
                initrd: str | None = None, cmdline: str | None = None, interfaces: list[str] = (),
                storage_pool: str | None = None, node_selector: list[str] = (), vnc: bool = False,
                guest_agent: bool = False, eviction_strategy: str | None = None) -> dict:
    """The manifest, or FlagError naming the flag that is wrong."""
    spec: dict = {"runStrategy": run_strategy, "cpu": {"cores": cpu}, "memory": {"size": memory}}
    if kernel:
        spec["kernelBoot"] = {"pool": _pool_volume("--kernel", kernel)["pool"],
                              "kernel": _pool_volume("--kernel", kernel)["volume"]}
        if initrd:
            boot = _pool_volume("--initrd", initrd)
            if boot["pool"] != spec["kernelBoot"]["pool"]:
                raise FlagError(f"--initrd {initrd!r}: the initrd is a volume of the kernel's pool "
                                f"{spec['kernelBoot']['pool']!r}")
            spec["kernelBoot"]["initrd"] = boot["volume"]
        if cmdline:
            spec["kernelBoot"]["cmdline"] = cmdline
    elif initrd or cmdline:
        raise FlagError("--initrd and --cmdline need --kernel")
    if storage_pool:
        spec["storagePool"] = storage_pool
    out = []
    if image:
        out.append({"name": "root", "image": _pool_volume("--image", image)})
    for value in disks:
        disk, volume = _named("--disk", value, "POOL/VOLUME")
        out.append({"name": disk, "pool": _pool_volume("--disk", volume)})
    for value in empty_disks:
        disk, size = _named("--empty-disk", value, "SIZE")
        out.append({"name": disk, "empty": {"size": size}})
    if cloud_init_secret:
        out.append({"name": "cloud-init", "cloudInit": {"secretRef": {"name": cloud_init_secret}}})
    if out:
        spec["disks"] = out
    if interfaces:
        spec["interfaces"] = [{"name": n} for n in interfaces]
    if node_selector:
        pairs = [s.partition("=") for s in node_selector]
        bad = next((s for s, (k, eq, _) in zip(node_selector, pairs) if not eq or not k), None)
        if bad is not None:
            raise FlagError(f"--node-selector {bad!r}: give KEY=VALUE")
        spec["nodeSelector"] = {k: v for k, _, v in pairs}
    if vnc:
        spec["console"] = {"vnc": True}
    if guest_agent:
        spec["guestAgent"] = True
    if eviction_strategy:
        spec["evictionStrategy"] = eviction_strategy
    for field, flags in (("disks", "--image/--disk/--empty-disk/--cloud-init-secret"), ("interfaces", "--interface")):
        names = [item["name"] for item in spec.get(field, [])]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # the API server refuses it too (a list keyed by name)
            raise FlagError(f"{flags}: spec.{field}: the name {twice[0]!r} is given twice")
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    try:
        vmspec.parse(namespace or "default", name, "00000000-0000-0000-0000-000000000000", spec)
    except SpecError as e:
        raise FlagError(_with_flag(str(e))) from None
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise FlagError(f"name {name!r}: lowercase letters, digits and '-', at most 63 characters")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": metadata, "spec": spec}


def _with_flag(message: str) -> str:
    """The parser's message, with the flag that set its field."""
    for field, flag in FLAGS.items():
        if message.startswith(field):
            return f"{flag}: {message}"
    return message
