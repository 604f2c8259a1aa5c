import hashlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kopfvirt.core import disks, domainxml, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"
KERNEL = {"pool": "images", "kernel": "lab-guest-vmlinuz", "initrd": "lab-guest-initrd.img",
          "cmdline": "console=ttyS0 quiet"}
OWN_POOL = "/var/lib/kopfvirt/pools/gluster"
# What the agent resolves the spec's pools and volumes to on its node.
VOLUMES = {("images", "lab-guest-vmlinuz"): "/var/lib/kopfvirt/images/lab-guest-vmlinuz",
           ("images", "lab-guest-initrd.img"): "/var/lib/kopfvirt/images/lab-guest-initrd.img",
           ("images", "base.qcow2"): "/var/lib/kopfvirt/images/base.qcow2",
           ("lab", "v1"): "/var/lib/kopfvirt/lab/v1",
           ("nfs", "shared.raw"): "nfs://198.18.0.5/export/shared.raw"}
# An nfs pool has no path on the node: its files are URLs QEMU opens itself.
OWN_POOLS = {"nfs": "nfs://198.18.0.5/export"}
LEASE_DIR = "/var/lib/kopfvirt/pools/gluster/.leases"
CASES = {
    "minimal": {"memory": {"size": "64Mi"}},
    "lab-guest": {"memory": {"size": "128Mi"}, "cpu": {"cores": 2}, "kernelBoot": KERNEL},
    "everything": {
        "memory": {"size": "1Gi", "hugepages": {"pageSize": "2Mi"}},
        "cpu": {"sockets": 2, "cores": 2, "threads": 2, "model": "EPYC",
                "features": [{"name": "avx2"}, {"name": "svm", "policy": "disable"}]},
        "firmware": {"type": "UEFI"}, "guestAgent": True, "console": {"vnc": True},
        "disks": [{"name": "root", "image": {"pool": "images", "volume": "base.qcow2"}, "bootOrder": 1},
                  {"name": "data", "empty": {"size": "1Gi"}, "bus": "scsi"},
                  {"name": "vol", "pool": {"pool": "lab", "volume": "v1"}, "readOnly": True},
                  {"name": "seed", "cloudInit": {"userData": "#cloud-config"}}],
        "interfaces": [{"name": "eth0"}, {"name": "eth1", "model": "e1000e", "macAddress": "52:54:00:aa:bb:cc"}]},
    "host-model": {"memory": {"size": "256Mi"}, "cpu": {"model": "host-model"}},
    "host-passthrough": {"memory": {"size": "256Mi"}, "cpu": {"model": "host-passthrough"}},
    "host-devices": {"memory": {"size": "1Gi"}, "kernelBoot": KERNEL,
                     "hostDevices": [{"name": "gpu", "resourceName": "nvidia.com/H100"},
                                     {"name": "vf", "device": "node-1-0000-3b-00-2"}]},
}
CASES["nfs"] = {"memory": {"size": "256Mi"}, "kernelBoot": KERNEL, "storagePool": "nfs",
                "disks": [{"name": "root", "image": {"pool": "images", "volume": "base.qcow2"}},
                          {"name": "data", "empty": {"size": "1Gi"}},
                          {"name": "shared", "pool": {"pool": "nfs", "volume": "shared.raw"}},
                          {"name": "seed", "cloudInit": {"userData": "#cloud-config"}}]}
HOSTDEVS = {"host-devices": [("gpu", "0000:01:00.0"), ("vf", "0000:3b:00.2")]}


