"""Discovery, assignability, driver moves and allocation of PCI devices, on sysfs trees
built like real hosts' (lab/kopfvirt_lab/pcitree.py) with the PCI core's bind semantics played,
and what the host uses of them (its proc tree beside)."""

import re
from pathlib import Path

import pytest

from kopfvirt.agent.devices import Devices, DeviceUnavailable
from kopfvirt.api.schema import SpecError
from kopfvirt.clients import hostuse, kube, sysfs
from kopfvirt.core import passthrough, pci, pciids, vmspec
from kopfvirt_lab import pcitree

IDS = pciids.parse(Path(pciids.SEARCH_PATHS[0]).read_text())


@pytest.fixture
def tree(tmp_path):
    pcitree.build(tmp_path)
    kernel = pcitree.Kernel(tmp_path).start()
    yield tmp_path
    kernel.stop()


def verdicts(root, permitted=()):
    functions = sysfs.scan(root)
    return {a: pci.assess(f, functions, set(permitted), sysfs.vfio_loaded(root), "node-x")
            for a, f in functions.items()}


def test_names_come_from_the_pci_ids_database():
    assert IDS.vendor("10DE") == "NVIDIA Corporation"
    assert IDS.device("10de", "2204") == "GA102 [GeForce RTX 3090]"
    assert IDS.device("1af4", "1041") == "Virtio 1.0 network device"
    assert IDS.class_name("030200") == "3D controller"
    assert IDS.class_name("0c0330") == "USB controller"
    tiny = pciids.parse("# c\n1234  Acme\n\t0001  Widget\n\t\t1234 0002  Sub\nC 02  Network\n\t00  Ethernet\n")
    assert (tiny.vendor("1234"), tiny.device("1234", "0001"), tiny.class_name("020000")) == \
        ("Acme", "Widget", "Ethernet")


def test_discovery_reads_ids_drivers_groups_numa_and_sriov(tree):
    fns = sysfs.scan(tree)
    assert set(fns) == {f.address for f in pcitree.LAB}
    gpu = fns[pcitree.GPU.address]
    assert (gpu.vendor_id, gpu.device_id, gpu.class_id, gpu.driver, gpu.numa_node, gpu.iommu_group) == \
        ("10de", "2204", "030000", "nvidia", 0, 12)
    assert [f.address for f in pci.group_of(gpu, fns)] == ["0000:01:00.0", "0000:01:00.1"]
    assert fns["0000:3b:00.0"].virtual_functions == ("0000:3b:00.2", "0000:3b:00.3")
    assert fns["0000:3b:00.3"].physical_function == "0000:3b:00.0"
    assert fns["0000:06:00.0"].interfaces_up == ("enp6s0",)
    assert fns["0000:00:00.0"].numa_node is None and sysfs.vfio_loaded(tree)


def test_a_gpu_is_assignable_only_with_its_audio_function_permitted(tree):
    alone = verdicts(tree, permitted=[pcitree.GPU.address])[pcitree.GPU.address]
    assert (alone.assignable, alone.reason) == (False, "GroupShared")
    assert "0000:01:00.1" in alone.message and "snd_hda_intel" in alone.message
    both = verdicts(tree, permitted=[pcitree.GPU.address, pcitree.GPU_AUDIO.address])
    assert both[pcitree.GPU.address].assignable and both[pcitree.GPU_AUDIO.address].assignable


def test_a_group_shared_with_a_host_nic_in_use_is_refused_even_when_permitted(tree):
    v = verdicts(tree, permitted=[pcitree.USB.address, pcitree.HOST_NIC.address])
    assert (v[pcitree.USB.address].reason, v[pcitree.HOST_NIC.address].reason) == ("GroupShared", "InUseByHost")
    assert "enp6s0 is up" in v[pcitree.USB.address].message


def test_sriov_virtual_functions_are_assignable_their_physical_function_is_not(tree):
    v = verdicts(tree)
    assert v["0000:3b:00.0"].reason == "SRIOVPhysicalFunction" and "2 virtual functions" in v["0000:3b:00.0"].message
    assert v["0000:3b:00.2"].assignable and v["0000:3b:00.3"].assignable
    assert v["0000:00:00.0"].reason == "Bridge"


def test_without_iommu_or_vfio_nothing_is_assignable(tmp_path):
    pcitree.build(tmp_path, pcitree.without_iommu(pcitree.LAB))
    assert {v.reason for v in verdicts(tmp_path).values()} == {"NoIOMMU", "Bridge"}
    pcitree.build(tmp_path, vfio=False)
    assert verdicts(tmp_path, permitted=[pcitree.GPU.address, pcitree.GPU_AUDIO.address])[
        pcitree.GPU.address].reason == "NoVFIO"


