"""libvirt storage pool XML from a disk's pool definition (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..api.virtualmachine import PoolDefinition


def pool_xml(name: str, d: PoolDefinition) -> str:
    pool = ET.Element("pool", type=d.type)
    ET.SubElement(pool, "name").text = name
    source = ET.SubElement(pool, "source")
    if d.type == "netfs":
        ET.SubElement(source, "host", name=d.host)
        ET.SubElement(source, "dir", path=d.source_path)
        ET.SubElement(source, "format", type=d.format)
    elif d.type == "iscsi":
        ET.SubElement(source, "host", name=d.host)
        ET.SubElement(source, "device", path=d.target)
    elif d.type == "rbd":
        ET.SubElement(source, "host", name=d.host)
        ET.SubElement(source, "name").text = d.source_name
    if d.type != "rbd":
        target = ET.SubElement(pool, "target")
        ET.SubElement(target, "path").text = d.path or "/dev/disk/by-path"
    ET.indent(pool)
    return ET.tostring(pool, encoding="unicode") + "\n"
