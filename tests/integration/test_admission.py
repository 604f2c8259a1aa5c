"""Bad specs are refused by the API server, naming the field, and leave nothing behind."""

import pytest
import yaml

from .conftest import kubectl, lab_guest


@pytest.mark.parametrize("change,expected", [
    ({"memory": {"size": "8Mi"}}, "spec.memory.size: Invalid value: \"8Mi\": must be at least 16Mi"),
    ({"memory": {"size": "lots"}}, "spec.memory.size: Invalid value: \"lots\""),
    ({"disks": [{"name": "a", "empty": {"size": "1Gi"}, "target": "vdb"},
                {"name": "b", "empty": {"size": "1Gi"}, "target": "vdb"}]},
     "spec.disks: Invalid value: two disks have the same target"),
    ({"disks": [{"name": "a"}]}, "must have exactly one of image, pool, empty or cloudInit"),
    ({"disks": [{"name": "a", "cloudInit": {}}]}, "spec.disks[0].cloudInit: Invalid value: needs userData or secretRef"),
    ({"disks": [{"name": "a", "readOnly": True, "pool": {"pool": "lab-images", "volume": "x"},
                 "deletionPolicy": "Retain"}]}, "deletionPolicy applies to image and empty disks only"),
    ({"diskDeletionPolicy": "Keep"}, "spec.diskDeletionPolicy: Unsupported value: \"Keep\""),
    ({"cpu": {"cores": 0}}, "spec.cpu.cores: Invalid value: 0"),
    ({"runStrategy": "Sometimes"}, "spec.runStrategy: Unsupported value: \"Sometimes\""),
    ({"kernelBoot": {"pool": "lab-images", "initrd": "x"}}, "spec.kernelBoot.kernel: Required value"),
])
def test_invalid_spec_is_refused_naming_the_field(vms, change, expected):
    body = lab_guest("bad")
    body["spec"].update(change)
    result = vms.apply(body)
    assert result.returncode != 0
    assert expected in result.stderr
    assert vms.get("bad") is None
    assert kubectl("-n", vms.namespace, "get", "pod", "kopfvirt-bad", check=False).returncode != 0


def test_missing_memory_is_refused(vms):
    body = lab_guest("nomem")
    del body["spec"]["memory"]
    result = vms.apply(body)
    assert result.returncode != 0 and "spec.memory: Required value" in result.stderr


@pytest.mark.parametrize("change,expected", [
    ({"memory": {"size": "65Mi", "hugepages": {"pageSize": "2Mi"}}},
     "spec.memory.size: 65Mi is not a multiple of the 2Mi hugepage size"),
    ({"cpu": {"sockets": 16, "cores": 64}}, "spec.cpu: sockets x cores x threads is 1024, more than 256"),
    ({"cpu": {"model": "Bogus-CPU"}}, "spec.cpu.model: no node offers CPU model Bogus-CPU"),
    # What a namespace's user may put on the pods made for a VM (the chart's reservation.policy).
    ({"priorityClassName": "system-node-critical"},
     "spec.priorityClassName: system-node-critical is the cluster's own; VMs may not use it"),
    ({"tolerations": [{"operator": "Exists"}]},
     "spec.tolerations[0]: a toleration without a key tolerates every taint"),
    ({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]},
     "spec.tolerations[0].key: VMs may not tolerate node.kubernetes.io/unschedulable"),
    ({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "namespaces": ["kube-system"], "labelSelector": {}}]}}},
     "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]: pods of other namespaces"),
])
def test_webhook_refuses_what_the_schema_cannot_say(vms, change, expected):
    body = lab_guest("webhooked")
    body["spec"].update(change)
    result = vms.apply(body)
    assert result.returncode != 0
    assert "denied the request" in result.stderr and expected in result.stderr, result.stderr
    assert vms.get("webhooked") is None