def test_bind_moves_a_group_to_vfio_and_restore_gives_the_host_drivers_back(tree):
    group = [pcitree.GPU, pcitree.GPU_AUDIO]
    for fn in group:
        sysfs.to_vfio(tree, fn.address)
    assert {sysfs.scan(tree)[fn.address].driver for fn in group} == {"vfio-pci"}
    sysfs.to_vfio(tree, pcitree.GPU.address)  # idempotent
    for fn in group:
        sysfs.to_host(tree, fn.address, fn.driver)
    fns = sysfs.scan(tree)
    assert [fns[fn.address].driver for fn in group] == ["nvidia", "snd_hda_intel"]
    assert (tree / "bus/pci/devices/0000:01:00.0/driver_override").read_text().strip() == ""


def test_a_vf_binds_and_restores_and_a_vanished_device_fails_clearly(tree):
    vf = pcitree.SRIOV_VFS[0]
    sysfs.to_vfio(tree, vf.address)
    sysfs.to_host(tree, vf.address, "mlx5_core")
    assert sysfs.scan(tree)[vf.address].driver == "mlx5_core"
    pcitree.remove(tree, vf.address)
    assert vf.address not in sysfs.scan(tree)
    with pytest.raises(sysfs.BindError, match=vf.address):
        sysfs.to_vfio(tree, vf.address)


def test_rules_permit_by_vendor_device_or_class_and_the_spec_wins():
    rules = passthrough.parse_rules("- {vendorDevice: 10DE:2204, resourceName: nvidia.com/RTX3090}\n"
                                    "- {class: '0403'}\n")
    assert passthrough.effective({}, "10de", "2204", "030000", rules) == (True, "rules[0]", "nvidia.com/RTX3090")
    assert passthrough.effective({}, "10de", "1aef", "040300", rules) == (True, "rules[1]", "10de:1aef")
    assert passthrough.effective({}, "8086", "1533", "020000", rules) == (False, "default", "8086:1533")
    assert passthrough.effective({"permitted": False}, "10de", "2204", "030000", rules)[:2] == (False, "spec")
    assert passthrough.effective({"resourceName": "x/y"}, "10de", "2204", "030000", rules)[2] == "x/y"
    with pytest.raises(SpecError, match=r"rules\[0\].vendorDevice"):
        passthrough.parse_rules("- {vendorDevice: nvidia}")
    with pytest.raises(SpecError, match=r"rules\[0\]: needs"):
        passthrough.parse_rules("- {resourceName: a/b}")


def dev(name, node="node-1", resource="gpu", group=None, holder=None, permitted=True, assignable=True):
    return passthrough.Device(name, node, "0000:00:00." + name[-1], resource, permitted, assignable,
                              "" if assignable else "NoIOMMU", group, holder)


def vm(*requests, uid="u1"):
    return vmspec.parse("default", "v", uid, {"memory": {"size": "64Mi"}, "hostDevices": list(requests)})


def test_allocation_takes_free_devices_of_a_resource_on_one_node_with_their_group_mates():
    devices = [dev("a1", group=1, holder=("default", "w", "u2")), dev("a2", group=2), dev("a3", group=2,
               resource="audio"), dev("b1", node="node-2", group=5), dev("b2", node="node-2", group=6)]
    got = passthrough.allocate(vm({"name": "g", "resourceName": "gpu", "count": 2}), devices, ["node-1", "node-2"])
    assert (got.node, got.assignments, got.hold) == ("node-2", [("g", "b1"), ("g", "b2")], ["b1", "b2"])
    got = passthrough.allocate(vm({"name": "g", "resourceName": "gpu"}), devices, ["node-1"])
    assert (got.assignments, got.hold) == ([("g", "a2")], ["a2", "a3"])
    with pytest.raises(passthrough.Refusal, match=r"2 x gpu wanted, 1 free on node-1 \(a1 is held by VM default/w\)"):
        passthrough.allocate(vm({"name": "g", "resourceName": "gpu", "count": 2}), devices, ["node-1"])


