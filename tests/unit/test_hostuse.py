"""What the host uses of its PCI functions: the parsers on real /proc text, and the
client on sysfs trees laid out exactly as real hosts' (each layout quoted from its
source). tests/unit/data/hostuse/README.md says where each data file comes from."""

import os
import re
from pathlib import Path

import pytest

from kopfvirt.clients import hostuse as client
from kopfvirt.core import hostuse
from kopfvirt.core.hostuse import BlockDevice, Mount

DATA = Path(__file__).parent / "data" / "hostuse"


def text(name: str) -> str:
    return (DATA / name).read_text()


def sysfs(root: Path, links: dict[str, str], files: dict[str, str] = {}) -> Path:
    """A tree of `links` (path -> target, relative as the kernel writes them; each target
    made a directory) and `files`, under root/sys."""
    sys_ = root / "sys"
    for link, target in links.items():
        path = sys_ / link
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / target).resolve().mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for name, content in files.items():
        (sys_ / name).parent.mkdir(parents=True, exist_ok=True)
        (sys_ / name).write_text(content)
    return sys_


def proc(root: Path, mountinfo: str = "", swaps: str = "Filename\tType\tSize\tUsed\tPriority\n",
         route: str = "") -> Path:
    p = root / "proc"
    (p / "1" / "net").mkdir(parents=True)
    (p / "1" / "mountinfo").write_text(mountinfo)
    (p / "swaps").write_text(swaps)
    (p / "1" / "net" / "route").write_text(route or text("machine-route").replace("eth0", "none0"))
    return p


# -- parsers --------------------------------------------------------------------------------

def test_mountinfo_of_this_machine_and_of_an_lvm_server():
    mine = hostuse.parse_mountinfo(text("machine-mountinfo"))
    assert len(mine) == len(text("machine-mountinfo").splitlines())
    assert Mount("254:0", "/", "ext4", "/dev/vda") in mine
    assert Mount("0:4", "/run/netns/kvlab-node-1", "nsfs", "nsfs") in mine  # optional field shared:3
    ubuntu = {m.mount_point: m for m in hostuse.parse_mountinfo(text("ubuntu-lvm.mountinfo"))}
    assert (ubuntu["/"].devnum, ubuntu["/"].source) == ("253:0", "/dev/mapper/ubuntu--vg-ubuntu--lv")
    assert (ubuntu["/boot"].devnum, ubuntu["/snap/core20/1974"].devnum) == ("8:2", "7:0")
    assert ubuntu["/sys/fs/cgroup/cpu,cpuacct"].fstype == "cgroup"


def test_mountinfo_unescapes_paths_and_skips_broken_lines():
    # "Trimmed from a real host" (an SMB share with a space in its mount point), as quoted
    # in a MountInfo test of a Java project found with the code search.
    line = "37 29 0:53 / /mnt/smb\\040share rw,relatime shared:31 - cifs //nas/books rw,vers=3.1.1"
    assert hostuse.parse_mountinfo(line + "\nbroken line\n") == [Mount("0:53", "/mnt/smb share", "cifs", "//nas/books")]


def test_swaps_lists_partitions_only():
    assert hostuse.parse_swaps(text("machine-swaps")) == []
    assert hostuse.parse_swaps(text("rhel9.swaps")) == ["/dev/dm-1", "/dev/sdb3", "/dev/dm-7"]
    # An Arch host's swap file (a Kubernetes-on-Arch note): its filesystem is a mount already.
    assert hostuse.parse_swaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                               "/swap/swapfile                          file\t\t524284\t\t256\t\t-2\n") == []


def test_the_default_route_of_this_machine():
    assert hostuse.default_route_interfaces(text("machine-route")) == ["eth0"]
    down = re.sub(r"0003(\t0\t0\t0\t00000000)", r"0002\1", text("machine-route"))  # RTF_UP cleared
    assert hostuse.default_route_interfaces(down) == []


