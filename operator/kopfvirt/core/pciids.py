"""Names of PCI vendors, devices and classes from the pci.ids database (pure).

The agent reads the file that Debian's pci.ids package installs (/usr/share/misc/pci.ids,
or hwdata's /usr/share/hwdata/pci.ids) and hands its text here; no name is written by hand.
"""

from __future__ import annotations

import dataclasses

SEARCH_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")


@dataclasses.dataclass(frozen=True)
class PciIds:
    vendors: dict[str, str]                  # "10de" -> "NVIDIA Corporation"
    devices: dict[tuple[str, str], str]      # ("10de", "2330") -> "GH100[H100 SXM5 80GB]"
    classes: dict[str, str]                  # "03" and "0302" -> class / subclass names

    def vendor(self, vendor: str) -> str | None:
        return self.vendors.get(vendor.lower())

    def device(self, vendor: str, device: str) -> str | None:
        return self.devices.get((vendor.lower(), device.lower()))

    def class_name(self, class_id: str) -> str | None:
        """The subclass's name ("3D controller"), else the base class's; `class_id` is the
        sysfs class without 0x, e.g. "030200"."""
        c = class_id.lower()
        return self.classes.get(c[:4]) or self.classes.get(c[:2])


EMPTY = PciIds({}, {}, {})


def parse(text: str) -> PciIds:
    """Vendors (`vvvv  name`), their devices (`\\tdddd  name`), and after the `C` lines the
    classes (`C cc  name`) and subclasses (`\\tss  name`); subsystems and prog-ifs (two
    tabs) are skipped."""
    vendors: dict[str, str] = {}
    devices: dict[tuple[str, str], str] = {}
    classes: dict[str, str] = {}
    vendor = base = None
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("\t\t"):
            continue
        if line.startswith("C "):
            base, name = line[2:4].lower(), line[4:].strip()
            classes[base] = name
            vendor = None
        elif line.startswith("\t"):
            code, _, name = line[1:].partition("  ")
            if vendor is not None:
                devices[(vendor, code.lower())] = name.strip()
            elif base is not None:
                classes[base + code.lower()] = name.strip()
        else:
            code, _, name = line.partition("  ")
            if len(code) == 4:
                vendor, base = code.lower(), None
                vendors[vendor] = name.strip()
            else:  # another section (device types of other buses): nothing we name
                vendor = base = None
    return PciIds(vendors, devices, classes)
