"""The node's PCI functions in sysfs: read them, and move them between drivers.

Everything is relative to a root (normally /sys) so that tests and the lab can point the
agent at a tree they build. Driver moves use the kernel's interface: driver_override,
the old driver's unbind, drivers_probe; each is checked by reading the driver link back.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from ..core.pci import VFIO_DRIVER, Function

SETTLE_SECONDS = 5.0  # how long a driver move may take to show in sysfs


class BindError(Exception):
    pass


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _hex(value: str | None) -> str:
    return (value or "").lower().removeprefix("0x")


def _function(d: Path) -> Function:
    numa = _read(d / "numa_node")
    group = _link_name(d / "iommu_group")
    virtfns = sorted(_link_name(p) for p in d.glob("virtfn*"))
    interfaces = tuple(sorted(n.name for n in (d / "net").glob("*") if _read(n / "operstate") == "up"))
    override = _read(d / "driver_override")
    return Function(address=d.name, vendor_id=_hex(_read(d / "vendor")), device_id=_hex(_read(d / "device")),
                    class_id=_hex(_read(d / "class")), driver=_link_name(d / "driver"),
                    numa_node=int(numa) if numa and int(numa) >= 0 else None,
                    iommu_group=int(group) if group is not None else None,
                    physical_function=_link_name(d / "physfn"), virtual_functions=tuple(virtfns),
                    interfaces_up=interfaces, driver_override=None if override in (None, "", "(null)") else override,
                    boot_vga=_read(d / "boot_vga") == "1")


def scan(root: str | Path) -> dict[str, Function]:
    """Every PCI function under root/bus/pci/devices, by address."""
    devices = Path(root) / "bus" / "pci" / "devices"
    return {d.name: _function(d) for d in sorted(devices.iterdir())} if devices.is_dir() else {}


def vfio_loaded(root: str | Path) -> bool:
    return (Path(root) / "bus" / "pci" / "drivers" / VFIO_DRIVER).is_dir()


def _write(path: Path, value: str) -> None:
    """Non-blocking, so a FIFO without its reader (a test tree's kernel not running) fails
    instead of hanging the agent."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_TRUNC)  # as `echo >` opens it
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
            return
        except OSError as e:
            if e.errno == errno.ENXIO and time.monotonic() < deadline:  # its reader is between two reads
                time.sleep(0.02)
                continue
            raise BindError(f"writing {value.strip() or 'an empty line'} to {path}: {e.strerror}") from None


def _await_driver(root: Path, address: str, want: str | None) -> None:
    link = root / "bus" / "pci" / "devices" / address / "driver"
    deadline = time.monotonic() + SETTLE_SECONDS
    while _link_name(link) != want:
        if time.monotonic() > deadline:
            raise BindError(f"{address} is bound to {_link_name(link) or 'no driver'}, not {want or 'none'}")
        time.sleep(0.02)


def to_vfio(root: str | Path, address: str) -> None:
    """Hand one function to vfio-pci: driver_override, unbind from the host driver, probe."""
    root = Path(root)
    dev = root / "bus" / "pci" / "devices" / address
    current = _link_name(dev / "driver")
    if current == VFIO_DRIVER:
        return
    _write(dev / "driver_override", VFIO_DRIVER)
    if current:
        _write(root / "bus" / "pci" / "drivers" / current / "unbind", address)
        _await_driver(root, address, None)
    _write(root / "bus" / "pci" / "drivers_probe", address)
    _await_driver(root, address, VFIO_DRIVER)


def to_host(root: str | Path, address: str, host_driver: str | None) -> None:
    """Give a function back: unbind from vfio-pci, clear the override, probe, so the kernel
    binds the host's driver again; checked against `host_driver` (None: it had none)."""
    root = Path(root)
    dev = root / "bus" / "pci" / "devices" / address
    current = _link_name(dev / "driver")
    if current == VFIO_DRIVER:
        _write(root / "bus" / "pci" / "drivers" / VFIO_DRIVER / "unbind", address)
        _await_driver(root, address, None)
    _write(dev / "driver_override", "\n")
    if host_driver and _link_name(dev / "driver") != host_driver:
        _write(root / "bus" / "pci" / "drivers_probe", address)
        _await_driver(root, address, host_driver)