def test_the_function_is_the_deepest_pci_address_of_a_path():
    # A bonded port behind a PCIe switch, from a UCX debug log of a real cluster node:
    # "/sys/class/net/bond0/lower_ens21f0: PF sysfs path is '/sys/devices/pci0000:a0/
    # 0000:a0:03.1/0000:a3:00.0/0000:a4:02.0/0000:b0:00.0'".
    assert hostuse.pci_address_in("/sys/devices/pci0000:a0/0000:a0:03.1/0000:a3:00.0/0000:a4:02.0/0000:b0:00.0"
                                  "/net/ens21f0") == "0000:b0:00.0"
    # efivar's src/linux-sata.c: a SATA disk under its AHCI controller.
    assert hostuse.pci_address_in("/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
                                  "/sda1") == "0000:00:1f.2"
    assert hostuse.pci_address_in("/sys/devices/virtual/block/dm-0") is None


# -- the judgement, on snapshots ----------------------------------------------------------

# efivar's src/linux-sata.c and the Ubuntu server's mountinfo: /boot on sda2, / on an LVM
# volume whose physical volume is sda3 (Ubuntu's installer layout), swap on dm-1 as on the
# RHEL host of rhel9.swaps.
AHCI = "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
SATA_HOST = [BlockDevice("sda", "8:0", (AHCI,)), BlockDevice("sda2", "8:2", (f"{AHCI}/sda2",)),
             BlockDevice("sda3", "8:3", (f"{AHCI}/sda3",)),
             BlockDevice("dm-0", "253:0", ("/sys/devices/virtual/block/dm-0",), ("sda3",), "ubuntu--vg-ubuntu--lv"),
             BlockDevice("dm-1", "253:1", ("/sys/devices/virtual/block/dm-1",), ("sda3",), "ubuntu--vg-swap")]


def test_mounts_are_followed_through_lvm_to_the_controller():
    uses, unresolved = hostuse.block_uses(SATA_HOST, hostuse.parse_mountinfo(text("ubuntu-lvm.mountinfo")), [])
    assert uses == {"0000:00:1f.2": "sda3 holds the filesystem mounted at / via dm-0 (ubuntu--vg-ubuntu--lv)"}
    assert unresolved == []


def test_swap_by_kernel_name_or_mapper_name_and_unknown_swap_is_reported():
    uses, unresolved = hostuse.block_uses(SATA_HOST, [], hostuse.parse_swaps(text("rhel9.swaps")))
    assert uses == {"0000:00:1f.2": "sda3 holds swap (/dev/dm-1) via dm-1 (ubuntu--vg-swap)"}
    assert unresolved == ["/dev/sdb3", "/dev/dm-7"]
    # Red Hat's Deployment Guide shows /proc/swaps naming /dev/mapper/VolGroup00-LogVol01.
    uses, _ = hostuse.block_uses(SATA_HOST, [], ["/dev/mapper/ubuntu--vg-swap"])
    assert uses == {"0000:00:1f.2": "sda3 holds swap (/dev/mapper/ubuntu--vg-swap) via dm-1 (ubuntu--vg-swap)"}


def test_a_volume_member_is_the_hosts_even_unmounted():
    uses, _ = hostuse.block_uses(SATA_HOST, [], [])
    assert uses == {"0000:00:1f.2": "sda3 holds part of dm-0 (ubuntu--vg-ubuntu--lv)"}


def test_btrfs_reports_no_block_device_so_its_source_is_used():
    # "Recorded from an Arch installation on /dev/nvme0n1p2" (a mountinfo fixture found
    # with the code search): btrfs's MAJ:MIN is anonymous (0:24).
    line = ("23 1 0:24 /@ / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 "
            "rw,ssd,space_cache=v2,subvolid=256,subvol=/@")
    nvme = "/sys/devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    devices = [BlockDevice("nvme0n1", "259:0", (nvme,)), BlockDevice("nvme0n1p2", "259:2", (f"{nvme}/nvme0n1p2",))]
    uses, _ = hostuse.block_uses(devices, hostuse.parse_mountinfo(line), [])
    assert uses == {"0000:02:00.0": "nvme0n1p2 holds the filesystem mounted at /"}


# -- the client, on trees laid out as real hosts' ------------------------------------------

