"""PCI passthrough in the lab: node-1's agent reads this machine's own /sys (virtio, no
IOMMU); node-2's reads a built tree of a GPU server (lab/kopfvirt_lab/pcitree.py) whose bind, unbind
and drivers_probe a lab process answers as the kernel does. Devices are published,
permitted, allocated, bound and given back by the real agent and controller; a domain
with a tree device cannot start (its /dev/vfio group does not exist), which the VM
reports, and its devices go back to their host drivers."""

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from kopfvirt.clients import sysfs
from kopfvirt_lab import pcitree

from .conftest import REPO, kubectl, kubectl_json, lab_guest, metrics_of, operator_pid, wait_for

TREE = REPO / ".lab" / "sysfs" / "node-2"
GPU, AUDIO, USB, VF2, VF3 = ("node-2-0000-01-00-0", "node-2-0000-01-00-1", "node-2-0000-05-00-0",
                             "node-2-0000-3b-00-2", "node-2-0000-3b-00-3")
# Two of one NVMe model and two ports of one NIC: the first of each is the host's (its / and
# swap, its default route: lab/kopfvirt_lab/pcitree.py), the second is free. And the boot VGA.
BOOT_DISK, DATA_DISK, MGMT_PORT, SPARE_PORT, BMC_VGA = (
    "node-2-0000-3d-00-0", "node-2-0000-3e-00-0", "node-2-0000-09-00-0", "node-2-0000-09-00-1", "node-2-0000-03-00-0")


def device(name: str) -> dict:
    result = kubectl("get", "passthroughdevice", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def status(name: str) -> dict:
    return device(name).get("status") or {}


def set_rules(rules: list, host_drivers: list | None = None) -> None:
    kubectl("-n", "kopfvirt-system", "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kopfvirt-passthrough"},
        "data": {"rules": yaml.safe_dump(rules), "hostDrivers": yaml.safe_dump(host_drivers or [])}}))


def permit(name: str, permitted: bool | None) -> None:
    kubectl("patch", "passthroughdevice", name, "--type", "merge", "-p", json.dumps({"spec": {"permitted": permitted}}))


def events(vms, name: str) -> list[str]:
    items = kubectl_json("-n", vms.namespace, "get", "events", "--field-selector",
                         f"involvedObject.name={name},involvedObject.kind=VirtualMachine")["items"]
    return [e["reason"] for e in items]


def tree_driver(address: str) -> str | None:
    link = TREE / "bus" / "pci" / "devices" / address / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


@pytest.fixture
def rules(lab):
    yield set_rules
    set_rules([])
    for name in (GPU, AUDIO, USB, VF2, VF3, BOOT_DISK, DATA_DISK, MGMT_PORT, SPARE_PORT, "node-1-0000-00-03-0"):
        if device(name):
            permit(name, None)


def test_lab_nodes_publish_their_real_pci_devices_as_not_assignable(lab):
    real = sorted(p.name for p in Path("/sys/bus/pci/devices").iterdir())
    published = wait_for("node-1's devices", lambda: (items := [
        d for d in kubectl_json("get", "passthroughdevices", "-l", "kopfvirt.io/node=node-1")["items"]])
        and len(items) == len(real) and items)
    assert sorted(d["status"]["address"] for d in published) == real
    for d in published:
        s = d["status"]
        sysfs_vendor = (Path("/sys/bus/pci/devices") / s["address"] / "vendor").read_text().strip()
        assert s["vendorID"] == sysfs_vendor.removeprefix("0x")
        assert s["assignable"] is False and s["reason"] in ("NoIOMMU", "Bridge")
        if s["reason"] == "NoIOMMU":
            assert "node-1 has no IOMMU groups" in s["message"] and s.get("iommuGroup") is None
    virtio = [d["status"] for d in published if d["status"]["vendorID"] == "1af4"]
    assert virtio and all(s["vendorName"] == "Red Hat, Inc." and s["deviceName"].startswith("Virtio")
                          and s["driver"] == "virtio-pci" for s in virtio)
    printed = kubectl("get", "passthroughdevices", "-l", "kopfvirt.io/node=node-1").stdout
    assert "NoIOMMU" in printed and "Virtio" in printed


