"""The lab guest (a kernel and busybox initramfs that print a heartbeat on ttyS0) and a
blank base image: volumes of the lab's read-only StoragePool lab-images (lab/storagepools.yaml),
a directory every node sees at the same path."""

from __future__ import annotations

import filecmp
import shutil

from . import procs
from .errors import LabError
from .layout import SHARED_STORAGE, Lab

IMAGES_DIR = SHARED_STORAGE / "images"
IMAGES_POOL = "lab-images"
# Volumes of a dir pool are the files at its top: the guest's files carry its name.
VOLUMES = {"vmlinuz": "lab-guest-vmlinuz", "initrd.img": "lab-guest-initrd.img"}
BLANK_IMAGE = IMAGES_DIR / "blank.qcow2"
HEARTBEAT = "kopfvirt-heartbeat"


def install(lab: Lab) -> None:
    """Build into the cache once, then copy onto the shared storage every node sees."""
    result = procs.run(["bash", str(lab.repo / "lab" / "build-guest.sh")], check=False)
    if result.returncode != 0:
        raise LabError(f"building the lab guest failed: {result.stderr.strip()[-2000:]}")
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    for name, volume in VOLUMES.items():
        target = IMAGES_DIR / volume
        if not target.exists() or not filecmp.cmp(lab.guest_cache / name, target, shallow=False):
            shutil.copy2(lab.guest_cache / name, target)
    if not BLANK_IMAGE.exists():  # a base image for examples of copy-on-write overlays
        procs.run(["qemu-img", "create", "-q", "-f", "qcow2", str(BLANK_IMAGE), "64M"])
