"""Sysfs trees of PCI hosts this machine is not: for the unit tests and the lab's node-2.

These machines have no IOMMU and only virtio devices, so the cases passthrough must get
right (a GPU with its audio function, a device sharing its group with a host NIC, an
SR-IOV card, a host without IOMMU groups) are built as trees in sysfs's layout, and
`Kernel` plays the PCI core's part for them: the bind, unbind and drivers_probe files are
FIFOs it reads, and it moves the `driver` links the way the kernel does (honouring
driver_override). The agent's code is the same for /sys and for these trees.

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


# Named after what each case shows; addresses are like a real two-socket server's.
GPU = Fn("0000:01:00.0", "10de", "2204", "030000", "nvidia", group=12, numa=0)
GPU_AUDIO = Fn("0000:01:00.1", "10de", "1aef", "040300", "snd_hda_intel", group=12, numa=0)
USB = Fn("0000:05:00.0", "1b21", "2142", "0c0330", "xhci_hcd", group=9, numa=0)
HOST_NIC = Fn("0000:06:00.0", "8086", "1533", "020000", "igb", group=9, numa=0, net={"enp6s0": "up"})
SRIOV_PF = Fn("0000:3b:00.0", "15b3", "101d", "020000", "mlx5_core", group=30, numa=1, total_vfs=4,
              net={"ens3f0": "up"})
SRIOV_VFS = (Fn("0000:3b:00.2", "15b3", "101e", "020000", "mlx5_core", group=31, numa=1, physfn="0000:3b:00.0"),
             Fn("0000:3b:00.3", "15b3", "101e", "020000", "mlx5_core", group=32, numa=1, physfn="0000:3b:00.0"))
HOST_BRIDGE = Fn("0000:00:00.0", "8086", "29c0", "060000", None, group=0)
LAB = (HOST_BRIDGE, GPU, GPU_AUDIO, USB, HOST_NIC, SRIOV_PF, *SRIOV_VFS)


def without_iommu(functions) -> tuple[Fn, ...]:
    return tuple(dataclasses.replace(f, group=None) for f in functions)


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def _fifo(path: Path) -> None:
    if not path.exists():
        os.mkfifo(path)


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
    shutil.rmtree(dev, ignore_errors=True)


def build(root: Path, functions=LAB, vfio: bool = True) -> None:
    """A fresh tree of `functions` (and the vfio-pci driver, unless `vfio` is false), in
    `root` emptied, not replaced: a node's mount namespace shows that very directory."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (root / "bus" / "pci" / "devices").mkdir(parents=True)
    _fifo(root / "bus" / "pci" / "drivers_probe")
    if vfio:
        _driver_dir(root, VFIO_DRIVER)
    for fn in functions:
        add(root, fn)


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
