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


# The cluster's own priority classes: a reservation pod with one would preempt what keeps
# the node (and the cluster) running.
SYSTEM_PRIORITY_PREFIX = "system-"
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


@dataclasses.dataclass(frozen=True)
class PodPolicy:
    """What a namespace's user may put on the pods the operator creates for a VM (chart
    values `reservation.policy`), judged at admission and again before a pod is made.

    allowed_priority_classes: empty: any but the cluster's own `system-*` classes, which
    are never allowed. forbidden_toleration_keys: taints a VM may never tolerate (the
    control plane's, a cordon's, the out-of-service taint that releases a dead node's VMs);
    a toleration without a key (it tolerates every taint) is never allowed either.
    pod_affinity_across_namespaces: whether pod (anti-)affinity may look at pods of other
    namespaces (namespaces, namespaceSelector): by default only the VM's own.
    """

    allowed_priority_classes: tuple[str, ...] = ()
    forbidden_toleration_keys: tuple[str, ...] = (
        "node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master",
        "node.kubernetes.io/unschedulable", "node.kubernetes.io/out-of-service")
    pod_affinity_across_namespaces: bool = False


DEFAULT_POD_POLICY = PodPolicy()


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """What the cluster's admin sets for every reservation pod (chart values `reservation.*`).

    image: the Dockerfile's `reservation` target, a static program that only waits; the
    VM's QEMU runs outside the pod (libvirt's own process), so the pod holds the VM's share
    of the node and nothing runs in it.
    cpu_allocation_ratio: vCPUs per requested CPU, as KubeVirt's cpuAllocationRatio (a
    vCPU requests 1/ratio of a CPU): guests' vCPUs are threads that share the node's CPUs.
    policy: what users may put on the pods (PodPolicy).
    """

    image: str = f"kopfvirt-reservation:{__version__}"
    cpu_allocation_ratio: float = 10
    policy: PodPolicy = DEFAULT_POD_POLICY


DEFAULT_POD_SETTINGS = PodSettings()


def _pod_affinity_terms(affinity: dict):
    """(field path, term) of every pod (anti-)affinity term; a part of the wrong shape is
    yielded as the term, for the caller to refuse (the schema leaves affinity free-form)."""
    for kind in ("podAffinity", "podAntiAffinity"):
        rules = affinity.get(kind)
        where = f"spec.affinity.{kind}"
        if rules is None:
            continue
        if not isinstance(rules, dict):
            yield where, rules
            continue
        for when, terms in rules.items():
            if not isinstance(terms, list):
                yield f"{where}.{when}", terms
                continue
            for i, term in enumerate(terms):
                inner = term.get("podAffinityTerm", term) if isinstance(term, dict) else term
                yield f"{where}.{when}[{i}]", inner


def policy_refusal(vm: VM, policy: PodPolicy = DEFAULT_POD_POLICY) -> str | None:
    """Why the VM's placement fields break the admin's policy (naming the field), or None."""
    spec = vm.spec
    name = spec.priority_class_name
    if name and name.startswith(SYSTEM_PRIORITY_PREFIX):
        return f"spec.priorityClassName: {name} is the cluster's own; VMs may not use it"
    if name and policy.allowed_priority_classes and name not in policy.allowed_priority_classes:
        return (f"spec.priorityClassName: {name} is not allowed here (allowed: "
                f"{', '.join(policy.allowed_priority_classes)})")
    for i, t in enumerate(spec.tolerations):
        key = t.get("key") or ""
        if not key:
            return f"spec.tolerations[{i}]: a toleration without a key tolerates every taint; name the taint's key"
        if key in policy.forbidden_toleration_keys:
            return f"spec.tolerations[{i}].key: VMs may not tolerate {key}"
    if not policy.pod_affinity_across_namespaces:
        for where, term in _pod_affinity_terms(spec.affinity or {}):
            if not isinstance(term, dict):
                return f"{where}: must be an object (a core/v1 PodAffinityTerm)"
            namespaces = term.get("namespaces") or []
            if term.get("namespaceSelector") is not None or not isinstance(namespaces, list) or \
                    any(n != vm.namespace for n in namespaces):
                return f"{where}: pods of other namespaces are not yours to place by"
    return None
# The Pod Security "restricted" profile: the container is a program that only waits.
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_name(vm_name: str) -> str:
    return f"kopfvirt-{vm_name}"


# The Secrets a VM's cloud-init disks name are volumes of its pod: the kubelet fetches them
# (the node authorizer lets a kubelet read only what pods bound to it use) and the node's
# agent reads them from the pod's volume directory, so no Kopfvirt process reads a Secret.
CLOUD_INIT_MOUNT = "/var/run/kopfvirt/cloud-init"  # in the container, which never reads it


def cloud_init_volumes(vm: VM) -> dict[str, str]:
    """Secret name -> the pod's volume of it (cloud-init-0, -1, ... by name)."""
    names = sorted({d.cloud_init.secret_ref.name for d in vm.spec.disks if d.cloud_init and d.cloud_init.secret_ref})
    return {name: f"cloud-init-{i}" for i, name in enumerate(names)}


def cloud_init_path(kubelet_dir: str, pod_uid: str, volume: str) -> str:
    """Where the kubelet writes a Secret volume of a pod on its node (each key a file)."""
    return f"{kubelet_dir}/pods/{pod_uid}/volumes/kubernetes.io~secret/{volume}"


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
    if spec.tolerations:  # the fields a toleration has, nothing else a spec carries along
        pod_spec["tolerations"] = [{k: t[k] for k in TOLERATION_KEYS if k in t} for t in spec.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    secrets = cloud_init_volumes(vm)
    if secrets:  # mounted, or the kubelet would not fetch them; waits for a Secret not yet made
        pod_spec["volumes"] = [{"name": v, "secret": {"secretName": s}} for s, v in secrets.items()]
        pod_spec["containers"][0]["volumeMounts"] = [
            {"name": v, "mountPath": f"{CLOUD_INIT_MOUNT}/{s}", "readOnly": True} for s, v in secrets.items()]
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