def test_this_machine_layout_root_disk_and_default_route(tmp_path):
    """This machine's own captures: vda (254:0) under 0000:00:02.0 holds /, eth0 on
    0000:00:03.0 carries the default route; zram and loop devices have no function."""
    links = {}
    for line in text("machine-dev-block").splitlines():
        link, target = line.split(" -> ")
        links[link.removeprefix("/sys/")] = os.path.relpath(target, os.path.dirname(link))
    for line in text("machine-class-net").splitlines():
        name = line.split("/")[4]
        parent = "pci0000:00/0000:00:03.0/virtio2" if name == "eth0" else "virtual"
        links[f"class/net/{name}"] = f"../../devices/{parent}/net/{name}"
    links["devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/device"] = "../../../virtio2"
    root = sysfs(tmp_path, links)
    host = client.read(root, proc(tmp_path, text("machine-mountinfo"), text("machine-swaps"), text("machine-route")))
    assert host.uses == {"0000:00:02.0": "vda holds the filesystem mounted at /",
                         "0000:00:03.0": "it carries the host's default route (eth0)"}
    assert host.unknown is None


def test_nvme_under_lvm_as_on_a_real_host(tmp_path):
    """Daniel Berrangé on qemu-devel (2022-06-17, "qga: treat get-guest-fsinfo as best
    effort"), from his machine: /sys/dev/block/253:0 -> /sys/devices/virtual/block/dm-0,
    /sys/devices/virtual/block/dm-0/slaves/nvme0n1p4 ->
    /sys/devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p4, and
    /sys/dev/block/259:2 -> .../nvme0n1/nvme0n1p2 (the MAJ:MIN of nvme0n1p4 is not quoted:
    259:4 here)."""
    nvme = "devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    root = sysfs(tmp_path, {
        "dev/block/253:0": "../../devices/virtual/block/dm-0",
        "dev/block/259:2": f"../../{nvme}/nvme0n1p2",
        "dev/block/259:4": f"../../{nvme}/nvme0n1p4",
        "devices/virtual/block/dm-0/slaves/nvme0n1p4": f"../../../../{nvme.removeprefix('devices/')}/nvme0n1p4",
    }, {"devices/virtual/block/dm-0/dm/name": "fedora-root\n"})
    mountinfo = "29 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/fedora-root rw\n"
    host = client.read(root, proc(tmp_path, mountinfo))
    assert host.uses == {"0000:02:00.0": "nvme0n1p4 holds the filesystem mounted at / via dm-0 (fedora-root)"}


def test_md_raid_of_whole_nvme_disks_as_on_a_real_host(tmp_path):
    """A Debian 10.9 host (jpapenfuss/UptimeDown, docs/gathering-references/disk.md):
    /sys/dev/block/259:0 -> /sys/devices/pci0000:80/0000:80:03.1/0000:84:00.0/nvme/nvme0/nvme0n1,
    its holders/md127 -> /sys/devices/virtual/block/md127, and md127 (9:127) over nvme0n1
    and nvme1n1 (its /proc/diskstats); nvme1n1's function is not quoted: 0000:85:00.0 here.
    An md device records its members in slaves/ as dm does (bd_link_disk_holder)."""
    n0 = "pci0000:80/0000:80:03.1/0000:84:00.0/nvme/nvme0/nvme0n1"
    n1 = "pci0000:80/0000:80:03.2/0000:85:00.0/nvme/nvme1/nvme1n1"
    root = sysfs(tmp_path, {
        "dev/block/259:0": f"../../devices/{n0}", "dev/block/259:1": f"../../devices/{n1}",
        "dev/block/9:127": "../../devices/virtual/block/md127",
        "devices/virtual/block/md127/slaves/nvme0n1": f"../../../../{n0}",
        "devices/virtual/block/md127/slaves/nvme1n1": f"../../../../{n1}",
    })
    host = client.read(root, proc(tmp_path, "30 1 9:127 / /srv rw,relatime shared:1 - ext4 /dev/md127 rw\n"))
    assert host.uses == {"0000:84:00.0": "nvme0n1 holds the filesystem mounted at /srv via md127",
                         "0000:85:00.0": "nvme1n1 holds the filesystem mounted at /srv via md127"}
    unmounted = client.read(root, proc(tmp_path / "x"))
    assert unmounted.uses["0000:84:00.0"] == "nvme0n1 holds part of md127"


