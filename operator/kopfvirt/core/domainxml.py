"""One pure function from a VM to libvirt domain XML: where every spec field becomes XML."""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET

from . import quantity
from .disks import Plan, PlannedDisk, nfs_parts
from .vmspec import VM

METADATA_NS = "https://kopfvirt.io/xmlns/domain/v1alpha1"
VIRT_TYPES = ("kvm", "qemu")
ET.register_namespace("kopfvirt", METADATA_NS)


SERIAL_LOG_DIR = "/var/log/libvirt/qemu"  # node-local; the agent caps what is there
SERIAL_LOG_SUFFIX = "-serial.log"


def serial_log_path(vm: VM) -> str:
    """Where the node keeps the guest's serial console output. QEMU appends (O_APPEND),
    so the agent may cut the file (clients/serial_logs.py)."""
    return f"{SERIAL_LOG_DIR}/{vm.domain_name}{SERIAL_LOG_SUFFIX}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _cpu(dom: ET.Element, vm: VM) -> None:
    c = vm.spec.cpu
    if c.model == "host-passthrough":
        cpu = _sub(dom, "cpu", mode="host-passthrough", check="none", migratable="on")
    elif c.model == "host-model":
        cpu = _sub(dom, "cpu", mode="host-model", check="partial")
    elif c.model:
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="partial")
        _sub(cpu, "model", c.model, fallback="forbid")
    else:
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", "qemu64", fallback="allow")
    _sub(cpu, "topology", sockets=c.sockets, dies=1, cores=c.cores, threads=c.threads)
    for f in c.features:
        _sub(cpu, "feature", policy=f.policy, name=f.name)


def _os(dom: ET.Element, vm: VM, plan: Plan) -> None:
    spec = vm.spec
    os_ = _sub(dom, "os", **({"firmware": "efi"} if spec.firmware.type == "UEFI" else {}))
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel_boot:
        _sub(os_, "kernel", plan.kernel)
        if plan.initrd:
            _sub(os_, "initrd", plan.initrd)
        if spec.kernel_boot.cmdline:
            _sub(os_, "cmdline", spec.kernel_boot.cmdline)
    elif not any(d.boot_order for d in plan.disks):
        _sub(os_, "boot", dev="hd")


def _disk(devices: ET.Element, d: PlannedDisk) -> None:
    nfs = nfs_parts(d.path)
    if nfs:  # no libvirt pool reaches it: QEMU's own NFS client opens the file
        disk = _sub(devices, "disk", type="network", device=d.device)
    elif d.kind == "volume":
        disk = _sub(devices, "disk", type="volume", device=d.device)
    else:
        disk = _sub(devices, "disk", type="file", device=d.device)
    fmt = "qcow2" if d.kind in ("overlay", "empty") else "raw"
    _sub(disk, "driver", name="qemu", type=fmt, **({"discard": "unmap"} if d.kind in ("overlay", "empty") else {}),
         **({"cache": d.cache} if d.cache else {}))
    if nfs:
        source = _sub(disk, "source", protocol="nfs", name=nfs[1])
        _sub(source, "host", name=nfs[0])
        # The agent makes the files as root through libnfs; QEMU must reach them as the same user.
        _sub(source, "identity", user="root", group="root")
    elif d.kind == "volume":
        _sub(disk, "source", pool=d.pool, volume=d.volume)
    else:
        _sub(disk, "source", file=d.path)
    _sub(disk, "target", dev=d.target, bus=d.bus)
    if d.boot_order:
        _sub(disk, "boot", order=d.boot_order)
    if d.read_only:
        _sub(disk, "readonly")
    _sub(disk, "alias", name=f"ua-disk-{d.name}")


def _pci_address(parent: ET.Element, address: str) -> None:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    _sub(parent, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}")


def _hostdev(devices: ET.Element, name: str, address: str) -> None:
    # managed='no': the agent binds the IOMMU group to vfio-pci before the start and gives
    # it back after the stop; libvirt must not rebind drivers behind it.
    hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="no")
    _pci_address(_sub(hostdev, "source"), address)
    _sub(hostdev, "alias", name=f"ua-hostdev-{name}")


