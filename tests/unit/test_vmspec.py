import pytest

from kopfvirt.core import disks, quantity, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"


def parse(spec):
    return vmspec.parse("default", "demo", UID, spec)


@pytest.mark.parametrize("text,value", [("128Mi", 128 * 2**20), ("1Gi", 2**30), ("1G", 10**9),
                                        ("512", 512), ("1.5Gi", 3 * 2**29), ("2k", 2000)])
def test_quantities(text, value):
    assert quantity.to_bytes(text) == value


def test_quantity_refuses_garbage():
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.to_bytes("lots")


def test_defaults():
    vm = parse({"memory": {"size": "64Mi"}})
    s = vm.spec
    assert (s.run_strategy, vm.vcpus, vm.memory_bytes, s.kernel_boot, s.eviction_strategy) == \
        ("Always", 1, 64 * 2**20, None, "Stop")
    assert vm.domain_name == "default_demo"


def test_targets_are_assigned_per_bus_around_explicit_ones():
    vm = parse({"memory": {"size": "64Mi"}, "disks": [
        {"name": "a", "empty": {"size": "1Gi"}},
        {"name": "b", "empty": {"size": "1Gi"}, "target": "vda"},
        {"name": "c", "empty": {"size": "1Gi"}, "bus": "sata"},
        {"name": "d", "cloudInit": {"userData": "x"}}]})
    assert vm.targets == {"a": "vdb", "b": "vda", "c": "sda", "d": "sdb"}


def test_mac_is_stable_and_unicast():
    vm = parse({"memory": {"size": "64Mi"}, "interfaces": [{"name": "eth0"}]})
    assert vm.mac_address("eth0") == parse({"memory": {"size": "64Mi"}}).mac_address("eth0")
    assert vm.mac_address("eth0").startswith("52:54:00:")


@pytest.mark.parametrize("spec,field", [
    ({}, "spec.memory: is required"),
    ({"memory": {"size": "8Mi"}}, "spec.memory.size: must be at least 16Mi"),
    ({"memory": {"size": "lots"}}, "spec.memory.size: 'lots' does not match"),
    ({"memory": {"size": "3Mi", "hugepages": {"pageSize": "2Mi"}}}, "spec.memory.size: must be at least"),
    ({"memory": {"size": "65Mi", "hugepages": {"pageSize": "2Mi"}}}, "spec.memory.size: 65Mi is not a multiple"),
    ({"memory": {"size": "64Mi"}, "cpu": {"cores": 0}}, "spec.cpu.cores: must be at least 1"),
    ({"memory": {"size": "64Mi"}, "cpu": {"sockets": 16, "cores": 64}}, "spec.cpu: sockets x cores x threads"),
    ({"memory": {"size": "64Mi"}, "runStrategy": "Sometimes"}, "spec.runStrategy: must be one of"),
    ({"memory": {"size": "64Mi"}, "kernelBoot": {"pool": "images", "initrd": "i"}}, "spec.kernelBoot.kernel: is required"),
    ({"memory": {"size": "64Mi"}, "disks": [{"name": "a"}]}, "spec.disks[0]: must have exactly one of"),
    ({"memory": {"size": "64Mi"}, "disks": [{"name": "a", "empty": {"size": "1Gi"}, "target": "vdb"},
                                            {"name": "b", "empty": {"size": "1Gi"}, "target": "vdb"}]},
     "spec.disks[1].target: vdb is already the target of disk a"),
    ({"memory": {"size": "64Mi"}, "disks": [{"name": "a", "empty": {"size": "1Gi"}},
                                            {"name": "a", "empty": {"size": "1Gi"}}]},
     "spec.disks: two disks have the same name"),
])
def test_refusals_name_the_field(spec, field):
    with pytest.raises(vmspec.SpecError) as e:
        parse(spec)
    assert str(e.value).startswith(field)


def test_a_vm_keeps_on_deletion_the_disks_its_policies_retain():
    spec = {"memory": {"size": "64Mi"}, "diskDeletionPolicy": "Retain",
            "disks": [{"name": "root", "image": {"pool": "images", "volume": "base.qcow2"}},
                      {"name": "scratch", "empty": {"size": "1Gi"}, "deletionPolicy": "Delete"},
                      {"name": "data", "pool": {"pool": "san", "volume": "lun-1"}},
                      {"name": "seed", "cloudInit": {"userData": "#cloud-config\n"}}]}
    assert disks.kept_on_delete(vmspec.parse("ns", "vm", "u", spec)) == ["root.qcow2"]
    spec["diskDeletionPolicy"] = "Delete"
    spec["disks"][1]["deletionPolicy"] = "Retain"
    assert disks.kept_on_delete(vmspec.parse("ns", "vm", "u", spec)) == ["scratch.qcow2"]
    del spec["disks"][1]["deletionPolicy"]
    assert disks.kept_on_delete(vmspec.parse("ns", "vm", "u", spec)) == []