def test_a_partition_of_an_md_array_leads_to_the_arrays_disks(tmp_path):
    """efivar's src/linux-md.c: /sys/dev/block/259:0 -> ../../devices/virtual/block/md1/md1p1
    and 9:1 -> ../../devices/virtual/block/md1; its members as SATA partitions in
    src/linux-sata.c's layout (8:1 -> .../0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1;
    sdb1's port, ata2, is not quoted)."""
    ahci = "pci0000:00/0000:00:1f.2"
    root = sysfs(tmp_path, {
        "dev/block/259:0": "../../devices/virtual/block/md1/md1p1",
        "dev/block/9:1": "../../devices/virtual/block/md1",
        "dev/block/8:1": f"../../devices/{ahci}/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1",
        "dev/block/8:17": f"../../devices/{ahci}/ata2/host1/target1:0:0/1:0:0:0/block/sdb/sdb1",
        "devices/virtual/block/md1/slaves/sda1": f"../../../../{ahci}/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1",
        "devices/virtual/block/md1/slaves/sdb1": f"../../../../{ahci}/ata2/host1/target1:0:0/1:0:0:0/block/sdb/sdb1",
    })
    host = client.read(root, proc(tmp_path, "22 1 259:0 / / rw,relatime shared:1 - ext4 /dev/md1p1 rw\n"))
    assert host.uses == {"0000:00:1f.2": "sda1 holds the filesystem mounted at / via md1p1"}


def test_an_nvme_multipath_head_leads_to_its_controllers(tmp_path):
    """efivar's src/linux-nvme.c: /sys/dev/block/259:5 -> ../../devices/virtual/nvme-subsystem/
    nvme-subsys0/nvme0n1 and 259:6 -> .../nvme0n1/nvme0n1p1; the kernel links each
    controller into its subsystem by name (drivers/nvme/host/core.c, nvme_init_subsystem);
    the controller's function from the same file's first example (0000:05:00.0)."""
    root = sysfs(tmp_path, {
        "dev/block/259:5": "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1",
        "dev/block/259:6": "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p1",
        "devices/virtual/nvme-subsystem/nvme-subsys0/nvme0": "../../../pci0000:00/0000:00:1d.0/0000:05:00.0/nvme/nvme0",
    })
    host = client.read(root, proc(tmp_path, "22 1 259:6 / / rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw\n"))
    assert host.uses == {"0000:05:00.0": "nvme0n1p1 holds the filesystem mounted at /"}


def test_a_default_route_on_a_bond_leads_to_its_ports(tmp_path):
    """The UCX log's bond: /sys/class/net/bond0/lower_ens21f0 -> the port under
    0000:b0:00.0 (class/net/bond0 -> ../../devices/virtual/net/bond0, as lo is on this machine)."""
    port = "pci0000:a0/0000:a0:03.1/0000:a3:00.0/0000:a4:02.0/0000:b0:00.0"
    root = sysfs(tmp_path, {
        "class/net/bond0": "../../devices/virtual/net/bond0",
        "devices/virtual/net/bond0/lower_ens21f0": f"../../../{port}/net/ens21f0",
        f"devices/{port}/net/ens21f0/device": "../../../0000:b0:00.0",
    })
    route = text("machine-route").replace("eth0", "bond0")
    assert client.read(root, proc(tmp_path, route=route)).uses == {
        "0000:b0:00.0": "it carries the host's default route (bond0)"}


def test_an_unreadable_proc_leaves_every_device_with_the_host(tmp_path):
    host = client.read(tmp_path, tmp_path / "nowhere")
    assert host.unknown and "nowhere/1/mountinfo" in host.unknown


def test_this_machines_root_disk_is_found_live():
    """The machine the tests run on: if / is on a PCI block device, its function is the host's."""
    # Skipped only off CI: CI's machines have a readable /proc and / on a virtio disk.
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    if not os.access("/proc/1/mountinfo", os.R_OK):
        missing("/proc/1/mountinfo is not readable here")
    root = next((m for m in hostuse.parse_mountinfo(Path("/proc/1/mountinfo").read_text())
                 if m.mount_point == "/"), None)
    target = os.path.realpath(f"/sys/dev/block/{root.devnum}") if root else ""
    address = hostuse.pci_address_in(target)
    if not address:
        missing(f"/ is not on a PCI block device here ({root})")
    assert "holds the filesystem mounted at /" in client.read("/sys", "/proc").uses[address]
