"""The VirtualMachine spec as the core sees it: parsed, defaulted, checked.

The CRD's schema refuses most bad input at admission; `parse` repeats the checks the
core relies on so a spec that slipped past (an older CRD, a direct etcd write) fails
with the same field-named message instead of producing a broken domain.
"""

from __future__ import annotations

import dataclasses

from . import quantity

RUN_STRATEGIES = ("Always", "Halted")
MIN_MEMORY = 16 * 2**20


class SpecError(ValueError):
    """A spec the core cannot run; the message names the field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"spec.{field}: {reason}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class KernelBoot:
    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


@dataclasses.dataclass(frozen=True)
class VMSpec:
    namespace: str
    name: str
    uid: str
    run_strategy: str
    cores: int
    memory_bytes: int
    kernel_boot: KernelBoot | None
    node_selector: dict[str, str]

    @property
    def domain_name(self) -> str:
        """namespace_name: unique per node, and a name an admin recognises in virsh."""
        return f"{self.namespace}_{self.name}"


def parse(namespace: str, name: str, uid: str, spec: dict) -> VMSpec:
    run_strategy = spec.get("runStrategy", "Always")
    if run_strategy not in RUN_STRATEGIES:
        raise SpecError("runStrategy", f"must be one of {', '.join(RUN_STRATEGIES)}, not {run_strategy!r}")
    cores = (spec.get("cpu") or {}).get("cores", 1)
    if not isinstance(cores, int) or cores < 1:
        raise SpecError("cpu.cores", f"must be a whole number of at least 1, not {cores!r}")
    if "memory" not in spec:
        raise SpecError("memory", "is required")
    try:
        memory = quantity.to_bytes(spec["memory"])
    except ValueError as e:
        raise SpecError("memory", str(e)) from None
    if memory < MIN_MEMORY:
        raise SpecError("memory", f"must be at least 16Mi, not {spec['memory']}")
    kb = spec.get("kernelBoot")
    kernel_boot = None
    if kb is not None:
        if not kb.get("kernel"):
            raise SpecError("kernelBoot.kernel", "is required when kernelBoot is given")
        kernel_boot = KernelBoot(kernel=kb["kernel"], initrd=kb.get("initrd"), cmdline=kb.get("cmdline"))
    return VMSpec(namespace=namespace, name=name, uid=uid, run_strategy=run_strategy, cores=cores,
                  memory_bytes=memory, kernel_boot=kernel_boot,
                  node_selector=dict(spec.get("nodeSelector") or {}))