def test_allocation_refusals_name_the_request_and_the_device():
    devices = [dev("a1", group=1, holder=("default", "w", "u2")), dev("a2", group=1), dev("a3", permitted=False),
               dev("a4", assignable=False)]
    cases = {"nope": ("DeviceNotFound", "PassthroughDevice nope does not exist"),
             "a1": ("DeviceHeld", "a1 is held by VM default/w"),
             "a2": ("DeviceHeld", "a2 shares IOMMU group 1 with a1, held by VM default/w"),
             "a3": ("DeviceNotPermitted", "a3 is not permitted"), "a4": ("DeviceNotAssignable", "NoIOMMU")}
    for name, (reason, words) in cases.items():
        with pytest.raises(passthrough.Refusal, match=r"spec.hostDevices\[0\].device: .*" + words) as e:
            passthrough.allocate(vm({"name": "d", "device": name}), devices, ["node-1"])
        assert e.value.reason == reason
    with pytest.raises(passthrough.Refusal, match="no PassthroughDevice has resource name tpu"):
        passthrough.allocate(vm({"name": "t", "resourceName": "tpu"}), devices, ["node-1"])
    held = passthrough.allocate(vm({"name": "d", "device": "a1"}, uid="u2"), devices, ["node-1"])
    assert held.hold == ["a1", "a2"]  # its own holder keeps it


def test_host_device_requests_are_checked_in_the_spec():
    with pytest.raises(SpecError, match=r"spec.hostDevices\[1\].device: x is asked for twice"):
        vm({"name": "a", "device": "x"}, {"name": "b", "device": "x"})
    with pytest.raises(SpecError, match=r"spec.hostDevices\[0\]: needs exactly one"):
        vm({"name": "a", "device": "x", "resourceName": "y"})


def test_a_virtual_function_that_vanishes_and_returns_keeps_its_physical_function_consistent(tree):
    vf = pcitree.SRIOV_VFS[0]
    pcitree.remove(tree, vf.address)
    assert sysfs.scan(tree)[pcitree.SRIOV_PF.address].virtual_functions == (pcitree.SRIOV_VFS[1].address,)
    pcitree.add(tree, vf)
    assert sysfs.scan(tree)[pcitree.SRIOV_PF.address].virtual_functions == tuple(f.address for f in pcitree.SRIOV_VFS)


def test_named_devices_are_never_also_given_to_a_resource_request():
    devices = [dev("a1", group=1), dev("a2", group=2)]
    got = passthrough.allocate(vm({"name": "any", "resourceName": "gpu"}, {"name": "this", "device": "a1"}),
                               devices, ["node-1"])
    assert got.assignments == [("any", "a2"), ("this", "a1")]
    two = vm({"name": "g", "resourceName": "gpu"}, {"name": "n", "resourceName": "nic"})  # no "asked twice"
    assert [h.resource_name for h in two.spec.host_devices] == ["gpu", "nic"]


def test_restore_leaves_nothing_unbound_after_a_move_cut_short(tree):
    """An agent killed between unbind and probe leaves the function unbound with the
    override set; scanning shows it, so repair can finish the give-back."""
    address = pcitree.GPU.address
    sysfs._write(tree / "bus/pci/devices" / address / "driver_override", "vfio-pci")
    sysfs._write(tree / "bus/pci/drivers/nvidia/unbind", address)
    sysfs._await_driver(tree, address, None)
    fn = sysfs.scan(tree)[address]
    assert (fn.driver, fn.driver_override) == (None, "vfio-pci")
    sysfs.to_host(tree, address, "nvidia")
    assert sysfs.scan(tree)[address].driver == "nvidia"


# -- what the host needs: never passed through, whatever permits it ---------------------------

@pytest.fixture
def host(tmp_path):
    """node-2's proc tree (lab/kopfvirt_lab/pcitree.py): / on LVM on the first NVMe disk,
    swap on LVM too, the default route on the I350's first port."""
    pcitree.build_proc(tmp_path / "proc")
    return tmp_path / "proc"


def everything_permitted(root, host_root, drivers=frozenset()):
    functions = sysfs.scan(root)
    seen = hostuse.read(root, host_root, drivers)
    return {a: pci.assess(f, functions, set(functions), sysfs.vfio_loaded(root), "node-x", seen)
            for a, f in functions.items()}


def test_of_two_identical_nvme_disks_the_boot_one_stays_with_the_host(tree, host):
    boot, data = pcitree.BOOT_NVME, pcitree.DATA_NVME
    assert (boot.vendor, boot.device) == (data.vendor, data.device) == ("144d", "a808")
    rules = passthrough.parse_rules("- {vendorDevice: '144d:a808', resourceName: example.com/pm983}")
    for fn in (boot, data):  # the rule permits both: the model is the same
        assert passthrough.effective({}, fn.vendor, fn.device, fn.class_, rules, fn.address)[0]
    v = everything_permitted(tree, host)
    assert (v[boot.address].reason, v[boot.address].message) == (
        "InUseByHost", "nvme0n1p3 holds the filesystem mounted at / via dm-0 (ubuntu--vg-ubuntu--lv)")
    assert v[data.address].assignable