@pytest.mark.parametrize("disk,expected", [
    ({"image": {"pool": "lab-images", "volume": "/etc/shadow"}}, "spec.disks[0].image.volume: Invalid value"),
    ({"image": {"pool": "lab-images", "volume": "../../etc/shadow"}}, "spec.disks[0].image.volume: Invalid value"),
    ({"image": {"path": "/etc/shadow"}}, "unknown field \"spec.disks[0].image.path\""),
    ({"pool": {"pool": "/etc", "volume": "shadow"}}, "spec.disks[0].pool.pool: Invalid value"),
])
def test_a_path_in_a_vm_is_refused(vms, disk, expected):
    body = lab_guest("pathy")
    body["spec"]["disks"] = [{"name": "root", **disk}]
    result = vms.apply(body)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert vms.get("pathy") is None


def test_a_kernel_path_is_refused(vms):
    body = lab_guest("kernelpath")
    body["spec"]["kernelBoot"]["kernel"] = "/boot/vmlinuz"
    result = vms.apply(body)
    assert result.returncode != 0 and "spec.kernelBoot.kernel: Invalid value" in result.stderr, result.stderr


@pytest.fixture
def private_pool():
    """A StoragePool offered to one other namespace only."""
    name = "team-only"
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kopfvirt.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
        "spec": {"type": "dir", "source": {"path": "/var/lib/kopfvirt/storage/images"},
                 "namespaces": ["some-team"]}}))
    yield name
    kubectl("delete", "storagepool", name, "--wait=true")


def test_pools_a_namespace_may_not_use_are_refused_by_the_webhook(vms, private_pool):
    for disks, expected in [
        ([{"name": "root", "image": {"pool": "nope", "volume": "blank.qcow2"}}],
         "spec.disks[0].image.pool: StoragePool nope does not exist"),
        ([{"name": "root", "image": {"pool": private_pool, "volume": "blank.qcow2"}}],
         f"spec.disks[0].image.pool: StoragePool {private_pool} is not offered to namespace {vms.namespace}"),
        ([{"name": "scratch", "empty": {"size": "64Mi"}}], None),
    ]:
        body = lab_guest("pooled")
        body["spec"]["disks"] = disks
        if expected is None:  # a pool of LUNs cannot keep the VM's own disks
            body["spec"]["storagePool"], expected = "iscsi", "spec.storagePool: StoragePool iscsi is of type " \
                                                             "iscsi-direct, which cannot hold the VM's own disks"
        result = vms.apply(body)
        assert result.returncode != 0 and "denied the request" in result.stderr, result.stderr
        assert expected in result.stderr, result.stderr
        assert vms.get("pooled") is None


@pytest.mark.parametrize("spec,expected", [
    ({"type": "netfs", "source": {"host": "nfs.example", "path": "/export"}},
     "netfs needs source.host, source.path and source.format"),
    ({"type": "iscsi-direct", "source": {"host": "san.example"}},
     "iscsi-direct needs source.host, source.target and source.initiator"),
    ({"type": "rbd", "source": {"name": "vms"}}, "rbd needs source.host and source.name"),
    ({"type": "dir"}, "dir needs source.path"),
    ({"type": "iscsi-direct", "default": True, "source": {"host": "h", "target": "iqn.2026-11.x:t",
                                                          "initiator": "iqn.2026-11.x:i"}},
     "only a dir, netfs or nfs pool can be the default"),
    ({"type": "nfs", "source": {"host": "nfs.example", "path": "export"}},
     "nfs needs source.host and source.path, an absolute path on the server"),
    ({"type": "iscsi-direct", "source": {"host": "h", "target": "disks", "initiator": "iqn.2026-11.x:i"}},
     "spec.source.target: Invalid value"),
])
def test_storage_pool_specs_are_validated(spec, expected):
    result = kubectl("apply", "-f", "-", check=False, stdin=yaml.safe_dump({
        "apiVersion": "kopfvirt.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "bad-pool"}, "spec": spec}))
    assert result.returncode != 0 and expected in result.stderr, result.stderr
