import subprocess

import pytest

from kopfvirt.api.schema import SpecError
from kopfvirt.core import migration, pools, vmspec

IQN = "iqn.2026-11.io.kopfvirt.lab"
CASES = {
    "dir": {"type": "dir", "source": {"path": "/var/lib/kopfvirt/images"}},
    "netfs-gluster": {"type": "netfs", "source": {"host": "198.18.0.5", "path": "kopfvirt", "format": "glusterfs"},
                      "default": True},
    "iscsi-direct": {"type": "iscsi-direct", "source": {"host": "198.18.0.5", "target": f"{IQN}:storage",
                                                         "initiator": f"{IQN}:nodes"}},
    "rbd": {"type": "rbd", "source": {"host": "mon1.example", "name": "vms"}},
}
SPECS = {name: pools.parse(spec) for name, spec in CASES.items()}


def vm(namespace="default", **spec):
    return vmspec.parse(namespace, "web", "0123456789abcdef", {"memory": {"size": "128Mi"}, **spec})


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, golden):
    golden(f"pool-{case}.xml", pools.pool_xml("shared", SPECS[case]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_validates_against_libvirt_schema(case, tmp_path):
    path = tmp_path / "pool.xml"
    path.write_text(pools.pool_xml("shared", SPECS[case]))
    result = subprocess.run(["virt-xml-validate", str(path), "storagepool"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_iqn_is_checked():
    with pytest.raises(SpecError, match=r"source\.target: 'disks' does not match"):
        pools.parse({"type": "iscsi-direct", "source": {"host": "h", "target": "disks", "initiator": f"{IQN}:n"}})


def test_network_pools_are_shared_unless_said_otherwise():
    assert [n for n in sorted(SPECS) if pools.is_shared(SPECS[n])] == ["iscsi-direct", "netfs-gluster", "rbd"]
    assert pools.is_shared(pools.parse({**CASES["dir"], "shared": True}))
    assert not pools.is_shared(pools.parse({**CASES["netfs-gluster"], "shared": False}))


def test_netfs_mounts_under_the_pools_root_unless_given():
    assert pools.target_path("gluster", SPECS["netfs-gluster"]) == "/var/lib/kopfvirt/pools/gluster"
    assert pools.target_path("x", pools.parse({**CASES["netfs-gluster"], "mountPath": "/mnt/x"})) == "/mnt/x"
    assert pools.target_path("lun", SPECS["iscsi-direct"]) is None


def test_an_nfs_pool_is_no_libvirt_pool_but_a_shared_place_for_a_vms_own_disks():
    nfs = pools.parse({"type": "nfs", "source": {"host": "198.18.0.5", "path": "/export/"}, "default": True})
    assert not pools.in_libvirt(nfs) and all(pools.in_libvirt(s) for s in SPECS.values())
    assert pools.is_shared(nfs) and pools.holds_files(nfs)
    assert pools.target_path("nfs", nfs) == "nfs://198.18.0.5/export"
    specs = {"nfs": nfs}
    web = vm(disks=[{"name": "data", "empty": {"size": "1Gi"}}])
    assert pools.refusal(web.spec, "default", specs) is None and pools.own_pool(web.spec, specs) == "nfs"
    assert pools.unshared_disks(web.spec, specs) == []


def test_a_vm_names_pools_only_and_the_refusal_names_the_field():
    images = {"pool": "dir", "volume": "debian.qcow2"}
    assert pools.refusal(vm(disks=[{"name": "root", "image": images}]).spec, "default", SPECS) is None
    unknown = vm(disks=[{"name": "root", "image": {"pool": "nope", "volume": "x"}}])
    assert str(pools.refusal(unknown.spec, "default", SPECS)) == \
        "spec.disks[0].image.pool: StoragePool nope does not exist"
    private = {**SPECS, "dir": pools.parse({**CASES["dir"], "namespaces": ["team-a"]})}
    assert str(pools.refusal(vm(disks=[{"name": "root", "image": images}]).spec, "team-b", private)) == \
        "spec.disks[0].image.pool: StoragePool dir is not offered to namespace team-b"
    lun_for_files = vm(storagePool="iscsi-direct", disks=[{"name": "scratch", "empty": {"size": "1Gi"}}])
    assert "cannot hold the VM's own disks" in str(pools.refusal(lun_for_files.spec, "default", SPECS))
    no_default = {k: v for k, v in SPECS.items() if k != "netfs-gluster"}
    assert str(pools.refusal(vm(disks=[{"name": "scratch", "empty": {"size": "1Gi"}}]).spec, "default",
                             no_default)).startswith("spec.storagePool: is empty and no StoragePool is marked default")
    kernel = vm(kernelBoot={"pool": "nope", "kernel": "vmlinuz"})
    assert str(pools.refusal(kernel.spec, "default", SPECS)).startswith("spec.kernelBoot.pool:")


@pytest.mark.parametrize("field,value", [
    ("image", {"pool": "dir", "volume": "/etc/shadow"}),
    ("image", {"pool": "dir", "volume": "../../etc/shadow"}),
    ("pool", {"pool": "../x", "volume": "v"}),
])
def test_paths_are_refused(field, value):
    with pytest.raises(SpecError, match=rf"spec\.disks\[0\]\.{field}\.(volume|pool): .* does not match"):
        vm(disks=[{"name": "root", field: value}])
    with pytest.raises(SpecError, match=r"spec\.kernelBoot\.kernel: .* does not match"):
        vm(kernelBoot={"pool": "dir", "kernel": "/boot/vmlinuz"})
    with pytest.raises(SpecError, match=r"spec\.disks\[0\]\.image\.pool: is required"):
        vm(disks=[{"name": "root", "image": {"path": "/etc/shadow"}}])


def test_migration_needs_every_writable_disk_on_shared_storage():
    running = {"phase": "Running", "nodeName": "node-1"}
    on_gluster = vm(disks=[{"name": "root", "image": {"pool": "dir", "volume": "base"}},
                           {"name": "seed", "cloudInit": {"userData": "#cloud-config"}},
                           {"name": "lun", "pool": {"pool": "iscsi-direct", "volume": "unit:0:0:1"}}])
    assert migration.vm_refusal(on_gluster, running, "Live", {}, SPECS) is None
    local = vm(storagePool="dir", disks=[{"name": "root", "image": {"pool": "dir", "volume": "base"}},
                                         {"name": "iso", "readOnly": True, "pool": {"pool": "dir", "volume": "x.iso"}}])
    reason, message = migration.vm_refusal(local, running, "Live", {}, SPECS)
    assert reason == "StorageNotShared"
    assert message.startswith("disk root is in StoragePool dir, which is not shared storage")
    assert "iso" not in message  # read-only media need no copy
    assert migration.vm_refusal(local, running, "Live", {"copyStorage": True}, SPECS) is None
    volume = vm(disks=[{"name": "data", "pool": {"pool": "dir", "volume": "data.qcow2"}}])
    assert migration.vm_refusal(volume, running, "Live", {}, SPECS)[0] == "StorageNotShared"
    assert migration.vm_refusal(volume, running, "Live", {"copyStorage": True}, SPECS) is None
    assert migration.vm_refusal(local, running, "Offline", {}, SPECS)[0] == "StorageNotShared"


def test_a_read_only_pool_is_only_read():
    images = {**SPECS, "dir": pools.parse({**CASES["dir"], "readOnly": True})}
    as_image = vm(disks=[{"name": "root", "image": {"pool": "dir", "volume": "base.qcow2"}}])
    assert pools.refusal(as_image.spec, "default", images) is None
    attached = vm(disks=[{"name": "root", "pool": {"pool": "dir", "volume": "base.qcow2"}}])
    assert str(pools.refusal(attached.spec, "default", images)).startswith(
        "spec.disks[0].readOnly: StoragePool dir is read-only")
    read_only = vm(disks=[{"name": "root", "readOnly": True, "pool": {"pool": "dir", "volume": "base.qcow2"}}])
    assert pools.refusal(read_only.spec, "default", images) is None
    own = vm(storagePool="dir", disks=[{"name": "scratch", "empty": {"size": "1Gi"}}])
    assert "is read-only: it cannot hold" in str(pools.refusal(own.spec, "default", images))


def test_writable_volumes_are_those_attached_without_read_only():
    spec = vm(disks=[{"name": "a", "pool": {"pool": "iscsi-direct", "volume": "unit:0:0:1"}},
                     {"name": "b", "readOnly": True, "pool": {"pool": "iscsi-direct", "volume": "unit:0:0:2"}},
                     {"name": "c", "empty": {"size": "1Gi"}}]).spec
    assert pools.writable_volumes(spec) == {("iscsi-direct", "unit:0:0:1"): "spec.disks[0].pool"}


def test_a_pool_is_ready_when_every_node_it_is_offered_on_has_it_active():
    spec = pools.parse({**CASES["netfs-gluster"], "nodeSelector": {"storage": "yes"}})
    nodes = {"node-1": {"storage": "yes"}, "node-2": {"storage": "yes"}, "node-3": {}}
    active = {"state": "Active", "capacityBytes": 1}
    assert pools.readiness(spec, {"node-1": active, "node-2": active}, nodes) == \
        (True, "Active", "active on 2 node(s): node-1, node-2")
    failed = {"state": "Failed", "message": "mount.glusterfs: Transport endpoint is not connected"}
    assert pools.readiness(spec, {"node-1": active, "node-2": failed}, nodes) == \
        (False, "NotActive", "node-2: mount.glusterfs: Transport endpoint is not connected")
    assert pools.readiness(spec, {"node-1": active}, nodes)[2] == "node-2: not reported yet"
    assert pools.readiness(spec, {}, {"node-3": {}})[:2] == (False, "NoNodes")