def _xml(case, virt_type="qemu"):
    vm = vmspec.parse("default", case, UID, CASES[case])
    own = OWN_POOLS.get(case, OWN_POOL)
    plan = disks.plan(vm, disks.vm_dir(own, vm.namespace, vm.name, vm.uid), VOLUMES, own_pool_shared=True,
                      lease_dir=LEASE_DIR if case == "nfs" else None)
    return domainxml.domain_xml(vm, plan, virt_type, {"default": "kopfvirt"}, HOSTDEVS.get(case, ()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, golden):
    golden(f"domain-{case}.xml", _xml(case))


@pytest.mark.parametrize("case", sorted(CASES))
def test_validates_against_libvirt_schema(case, tmp_path):
    path = tmp_path / "domain.xml"
    path.write_text(_xml(case, "kvm"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_uuid_is_the_vm_uid_and_metadata_names_the_vm():
    root = ET.fromstring(_xml("minimal"))
    assert root.findtext("uuid") == UID
    assert root.findtext("name") == "default_minimal"
    owner = root.find(f"metadata/{{{domainxml.METADATA_NS}}}vm")
    assert owner.attrib == {"namespace": "default", "name": "minimal", "uid": UID}


def test_disks_land_where_the_plan_says():
    root = ET.fromstring(_xml("everything"))
    sources = {d.find("target").get("dev"): d.find("source").attrib for d in root.findall("devices/disk")}
    vm_dir = f"{OWN_POOL}/vms/default/everything-{UID[:8]}"
    assert sources == {"vda": {"file": f"{vm_dir}/root.qcow2"}, "sda": {"file": f"{vm_dir}/data.qcow2"},
                       "vdb": {"pool": "lab", "volume": "v1"}, "sdb": {"file": f"{vm_dir}/seed-cidata.iso"}}
    assert root.find("vcpu").text == "8" and root.find("os").get("firmware") == "efi"
    # The VM's own writable disks on a shared pool bypass the host page cache (libvirt's
    # condition for a safe live migration); read-only media and volumes keep the default.
    caches = {d.find("target").get("dev"): d.find("driver").get("cache") for d in root.findall("devices/disk")}
    assert caches == {"vda": "none", "sda": "none", "vdb": None, "sdb": None}


def test_kernel_and_initrd_are_the_resolved_volumes():
    os_ = ET.fromstring(_xml("lab-guest")).find("os")
    assert (os_.findtext("kernel"), os_.findtext("initrd")) == (VOLUMES["images", "lab-guest-vmlinuz"],
                                                                VOLUMES["images", "lab-guest-initrd.img"])


def test_unknown_virt_type_refused():
    with pytest.raises(ValueError, match="virt_type"):
        _xml("minimal", "xen")


def test_host_devices_are_unmanaged_hostdevs_and_read_back():
    xml = _xml("host-devices")
    hostdevs = ET.fromstring(xml).findall("devices/hostdev")
    assert [h.get("managed") for h in hostdevs] == ["no", "no"]  # the agent binds, not libvirt
    assert domainxml.hostdev_addresses(xml) == {"0000:01:00.0", "0000:3b:00.2"}
    assert domainxml.hostdev_addresses(_xml("minimal")) == set()


def test_nfs_files_are_network_disks_qemu_opens_itself():
    root = ET.fromstring(_xml("nfs"))
    vm_dir = f"/export/vms/default/nfs-{UID[:8]}"
    disks_ = {d.find("target").get("dev"): d for d in root.findall("devices/disk")}
    assert {dev: d.get("type") for dev, d in disks_.items()} == {
        "vda": "network", "vdb": "network", "vdc": "network", "sda": "network"}
    sources = {dev: (d.find("source").get("protocol"), d.find("source").get("name"),
                     d.find("source/host").get("name")) for dev, d in disks_.items()}
    assert sources == {"vda": ("nfs", f"{vm_dir}/root.qcow2", "198.18.0.5"),
                       "vdb": ("nfs", f"{vm_dir}/data.qcow2", "198.18.0.5"),
                       "vdc": ("nfs", "/export/shared.raw", "198.18.0.5"),
                       "sda": ("nfs", f"{vm_dir}/seed-cidata.iso", "198.18.0.5")}
    formats = {dev: d.find("driver").get("type") for dev, d in disks_.items()}
    assert formats == {"vda": "qcow2", "vdb": "qcow2", "vdc": "raw", "sda": "raw"}


def test_each_writable_network_disk_gets_a_lease_on_shared_storage():
    """libvirt's lockd leases files itself; a disk QEMU opens over the network gets a lease
    named after its URL, the same on every node, in the lockspace on shared storage."""
    root = ET.fromstring(_xml("nfs"))
    leases = [(le.findtext("lockspace"), le.findtext("key"), le.find("target").get("path"))
              for le in root.findall("devices/lease")]
    vm_dir = f"nfs://198.18.0.5/export/vms/default/nfs-{UID[:8]}"
    expected = [f"{vm_dir}/root.qcow2", f"{vm_dir}/data.qcow2", "nfs://198.18.0.5/export/shared.raw"]
    assert leases == [(".leases", hashlib.sha256(u.encode()).hexdigest(), "/var/lib/kopfvirt/pools/gluster")
                      for u in expected]  # not the read-only cloud-init media
    assert ET.fromstring(_xml("everything")).findall("devices/lease") == []  # files: libvirt's own leases


def test_a_domain_names_the_vm_it_was_made_for_as_libvirt_prints_it_back():
    # Captured in the lab: `virsh define` of the lab-guest case, then `virsh dumpxml`.
    dumped = (Path(__file__).parent / "data" / "libvirt" / "dumpxml-lab-guest.xml").read_text()
    assert domainxml.owner(dumped) == ("default", "lab-guest", UID)
    assert domainxml.owner(_xml("minimal")) == ("default", "minimal", UID)
    assert domainxml.owner("<domain type='qemu'><name>by-hand</name></domain>") is None
