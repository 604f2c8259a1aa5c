"""Sysfs trees of PCI hosts this machine is not: for the unit tests and the lab's node-2.

These machines have no IOMMU and only virtio devices, so the cases passthrough must get
right (a GPU with its audio function, a device sharing its group with a host NIC, an
SR-IOV card, a host without IOMMU groups, a boot disk and a management port of the very
model of a free disk and NIC) are built as trees in sysfs's layout, and `Kernel` plays the
PCI core's part for them: the bind, unbind and drivers_probe files are FIFOs it reads, and
it moves the `driver` links the way the kernel does (honouring driver_override). The
agent's code is the same for /sys and for these trees. What the host uses of them (its
mounts, swap, default route) is in a proc tree beside (`build_proc`).

    python -m kopfvirt_lab.pcitree serve ROOT   # build ROOT (the lab preset) and play its kernel
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
from pathlib import Path

from kopfvirt.core.pci import VFIO_DRIVER


@dataclasses.dataclass(frozen=True)
class Disk:
    """An NVMe namespace as the kernel lays it out under its function,
    <fn>/nvme/<controller>/<name>[/<partition>], each with its `dev` (MAJ:MIN) and the links
    dev/block/MAJ:MIN and class/block/<name> (block/<name> for the whole disk) to it. As
    read on real hosts: /sys/dev/block/259:1 -> ../../devices/pci0000:00/0000:00:1d.0/
    0000:05:00.0/nvme/nvme0/nvme0n1/nvme0n1p1 (efivar's src/linux-nvme.c), and
    /sys/block/nvme0n1 -> .../0000:84:00.0/nvme/nvme0/nvme0n1 with dev "259:0", holders/
    and slaves/ (a Debian 10 host in jpapenfuss/UptimeDown docs/gathering-references/disk.md)."""

    controller: str                                  # nvme0
    name: str                                        # nvme0n1
    dev: str                                         # 259:0
    partitions: tuple[tuple[str, str], ...] = ()     # (nvme0n1p1, 259:1), ...


@dataclasses.dataclass(frozen=True)
class Volume:
    """A device-mapper device (an LVM logical volume): devices/virtual/block/<name> with
    dm/name, and a slaves/ link to each device it is built on (with that one's holders/
    link back), as the kernel's bd_link_disk_holder makes them for dm and md alike. As read
    on a real host: /sys/dev/block/253:0 -> /sys/devices/virtual/block/dm-0, whose
    slaves/nvme0n1p4 resolves to /sys/devices/pci0000:00/0000:00:1d.0/0000:02:00.0/nvme/
    nvme0/nvme0n1/nvme0n1p4 (D. Berrangé on qemu-devel, 2022-06-17, "qga: treat
    get-guest-fsinfo as best effort")."""

    name: str                   # dm-0
    dev: str                    # 253:0
    dm_name: str                # vg-root
    slaves: tuple[str, ...]     # nvme0n1p3


@dataclasses.dataclass(frozen=True)
class Fn:
    address: str
    vendor: str
    device: str
    class_: str
    driver: str | None = None
    group: int | None = None
    numa: int = -1
    physfn: str | None = None
    total_vfs: int = 0
    net: dict[str, str] = dataclasses.field(default_factory=dict)  # interface -> operstate
    boot_vga: bool | None = None      # a VGA device's boot_vga (1: the firmware's console); None: no such file
    disks: tuple[Disk, ...] = ()


# Named after what each case shows; addresses are like a real two-socket server's.
GPU = Fn("0000:01:00.0", "10de", "2204", "030000", "nvidia", group=12, numa=0, boot_vga=False)
GPU_AUDIO = Fn("0000:01:00.1", "10de", "1aef", "040300", "snd_hda_intel", group=12, numa=0)
USB = Fn("0000:05:00.0", "1b21", "2142", "0c0330", "xhci_hcd", group=9, numa=0)
HOST_NIC = Fn("0000:06:00.0", "8086", "1533", "020000", "igb", group=9, numa=0, net={"enp6s0": "up"})
SRIOV_PF = Fn("0000:3b:00.0", "15b3", "101d", "020000", "mlx5_core", group=30, numa=1, total_vfs=4,
              net={"ens3f0": "up"})
SRIOV_VFS = (Fn("0000:3b:00.2", "15b3", "101e", "020000", "mlx5_core", group=31, numa=1, physfn="0000:3b:00.0"),
             Fn("0000:3b:00.3", "15b3", "101e", "020000", "mlx5_core", group=32, numa=1, physfn="0000:3b:00.0"))
HOST_BRIDGE = Fn("0000:00:00.0", "8086", "29c0", "060000", None, group=0)
# The BMC's VGA (ASPEED AST2500), the console the firmware booted on.
BMC_VGA = Fn("0000:03:00.0", "1a03", "2000", "030000", "ast", group=15, numa=0, boot_vga=True)
# Two Samsung PM983 NVMe disks of one model (144d:a808): the first holds the host (/boot on
# p2, an LVM volume group on p3 with / and swap: LAB_VOLUMES), the second is free.
BOOT_NVME = Fn("0000:3d:00.0", "144d", "a808", "010802", "nvme", group=40, numa=0, disks=(
    Disk("nvme0", "nvme0n1", "259:0", (("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2"), ("nvme0n1p3", "259:3"))),))
DATA_NVME = Fn("0000:3e:00.0", "144d", "a808", "010802", "nvme", group=41, numa=0,
               disks=(Disk("nvme1", "nvme1n1", "259:4"),))
LAB_VOLUMES = (Volume("dm-0", "253:0", "ubuntu--vg-ubuntu--lv", ("nvme0n1p3",)),
               Volume("dm-1", "253:1", "ubuntu--vg-swap", ("nvme0n1p3",)))
# The two ports of an Intel I350 (8086:1521): the host's default route leaves by eno1, the
# other port is free. As on a real host: /sys/class/net/eno1 -> ../../devices/pci0000:00/
# 0000:00:01.1/0000:09:00.0/net/eno1, lspci 09:00.0 and 09:00.1 I350 (devopstales.github.io,
# "Enable Proxmox PCIe Passthrough").
MGMT_NIC = Fn("0000:09:00.0", "8086", "1521", "020000", "igb", group=20, numa=0, net={"eno1": "up"})
SPARE_NIC = Fn("0000:09:00.1", "8086", "1521", "020000", "igb", group=21, numa=0, net={"eno2": "down"})
LAB = (HOST_BRIDGE, GPU, GPU_AUDIO, BMC_VGA, USB, HOST_NIC, MGMT_NIC, SPARE_NIC, BOOT_NVME, DATA_NVME,
       SRIOV_PF, *SRIOV_VFS)

# What node-2's host uses of LAB, as its proc root shows it (`build_proc`). The mountinfo
# lines are a real Ubuntu server's (root on LVM, /boot on sda2; quoted in a Unix file
# system note found through the code search), its /boot moved to this tree's NVMe disk
# (8:2 /dev/sda2 -> 259:2 /dev/nvme0n1p2).
LAB_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 30 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:14 - proc proc rw
26 30 0:6 / /dev rw,nosuid,noexec,relatime shared:2 - devtmpfs udev rw,size=1960808k,nr_inodes=490202,mode=755
28 30 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=401388k,mode=755
30 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/ubuntu--vg-ubuntu--lv rw
130 30 259:2 / /boot rw,relatime shared:73 - ext4 /dev/nvme0n1p2 rw
"""
# /proc/swaps as the kernel writes it (a RHEL 9 host's, swap on dm-1: an RHCSA study note).
LAB_SWAPS = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" \
            "/dev/dm-1                               partition\t2097148\t\t0\t\t-2\n"
# /proc/net/route of this project's machine (eth0 renamed eno1), each row padded to 127
# columns as the kernel does.
LAB_ROUTE = "".join(f"{row:<127}\n" for row in (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
    "eno1\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
    "eno1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0"))


def without_iommu(functions) -> tuple[Fn, ...]:
    return tuple(dataclasses.replace(f, group=None) for f in functions)


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def _fifo(path: Path) -> None:
    if not path.exists():
        os.mkfifo(path)


def _empty(root: Path) -> None:
    """Empty `root` in place: a node's mount namespace shows that very directory."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _driver_dir(root: Path, driver: str) -> Path:
    d = root / "bus" / "pci" / "drivers" / driver
    d.mkdir(parents=True, exist_ok=True)
    _fifo(d / "bind")
    _fifo(d / "unbind")
    return d


def add(root: Path, fn: Fn) -> None:
    """Create (or re-create) one function in the tree, bound to its host driver."""
    dev = root / "bus" / "pci" / "devices" / fn.address
    dev.mkdir(parents=True, exist_ok=True)
    for name, value in (("vendor", f"0x{fn.vendor}"), ("device", f"0x{fn.device}"), ("class", f"0x{fn.class_}"),
                        ("numa_node", str(fn.numa)), ("driver_override", "(null)")):
        (dev / name).write_text(value + "\n")
    native = json.loads((root / "native.json").read_text()) if (root / "native.json").exists() else {}
    native[fn.address] = fn.driver
    (root / "native.json").write_text(json.dumps(native))
    if fn.driver:
        _symlink(dev / "driver", _driver_dir(root, fn.driver))
    if fn.group is not None:
        group = root / "kernel" / "iommu_groups" / str(fn.group)
        (group / "devices").mkdir(parents=True, exist_ok=True)
        _symlink(dev / "iommu_group", group)
        _symlink(group / "devices" / fn.address, dev)
    if fn.total_vfs:
        (dev / "sriov_totalvfs").write_text(f"{fn.total_vfs}\n")
    if fn.physfn:
        pf = root / "bus" / "pci" / "devices" / fn.physfn
        _symlink(dev / "physfn", pf)
        index = next(i for i in range(256) if not (pf / f"virtfn{i}").is_symlink())
        _symlink(pf / f"virtfn{index}", dev)
        (pf / "sriov_numvfs").write_text(f"{len(list(pf.glob('virtfn*')))}\n")
    for interface, state in fn.net.items():
        (dev / "net" / interface).mkdir(parents=True, exist_ok=True)
        (dev / "net" / interface / "operstate").write_text(state + "\n")
        _symlink(dev / "net" / interface / "device", dev)
        (root / "class" / "net").mkdir(parents=True, exist_ok=True)
        _symlink(root / "class" / "net" / interface, dev / "net" / interface)
    if fn.boot_vga is not None:
        (dev / "boot_vga").write_text(f"{int(fn.boot_vga)}\n")
    for disk in fn.disks:
        _add_disk(root, dev, disk)


def _block(root: Path, directory: Path, name: str, devnum: str, whole: bool) -> None:
    """A block device's directory and the links the kernel makes to it."""
    for sub in ("holders", "slaves") if whole else ("holders",):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "dev").write_text(devnum + "\n")
    links = [root / "dev" / "block" / devnum, root / "class" / "block" / name]
    for link in links + ([root / "block" / name] if whole else []):
        link.parent.mkdir(parents=True, exist_ok=True)
        _symlink(link, directory)


def _add_disk(root: Path, dev: Path, disk: Disk) -> None:
    directory = dev / "nvme" / disk.controller / disk.name
    _block(root, directory, disk.name, disk.dev, whole=True)
    for number, (name, devnum) in enumerate(disk.partitions, start=1):
        _block(root, directory / name, name, devnum, whole=False)
        (directory / name / "partition").write_text(f"{number}\n")


def add_volume(root: Path, volume: Volume) -> None:
    """A device-mapper device on block devices already in the tree."""
    directory = root / "devices" / "virtual" / "block" / volume.name
    _block(root, directory, volume.name, volume.dev, whole=True)
    (directory / "dm").mkdir(exist_ok=True)
    (directory / "dm" / "name").write_text(volume.dm_name + "\n")
    for name in volume.slaves:
        member = (root / "class" / "block" / name).resolve(strict=True)
        _symlink(directory / "slaves" / name, member)
        _symlink(member / "holders" / volume.name, directory)


def remove(root: Path, address: str) -> None:
    """The function vanishes (hot-unplug, or a card that died)."""
    dev = root / "bus" / "pci" / "devices" / address
    group = dev / "iommu_group"
    if group.is_symlink():
        (group.resolve() / "devices" / address).unlink(missing_ok=True)
    if (dev / "physfn").is_symlink():
        pf = (dev / "physfn").resolve()
        for link in pf.glob("virtfn*"):
            if link.resolve() == dev.resolve():
                link.unlink()
        (pf / "sriov_numvfs").write_text(f"{len(list(pf.glob('virtfn*')))}\n")
    for links in ("class/net", "class/block", "block", "dev/block"):  # the links into it go with it
        for link in (root / links).glob("*"):
            if link.is_symlink() and dev.resolve() in link.resolve().parents:
                link.unlink()
    shutil.rmtree(dev, ignore_errors=True)


def build(root: Path, functions=LAB, vfio: bool = True, volumes=LAB_VOLUMES) -> None:
    """A fresh tree of `functions` (and the vfio-pci driver, unless `vfio` is false) and
    the device-mapper `volumes` on their disks, in `root` emptied, not replaced."""
    _empty(root)
    (root / "bus" / "pci" / "devices").mkdir(parents=True)
    _fifo(root / "bus" / "pci" / "drivers_probe")
    if vfio:
        _driver_dir(root, VFIO_DRIVER)
    for fn in functions:
        add(root, fn)
    for volume in volumes:
        add_volume(root, volume)


def build_proc(root: Path, mountinfo: str = LAB_MOUNTINFO, swaps: str = LAB_SWAPS, route: str = LAB_ROUTE) -> None:
    """The part of a host's /proc the agent reads (--proc-root): its PID 1's mountinfo and
    net/route, and swaps; in `root` emptied, not replaced."""
    _empty(root)
    (root / "1" / "net").mkdir(parents=True)
    (root / "1" / "mountinfo").write_text(mountinfo)
    (root / "1" / "net" / "route").write_text(route)
    (root / "swaps").write_text(swaps)


class Kernel:
    """The PCI core's side of bind, unbind and drivers_probe for a tree."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.stopped = False
        self.lock = threading.Lock()
        self.fifos: list[Path] = []

    def _driver_of(self, address: str) -> str | None:
        link = self.root / "bus" / "pci" / "devices" / address / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def _override(self, address: str) -> str | None:
        path = self.root / "bus" / "pci" / "devices" / address / "driver_override"
        value = path.read_text().strip() if path.exists() else ""
        return None if value in ("", "(null)") else value

    def _bind(self, address: str, driver: str) -> None:
        dev = self.root / "bus" / "pci" / "devices" / address
        drivers = self.root / "bus" / "pci" / "drivers"
        native = json.loads((self.root / "native.json").read_text()).get(address)
        override = self._override(address)
        if not dev.is_dir() or self._driver_of(address) or not (drivers / driver).is_dir():
            return
        if (override and override != driver) or (not override and driver != native):
            return  # the driver does not match the device: the kernel refuses quietly too
        _symlink(dev / "driver", drivers / driver)

    def handle(self, fifo: Path, address: str) -> None:
        with self.lock:
            if fifo.name == "drivers_probe":
                driver = self._override(address) or json.loads((self.root / "native.json").read_text()).get(address)
                if driver:
                    self._bind(address, driver)
            elif fifo.name == "unbind":
                if self._driver_of(address) == fifo.parent.name:
                    (self.root / "bus" / "pci" / "devices" / address / "driver").unlink()
            elif fifo.name == "bind":
                self._bind(address, fifo.parent.name)

    def _serve(self, fifo: Path) -> None:
        while not self.stopped:
            with open(fifo) as f:  # blocks until a writer opens; returns at its close
                data = f.read()
            for address in data.split():
                self.handle(fifo, address)

    def start(self) -> Kernel:
        drivers = self.root / "bus" / "pci" / "drivers"
        self.fifos = [self.root / "bus" / "pci" / "drivers_probe", *sorted(drivers.glob("*/bind")),
                      *sorted(drivers.glob("*/unbind"))]
        for fifo in self.fifos:
            threading.Thread(target=self._serve, args=(fifo,), daemon=True, name=f"pcitree:{fifo.name}").start()
        return self

    def stop(self) -> None:
        self.stopped = True
        for fifo in self.fifos:  # wake each reader: an open and close is an empty write
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    build(root)
    Kernel(root).start()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