def hostdev_addresses(xml: str) -> set[str]:
    """The host PCI addresses a domain's XML passes through."""
    out = set()
    for a in ET.fromstring(xml).iterfind("devices/hostdev[@type='pci']/source/address"):
        out.add(f"{int(a.get('domain'), 16):04x}:{int(a.get('bus'), 16):02x}:"
                f"{int(a.get('slot'), 16):02x}.{int(a.get('function'), 16):x}")
    return out


def owner(xml: str) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the VM a domain was made for, from the metadata domain_xml
    writes; None for a domain Kopfvirt did not make."""
    vm = ET.fromstring(xml).find(f"metadata/{{{METADATA_NS}}}vm")
    if vm is None or not all(vm.get(k) for k in ("namespace", "name", "uid")):
        return None
    return vm.get("namespace"), vm.get("name"), vm.get("uid")


def domain_xml(vm: VM, plan: Plan, virt_type: str = "qemu",
               networks: dict[str, str] | None = None, hostdevs: list[tuple[str, str]] = ()) -> str:
    """The domain for `vm`; its UUID is the VM object's UID, which ties the two for adoption.

    `networks` maps the spec's network names to the node's libvirt networks; `hostdevs`
    are the (request name, PCI address) pairs the controller allocated.
    """
    if virt_type not in VIRT_TYPES:
        raise ValueError(f"virt_type must be one of {VIRT_TYPES}, not {virt_type!r}")
    spec, networks = vm.spec, networks or {}
    dom = ET.Element("domain", type=virt_type)
    _sub(dom, "name", vm.domain_name)
    _sub(dom, "uuid", vm.uid)
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{METADATA_NS}}}vm", namespace=vm.namespace, name=vm.name, uid=vm.uid)
    _sub(dom, "memory", str(vm.memory_bytes // 1024), unit="KiB")
    if spec.memory.hugepages:
        backing = _sub(dom, "memoryBacking")
        pages = _sub(backing, "hugepages")
        _sub(pages, "page", size=quantity.to_bytes(spec.memory.hugepages.page_size) // 1024, unit="KiB")
    _sub(dom, "vcpu", str(vm.vcpus), placement="static")
    _os(dom, vm, plan)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _cpu(dom, vm)
    _sub(dom, "clock", offset="utc")
    # libvirt only reports; the agent decides per runStrategy whether a stopped guest restarts.
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    if any(d.bus == "scsi" for d in plan.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for d in plan.disks:
        _disk(devices, d)
    for i in spec.interfaces:
        iface = _sub(devices, "interface", type="network")
        _sub(iface, "mac", address=vm.mac_address(i.name))
        _sub(iface, "source", network=networks.get(i.network, i.network))
        _sub(iface, "model", type=i.model)
        _sub(iface, "alias", name=f"ua-net-{i.name}")
    for d in plan.disks:
        if d.lease:  # libvirt's lockd: the lockspace is the directory, the key the file in it
            lease = _sub(devices, "lease")
            _sub(lease, "lockspace", posixpath.basename(plan.lease_dir))
            _sub(lease, "key", d.lease)
            _sub(lease, "target", path=posixpath.dirname(plan.lease_dir))
    for i, (name, address) in enumerate(hostdevs):
        _hostdev(devices, f"{name}-{i}", address)
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=serial_log_path(vm), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if spec.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if spec.console.vnc:
        # No address of its own: the agent hands a connection to an authorized user
        # (virDomainOpenGraphicsFD, `kubectl kopfvirt vnc`); nothing on the node can connect.
        _sub(_sub(devices, "graphics", type="vnc"), "listen", type="none")
        video = _sub(devices, "video")
        _sub(video, "model", type="vga", vram="16384", heads="1")
    _sub(devices, "memballoon", model="none")

    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"