def test_a_volume_group_member_stays_with_the_host_unmounted(tree, tmp_path):
    pcitree.build_proc(tmp_path / "bare", mountinfo="", swaps="Filename\tType\tSize\tUsed\tPriority\n")
    v = everything_permitted(tree, tmp_path / "bare")
    assert v[pcitree.BOOT_NVME.address].message == "nvme0n1p3 holds part of dm-0 (ubuntu--vg-ubuntu--lv)"
    assert v[pcitree.DATA_NVME.address].assignable


def test_of_two_ports_of_one_nic_the_default_routes_stays_with_the_host(tree, host):
    mgmt, spare = pcitree.MGMT_NIC, pcitree.SPARE_NIC
    assert (mgmt.vendor, mgmt.device) == (spare.vendor, spare.device) == ("8086", "1521")
    v = everything_permitted(tree, host)
    assert (v[mgmt.address].reason, v[mgmt.address].message) == (
        "InUseByHost", "it carries the host's default route (eno1)")
    assert v[spare.address].assignable


def test_the_boot_vga_and_devices_on_host_drivers_stay_with_the_host(tree, host):
    v = everything_permitted(tree, host, frozenset({"nvme", "megaraid_sas"}))
    assert (v[pcitree.BMC_VGA.address].reason, v[pcitree.BMC_VGA.address].message) == (
        "InUseByHost", "it is the boot VGA device (the host's console)")
    assert v[pcitree.GPU.address].assignable  # a VGA device too, not the boot one
    assert (v[pcitree.DATA_NVME.address].reason, v[pcitree.DATA_NVME.address].message) == (
        "InUseByHost", "it is bound to nvme, one of the host's drivers (hostDrivers of ConfigMap kopfvirt-passthrough)")


def test_a_host_device_in_the_group_refuses_its_mates_and_unknown_host_use_refuses_all(tree, host):
    functions = sysfs.scan(tree)
    gpu = functions[pcitree.GPU.address]
    seen = pci.Host(uses={pcitree.GPU_AUDIO.address: "it is the host's sound card"})
    verdict = pci.assess(gpu, functions, set(functions), True, "node-x", seen)
    assert (verdict.reason, verdict.message) == (
        "GroupShared", "IOMMU group 12 also holds 0000:01:00.1: it is the host's sound card")
    v = everything_permitted(tree, tree / "no-proc-here")
    assert {x.reason for a, x in v.items() if a != pcitree.HOST_BRIDGE.address} <= {"InUseByHost",
                                                                                    "SRIOVPhysicalFunction"}
    assert "cannot be told" in v[pcitree.DATA_NVME.address].message


def test_rules_pin_and_exclude_addresses_and_the_first_match_decides():
    rules = passthrough.parse_rules(
        "- {addresses: ['0000:3D:00.0'], exclude: true}\n"
        "- {vendorDevice: '144d:a808', resourceName: example.com/pm983}\n"
        "- {addresses: ['0000:09:00.1'], vendorDevice: '8086:1521'}\n")
    assert rules[0] == passthrough.Rule(addresses=("0000:3d:00.0",), exclude=True)
    nvme = ("144d", "a808", "010802")
    assert passthrough.effective({}, *nvme, rules, "0000:3d:00.0") == (False, "rules[0]", "144d:a808")
    assert passthrough.effective({}, *nvme, rules, "0000:3e:00.0") == (True, "rules[1]", "example.com/pm983")
    assert passthrough.effective({}, "8086", "1521", "020000", rules, "0000:09:00.1")[:2] == (True, "rules[2]")
    assert passthrough.effective({}, "8086", "1521", "020000", rules, "0000:09:00.0")[:2] == (False, "default")
    assert passthrough.effective({}, "8086", "1533", "020000", rules, "0000:09:00.1")[:2] == (False, "default")
    assert passthrough.effective({"permitted": True}, *nvme, rules, "0000:3d:00.0")[:2] == (True, "spec")


