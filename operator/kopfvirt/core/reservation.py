"""The reservation Pod: how a VM asks kube-scheduler for a node and holds its share.

Its requests are the VM's size plus QEMU's overhead, so a node's pods and VMs together
never exceed its allocatable, and ResourceQuota, PriorityClass, taints and affinity
apply to VMs as they do to pods.
"""

from __future__ import annotations

import dataclasses

from .. import GROUP, VERSION, __version__
from . import pools
from .vmspec import VM

VM_LABEL = f"{GROUP}/vm"
ROLE_LABEL = f"{GROUP}/role"


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """What the cluster's admin sets for every reservation pod (chart values `reservation.*`).

    image: the Dockerfile's `reservation` target, a static program that only waits; the
    VM's QEMU runs outside the pod (libvirt's own process), so the pod holds the VM's share
    of the node and nothing runs in it.
    cpu_allocation_ratio: vCPUs per requested CPU, as KubeVirt's cpuAllocationRatio (a
    vCPU requests 1/ratio of a CPU): guests' vCPUs are threads that share the node's CPUs.
    """

    image: str = f"kopfvirt-reservation:{__version__}"
    cpu_allocation_ratio: float = 10


DEFAULT_POD_SETTINGS = PodSettings()
# The Pod Security "restricted" profile: the container is a program that only waits.
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_name(vm_name: str) -> str:
    return f"kopfvirt-{vm_name}"


def overhead_mib(vm: VM) -> int:
    """QEMU's own memory: 64 MiB of device models and libvirt, 8 MiB per vCPU (TCG's
    translation cache and thread stacks) and guest page tables (1/512 of its memory)."""
    return 64 + 8 * vm.vcpus + -(-vm.memory_bytes // (512 * 2**20))


def node_requirements(vm: VM) -> dict[str, str]:
    """Node labels (see nodelabels.py) the VM needs: its named CPU model, its required CPU
    features, the StoragePools it names (active on the node; the default pool, which the
    spec does not name, is the agent's to check)."""
    cpu = vm.spec.cpu
    out = {f"pool.{GROUP}/{p}": "true" for p in pools.vm_pools(vm.spec, default=None)}
    if cpu.model and cpu.model not in ("host-model", "host-passthrough"):
        out[f"cpu-model.{GROUP}/{cpu.model}"] = "true"
    for f in cpu.features:
        if f.policy == "require":
            out[f"cpu-feature.{GROUP}/{f.name}"] = "true"
    return out


def require_node_fields(pod: dict, fields: list[dict]) -> None:
    """AND node field requirements (metadata.name In/NotIn) into the pod's required node
    affinity: added to each of its terms, which Kubernetes ORs."""
    spec = pod["spec"]
    affinity = dict(spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or [{}]]
    for t in terms:
        t["matchFields"] = list(t.get("matchFields") or []) + fields
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}
    affinity["nodeAffinity"] = node_affinity
    spec["affinity"] = affinity


def cpu_request(vm: VM, settings: PodSettings) -> str:
    """The VM's vCPUs over the allocation ratio, in millicores (at least 1m)."""
    return f"{max(1, -(-vm.vcpus * 1000 // settings.cpu_allocation_ratio)):.0f}m"


def reservation_pod(vm: VM, node: str | None = None, settings: PodSettings = DEFAULT_POD_SETTINGS) -> dict:
    """`node`: where the VM's host devices are; the pod may only go there."""
    spec = vm.spec
    mib = -(-vm.memory_bytes // 2**20) + overhead_mib(vm)
    resources = {"cpu": cpu_request(vm, settings), "memory": f"{mib}Mi"}
    if spec.memory.hugepages:
        size = spec.memory.hugepages.page_size
        resources[f"hugepages-{size}"] = f"{vm.memory_bytes // 2**20}Mi"
        resources["memory"] = f"{overhead_mib(vm)}Mi"
    pod_spec = {
        "containers": [{"name": "reservation", "image": settings.image,
                        "resources": {"requests": resources, "limits": dict(resources)},
                        "securityContext": dict(RESTRICTED)}],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
    }
    selector = {**spec.node_selector, **node_requirements(vm)}
    if selector:
        pod_spec["nodeSelector"] = selector
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(vm.name), "namespace": vm.namespace,
            "labels": {VM_LABEL: vm.name, ROLE_LABEL: "reservation",
                       "app.kubernetes.io/managed-by": "kopfvirt"},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                                 "name": vm.name, "uid": vm.uid, "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": pod_spec,
    }
    if node:
        require_node_fields(pod, [{"key": "metadata.name", "operator": "In", "values": [node]}])
    return pod
