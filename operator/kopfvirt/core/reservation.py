"""The reservation Pod: how a VM asks kube-scheduler for a node and holds its share.

Its requests are the VM's size plus a fixed overhead for QEMU and libvirt, so a node's
pods and VMs together never exceed its allocatable, and quotas and priorities apply.
"""

from __future__ import annotations

from .. import GROUP, VERSION
from .vmspec import VMSpec

VM_LABEL = f"{GROUP}/vm"
ROLE_LABEL = f"{GROUP}/role"
# QEMU's own memory (device models, TCG translation cache, page tables) and libvirt's share.
MEMORY_OVERHEAD_MIB = 64
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def pod_name(vm_name: str) -> str:
    return f"kopfvirt-{vm_name}"


def reservation_pod(vm: VMSpec) -> dict:
    mib = -(-vm.memory_bytes // 2**20) + MEMORY_OVERHEAD_MIB
    resources = {"cpu": str(vm.cores), "memory": f"{mib}Mi"}
    spec = {
        "containers": [{"name": "reservation", "image": PAUSE_IMAGE,
                        "resources": {"requests": resources, "limits": dict(resources)}}],
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
    }
    if vm.node_selector:
        spec["nodeSelector"] = dict(vm.node_selector)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(vm.name), "namespace": vm.namespace,
            "labels": {VM_LABEL: vm.name, ROLE_LABEL: "reservation",
                       "app.kubernetes.io/managed-by": "kopfvirt"},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                                 "name": vm.name, "uid": vm.uid, "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": spec,
    }