@pytest.mark.parametrize("text,field,words", [
    ("- {class: '01'}\n- {class: '02'}\n- {addresses: ['0000:3b:00.0', '3b:00.0']}", r"rules\[2\]\.addresses\[1\]",
     "'3b:00.0' is not a PCI address dddd:bb:dd.f"),
    ("- {addresses: ['0000:3b:20.0']}", r"rules\[0\]\.addresses\[0\]", "slot up to 1f"),
    ("- {addresses: ['0000:3b:00.8']}", r"rules\[0\]\.addresses\[0\]", "function up to 7"),
    ("- {addresses: '0000:3b:00.0'}", r"rules\[0\]\.addresses", "must be a non-empty list"),
    ("- {addresses: [], class: '01'}", r"rules\[0\]\.addresses", "must be a non-empty list"),
    ("- {class: '01', exclude: 'yes'}", r"rules\[0\]\.exclude", "is not true or false"),
    ("- {class: '01', exclude: true, resourceName: a/b}", r"rules\[0\]\.resourceName", "an exclude rule"),
    ("- {exclude: true}", r"rules\[0\]", "needs vendorDevice, class or addresses"),
    ("- {class: '01', adresses: ['0000:3b:00.0']}", r"rules\[0\]", "must be an object of vendorDevice, class, "
                                                                  "addresses, exclude, resourceName"),
])
def test_rule_errors_name_the_field(text, field, words):
    with pytest.raises(SpecError, match=field + ": (.* )?" + re.escape(words)):
        passthrough.parse_rules(text)


def test_host_drivers_are_a_list_of_driver_names():
    assert passthrough.parse_host_drivers("[nvme, ahci, megaraid_sas]") == {"nvme", "ahci", "megaraid_sas"}
    assert passthrough.parse_host_drivers(None) == frozenset()
    for text, field, words in (("nvme", "hostDrivers", "must be a list"),
                               ("[nvme, 'a b']", r"hostDrivers\[1\]", "is not a driver name"),
                               ("[nvme, 12]", r"hostDrivers\[1\]", "is not a driver name"),
                               ("[vfio-pci]", r"hostDrivers\[0\]", "the driver passthrough binds")):
        with pytest.raises(SpecError, match=field + ": .*" + words):
            passthrough.parse_host_drivers(text)


class Objects:
    """The agent's Devices over a tree, its PassthroughDevices as they would be published."""

    def __init__(self, root, proc_root, monkeypatch):
        self.patched = []
        monkeypatch.setattr(kube, "patch_status", lambda _ns, name, patch, plural: self.patched.append(name) or {})
        self.devices = Devices("node-x", str(root), pciids.EMPTY, "kopfvirt-system", hv=None,
                               post_event=lambda *a: None, proc_root=str(proc_root))
        self.devices.config = ([], frozenset(), None)

    def held(self, fn, uid="u1", **status):
        name = pci.object_name("node-x", fn.address)
        self.devices.objects[name] = {"metadata": {"name": name}, "status": {
            "node": "node-x", "address": fn.address, "permitted": True, "holder": {"uid": uid}, **status}}
        return {"name": "d", "device": name, "node": "node-x", "address": fn.address}


def test_bind_refuses_an_address_other_than_the_held_devices_before_reading_sysfs(tree, host, monkeypatch):
    o = Objects(tree, host, monkeypatch)
    entry = o.held(pcitree.DATA_NVME)
    monkeypatch.setattr(sysfs, "scan", lambda root: pytest.fail("sysfs read before the addresses were checked"))
    for wrong in ({"address": pcitree.BOOT_NVME.address}, {"node": "node-y"}):
        with pytest.raises(DeviceUnavailable, match="names .* but PassthroughDevice node-x-0000-3e-00-0 is "
                                                    "0000:3e:00.0 on node-x: nothing bound") as e:
            o.devices.bind("u1", [{**entry, **wrong}])
        assert e.value.reason == "DeviceMismatch"
    o.held(pcitree.DATA_NVME, node="node-y")  # the object itself says another node
    with pytest.raises(DeviceUnavailable, match="is 0000:3e:00.0 on node-y") as e:
        o.devices.bind("u1", [entry])
    assert e.value.reason == "DeviceMismatch" and o.patched == []


def test_bind_takes_the_free_disk_and_refuses_the_boot_disk_even_held_and_permitted(tree, host, monkeypatch):
    o = Objects(tree, host, monkeypatch)
    with pytest.raises(DeviceUnavailable, match="nvme0n1p3 holds the filesystem mounted at /") as e:
        o.devices.bind("u1", [o.held(pcitree.BOOT_NVME)])
    assert e.value.reason == "DeviceNotAssignable" and sysfs.scan(tree)[pcitree.BOOT_NVME.address].driver == "nvme"
    assert o.devices.bind("u1", [o.held(pcitree.DATA_NVME)]) == [("d", pcitree.DATA_NVME.address)]
    assert sysfs.scan(tree)[pcitree.DATA_NVME.address].driver == "vfio-pci"
    sysfs.to_host(tree, pcitree.DATA_NVME.address, "nvme")