def test_the_tree_node_publishes_groups_sriov_and_reasons(lab):
    gpu = wait_for("the GPU of node-2", lambda: status(GPU).get("iommuGroup") is not None and status(GPU))
    assert (gpu["deviceName"], gpu["className"], gpu["numaNode"], gpu["iommuGroupMembers"]) == \
        ("GA102 [GeForce RTX 3090]", "VGA compatible controller", 0, ["0000:01:00.1"])
    assert gpu["permitted"] is False and gpu["permittedBy"] == "default"
    pf = status("node-2-0000-3b-00-0")
    assert pf["reason"] == "SRIOVPhysicalFunction" and pf["virtualFunctions"] == ["0000:3b:00.2", "0000:3b:00.3"]
    assert status(VF2)["physicalFunction"] == "0000:3b:00.0" and status(VF2)["assignable"] is True
    assert status("node-2-0000-06-00-0")["reason"] == "InUseByHost"


def test_a_gpu_is_allocated_bound_given_back_and_held_against_others(vms, rules):
    rules([{"vendorDevice": "10de:2204", "resourceName": "example.com/rtx3090"}, {"class": "0403"}])
    wait_for("the GPU permitted and assignable", lambda: status(GPU).get("assignable") and status(GPU))
    assert status(GPU)["permittedBy"] == "rules[0]" and status(AUDIO)["permittedBy"] == "rules[1]"
    vms.apply(lab_guest("gpu-a", hostDevices=[{"name": "gpu", "resourceName": "example.com/rtx3090"}]))
    held = wait_for("gpu-a holding the GPU", lambda: (vms.get("gpu-a") or {}).get("status", {}).get("hostDevices"))
    assert held == [{"name": "gpu", "device": GPU, "node": "node-2", "address": "0000:01:00.0"}]
    pod = wait_for("gpu-a's reservation pod", lambda: (r := kubectl(
        "-n", vms.namespace, "get", "pod", "kopfvirt-gpu-a", "-o", "json", check=False)).returncode == 0
        and json.loads(r.stdout))  # created right after the allocation is written
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["node-2"]}]
    for name in (GPU, AUDIO):  # the audio function goes with its group
        assert status(name)["holder"]["name"] == "gpu-a"

    # The agent binds the group, libvirt cannot open the tree's group, the group goes back.
    failed = vms.wait_condition("gpu-a", "Ready", "DomainStartFailed", timeout=60)
    assert "did not start" in failed["message"]
    wait_for("DevicesBound and DevicesRestored events",
             lambda: {"DevicesBound", "DevicesRestored"} <= set(events(vms, "gpu-a")))
    wait_for("the host drivers back", lambda: (tree_driver("0000:01:00.0"), tree_driver("0000:01:00.1"))
             == ("nvidia", "snd_hda_intel"))
    wait_for("the give-back recorded", lambda: "hostDriver" not in status(GPU) and status(GPU)["driver"] == "nvidia")
    assert vms.get("gpu-a")["status"]["phase"] == "Pending"
    agent_metrics = metrics_of("agent", 8081, "node-2")
    for operation in ("bind", "restore"):
        assert f'kopfvirt_device_operations_total{{node="node-2",operation="{operation}",result="ok"}}' in agent_metrics

    # Held: by name, its group mate, or by resource: another VM waits, with nothing bound.
    vms.apply(lab_guest("gpu-b", hostDevices=[{"name": "gpu", "device": GPU}]))
    vms.apply(lab_guest("gpu-c", hostDevices=[{"name": "audio", "device": AUDIO}]))
    vms.apply(lab_guest("gpu-d", hostDevices=[{"name": "gpu", "resourceName": "example.com/rtx3090"}]))
    assert f"{GPU} is held by VM {vms.namespace}/gpu-a" in vms.wait_condition("gpu-b", "Ready", "DeviceHeld")["message"]
    assert f"{AUDIO} is held by VM {vms.namespace}/gpu-a" in \
        vms.wait_condition("gpu-c", "Ready", "DeviceHeld")["message"]
    assert "1 x example.com/rtx3090 wanted, 0 free on node-2" in \
        vms.wait_condition("gpu-d", "Ready", "InsufficientDevices")["message"]
    for name in ("gpu-b", "gpu-c", "gpu-d"):
        assert vms.get(name)["status"]["phase"] == "Pending"
        assert not vms.get(name)["status"].get("hostDevices")
        assert kubectl("-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0

    # Deleting the holder releases the group; the next VM gets it.
    vms.delete("gpu-a")
    vms.delete("gpu-c")
    vms.delete("gpu-d")
    wait_for("gpu-b holding the GPU", lambda: (vms.get("gpu-b") or {}).get("status", {}).get("hostDevices"))
    assert status(GPU)["holder"]["name"] == "gpu-b"
    vms.delete("gpu-b")
    wait_for("the GPU free", lambda: "holder" not in status(GPU) and "holder" not in status(AUDIO))
    wait_for("the GPU back on nvidia", lambda: tree_driver("0000:01:00.0") == "nvidia")


@pytest.mark.parametrize("name,ask,reason,words", [
    ("missing", {"device": "node-2-0000-0a-00-0"}, "DeviceNotFound",
     "PassthroughDevice node-2-0000-0a-00-0 does not exist"),
    ("unpermitted", {"device": VF3}, "DeviceNotPermitted", f"{VF3} is not permitted"),
    ("group-shared", {"device": USB}, "DeviceNotAssignable",
     "IOMMU group 9 also holds 0000:06:00.0: its network interface enp6s0"),
    ("no-iommu", {"device": "node-1-0000-00-03-0"}, "DeviceNotAssignable", "node-1 has no IOMMU groups"),
    ("no-resource", {"resourceName": "example.com/tpu"}, "ResourceNotFound",
     "no PassthroughDevice has resource name example.com/tpu"),
], ids=lambda v: v if isinstance(v, str) and v.islower() and " " not in v else None)
def test_a_vm_asking_for_a_device_it_cannot_have_stays_pending_with_nothing_held(vms, rules, name, ask, reason, words):
    permit(USB, True)
    permit("node-1-0000-00-03-0", True)
    vms.apply(lab_guest(name, hostDevices=[{"name": "d", **ask}]))
    cond = vms.wait_condition(name, "Ready", reason)
    assert words in cond["message"] and "spec.hostDevices[0]" in cond["message"]
    vm = vms.get(name)
    assert vm["status"]["phase"] == "Pending" and not vm["status"].get("hostDevices")
    assert kubectl("-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0
    wait_for(f"a {reason} Event", lambda: reason in events(vms, name))  # posted in the background
    metrics = metrics_of("controller", 8080)
    assert f'kopfvirt_device_allocation_refusals_total{{reason="{reason}"}}' in metrics
    assert not any((d.get("status") or {}).get("holder", {}).get("name") == name
                   for d in kubectl_json("get", "passthroughdevices")["items"])
    vms.delete(name)


def test_what_the_host_uses_stays_with_it_whatever_permits_it(vms, rules, kstatus):
    """Rules permit the NVMe model, the NIC model and VGA: the boot disk, the default
    route's port and the boot VGA stay the host's; their twins go. Rules pin and exclude
    addresses; a hostDrivers entry keeps every device on that driver."""
    rules([{"vendorDevice": "144d:a808"}, {"vendorDevice": "8086:1521"}, {"class": "0300"}])
    wait_for("the twins permitted and assignable", lambda: all(
        status(n).get("assignable") and status(n).get("permitted") for n in (DATA_DISK, SPARE_PORT)))
    for name, words in ((BOOT_DISK, "holds the filesystem mounted at / via dm-0 (ubuntu--vg-ubuntu--lv)"),
                        (MGMT_PORT, "it carries the host's default route (eno1)"),
                        (BMC_VGA, "it is the boot VGA device (the host's console)")):
        s = status(name)
        assert (s["permitted"], s["assignable"], s["reason"]) == (True, False, "InUseByHost"), s
        assert words in s["message"], s["message"]
    printed = kubectl("get", "passthroughdevices", BOOT_DISK, DATA_DISK).stdout
    assert "InUseByHost" in printed and "Assignable" in printed

    # Even its own spec.permitted cannot give the boot disk away: a VM asking waits, nothing held.
    permit(BOOT_DISK, True)
    disk = wait_for("the boot disk's spec observed", lambda: (d := device(BOOT_DISK))["status"].get(
        "observedGeneration") == d["metadata"]["generation"] and d)
    by_type = {c["type"]: c for c in disk["status"]["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Assignable"]["status"], by_type["Assignable"]["reason"]) == \
        ("True", "False", "InUseByHost")
    assert kstatus(disk)[0] == "Current", kstatus(disk)  # published as its spec says: Argo CD and Flux move on
    vms.apply(lab_guest("boot-disk", hostDevices=[{"name": "disk", "device": BOOT_DISK}]))
    cond = vms.wait_condition("boot-disk", "Ready", "DeviceNotAssignable")
    assert "spec.hostDevices[0]" in cond["message"] and "holds the filesystem mounted at /" in cond["message"]
    assert "holder" not in status(BOOT_DISK) and tree_driver("0000:3d:00.0") == "nvme"
    vms.delete("boot-disk")

    # Rules by address: pin the one disk meant for VMs, exclude the other port.
    rules([{"addresses": ["0000:09:00.1"], "exclude": True}, {"vendorDevice": "144d:a808", "addresses": ["0000:3e:00.0"]},
           {"vendorDevice": "8086:1521"}])
    wait_for("the spare port excluded", lambda: status(SPARE_PORT).get("permittedBy") == "rules[0]"
             and status(SPARE_PORT)["permitted"] is False)
    assert status(DATA_DISK)["permittedBy"] == "rules[1]" and status(DATA_DISK)["permitted"] is True

    # hostDrivers: whatever is bound to nvme stays with the host.
    rules([{"vendorDevice": "144d:a808"}], host_drivers=["nvme"])
    wait_for("the data disk kept by hostDrivers", lambda: status(DATA_DISK).get("reason") == "InUseByHost")
    assert "it is bound to nvme, one of the host's drivers" in status(DATA_DISK)["message"]
    assert status(DATA_DISK)["permitted"] is True and status(DATA_DISK)["assignable"] is False


def test_a_bind_checks_the_address_against_the_device_the_vm_holds(vms, rules):
    """A VM's status.hostDevices names each device and its address; an address changed
    there (by anyone who may write VM status) is not bound: the device object decides."""
    permit(VF2, True)
    vms.apply(lab_guest("vf-lie", hostDevices=[{"name": "vf", "device": VF2}]))
    wait_for("vf-lie holding VF2", lambda: status(VF2).get("holder", {}).get("name") == "vf-lie")
    vms.wait_condition("vf-lie", "Ready", "DomainStartFailed", timeout=60)  # the tree's group cannot open
    wait_for("VF2 back on mlx5_core", lambda: tree_driver("0000:3b:00.2") == "mlx5_core")
    held = vms.get("vf-lie")["status"]["hostDevices"]
    kubectl("-n", vms.namespace, "patch", "virtualmachine", "vf-lie", "--subresource", "status", "--type", "merge",
            "-p", json.dumps({"status": {"hostDevices": [{**held[0], "address": "0000:3d:00.0"}]}}))
    # Its next start (at least 20 s after the failed one) refuses before touching sysfs.
    cond = vms.wait_condition("vf-lie", "Ready", "DeviceMismatch", timeout=120)
    assert "names 0000:3d:00.0 on node-2" in cond["message"] and f"{VF2} is 0000:3b:00.2" in cond["message"]
    assert (tree_driver("0000:3d:00.0"), tree_driver("0000:3b:00.2")) == ("nvme", "mlx5_core")
    vms.delete("vf-lie")
    wait_for("VF2 free", lambda: "holder" not in status(VF2))


def test_a_held_device_deleted_or_vanished_is_reported_on_its_vm(vms, rules):
    permit(VF2, True)
    permit(VF3, True)
    vms.apply(lab_guest("vf-a", hostDevices=[{"name": "vf", "device": VF2}]))
    vms.apply(lab_guest("vf-b", hostDevices=[{"name": "vf", "device": VF3}]))
    for name, dev in (("vf-a", VF2), ("vf-b", VF3)):
        wait_for(f"{name} holding {dev}", lambda: status(dev).get("holder", {}).get("name") == name)

    # Deleted by an admin: reported, published again by its agent, held again.
    kubectl("delete", "passthroughdevice", VF2)
    wait_for("DeviceDeleted on vf-a", lambda: "DeviceDeleted" in events(vms, "vf-a"))
    wait_for("VF2 published and held again", lambda: status(VF2).get("holder", {}).get("name") == "vf-a", timeout=60)
    assert status(VF3)["holder"]["name"] == "vf-b"  # the other device's state is untouched

    # Gone from sysfs: its object goes and the VM says why it cannot start, at its next
    # reconcile (a resync at the latest), even within the wait between failed starts. (While
    # the deleted object was away it said so too: first its start fails as ever again.)
    vms.wait_condition("vf-a", "Ready", "DomainStartFailed", timeout=60)
    pcitree.remove(TREE, "0000:3b:00.2")
    try:
        wait_for("VF2's object removed", lambda: not device(VF2))
        cond = vms.wait_condition("vf-a", "Ready", "DeviceVanished", timeout=60)
        assert "0000:3b:00.2" in cond["message"] and "gone from node-2" in cond["message"]
        assert status(VF3)["holder"]["name"] == "vf-b" and status(VF3)["assignable"] is True
        assert status("node-2-0000-3b-00-0")["virtualFunctions"] == ["0000:3b:00.3"]
    finally:  # the next tests need both VFs back and free
        pcitree.add(TREE, pcitree.SRIOV_VFS[0])
        vms.delete("vf-a")
        vms.delete("vf-b")
    wait_for("VF2 back", lambda: status(VF2).get("address") == "0000:3b:00.2")
    wait_for("the VFs free", lambda: "holder" not in status(VF2) and "holder" not in status(VF3))
    wait_for("the VFs back on mlx5_core",
             lambda: (tree_driver("0000:3b:00.2"), tree_driver("0000:3b:00.3")) == ("mlx5_core", "mlx5_core"))


def test_a_vm_with_a_host_device_is_not_migratable(vms, rules):
    permit(VF3, True)
    vms.apply(lab_guest("vf-mig", hostDevices=[{"name": "vf", "device": VF3}]))
    wait_for("vf-mig holding VF3", lambda: status(VF3).get("holder", {}).get("name") == "vf-mig")
    kubectl("-n", vms.namespace, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kopfvirt.io/v1alpha1", "kind": "Migration", "metadata": {"name": "vf-mig-move"},
        "spec": {"vmName": "vf-mig", "mode": "Offline"}}))
    mig = wait_for("the Migration refused", lambda: (m := kubectl_json("-n", vms.namespace, "get", "migration",
                                                                        "vf-mig-move")).get("status", {})
                   .get("phase") == "Failed" and m)
    assert mig["status"]["reason"] == "HostDevice" and VF3 in mig["status"]["message"]
    vms.delete("vf-mig")


