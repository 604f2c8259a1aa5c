"""One pure function from a VM spec to libvirt domain XML: where every spec field becomes XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .vmspec import VMSpec

METADATA_NS = "https://kopfvirt.io/xmlns/domain/v1alpha1"
VIRT_TYPES = ("kvm", "qemu")


def serial_log_path(vm: VMSpec) -> str:
    """Where the node keeps the guest's serial console output (node-local)."""
    return f"/var/log/libvirt/qemu/{vm.domain_name}-serial.log"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def domain_xml(vm: VMSpec, virt_type: str = "qemu") -> str:
    """The domain for `vm`; its UUID is the VM object's UID, which ties the two for adoption."""
    if virt_type not in VIRT_TYPES:
        raise ValueError(f"virt_type must be one of {VIRT_TYPES}, not {virt_type!r}")
    dom = ET.Element("domain", type=virt_type)
    _sub(dom, "name", vm.domain_name)
    _sub(dom, "uuid", vm.uid)
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{METADATA_NS}}}vm", namespace=vm.namespace, name=vm.name, uid=vm.uid)
    _sub(dom, "memory", str(vm.memory_bytes // 1024), unit="KiB")
    _sub(dom, "vcpu", str(vm.cores), placement="static")

    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if vm.kernel_boot:
        _sub(os_, "kernel", vm.kernel_boot.kernel)
        if vm.kernel_boot.initrd:
            _sub(os_, "initrd", vm.kernel_boot.initrd)
        if vm.kernel_boot.cmdline:
            _sub(os_, "cmdline", vm.kernel_boot.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=serial_log_path(vm), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")

    ET.register_namespace("kopfvirt", METADATA_NS)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"