def test_a_group_left_on_vfio_by_a_crashed_agent_goes_back_when_it_starts(lab, rules):
    """The kernel state a crash between bind and start leaves: the GPU's group on vfio-pci,
    its host driver on the objects. The restarted agent gives it back."""
    rules([{"vendorDevice": "10de:2204"}, {"class": "0403"}])
    wait_for("the GPU assignable", lambda: status(GPU).get("assignable"))
    agent = operator_pid("agent", "node-2")
    os.kill(agent, signal.SIGSTOP)  # the crash comes after what it leaves behind
    try:
        for name, address, driver in ((GPU, "0000:01:00.0", "nvidia"), (AUDIO, "0000:01:00.1", "snd_hda_intel")):
            kubectl("patch", "passthroughdevice", name, "--subresource", "status", "--type", "merge",
                    "-p", json.dumps({"status": {"hostDriver": driver}}))  # as the agent records it first
            sysfs.to_vfio(TREE, address)
        assert (tree_driver("0000:01:00.0"), tree_driver("0000:01:00.1")) == ("vfio-pci", "vfio-pci")
    finally:
        os.kill(agent, signal.SIGKILL)  # its pod's container starts it again
    wait_for("the group back on its host drivers",
             lambda: (tree_driver("0000:01:00.0"), tree_driver("0000:01:00.1")) == ("nvidia", "snd_hda_intel"))
    wait_for("the objects current", lambda: status(GPU).get("driver") == "nvidia"
             and status(AUDIO).get("driver") == "snd_hda_intel")
    assert "hostDriver" not in status(GPU)
    restored = kubectl_json("-n", "default", "get", "events", "--field-selector",
                            f"involvedObject.name={GPU},reason=Restored")["items"]
    assert restored and "given back to the host driver nvidia" in restored[-1]["message"]
